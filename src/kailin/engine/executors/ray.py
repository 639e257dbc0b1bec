"""Run a stage on Ray Data: the same shards, part files and markers as the local executor.

Pending shards become the blocks of a Ray dataset (one block per shard), and ``map_batches`` with
``batch_size=None`` hands each whole block to the stage, so a shard is processed exactly as the
local executor processes it and the outputs are identical. Stages that hold a model
(``stage.stateful``) run in an actor pool, where :meth:`Stage.setup` runs once per actor; GPU
stages ask Ray for ``num_gpus``. Each worker writes its part file and marker atomically to the
output folder (shared storage on a cluster), so a killed run resumes shard by shard.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.engine.executors.local import (
    iter_input_shards,
    prepare_output,
    remove_extra_shards,
    shard_key,
    valid_marker,
    write_shard,
)
from kailin.engine.stage import Stage
from kailin.errors import require

log = logging.getLogger(__name__)
SHARD_COL = "__kailin_shard"


class _ShardWorker:
    """Callable for ``map_batches``: runs the stage on one shard and writes its outputs."""

    def __init__(self, stage: Stage, out_dir: str, keys: dict[int, str]) -> None:
        self.stage = stage
        self.out = Path(out_dir)
        self.keys = keys

    def __call__(self, batch: pa.Table) -> pa.Table:
        shard = int(batch.column(SHARD_COL)[0].as_py())
        data = batch.drop_columns([SHARD_COL])
        m = write_shard(self.stage, data, self.out, shard, self.keys[shard])
        return pa.table({"shard": [shard], "rows_in": [m["rows_in"]],
                         "rows_out": [m["rows_out"]], "seconds": [float(m["seconds"])]})


class RayExecutor:
    """Runs a stage over shards of its input on a Ray cluster (or a local Ray instance)."""

    def __init__(self, rows_per_shard: int = 256, num_cpus: int | None = None,
                 concurrency: int | None = None, num_gpus_per_worker: float = 0.0,
                 address: str | None = None, progress: bool = True,
                 runtime_env: dict | None = None) -> None:
        require("ray", "distributed")
        self.rows_per_shard = rows_per_shard
        self.num_cpus = num_cpus
        self.concurrency = concurrency
        self.num_gpus_per_worker = num_gpus_per_worker
        self.address = address
        self.progress = progress
        self.runtime_env = runtime_env

    def _init(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                      "include_dashboard": False}
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            if self.address:
                kwargs["address"] = self.address
            elif self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(**kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = self.progress
        return ray

    def gpus_for(self, stage: Stage) -> float:
        """GPUs each worker of ``stage`` asks Ray for. Ray hides every GPU from a worker that
        asked for none (``CUDA_VISIBLE_DEVICES=""``), so a model stage whose device is "auto"
        would silently run on the CPU: with ``num_gpus_per_worker`` set, every stage that holds a
        model asks, and its "auto"/"cuda" device is then the GPU Ray assigned (``cuda:0`` inside
        the worker)."""
        if self.num_gpus_per_worker and (stage.uses_gpu or stage.stateful):
            return self.num_gpus_per_worker
        return 0.0

    def run(self, stage: Stage, src: str | Path | pa.Table, out_dir: str | Path,
            key: str = "", columns: list[str] | None = None) -> dict:
        """As :meth:`LocalExecutor.run <kailin.engine.executors.local.LocalExecutor.run>`:
        the same shards, keys, parts and markers."""
        out = Path(out_dir)
        prepare_output(stage, out, key)
        done_dir = out / "_done"
        stats = {"stage": stage.name, "shards": 0, "skipped": 0, "rows_in": 0,
                 "rows_out": 0, "seconds": 0.0, "executor": "ray"}
        # pending shards go into Ray's object store one at a time (spilled to disk when it is
        # full): the driver keeps references, never the whole input
        pending: list[Any] = []
        keys: dict[int, str] = {}
        ray = None
        for i, shard in enumerate(iter_input_shards(src, self.rows_per_shard, columns)):
            stats["shards"] += 1
            expected = shard_key(stage, key, shard)
            m = valid_marker(done_dir / f"{i:05d}.json", expected)
            if m is not None:
                stats["skipped"] += 1
                stats["rows_in"] += m["rows_in"]
                stats["rows_out"] += m["rows_out"]
            elif shard.num_rows > 0:
                keys[i] = expected
                ray = ray or self._init()
                pending.append(ray.put(shard.append_column(
                    SHARD_COL, pa.array([i] * shard.num_rows, pa.int64()))))
        if pending:
            ds = ray.data.from_arrow_refs(pending)
            conc = self.concurrency or max(1, int(ray.available_resources().get("CPU", 1)))
            conc = min(conc, len(pending))  # no idle actors for a handful of shards
            kwargs: dict[str, Any] = {"batch_size": None, "batch_format": "pyarrow",
                                      "zero_copy_batch": True}
            gpus = self.gpus_for(stage)
            if gpus:
                kwargs["num_gpus"] = gpus
                n_gpu = ray.available_resources().get("GPU", 0)
                conc = max(1, min(conc, int(n_gpu // gpus) or 1))
            if stage.stateful:
                kwargs.update(fn_constructor_args=(stage, str(out), keys), concurrency=conc)
                ds = ds.map_batches(_ShardWorker, **kwargs)
            else:
                worker = _ShardWorker(stage, str(out), keys)
                ds = ds.map_batches(worker, **kwargs)
            for row in ds.iter_rows():
                stats["rows_in"] += int(row["rows_in"])
                stats["rows_out"] += int(row["rows_out"])
                stats["seconds"] += float(row["seconds"])
        stats["removed"] = remove_extra_shards(out, stats["shards"])
        stats["computed"] = stats["shards"] - stats["skipped"]
        return stats
