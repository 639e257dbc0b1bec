"""``kailin score`` and ``kailin prefer``: MeSH-score generated questions, build DPO pairs.

Registered as top-level commands in :mod:`kailin.cli.main` (``app.command("score")(score)``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.errors import InputError


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
    k: int | None = typer.Option(None, "--k", "-k", help="Contexts retrieved per question "
                                 "(default 6; the paper, and --faithful: 4)."),
    measure: str | None = typer.Option(
        None, "--measure", help="Descriptor similarity: embedding (default), hybrid, resnik, "
        "lin, jiang, kailin, path, wu-palmer, leacock-chodorow."),
    faithful: bool = typer.Option(
        False, "--faithful", help="The paper's form: the authors' cal_mesh_score.py measure, "
        "all-pairs mean over every descriptor, k=4, no weights."),
    aggregate: str | None = typer.Option(None, "--aggregate", help="Descriptor-set "
                                         "aggregation: bma (best-match average, default) or "
                                         "mean (all pairs, the paper's)."),
    exclude: str | None = typer.Option(None, "--exclude", help="check-tags (default: leave "
                                       "NLM's check tags out) or none."),
    ic_power: float | None = typer.Option(None, "--ic-power", help="Weigh each descriptor by "
                                          "(IC/MaxIC)^p (default 3; 0 = no weights)."),
    major_weight: float | None = typer.Option(None, "--major-weight", help="Weight of "
                                              "MajorTopicYN descriptors (default 1; needs "
                                              "--corpus)."),
    rank_weighting: str | None = typer.Option(None, "--rank-weighting", help="none (default) "
                                              "or reciprocal (context at rank r weighs 1/r)."),
    max_passed_over: int = typer.Option(16, "--max-passed-over", help="Hits without MeSH passed "
                                        "over per question to find k contexts with MeSH."),
    include_source: bool = typer.Option(False, "--include-source", help="Let a question retrieve "
                                        "its own source abstract (the authors' code does)."),
    rows_per_shard: int = typer.Option(256, "--rows-per-shard", help="Rows per output part."),
) -> None:
    """For every (abstract, generator) question: retrieve the top-k contexts and MeSH-score them
    against the source abstract. Adds `context_pmids`, `context_titles` and `score`."""
    from kailin.align.score import ScoreConfig, score_questions, summarize_scores
    from kailin.config import from_options
    from kailin.io import read_parquet

    config = from_options(ScoreConfig, k=k, measure=measure, faithful=faithful,
                          aggregate=aggregate, exclude=exclude, ic_power=ic_power,
                          major_weight=major_weight, rank_weighting=rank_weighting,
                          max_passed_over=max_passed_over)
    stats = score_questions(questions, index, out, corpus_dir=corpus, mesh_dir=mesh,
                            exclude_source=not include_source, rows_per_shard=rows_per_shard,
                            config=config)
    summary = summarize_scores(read_parquet(out, columns=["generator", "score"]))
    typer.echo(f"scored {stats['rows_out']} questions into {out} "
               f"({stats['skipped']} of {stats['shards']} shards already done)")
    for g, d in sorted(summary.items()):
        typer.echo(f"  {g}: n={d['n']} nan={d['nan']} mean={d['mean']:.4f}")


def prefer(
    scores: Path = typer.Argument(..., help="Scores Parquet file or directory (`kailin score`)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    tau: str | None = typer.Option(None, "--tau", help="Keep a PMID only when every score <= tau "
                            "(default: off; the authors' 0.5 is on the paper's scale, for "
                            "`kailin score --faithful` scores); 'none' turns it off."),
    band: tuple[float, float] | None = typer.Option(None, "--band", help="LOW HIGH: keep only "
                                                    "PMIDs whose scores are all strictly inside."),
    min_margin: float = typer.Option(0.0, "--min-margin", help="Drop a PMID whose chosen and "
                                     "rejected scores are closer than this."),
    invalid_rejected: bool = typer.Option(False, "--invalid-rejected", help="A PMID with one "
                                          "valid question and an output the extractor rejected "
                                          "makes a (valid, invalid raw output) pair."),
    max_pairs: int | None = typer.Option(None, "--max-pairs", help="Keep only the N pairs with "
                                         "the widest score margins."),
    validity_share: float | None = typer.Option(
        None, "--validity-share", help="With --invalid-rejected: any PMID with a valid question "
        "and an invalid output may give a validity pair, up to this share of --max-pairs (or "
        "of the pairs available); for several samples per abstract."),
    labeller: str = typer.Option("mesh", "--labeller", help="'mesh': rank by the MeSH score "
                                 "column; 'evaluator': rank by a trained evaluator agent."),
    evaluator: Path | None = typer.Option(None, "--evaluator", help="Evaluator directory "
                                          "(`kailin train evaluator`), for --labeller evaluator."),
) -> None:
    """Build DPO pairs: per PMID chosen = best-scored question, rejected = worst, after the
    tau / band / margin filters. Writes OUT/data/train.parquet and OUT/prefer_stats.json."""
    from kailin.align.prefer import PreferConfig, parse_tau
    from kailin.align.prefer import prefer as run_prefer
    from kailin.config import from_options

    if labeller not in ("mesh", "evaluator"):
        raise InputError(f"--labeller {labeller!r}: choose 'mesh' or 'evaluator'")
    if labeller == "evaluator" and evaluator is None:
        raise InputError("--labeller evaluator needs --evaluator DIR (`kailin train evaluator`)")
    settings = from_options(PreferConfig, tau=parse_tau(tau), band=band, min_margin=min_margin,
                            labeller=labeller, invalid_rejected=invalid_rejected,
                            max_pairs=max_pairs, validity_share=validity_share)
    stats = run_prefer(scores, out, settings, evaluator=evaluator)
    typer.echo(f"{stats['kept']} of {stats['pmids']} PMIDs kept -> {stats['output']}")
    for name, n in stats["dropped"].items():
        typer.echo(f"  dropped by {name}: {n}")
