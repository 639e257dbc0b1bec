"""Run a stage in this process, shard by shard, with atomic outputs and completion markers.

Layout of an output directory::

    OUT/part-00000.parquet   one output file per input shard (written atomically)
    OUT/_done/00000.json     marker written after the part: rows in/out, seconds
    OUT/_stage.json          stage name and fingerprint; a different fingerprint restarts

A part without its marker is rewritten on the next run; a marker is only written after its part
was renamed into place, so a run killed at any point resumes with no duplicate and no lost row.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.io import parquet_files, write_json_atomic, write_parquet_atomic
from kailin.pipeline.stage import Stage

log = logging.getLogger(__name__)


def iter_input_shards(src: str | Path | pa.Table, rows_per_shard: int) -> Iterator[pa.Table]:
    """Cut a Parquet file/directory or an in-memory table into deterministic shards."""
    if isinstance(src, pa.Table):
        for start in range(0, max(src.num_rows, 1), rows_per_shard):
            if src.num_rows == 0:
                return
            yield src.slice(start, rows_per_shard)
        return
    pending: list[pa.RecordBatch] = []
    n = 0
    for f in parquet_files(src):
        for b in pq.ParquetFile(f).iter_batches(batch_size=rows_per_shard):
            pending.append(b)
            n += b.num_rows
            while n >= rows_per_shard:
                t = pa.Table.from_batches(pending)
                yield t.slice(0, rows_per_shard).combine_chunks()
                rest = t.slice(rows_per_shard)
                pending = rest.to_batches()
                n = rest.num_rows
    if n:
        yield pa.Table.from_batches(pending).combine_chunks()


def prepare_output(stage: Stage, out: Path) -> None:
    """Create ``out``; if it holds parts of a stage with other settings, clear them first."""
    done_dir = out / "_done"
    fp = stage.fingerprint()
    meta_path = out / "_stage.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fp:
            log.warning("%s: settings changed (fingerprint %s -> %s); recomputing",
                        out, meta.get("fingerprint"), fp)
            for p in list(out.glob("part-*.parquet")) + list(done_dir.glob("*.json")):
                p.unlink()
    done_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(meta_path, {"stage": stage.name, "fingerprint": fp})


class LocalExecutor:
    """Runs a stage over shards of its input in the current process."""

    def __init__(self, rows_per_shard: int = 256, progress: bool = True) -> None:
        self.rows_per_shard = rows_per_shard
        self.progress = progress

    def run(self, stage: Stage, src: str | Path | pa.Table, out_dir: str | Path) -> dict:
        out = Path(out_dir)
        done_dir = out / "_done"
        prepare_output(stage, out)
        shards = list(iter_input_shards(src, self.rows_per_shard))
        stats = {"stage": stage.name, "shards": len(shards), "skipped": 0, "rows_in": 0,
                 "rows_out": 0, "seconds": 0.0}
        bar = _progress(len(shards), stage.name, self.progress)
        for i, shard in enumerate(shards):
            marker = done_dir / f"{i:05d}.json"
            if marker.exists():
                m = json.loads(marker.read_text())
                stats["skipped"] += 1
                stats["rows_in"] += m["rows_in"]
                stats["rows_out"] += m["rows_out"]
                bar.update(1)
                continue
            t0 = time.perf_counter()
            result = stage(shard)
            write_parquet_atomic(result, out / f"part-{i:05d}.parquet")
            dt = time.perf_counter() - t0
            write_json_atomic(marker, {"rows_in": shard.num_rows, "rows_out": result.num_rows,
                                       "seconds": round(dt, 3)})
            stats["rows_in"] += shard.num_rows
            stats["rows_out"] += result.num_rows
            stats["seconds"] += dt
            bar.update(1)
        bar.close()
        # drop parts of a previous, larger input (shard count shrank)
        for p in out.glob("part-*.parquet"):
            if int(p.stem.split("-")[1]) >= len(shards):
                p.unlink()
        return stats


def run_stage(stage: Stage, src: str | Path | pa.Table, out_dir: str | Path,
              rows_per_shard: int = 256) -> dict:
    """Convenience: run ``stage`` locally over ``src`` into ``out_dir``."""
    return LocalExecutor(rows_per_shard=rows_per_shard).run(stage, src, out_dir)


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> _NullBar:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shard", leave=False)


def concat(tables: Iterable[pa.Table]) -> pa.Table:
    ts = list(tables)
    return pa.concat_tables(ts, promote_options="default") if ts else pa.table({})
