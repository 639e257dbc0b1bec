"""Run a stage in this process, shard by shard, with atomic outputs and completion markers.

Layout of an output directory::

    OUT/part-00000.parquet   one output file per input shard (written atomically)
    OUT/_done/00000.json     marker written after the part: its key, rows in/out, seconds
    OUT/_stage.json          stage name, fingerprint and run key (for people; never decides)

Each shard's marker is stamped with the shard's key: a hash of the run key the caller passes
(settings and the keys of side inputs), the stage's fingerprint and the *content* of the input
shard. A marker counts only when its key is the key the shard would get now, so a shard whose
input rows or settings changed is recomputed and an unchanged one is kept. A part without a
valid marker is rewritten; a marker is only written after its part was renamed into place, so a
run killed at any point resumes with no duplicate and no lost row. Parts and markers beyond the
last shard (the input shrank) are removed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.engine.keys import digest, table_digest
from kailin.engine.stage import Stage
from kailin.io import parquet_files, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)


def iter_input_shards(src: str | Path | pa.Table, rows_per_shard: int,
                      columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Cut a Parquet file/directory or an in-memory table into deterministic shards (of
    ``columns`` only, when given). A file is read batch by batch: memory stays bounded by the
    shard size, whatever the input's."""
    if isinstance(src, pa.Table):
        if columns is not None:
            src = src.select(columns)
        for start in range(0, max(src.num_rows, 1), rows_per_shard):
            if src.num_rows == 0:
                return
            yield src.slice(start, rows_per_shard)
        return
    pending: list[pa.RecordBatch] = []
    n = 0
    for f in parquet_files(src):
        for b in pq.ParquetFile(f).iter_batches(batch_size=rows_per_shard, columns=columns):
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


def prepare_output(stage: Stage, out: Path, key: str = "") -> None:
    """Create ``out`` and its ``_done/``; note which stage and key write there."""
    (out / "_done").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "_stage.json", {"stage": stage.name,
                                            "fingerprint": stage.fingerprint(), "key": key})


def shard_key(stage: Stage, key: str, shard: pa.Table) -> str:
    """The key of one output shard: run key, stage fingerprint and the input rows."""
    return digest({"run": key, "stage": stage.fingerprint(), "input": table_digest(shard)})


def valid_marker(marker: Path, expected: str) -> dict | None:
    """The marker's content when it exists, its part exists and its key is ``expected``."""
    if not marker.is_file():
        return None
    try:
        m = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    part = marker.parent.parent / f"part-{marker.stem}.parquet"
    if m.get("key") != expected or not part.is_file():
        return None
    return m


def write_shard(stage: Stage, shard: pa.Table, out: Path, i: int, expected: str) -> dict:
    """Run the stage on one shard; write its part, then its marker."""
    t0 = time.perf_counter()
    result = stage(shard)
    write_parquet_atomic(result, out / f"part-{i:05d}.parquet")
    dt = time.perf_counter() - t0
    m = {"key": expected, "rows_in": shard.num_rows, "rows_out": result.num_rows,
         "seconds": round(dt, 3)}
    write_json_atomic(out / "_done" / f"{i:05d}.json", m)
    return m


def _write_shard_moving(stage: Stage, shard: pa.Table, out: Path, i: int, expected: str,
                        bar: Any) -> dict:
    """:func:`write_shard` with ``bar`` moved by the rows the stage reports done
    (:meth:`Stage.advance`), and to the shard's end when it finishes."""
    done = 0

    def moved(rows: int) -> None:
        nonlocal done
        rows = max(0, min(rows, shard.num_rows - done))
        done += rows
        bar.update(rows)

    stage.on_rows = moved
    try:
        m = write_shard(stage, shard, out, i, expected)
    finally:
        stage.on_rows = None
    bar.update(shard.num_rows - done)
    return m


def remove_extra_shards(out: Path, n_shards: int) -> int:
    """Delete parts *and* markers of shards ``>= n_shards`` (left by a larger input)."""
    removed = 0
    for p in list(out.glob("part-*.parquet")) + list((out / "_done").glob("*.json")):
        stem = p.stem.split("-")[-1]
        if stem.isdigit() and int(stem) >= n_shards:
            p.unlink()
            removed += 1
    return removed


#: what kailin writes into an output folder before its first shard
BOOKKEEPING = ("_stage.json", "_input.json")


def discard_unfinished(out: str | Path) -> bool:
    """After a failed run: when ``out`` holds no finished shard (no marker in ``_done/``),
    remove the bookkeeping written before the failure (``_done/``, ``_stage.json``,
    ``_input.json``) and ``out`` itself when that leaves it empty, so nothing there looks
    like a finished (empty) result. Finished shards of an earlier run, and files kailin did not
    write, are kept. True when ``out`` was removed."""
    out = Path(out)
    done = out / "_done"
    if not out.is_dir() or (done.is_dir() and any(done.iterdir())):
        return False
    if any(out.glob("part-*.parquet")):
        return False
    for name in BOOKKEEPING:
        (out / name).unlink(missing_ok=True)
    if done.is_dir():
        done.rmdir()
    if not any(out.iterdir()):
        out.rmdir()
        return True
    return False


class LocalExecutor:
    """Runs a stage over shards of its input in the current process."""

    def __init__(self, rows_per_shard: int = 256, progress: bool = True) -> None:
        self.rows_per_shard = rows_per_shard
        self.progress = progress

    def run(self, stage: Stage, src: str | Path | pa.Table, out_dir: str | Path,
            key: str = "", columns: list[str] | None = None) -> dict:
        """Run ``stage`` over the shards of ``src`` (of its ``columns`` when given) into
        ``out_dir``; ``key`` stands for everything besides the input rows and the stage's own
        settings that the output depends on (the pipeline passes the keys of side inputs such as
        an index or a model)."""
        out = Path(out_dir)
        done_dir = out / "_done"
        prepare_output(stage, out, key)
        stats = {"stage": stage.name, "shards": 0, "skipped": 0, "rows_in": 0,
                 "rows_out": 0, "seconds": 0.0}
        bar = _progress(count_rows(src), stage.name, self.progress)
        try:
            for i, shard in enumerate(iter_input_shards(src, self.rows_per_shard, columns)):
                stats["shards"] += 1
                expected = shard_key(stage, key, shard)
                m = valid_marker(done_dir / f"{i:05d}.json", expected)
                if m is not None:
                    stats["skipped"] += 1
                    bar.update(shard.num_rows)
                else:
                    m = _write_shard_moving(stage, shard, out, i, expected, bar)
                    stats["seconds"] += m["seconds"]
                stats["rows_in"] += m["rows_in"]
                stats["rows_out"] += m["rows_out"]
        except BaseException:
            discard_unfinished(out)
            raise
        finally:
            bar.close()
        stats["removed"] = remove_extra_shards(out, stats["shards"])
        stats["computed"] = stats["shards"] - stats["skipped"]
        return stats


def run_stage(stage: Stage, src: str | Path | pa.Table, out_dir: str | Path,
              rows_per_shard: int = 256) -> dict:
    """Convenience: run ``stage`` locally over ``src`` into ``out_dir``."""
    return LocalExecutor(rows_per_shard=rows_per_shard).run(stage, src, out_dir)


def count_rows(src: str | Path | pa.Table) -> int:
    """Rows of a table or a Parquet file/directory (from the footers: no data is read)."""
    if isinstance(src, pa.Table):
        return src.num_rows
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(src))


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    """A bar over the input's records (a total and an ETA), hidden by ``kailin -q``."""
    from kailin.progress import bar

    return bar(total=total, desc=desc, unit="rec", enabled_=enabled)


def concat(tables: Iterable[pa.Table]) -> pa.Table:
    ts = list(tables)
    return pa.concat_tables(ts, promote_options="default") if ts else pa.table({})
