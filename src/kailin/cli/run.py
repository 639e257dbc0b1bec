"""``kailin run CONFIG.yaml`` and ``kailin status RUN_DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def run(
    config: Path = typer.Argument(..., help="Pipeline config (YAML); see configs/demo.yaml."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: the config's "
                                    "run_dir, relative to the config file)."),
    only: list[str] = typer.Option([], "--only", help="Run only these stages (repeatable); "
                                   "stages they need must be up to date."),
    from_stage: str | None = typer.Option(None, "--from", help="Recompute this stage and every "
                                          "stage after it, even if up to date."),
    force: list[str] = typer.Option([], "--force", help="Recompute this stage (repeatable), "
                                    "even if up to date; the stages that read it follow."),
    executor: str | None = typer.Option(None, "--executor", help="Override executor.kind: "
                                        "local or ray."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key, KEY=VALUE "
                                        "(repeatable; dotted keys, YAML values): --set "
                                        "steering.rounds=1 --set index.kind=dense."),
    check: bool = typer.Option(False, "--check", help="Only check the config (every path, "
                               "model spec and input file of every enabled stage) and exit."),
) -> None:
    """Run the pipeline: stages whose key (settings, inputs, code) is unchanged are skipped, the
    others re-run, with everything downstream; a killed run resumes. One run per run folder.
    The whole config is checked first, and every problem reported at once."""
    from kailin.pipeline.check import require_valid
    from kailin.pipeline.config import load_config
    from kailin.pipeline.stages import pipeline_stages, run_config
    from kailin.report import stage_is_off

    if no_progress:  # also the bars of what the stages call (trainers, teachers)
        from kailin import progress

        progress.set_enabled(False)
    cfg, base = load_config(config, overrides)
    if executor:
        cfg.executor.kind = executor  # type: ignore[assignment]
    require_valid(cfg, base, str(config))
    if check:
        steps = [s.name for s in pipeline_stages(cfg) if s.enabled(cfg)]
        typer.echo(f"{config}: no problem found; {len(steps)} stages would run as needed: "
                   + ", ".join(steps))
        return
    manifest = run_config(cfg, base, run_dir=out.resolve() if out else None,
                          only=list(only) or None, progress=not no_progress,
                          force=list(force) or None, from_stage=from_stage)
    run_dir = Path(manifest["run_dir"])
    ran = manifest.get("ran", [])
    typer.echo(f"run finished in {manifest['seconds']:.1f} s: {run_dir} (ran "
               + (", ".join(ran) if ran else "nothing: all up to date") + ")")
    for name, stage in (("pubmedqa.json", "pubmedqa"), ("generator.json", "generator_eval")):
        p = run_dir / "reports" / name
        if p.exists() and not stage_is_off(manifest, stage):
            rep = json.loads(p.read_text())
            typer.echo(f"  reports/{name}: " + json.dumps(_headline(rep))[:300])
    if (run_dir / "export").is_dir():
        typer.echo(f"  dataset: {run_dir / 'export'}")


def _headline(rep: dict) -> dict:
    keys = ("n", "accuracy", "macro_f1", "before_mean", "after_mean", "delta", "ci_low",
            "ci_high")
    out = {k: rep[k] for k in keys if k in rep}
    for k, v in rep.items():
        if isinstance(v, dict) and ("accuracy" in v or "after" in v):
            out[k] = {kk: vv for kk, vv in v.items() if not isinstance(vv, dict | list)}
    return out


def status(
    run_dir: Path = typer.Argument(..., help="A run folder (kailin run --out)."),
    config: Path | None = typer.Option(None, "--config", help="Compare with this config "
                                       "(default: the config the run was made with)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    overrides: list[str] = typer.Option([], "--set", help="With --config: override a key, "
                                        "KEY=VALUE (repeatable), as kailin run --set."),
) -> None:
    """Each stage of a run: done, stale (which input or setting changed), missing, running or
    failed, with counts and timings."""
    from rich.console import Console
    from rich.table import Table

    from kailin.engine.run import run_status
    from kailin.pipeline.config import RunConfig, load_config
    from kailin.pipeline.stages import pipeline_stages

    manifest = run_dir / "manifest.json"
    if config is not None:
        from kailin.pipeline.check import require_valid

        cfg, base = load_config(config, overrides)
        require_valid(cfg, base, str(config))
    elif manifest.is_file():
        m = json.loads(manifest.read_text())
        cfg, base = RunConfig.model_validate(m["config"]), Path(m.get("base_dir") or run_dir)
    else:
        cfg = base = None
    rows = run_status(run_dir, cfg, base, pipeline_stages(cfg) if cfg is not None else None)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=str(run_dir))
    for col in ("stage", "status", "seconds", "progress"):
        table.add_column(col, no_wrap=True)
    table.add_column("why / counts", overflow="fold")  # wrapped at words, never cut
    for r in rows:
        prog = (f"{r['shards_done']} shards, {r['rows_written']} rows" if "shards_done" in r
                else "")
        counts = ", ".join(f"{k}={_num(v)}" for k, v in (r.get("counts") or {}).items()
                           if not isinstance(v, dict | list))
        reasons = list(r.get("reasons") or [])
        if r.get("error"):  # the stored error of a failed run, not just "last run failed"
            reasons = [f"{x}: {r['error']}" if x.startswith("last run") else x
                       for x in reasons] or [f"error: {r['error']}"]
        why = "; ".join(reasons)
        if r.get("status") == "done":
            why = counts
        table.add_row(r["stage"], r.get("status", "?"), _num(r.get("seconds", "")), prog,
                      _clip(why or counts))
    Console(width=max(140, Console().width)).print(table)


def _num(v: object) -> str:
    """A count or a timing for the table: floats with 4 significant digits (no 17-digit
    noise), the rest as is."""
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def _clip(text: str, limit: int = 600) -> str:
    """``text`` whole, or cut at the last word boundary before ``limit`` characters with an
    ellipsis (`kailin status --json` has everything)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + " …"
