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
    executor: str | None = typer.Option(None, "--executor", help="Override executor.kind: "
                                        "local or ray."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Run the whole pipeline; finished stages are skipped, a killed run resumes."""
    from kailin.pipeline.config import load_config
    from kailin.pipeline.run import run_pipeline

    cfg, base = load_config(config)
    if executor:
        cfg.executor.kind = executor  # type: ignore[assignment]
    manifest = run_pipeline(cfg, base, run_dir=out.resolve() if out else None,
                            only=list(only) or None, progress=not no_progress)
    run_dir = Path(manifest["run_dir"])
    typer.echo(f"run finished in {manifest['seconds']:.0f} s: {run_dir}")
    for name in ("pubmedqa.json", "generator.json"):
        p = run_dir / "reports" / name
        if p.exists():
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List each stage of a run: state, counts and timings."""
    from rich.console import Console
    from rich.table import Table

    from kailin.pipeline.run import run_status

    rows = run_status(run_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=str(run_dir))
    for col in ("stage", "status", "seconds", "progress", "counts"):
        table.add_column(col)
    for r in rows:
        prog = (f"{r['shards_done']} shards, {r['rows_written']} rows" if "shards_done" in r
                else "")
        counts = ", ".join(f"{k}={v}" for k, v in (r.get("counts") or {}).items()
                           if not isinstance(v, dict | list))
        table.add_row(r["stage"], r.get("status", "?"), f"{r.get('seconds', '')}", prog,
                      counts[:120] or r.get("error", "")[:120])
    Console(width=max(140, Console().width)).print(table)
