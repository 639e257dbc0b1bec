"""``kailin report RUN_DIR``: one self-contained HTML page of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.cli.runconf import config_option, need, run_files


def report(
    run_dir: Path | None = typer.Argument(None, help="A run folder written by `kailin run` "
                                          "(default with --config: the config's run_dir)."),
    out: Path | None = typer.Option(None, "--out", help="HTML file (default RUN_DIR/report.html)."),
    pairs: int = typer.Option(20, "--pairs", help="Random preference pairs to show."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pair sample."),
    config: Path | None = config_option("RUN_DIR"),
) -> None:
    """The headline (what the run produced, is it any good) to the terminal, and the HTML
    report: headline, dataset, answers, questions, pairs, steering, signal, PubMedQA, stages."""
    from kailin.errors import InputError
    from kailin.report.headline import headline, headline_text
    from kailin.report.html import build_report
    from kailin.report.run_folder import RunFolder

    run_dir = need(run_dir, run_files(config), "run_dir", "RUN_DIR")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    run = RunFolder(run_dir)
    items = headline(run)
    path = build_report(run_dir, out, n_pairs=pairs, seed=seed, items=items)
    typer.echo(headline_text(run, items))
    typer.echo(f"report: {path}")


def results(
    steering_json: Path | None = typer.Argument(
        None, help="RUN_DIR/reports/steering.json (or the committed "
        "docs/results/steering.json), or RUN_DIR/reports/downstream.json (the downstream "
        "experiment's page, told by its `models` key); default with --config: the run's "
        "steering.json."),
    out: Path | None = typer.Option(
        None, "--out",
        help="Markdown page; its SVG plots go to results/ beside it [default: results.md next "
        "to STEERING_JSON (downstream.md for a downstream JSON); the committed page is --out "
        "docs/results.md]."),
    config: Path | None = config_option("STEERING_JSON"),
) -> None:
    """The steering experiment's results page (tables and plots), generated from its JSON.

    Written next to its input unless --out says otherwise, so a run from the repository root
    never overwrites the committed docs/results.md by accident."""
    import json

    from kailin.report.downstream import is_downstream_report
    from kailin.report.results import write_results

    steering_json = need(steering_json, run_files(config), "steering", "STEERING_JSON")
    name = "results.md"
    if out is None and steering_json.suffix == ".json" and steering_json.is_file():
        try:
            if is_downstream_report(json.loads(steering_json.read_text(encoding="utf-8"))):
                name = "downstream.md"
        except ValueError:
            pass  # write_results says what is wrong with it
    typer.echo(str(write_results(steering_json, out or steering_json.parent / name)))
