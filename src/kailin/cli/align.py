"""``kailin score`` and ``kailin prefer``: MeSH-score generated questions, build DPO pairs.

Registered as top-level commands in :mod:`kailin.cli.main` (``app.command("score")(score)``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.align.prefer import PreferConfig, parse_tau
from kailin.align.score import ScoreConfig
from kailin.cli.derive import settings_command
from kailin.errors import InputError


@settings_command(ScoreConfig, param="config", short={"k": "-k"}, section="mesh")
def score(
    questions: Path = typer.Argument(..., help="Questions Parquet file or directory "
                                     "(`kailin generate questions` output)."),
    index: Path = typer.Option(..., "--index", help="Retrieval index directory."),
    out: Path = typer.Option(..., "--out", help="Output directory (Parquet parts)."),
    mesh: Path | None = typer.Option(None, "--mesh", help="MeSH build directory "
                                     "(default: the packaged MeSH 2024 build)."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus directory holding the "
                                       "source abstracts' MeSH (needed unless the questions "
                                       "table has a mesh_uis column)."),
    include_source: bool = typer.Option(False, "--include-source", help="Let a question retrieve "
                                        "its own source abstract (the authors' code does)."),
    rows_per_shard: int = typer.Option(256, "--rows-per-shard", help="Rows per output part."),
    config: ScoreConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """For every (abstract, generator) question: retrieve the top-k contexts and MeSH-score them
    against the source abstract. Adds `context_pmids`, `context_titles` and `score`."""
    from kailin.align.score import score_questions, summarize_scores
    from kailin.io import read_parquet

    stats = score_questions(questions, index, out, corpus_dir=corpus, mesh_dir=mesh,
                            exclude_source=not include_source, rows_per_shard=rows_per_shard,
                            config=config)
    summary = summarize_scores(read_parquet(out, columns=["generator", "score"]))
    typer.echo(f"scored {stats['rows_out']} questions into {out} "
               f"({stats['skipped']} of {stats['shards']} shards already done)")
    for g, d in sorted(summary.items()):
        typer.echo(f"  {g}: n={d['n']} nan={d['nan']} mean={d['mean']:.4f}")


@settings_command(PreferConfig, custom={"tau": ("tau", parse_tau)}, section="preferences")
def prefer(
    scores: Path = typer.Argument(..., help="Scores Parquet file or directory (`kailin score`)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    tau: str | None = typer.Option(None, "--tau", help="Keep a PMID only when every score <= tau "
                            "(default: off; the authors' 0.5 is on the paper's scale, for "
                            "`kailin score --faithful` scores); 'none' turns it off."),
    evaluator: Path | None = typer.Option(None, "--evaluator", help="Evaluator directory "
                                          "(`kailin train evaluator`), for --labeller evaluator."),
    settings: PreferConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Build DPO pairs: per PMID chosen = best-scored question, rejected = worst, after the
    tau / band / margin filters. Writes OUT/data/train.parquet and OUT/prefer_stats.json."""
    from kailin.align.prefer import prefer as run_prefer

    if settings.labeller == "evaluator" and evaluator is None:
        raise InputError("--labeller evaluator needs --evaluator DIR (`kailin train evaluator`)")
    stats = run_prefer(scores, out, settings, evaluator=evaluator)
    typer.echo(f"{stats['kept']} of {stats['pmids']} PMIDs kept -> {stats['output']}")
    for name, n in stats["dropped"].items():
        typer.echo(f"  dropped by {name}: {n}")

