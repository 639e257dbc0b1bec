"""Staging, the first half of an ingest: each input file is parsed (in worker processes when
``workers`` > 1) into a staging Parquet file of its records and deletions; the commit
(:mod:`kailin.corpus.merge`) then merges the staged files into the corpus shards."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue as _queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.corpus import layout as _layout
from kailin.corpus.pubmed_xml import ParseStats
from kailin.corpus.sources import (
    detect_format,
    iter_source,
)
from kailin.errors import KailinError
from kailin.io import write_json_atomic

log = logging.getLogger("kailin.corpus.store")

_PROGRESS: Any = None  # a multiprocessing queue in pool workers




def _pool_init(progress_q: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress_q


@dataclass
class _Task:
    path: str
    staging: str
    committed: frozenset[str]
    exclusions: frozenset[int]
    resolver: Any
    salvage: bool = False


def _report(n: int, local_cb: Any) -> None:
    if local_cb is not None:
        local_cb(n)
    elif _PROGRESS is not None:
        _PROGRESS.put(n)


def _stage_file(task: _Task, local_cb: Any = None) -> dict:
    """Parse one source file into ``staging/<sha>.parquet`` + ``<sha>.json``; returns the meta."""
    path = Path(task.path)
    staging = Path(task.staging)
    sha = _layout.sha256_file(path)
    base = {
        "path": str(path.resolve()),
        "name": path.name,
        "sha256": sha,
        "size": path.stat().st_size,
        "format": detect_format(path),
    }
    if sha in task.committed:
        return {**base, "status": "unchanged"}
    meta_path = staging / f"{sha}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["reused_staging"] = True
        _report(meta.get("records", 0), local_cb)
        return meta
    staging.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = ParseStats()
    deletes: list[int] = []
    excluded = 0
    tmp = staging / f".{sha}.parquet.{os.getpid()}.tmp"
    writer: pq.ParquetWriter | None = None
    rows: list[dict] = []
    seq = 0
    pending_report = 0

    def flush() -> None:
        nonlocal writer, rows
        if not rows:
            return
        if writer is None:
            writer = pq.ParquetWriter(tmp, _layout.STAGE_SCHEMA, compression="zstd")
        writer.write_table(pa.Table.from_pylist(rows, schema=_layout.STAGE_SCHEMA))
        rows = []

    try:
        for kind, item in iter_source(path, task.resolver, stats, salvage=task.salvage):
            if kind == "record":
                seq += 1
                if item["pmid"] in task.exclusions:
                    excluded += 1
                    continue
                item.pop("_line", None)
                item["_seq"] = seq
                rows.append(item)
                pending_report += 1
                if len(rows) >= _layout.BATCH:
                    flush()
                    _report(pending_report, local_cb)
                    pending_report = 0
            elif kind == "delete":  # (pmid, version)
                seq += 1
                deletes.append(list(item) if isinstance(item, tuple) else [int(item), 1])
            elif kind == "restart":  # ill-formed XML: start over in salvage mode
                if writer is not None:
                    writer.close()
                    writer = None
                tmp.unlink(missing_ok=True)
                rows, deletes, excluded, seq = [], [], 0, 0
        flush()
        if writer is None:
            writer = pq.ParquetWriter(tmp, _layout.STAGE_SCHEMA, compression="zstd")
        writer.close()
        writer = None
        _report(pending_report, local_cb)
        os.replace(tmp, staging / f"{sha}.parquet")
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    meta = {
        **base,
        "status": "staged",
        "records": stats.records,
        "kept": stats.records - excluded,
        "deletions_requested": stats.deleted,
        "malformed": stats.malformed,
        "malformed_positions": stats.malformed_positions,
        "excluded": excluded,
        "unresolved_mesh": stats.unresolved_mesh,
        "unresolved_mesh_top": dict(
            sorted(stats.unresolved_names.items(), key=lambda kv: -kv[1])[:20]
        ),
        "books_skipped": stats.books_skipped,
        **(
            {
                "salvaged": stats.salvaged,
                "lost_from_byte": stats.lost_from_byte,
                "salvage_note": f"not UTF-8 from byte {stats.lost_from_byte}: the "
                f"{stats.salvaged} records before it were kept, the rest of the file was lost",
            }
            if stats.lost_from_byte is not None
            else {}
        ),
        "deletes": deletes,
        "parse_seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(meta_path, meta)
    return meta


def _stage_file_safe(task: _Task, local_cb: Any = None) -> dict:
    try:
        return _stage_file(task, local_cb)
    except KailinError as exc:
        return {
            "path": str(Path(task.path).resolve()),
            "name": Path(task.path).name,
            "status": "failed",
            "error": str(exc),
        }


def _run_staging(tasks: list[_Task], workers: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    from kailin.progress import enabled as progress_enabled

    bar = tqdm(
        total=None,
        unit=" rec",
        unit_scale=True,
        disable=not progress_enabled(progress),
        desc="ingest",
        dynamic_ncols=True,
    )
    results: list[dict | None] = [None] * len(tasks)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                results[i] = _stage_file_safe(t, bar.update)
                bar.set_postfix(files=f"{i + 1}/{len(tasks)}")
        else:
            ctx = mp.get_context("spawn") if os.name == "nt" else mp.get_context()
            q = ctx.Queue()
            with ProcessPoolExecutor(
                max_workers=min(workers, len(tasks)),
                mp_context=ctx,
                initializer=_pool_init,
                initargs=(q,),
            ) as pool:
                futs = {pool.submit(_stage_file_safe, t): i for i, t in enumerate(tasks)}
                pending = set(futs)
                done_n = 0
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    with contextlib.suppress(_queue.Empty):
                        while True:
                            bar.update(q.get_nowait())
                    for f in done:
                        results[futs[f]] = f.result()
                        done_n += 1
                        bar.set_postfix(files=f"{done_n}/{len(tasks)}")
                with contextlib.suppress(_queue.Empty):
                    while True:
                        bar.update(q.get(timeout=0.05))
    finally:
        bar.close()
    return [r for r in results if r is not None]
