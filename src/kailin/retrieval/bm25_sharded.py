"""Sharded BM25 with corpus-wide statistics: N bm25s indexes that score like one.

BM25 scores a (term, document) pair from the term's frequency in the document, the document's
length, and three corpus-wide numbers: the term's document frequency ``df``, the number of
documents ``N`` and the mean document length ``avgdl``. bm25s precomputes every pair's score at
index time, so N independent bm25s indexes over parts of a corpus would each use their own
``df``/``N``/``avgdl`` and rank differently from one index over the whole corpus. Here each shard
is scored with the *global* statistics instead, which makes the sharded index equal to the single
one: same scores (float32, bit for bit: the same bm25s scoring functions see the same inputs) and,
with ties broken by the smaller row id on both sides, the same hits in the same order.

The build runs in two parallel passes over contiguous row ranges of the corpus (shard ``i`` holds
docstore rows ``[start_i, start_i + rows_i)``):

1. each worker streams its rows, tokenises them with its own bm25s tokenizer (the vocabulary is
   saved in its shard folder) and writes the token ids to disk; it returns its document count,
   token count and per-term document frequencies. The parent merges these into the global
   vocabulary (term -> global id), ``df``, ``N`` and ``avgdl``: the only state held across shards.
2. each worker reads its token ids back, looks up the global ``df`` of its terms and builds its
   bm25s score matrix with ``N`` and ``avgdl`` of the whole corpus, saved in bm25s's own format.

A worker's memory is bounded by its shard (token ids, then the shard's sparse matrix); the
parent holds the global vocabulary. The index folder ``bm25/`` holds ``shards.json`` (the global
statistics and the shards' row ranges), ``df.parquet`` (term, document frequency) and one bm25s
index per shard (``shard-00000/``, ...). Search (:class:`kailin.retrieval.bm25.BM25Backend`)
scores every shard and merges their top hits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kailin.errors import InputError, KailinError
from kailin.io import write_json_atomic

SHARDS_FILE = "shards.json"
DF_FILE = "df.parquet"
#: bm25s variants whose scores are a sum over the (term, document) pairs of the matrix; BM25L and
#: BM25+ add a per-query "non-occurrence" term over the query's whole vocabulary as well, which a
#: shard that lacks some of the query's terms cannot reproduce
SHARDABLE_METHODS = ("lucene", "robertson", "atire")
_WORK = ".work"

log = logging.getLogger(__name__)


def shard_dir_name(i: int) -> str:
    return f"shard-{i:05d}"


def shard_bounds(num_docs: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous row ranges ``(start, rows)`` of about equal size covering
    ``num_docs`` rows."""
    edges = [num_docs * i // shards for i in range(shards + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(shards)]


def iter_row_range(
    files: list[str], start: int, rows: int, columns: list[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Rows ``[start, start + rows)`` of the corpus formed by ``files`` read in order (the order
    of ``Corpus.iter_batches``, i.e. of the docstore). Only the row groups that overlap the
    range are read, through a small buffer (not whole column chunks: a corpus row group can hold
    hundreds of thousands of rows)."""
    end = start + rows
    pos = 0
    for f in files:
        pf = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
        md = pf.metadata
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            rg_start, pos = pos, pos + n
            if pos <= start or rg_start >= end:
                continue
            at = rg_start
            for rb in pf.iter_batches(batch_size=batch_size, row_groups=[rg], columns=columns):
                lo, hi = max(start - at, 0), min(end - at, rb.num_rows)
                if hi > lo:
                    yield rb.slice(lo, hi - lo)
                at += rb.num_rows
                if at >= end:
                    break
        if pos >= end:
            return


# -- pass 1: tokenise -----------------------------------------------------------------------------


def _tokenize_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Tokenise one shard's rows; write its token ids, document frequencies and vocabulary;
    return its document and token counts."""
    from kailin.retrieval.base import doc_text
    from kailin.retrieval.bm25_tokenizer import make_tokenizer

    out, work = Path(job["out"]), Path(job["work"])
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(job["stemmer"], job["stopwords"])
    df = np.zeros(0, dtype=np.int64)
    n_docs = n_tokens = 0
    with open(work / "ids.bin", "wb") as f_ids, open(work / "lengths.bin", "wb") as f_len:
        for rb in iter_row_range(
            job["files"], job["start"], job["rows"], ["title", "abstract"], job["batch_size"]
        ):
            titles = rb.column("title").to_pylist()
            abstracts = rb.column("abstract").to_pylist()
            texts = [doc_text(t, a) for t, a in zip(titles, abstracts, strict=True)]
            ids = tok.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            total = int(lengths.sum())
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=total)
            vocab = len(tok.get_vocab_dict())
            # document frequency: count each distinct (document, term) pair once
            docs = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
            terms = np.unique(docs * vocab + flat) % vocab
            if len(df) < vocab:
                df = np.concatenate([df, np.zeros(vocab - len(df), dtype=np.int64)])
            df += np.bincount(terms, minlength=vocab)
            flat.astype(np.int32).tofile(f_ids)
            lengths.tofile(f_len)
            n_docs += len(ids)
            n_tokens += total
    if n_docs != job["rows"]:
        raise KailinError(
            f"{job['files'][0]}...: shard {job['shard']} read {n_docs} rows instead of "
            f"{job['rows']}; the corpus changed during the build, run it again"
        )
    tok.save_vocab(str(out))
    vocab_dict = tok.get_vocab_dict()
    terms_by_id = [""] * len(vocab_dict)
    for term, i in vocab_dict.items():
        terms_by_id[i] = term
    if len(df) < len(vocab_dict):  # the empty token "" exists from the first batch on
        df = np.concatenate([df, np.zeros(len(vocab_dict) - len(df), dtype=np.int64)])
    np.save(work / "df.npy", df)
    (work / "terms.json").write_text(json.dumps(terms_by_id, ensure_ascii=False), "utf-8")
    return {"docs": n_docs, "tokens": n_tokens}


# -- pass 2: score with the global statistics ------------------------------------------------------


def _score_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Build and save one shard's bm25s index with the corpus-wide ``df``, ``N`` and ``avgdl``."""
    import bm25s
    from bm25s.scoring import (
        _build_idf_array,
        _build_scores_and_indices_for_matrix,
        _select_idf_scorer,
    )

    from kailin.retrieval.bm25_tokenizer import make_tokenizer

    out, work = Path(job["out"]), Path(job["work"])
    flat = np.fromfile(work / "ids.bin", dtype=np.int32)
    lengths = np.fromfile(work / "lengths.bin", dtype=np.int64)
    local_df = np.load(work / "df.npy")
    to_global = np.load(work / "to_global.npy")
    global_df = np.load(job["global_df"], mmap_mode="r")[to_global]
    n_docs, n_vocab = len(lengths), len(local_df)

    bm = bm25s.BM25(k1=job["k1"], b=job["b"], method=job["method"])
    idf = _build_idf_array(
        doc_frequencies=dict(enumerate(global_df.tolist())),
        n_docs=job["num_docs"],
        compute_idf_fn=_select_idf_scorer(bm.idf_method),
        dtype=bm.dtype,
    )
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]

    def docs() -> Iterator[list[int]]:
        for s, e in zip(starts, ends, strict=True):
            yield flat[s:e].tolist()

    # the shard's own df only sizes the (document, term) arrays: its sum is their length
    scores, doc_idx, voc_idx = _build_scores_and_indices_for_matrix(
        corpus_token_ids=docs(),
        idf_array=idf,
        avg_doc_len=np.float64(job["avgdl"]),
        doc_frequencies=dict(enumerate(local_df.tolist())),
        k1=bm.k1,
        b=bm.b,
        delta=bm.delta,
        nonoccurrence_array=None,
        method=bm.method,
        dtype=bm.dtype,
        int_dtype=bm.int_dtype,
        show_progress=False,
    )
    data, indices, indptr = bm._np_csc(
        data=scores, rows=doc_idx, cols=voc_idx, shape=(n_docs, n_vocab)
    )
    bm.scores = {
        "data": data.astype(bm.dtype),
        "indices": indices,
        "indptr": indptr,
        "num_docs": n_docs,
    }
    tok = make_tokenizer(job["stemmer"], job["stopwords"])
    tok.load_vocab(str(out))
    bm.vocab_dict = tok.get_vocab_dict()
    bm.nonoccurrence_array = None
    bm.save(str(out), show_progress=False)
    shutil.rmtree(work, ignore_errors=True)
    return {"nnz": len(data)}


# -- driver -----------------------------------------------------------------------------------------


PASSES = {"tokenize": "_tokenize_shard", "score": "_score_shard"}


def _peak_rss_mib() -> float | None:
    """This process's peak RSS (``VmHWM``), MiB; None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _Workers:
    """``n`` worker processes (``python -m kailin.retrieval.bm25_sharded``) that run shard jobs
    sent as JSON lines, for both passes. Fresh interpreters: nothing of the parent is copied or
    re-imported, so a caller's script needs no ``if __name__ == "__main__"`` guard."""

    def __init__(self, n: int, log_dir: Path) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # the folder holding the kailin package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs = [log_dir / f"worker-{i}.log" for i in range(n)]
        self.procs: list[subprocess.Popen] = []
        for log in self.logs:
            with open(log, "w") as err:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "kailin.retrieval.bm25_sharded"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=env,
                    )
                )

    def map(
        self, name: str, jobs: list[dict[str, Any]], meanwhile: Iterator[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run pass ``name`` over ``jobs`` (each worker takes the next job when it is free);
        results in job order. ``meanwhile`` is drained by the parent while they run."""
        todo: queue.SimpleQueue[tuple[int, dict[str, Any]]] = queue.SimpleQueue()
        for item in enumerate(jobs):
            todo.put(item)
        results: list[dict[str, Any]] = [{} for _ in jobs]

        def drive(w: int) -> None:
            proc = self.procs[w]
            assert proc.stdin is not None and proc.stdout is not None
            while True:
                try:
                    i, job = todo.get_nowait()
                except queue.Empty:
                    return
                proc.stdin.write(json.dumps({"pass": name, "job": job}) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    tail = self.logs[w].read_text(errors="replace").strip().splitlines()[-1:]
                    raise KailinError(
                        f"sharded BM25: the worker on shard {job['shard']} ({name}) stopped: "
                        f"{tail[0] if tail else f'exit status {proc.wait()}'}"
                    )
                res = json.loads(line)
                if "error" in res:
                    raise KailinError(res["error"])
                results[i] = res

        with ThreadPoolExecutor(max_workers=len(self.procs)) as pool:
            futures = [pool.submit(drive, w) for w in range(len(self.procs))]
            for _ in meanwhile or ():
                pass
            for f in futures:
                f.result()
        return results

    def close(self, wait: bool = True) -> None:
        """End the workers: they exit when their input closes (``wait``), or are killed (after
        a failure, when some may still be busy with a job nobody waits for)."""
        for proc in self.procs:
            if not wait:
                proc.kill()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _serve() -> int:
    """A worker: read ``{"pass", "job"}`` lines on stdin, answer each with its result line."""
    # bm25s imports numba when it is installed (+120 MiB a process); these passes use bm25s's
    # numpy code only (as one bm25s.BM25() index does), so a worker does without it
    sys.modules.setdefault("numba", None)  # type: ignore[arg-type]
    # the results go to the original stdout; anything printed goes to stderr (the log)
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            res = globals()[PASSES[msg["pass"]]](msg["job"])
        except KailinError as exc:
            res = {"error": str(exc)}
        res["peak_rss_mib"] = _peak_rss_mib()
        answers.write(json.dumps(res) + "\n")
        answers.flush()
    return 0


def build_sharded(
    files: list[str],
    num_docs: int,
    out_dir: Path,
    opts: dict[str, Any],
    shards: int,
    *,
    batch_size: int = 1024,
    workers: int | None = None,
    while_tokenizing: Iterator[Any] | None = None,
) -> dict[str, Any]:
    """Build a BM25 index of ``shards`` shards over the corpus ``files`` (``num_docs`` rows) in
    ``out_dir``; return the parameters to record in ``meta.json``.

    ``workers`` processes run each pass (default: one per shard, at most the CPU count).
    ``while_tokenizing`` (an iterator, e.g. the docstore writer's) is drained by the parent
    while the first pass runs.
    """
    stemmer = opts.get("stemmer", "english")
    stopwords = opts.get("stopwords", "en")
    k1, b = float(opts.get("k1", 1.5)), float(opts.get("b", 0.75))
    method = opts.get("method", "lucene")
    if method not in SHARDABLE_METHODS:
        raise InputError(
            f"BM25 method {method!r} cannot be sharded exactly (its scores add a term over the "
            f"whole query vocabulary); use one of {', '.join(SHARDABLE_METHODS)} or shards=1"
        )
    if shards > num_docs:
        raise InputError(f"shards={shards} is more than the {num_docs} documents of the corpus")
    workers = max(1, min(shards, workers or os.cpu_count() or 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    work_root = out_dir / _WORK
    bounds = shard_bounds(num_docs, shards)
    common = {"stemmer": stemmer, "stopwords": stopwords, "batch_size": batch_size}
    jobs = [
        {
            **common,
            "shard": i,
            "files": files,
            "start": start,
            "rows": rows,
            "out": str(out_dir / shard_dir_name(i)),
            "work": str(work_root / shard_dir_name(i)),
        }
        for i, (start, rows) in enumerate(bounds)
    ]
    pool: _Workers | None = None

    def run(name: str, jobs: list[dict[str, Any]], meanwhile: Iterator[Any] | None = None):
        if pool is not None:
            return pool.map(name, jobs, meanwhile)
        for _ in meanwhile or ():  # one worker: this process, one shard after the other
            pass
        return [globals()[PASSES[name]](job) for job in jobs]

    done = False
    try:
        if workers > 1:
            pool = _Workers(workers, work_root)
        # pass 1: the workers tokenise while the parent drains `while_tokenizing` (the docstore
        # writer), then the parent merges each shard's statistics in shard order
        results = run("tokenize", jobs, while_tokenizing)
        global_id: dict[str, int] = {}
        global_df: list[int] = []
        total_docs = total_tokens = 0
        for job, res in zip(jobs, results, strict=True):
            work = Path(job["work"])
            terms = json.loads((work / "terms.json").read_text("utf-8"))
            shard_df = np.load(work / "df.npy").tolist()
            to_global = np.empty(len(terms), dtype=np.int64)
            for i, (term, df) in enumerate(zip(terms, shard_df, strict=True)):
                g = global_id.get(term)
                if g is None:
                    g = global_id[term] = len(global_df)
                    global_df.append(0)
                global_df[g] += df
                to_global[i] = g
            np.save(work / "to_global.npy", to_global)
            total_docs += res["docs"]
            total_tokens += res["tokens"]
        if total_docs != num_docs:
            raise KailinError(
                f"sharded BM25 read {total_docs} documents but the corpus reports {num_docs}; "
                "the corpus changed during the build, run it again"
            )
        df_path = work_root / "global_df.npy"
        np.save(df_path, np.asarray(global_df, dtype=np.int64))
        # avgdl exactly as bm25s computes it for one index: the float64 mean of the lengths
        avgdl = float(np.float64(total_tokens) / num_docs)
        score_jobs = [
            {
                **job,
                "k1": k1,
                "b": b,
                "method": method,
                "num_docs": num_docs,
                "avgdl": avgdl,
                "global_df": str(df_path),
            }
            for job in jobs
        ]
        scored = run("score", score_jobs)
        nnz = [r["nnz"] for r in scored]
        peaks = [r.get("peak_rss_mib") for r in [*results, *scored]]
        if pool is not None and all(p is not None for p in peaks):
            log.info("sharded BM25: %d shards, %d worker processes, largest worker peak RSS "
                     "%.0f MiB", shards, workers, max(peaks))
        terms = [""] * len(global_id)
        for term, g in global_id.items():
            terms[g] = term
        pq.write_table(
            pa.table({"term": terms, "df": pa.array(global_df, pa.int64())}), out_dir / DF_FILE
        )
        done = True
    finally:
        if pool is not None:
            pool.close(wait=done)
        shutil.rmtree(work_root, ignore_errors=True)
    stats = {
        "documents": num_docs,
        "tokens": total_tokens,
        "avg_doc_tokens": avgdl,
        "vocabulary": len(global_id),
        "shards": [
            {"dir": shard_dir_name(i), "start": start, "rows": rows, "nnz": n}
            for i, ((start, rows), n) in enumerate(zip(bounds, nnz, strict=True))
        ],
    }
    write_json_atomic(out_dir / SHARDS_FILE, stats)
    return {
        "stemmer": stemmer,
        "stopwords": stopwords,
        "k1": k1,
        "b": b,
        "method": method,
        "vocabulary": len(global_id),
        "avg_doc_tokens": avgdl,
        "shards": shards,
        "shard_rows": [rows for _, rows in bounds],
    }


def read_shards(bm25_dir: Path) -> list[dict[str, Any]] | None:
    """The shards recorded in ``bm25_dir/shards.json``; None for a one-index (unsharded) folder."""
    path = bm25_dir / SHARDS_FILE
    if not path.exists():
        return None
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["shards"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable shard list ({exc}); rebuild the index") from exc


if __name__ == "__main__":
    sys.exit(_serve())
