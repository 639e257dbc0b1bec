"""MeSH document scoring: the vectorised batch scorer vs a per-pair implementation, side by side.

Records are real: the MeSH headings of the 1,400 NLM-indexed abstracts and the 1,000 PubMedQA
PQA-L abstracts (names resolved to MeSH 2024 UIs). Each of N records gets a source (one of those
MeSH lists) and k=4 contexts (other records' MeSH lists, drawn at random as stand-ins for
retrieved abstracts). The same records are scored by

* ``kailin`` — ``MeshScorer.doc_scores`` on the whole batch (one core: the compiled kernel and
  numpy's element-wise kernels are single-threaded);
* ``per-pair, precomputed IC`` — ``ReferenceKailin(precompute=True)``: a straightforward Python
  loop over descriptor pairs with IC looked up in dictionaries;
* ``per-pair, descendant walk`` — ``ReferenceKailin(precompute=False)``: every IC recomputed by
  walking the descendants of the node, in memory;
* ``per-pair, authors' approach`` — :class:`SqliteKailin` below: the same walk with one SQLite
  query per node, as ``cal_mesh_score.py`` does (tables ``DescriptorTreeData``,
  ``ChildrenData``, ``FrequencyData``, ``MaxICData``).

The per-pair versions are slow, so they run on the first records only; their pairs/s are
compared with the batch scorer's, and their values with the batch scorer's on the same records.
Times are CPU seconds of this process (``time.process_time``), so that other work on the machine
does not distort the ratios.

    python benchmarks/bench_mesh.py [--records 10000] [--ref-records 300] [--authors-records 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from kailin.mesh import load_mesh
from kailin.mesh.reference import ReferenceKailin

ROOT = Path(__file__).resolve().parents[1]


class SqliteKailin(ReferenceKailin):
    """The authors' approach: the hierarchy and frequencies live in SQLite; every IC is computed
    by a recursive descendant walk issuing one query per node."""

    def __init__(self, descriptors: dict[str, list[str]], df: dict[str, float]) -> None:
        import sqlite3

        self.db = None
        super().__init__(descriptors, df, precompute=True)  # for MaxIC (read from a table)
        self.db = db = sqlite3.connect(":memory:")
        db.execute("create table DescriptorTreeData (TreeNumber text primary key, "
                   "DescriptorUI text)")
        db.execute("create table ChildrenData (Parent text, Child text)")
        db.execute("create index children_parent on ChildrenData(Parent)")
        db.execute("create table FrequencyData (MeSHID text, Category text, Count real)")
        db.execute("create index freq_id on FrequencyData(MeSHID, Category)")
        db.execute("create table CategoryTotal (Category text primary key, Total real)")
        db.execute("create table MaxICData (Category text primary key, MaxIC real)")
        db.executemany("insert into DescriptorTreeData values (?, ?)", self.tree_to_ui.items())
        db.executemany("insert into ChildrenData values (?, ?)",
                       [(p, c) for p, cs in self.children.items() for c in cs])
        db.executemany("insert into FrequencyData values (?, ?, ?)",
                       [(u, c, self.counts[u]) for u, cs in self.cats.items() for c in cs])
        db.executemany("insert into CategoryTotal values (?, ?)", self.total.items())
        db.executemany("insert into MaxICData values (?, ?)", self.max_ic.items())
        self._ic_cache.clear()
        self.precompute = False

    def _below(self, tree: str, out: set[str]) -> None:
        if self.db is None:
            return super()._below(tree, out)
        for (child,) in self.db.execute("select Child from ChildrenData where Parent = ?",
                                        (tree,)).fetchall():
            (ui,) = self.db.execute("select DescriptorUI from DescriptorTreeData where "
                                    "TreeNumber = ?", (child,)).fetchone()
            out.add(ui)
            self._below(child, out)

    def ic(self, ui: str) -> dict[str, float]:
        import math

        if self.db is None:
            return super().ic(ui)
        d = self.descendants(ui)
        res = {}
        for c in self.cats[ui]:
            (z,) = self.db.execute("select Total from CategoryTotal where Category = ?",
                                   (c,)).fetchone()
            s = 0.0
            for x in d:
                row = self.db.execute("select Count from FrequencyData where MeSHID = ? and "
                                      "Category = ?", (x, c)).fetchone()
                if row:
                    s += row[0]
            s = s / z if z > 0 else 0.0
            res[c] = -math.log10(s) if 0 < s <= 1 else 0.0
        return res


def real_mesh_lists(mesh) -> list[list[str]]:
    lists: list[list[str]] = []
    for f in sorted((ROOT / "data/samples/mesh_indexed_abstracts_nlm").rglob("*.TiAbMe")):
        for line in f.read_text(encoding="ascii", errors="replace").splitlines():
            parts = line.split("|", 2)
            if len(parts) == 3 and parts[1] == "m":
                names = {e.split("!")[0].rstrip("*") for e in parts[2].split("|") if e}
                lists.append(mesh.vocab.resolve(sorted(names))[0])
    pqal = json.loads((ROOT / "src/kailin/data/pubmedqa/ori_pqal.json").read_text())
    for rec in pqal.values():
        lists.append(mesh.vocab.resolve(rec["MESHES"])[0])
    return [x for x in lists if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--ref-records", type=int, default=300)
    ap.add_argument("--authors-records", type=int, default=20)
    ap.add_argument("--sqlite-records", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    mesh = load_mesh()
    pool = real_mesh_lists(mesh)
    rng = np.random.default_rng(args.seed)
    src_idx = rng.integers(len(pool), size=args.records)
    ctx_idx = rng.integers(len(pool), size=(args.records, args.k))
    sources = [pool[i] for i in src_idx]
    contexts = [[pool[j] for j in row] for row in ctx_idx]
    n_pairs = sum(len(s) * sum(len(c) for c in cs) for s, cs in zip(sources, contexts))
    print(f"{len(pool)} real MeSH lists; {args.records} records x {args.k} contexts = "
          f"{n_pairs:,} descriptor pairs")

    from kailin.mesh.score import DEFAULT_SCORING

    results = {}
    for label, opts in (("kailin --faithful", {"faithful": True}),
                        ("kailin (old default)", {}),
                        ("new default", DEFAULT_SCORING)):
        sc = mesh.scorer(**opts)
        sc.doc_scores(sources, contexts)  # warm-up (JIT, descriptors embedded on demand)
        t = time.process_time()
        scores = sc.doc_scores(sources, contexts)
        dt = time.process_time() - t
        # pairs actually scored (the new default leaves check tags out)
        pairs = sc.last_stats.pairs
        results[label] = (scores, pairs / dt, args.records / dt)
        print(f"{label:24s} {dt:7.3f} s  {pairs:12,} pairs {pairs / dt:14,.0f} pairs/s")
    old, new = results["kailin (old default)"][1], results["new default"][1]
    old_r, new_r = results["kailin (old default)"][2], results["new default"][2]
    print(f"new default ({DEFAULT_SCORING['measure']}, {DEFAULT_SCORING['aggregate']}, "
          f"check tags out, IC^{DEFAULT_SCORING['ic_power']:g}): {new / old:.2f}x the old "
          f"default's pairs/s, {new_r / old_r:.2f}x its records/s")

    v = mesh.vocab
    trees = {u: v.tree_numbers(u) for u in v.uis}
    df = dict(zip(v.uis, mesh.df))
    fast_scores, fast_rate, _ = results["kailin --faithful"]
    baselines = (
        ("per-pair, precomputed IC", lambda: ReferenceKailin(trees, df, precompute=True),
         args.ref_records),
        ("per-pair, descendant walk", lambda: ReferenceKailin(trees, df, precompute=False),
         args.authors_records),
        ("per-pair, authors' approach", lambda: SqliteKailin(trees, df), args.sqlite_records),
    )
    for label, make, n in baselines:
        ref = make()
        pairs = sum(len(s) * sum(len(c) for c in cs)
                    for s, cs in zip(sources[:n], contexts[:n]))
        t = time.process_time()
        ref_scores = [ref.doc_score(s, cs) for s, cs in zip(sources[:n], contexts[:n])]
        dt = time.process_time() - t
        diff = float(np.nanmax(np.abs(np.array(ref_scores) - fast_scores[:n])))
        rate = pairs / dt
        print(f"{label:28s} {n:5d} records {pairs:10,} pairs {dt:8.2f} s "
              f"{rate:12,.0f} pairs/s  | kailin is {fast_rate / rate:8.1f}x faster, "
              f"max |diff| {diff:.1e}")

    per_core = results["new default"][2]  # records (question, k contexts) per second
    total = 36e6 * 2
    print(f"projection: 36M abstracts x 2 questions, {args.k} contexts each: "
          f"{total / per_core / 3600:.1f} h on one core, {total / per_core / 64 / 60:.1f} min "
          "on 64 cores (new default score, this machine)")

if __name__ == "__main__":
    main()
