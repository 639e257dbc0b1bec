"""``kailin evaluate generator``: mean MeSH score before vs after DPO, paired bootstrap CI.

Registers the ``generator`` command on the ``evaluate`` app of :mod:`kailin.cli.evaluate`
(importing this module is the registration).
"""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.align.generator_eval import GeneratorEvalConfig
from kailin.cli.derive import settings_command
from kailin.cli.evaluate import app
from kailin.errors import InputError


@app.command("generator")
@settings_command(GeneratorEvalConfig, param="cfg", short={"k": "-k"})
def generator(
    before: str | None = typer.Option(None, "--before", help="Generator before DPO: 'smollm2', "
                                      "a checkpoint, a `kailin train` output, or a hub id."),
    after: str | None = typer.Option(None, "--after", help="Generator after DPO (same forms)."),
    before_scores: Path | None = typer.Option(None, "--before-scores", help="Instead of "
                                              "generating: a `kailin score` output (before)."),
    after_scores: Path | None = typer.Option(None, "--after-scores", help="`kailin score` "
                                             "output (after), paired with --before-scores by PMID."),
    before_generator: str | None = typer.Option(None, "--before-generator", help="Generator "
                                                "name to take from --before-scores."),
    after_generator: str | None = typer.Option(None, "--after-generator", help="Generator name "
                                               "to take from --after-scores."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus with the held-out "
                                       "abstracts (generating mode)."),
    index: Path | None = typer.Option(None, "--index", help="Retrieval index (generating mode)."),
    mesh: Path | None = typer.Option(None, "--mesh", help="MeSH build (default: packaged)."),
    exclude: Path | None = typer.Option(None, "--exclude", help="Parquet whose PMIDs are not "
                                        "held out (e.g. the preference pairs DPO used)."),
    work: Path | None = typer.Option(None, "--work", help="Where generated questions and scores "
                                     "are kept (default: OUT of --json's folder or ./)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
    cfg: GeneratorEvalConfig = None,  # type: ignore[assignment]  # derived: one per field
) -> None:
    """Mean MeSH score of a generator's questions on held-out abstracts, before vs after DPO,
    with a paired bootstrap confidence interval of the difference."""
    from kailin.align.generator_eval import (
        compare_score_tables,
        evaluate_generators,
        format_result_table,
        json_result,
    )
    from kailin.io import write_json_atomic

    if before_scores or after_scores:
        if not (before_scores and after_scores):
            raise InputError("give both --before-scores and --after-scores")
        res = compare_score_tables(before_scores, after_scores, before_generator,
                                   after_generator, n_boot=cfg.n_boot, seed=cfg.seed)
    else:
        if not (before and after and corpus and index):
            raise InputError("give --before, --after, --corpus and --index (or two score tables "
                             "with --before-scores/--after-scores)")
        wdir = work or ((json_out.parent if json_out else Path(".")) / "generator_eval")
        res = evaluate_generators(before, after, corpus, index, wdir, mesh_dir=mesh,
                                  exclude=exclude, **cfg.model_dump())
    typer.echo(format_result_table(res))
    if json_out:
        write_json_atomic(json_out, json_result(res))
        typer.echo(f"wrote {json_out}")
