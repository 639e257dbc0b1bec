"""Run a stage on Ray Data: the same shards, part files and markers as the local executor.

Pending shards become the blocks of a Ray dataset (one block per shard), and ``map_batches`` with
``batch_size=None`` hands each whole block to the stage, so a shard is processed exactly as the
local executor processes it and the outputs are identical. Stages that hold a model
(``stage.stateful``) run in an actor pool, where :meth:`Stage.setup` runs once per actor; GPU
stages ask Ray for ``num_gpus``. Each worker writes its part file and marker atomically to the
output folder (shared storage on a cluster), so a killed run resumes shard by shard.

Each shard reports where it ran: the returned stats hold ``nodes`` (Ray node id -> shards) and
``workers`` (one entry per worker process: its node, the GPU ids Ray assigned, the
``CUDA_VISIBLE_DEVICES`` Ray set and the torch device kailin gave the stage, see
:func:`assigned_device`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kailin.engine.executors.local import (
    iter_input_shards,
    prepare_output,
    remove_extra_shards,
    shard_key,
    valid_marker,
    write_shard,
)
from kailin.engine.stage import Stage
from kailin.errors import KailinError, require

log = logging.getLogger(__name__)
SHARD_COL = "__kailin_shard"


def assigned_device(gpu_ids: Sequence[int | str], visible: str | None) -> str | None:
    """The torch device of the first GPU Ray assigned to a worker, or None without one.

    torch numbers the devices in ``CUDA_VISIBLE_DEVICES`` from 0, so the device is the position
    of the assigned id in that list: Ray normally sets the list to the worker's own GPUs (its
    first GPU is then ``cuda:0``); with ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` the list
    (or, unset, the machine's GPUs) is left whole and the id is the device's index in it.
    """
    if not gpu_ids:
        return None
    first = str(gpu_ids[0])
    if visible is None:
        return f"cuda:{first}" if first.isdigit() else "cuda:0"
    order = [v.strip() for v in visible.split(",") if v.strip()]
    if first not in order:
        raise KailinError(f"Ray assigned GPU {first}, which CUDA_VISIBLE_DEVICES={visible!r} "
                          "does not list: unset CUDA_VISIBLE_DEVICES for the Ray workers")
    return f"cuda:{order.index(first)}"


def worker_placement() -> dict[str, Any]:
    """Where this Ray worker runs: node id, pid, Ray's GPU ids, ``CUDA_VISIBLE_DEVICES`` and the
    device :func:`assigned_device` derives from them."""
    import ray

    gpu_ids = list(ray.get_gpu_ids())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "gpu_ids": [str(g) for g in gpu_ids], "cuda_visible_devices": visible,
            "device": assigned_device(gpu_ids, visible)}


class _ShardWorker:
    """Callable for ``map_batches``: runs the stage on one shard and writes its outputs."""

    def __init__(self, stage: Stage, out_dir: str, keys: dict[int, str]) -> None:
        self.stage = stage
        self.out = Path(out_dir)
        self.keys = keys
        self.placement: dict[str, Any] | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.placement is None:  # once per actor (per task for a stateless stage)
            self.placement = worker_placement()
            if self.placement["device"] is not None:
                self.stage.place(self.placement["device"])  # before setup() loads a model
        ids = batch.column(SHARD_COL)
        shard = int(ids[0].as_py())
        if pc.count_distinct(ids).as_py() != 1:  # a part must be one shard's rows, no more
            raise KailinError(f"stage {self.stage.name}: Ray handed a batch of shards "
                              f"{sorted(set(ids.to_pylist()))} to one call")
        data = batch.drop_columns([SHARD_COL])
        m = write_shard(self.stage, data, self.out, shard, self.keys[shard])
        return pa.table({"shard": [shard], "rows_in": [m["rows_in"]],
                         "rows_out": [m["rows_out"]], "seconds": [float(m["seconds"])],
                         "placement": [json.dumps(self.placement)]})


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
        stats: dict[str, Any] = {"stage": stage.name, "shards": 0, "skipped": 0, "rows_in": 0,
                                 "rows_out": 0, "seconds": 0.0, "executor": "ray",
                                 "nodes": {}, "workers": {}}
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
                # Ray Data refuses batch_size=None with GPUs; every shard but the input's last
                # holds exactly rows_per_shard rows, so a batch is still one whole shard
                kwargs["batch_size"] = self.rows_per_shard
                n_gpu = ray.available_resources().get("GPU", 0)
                conc = max(1, min(conc, int(n_gpu // gpus) or 1))
            if stage.stateful:
                # one model copy per actor: SPREAD puts the actors on different nodes (their
                # memory and GPUs) rather than packing them onto the first node with room; a
                # shard is a large unit of work, so an actor takes the next one only when it is
                # free (none waits queued behind a busy actor while another is idle or starting).
                # scheduling_strategy is a remote arg Ray 2.60 deprecates, with no named
                # replacement; without it the pool's actors landed on one node (the two-node
                # test failed in a full run), so it stays until Ray offers one
                compute = ray.data.ActorPoolStrategy(size=conc, max_tasks_in_flight_per_actor=1)
                kwargs.update(fn_constructor_args=(stage, str(out), keys), compute=compute,
                              scheduling_strategy="SPREAD")
                ds = ds.map_batches(_ShardWorker, **kwargs)
            else:
                worker = _ShardWorker(stage, str(out), keys)
                ds = ds.map_batches(worker, **kwargs)
            done = 0
            try:
                for row in ds.iter_rows():
                    stats["rows_in"] += int(row["rows_in"])
                    stats["rows_out"] += int(row["rows_out"])
                    stats["seconds"] += float(row["seconds"])
                    _count_placement(stats, json.loads(row["placement"]))
                    done += 1
            except ray.exceptions.RayError as exc:
                if isinstance(exc, (ray.exceptions.RayTaskError,
                                    ray.exceptions.UserCodeException)):
                    own = _kailin_cause(exc)  # the stage raised it in a worker: say that
                    if own is not None:
                        raise own from exc
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise KailinError(
                    f"stage {stage.name}: the Ray run stopped after {done} of {len(pending)} "
                    f"pending shards ({type(exc).__name__}: {first}); the shards written to "
                    f"{out} are kept: run again to resume (after fixing the cause, if a worker "
                    "could not start)") from exc
        stats["removed"] = remove_extra_shards(out, stats["shards"])
        stats["computed"] = stats["shards"] - stats["skipped"]
        return stats


def _count_placement(stats: dict[str, Any], place: dict[str, Any]) -> None:
    """Add one shard's placement to ``stats["nodes"]`` and ``stats["workers"]``."""
    node = place["node"]
    stats["nodes"][node] = stats["nodes"].get(node, 0) + 1
    w = stats["workers"].setdefault(f"{node}:{place['pid']}", {
        "node": node, "gpu_ids": place["gpu_ids"],
        "cuda_visible_devices": place["cuda_visible_devices"], "device": place["device"],
        "shards": 0})
    w["shards"] += 1


def _kailin_cause(exc: BaseException) -> KailinError | None:
    """The KailinError a stage raised inside a Ray worker, found in the exception's chain."""
    seen: set[int] = set()
    found = None
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the deepest: the one the stage raised
        if isinstance(e, KailinError):
            found = e
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return found
