"""``kailin ingest`` and ``kailin corpus ...``: thin wrappers over :mod:`kailin.corpus`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import typer

from kailin.cli.derive import settings_command
from kailin.cli.runconf import config_option, need, run_files
from kailin.corpus.config import CorpusConfig

app = typer.Typer(
    help="Inspect, query and select from a corpus directory (see docs/corpus.md).",
    no_args_is_help=True,
)


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


#: CorpusConfig's fields of the run's corpus stage that are not ingest's (what to ingest, what
#: to select afterwards)
_NOT_INGEST = ("demo", "inputs", "corpus_dir", "select_mesh", "select_years", "limit", "heldout")


@settings_command(CorpusConfig, param="cfg", short={"workers": "-w"}, skip=_NOT_INGEST,
                  section="corpus")
def ingest_cmd(
    files: list[Path] = typer.Argument(
        ...,
        help="PubMed XML (.xml/.xml.gz), JSONL, Parquet, PubMedQA JSON or .TiAbMe files, "
        "or directories holding them.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Corpus directory (created or updated)."),
    no_default_exclusions: bool = typer.Option(
        False,
        "--no-default-exclusions",
        help="Do not exclude the PubMedQA test PMIDs (excluded by default for decontamination).",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    full_rewrite: bool = typer.Option(
        False, "--full-rewrite",
        help="Rewrite every live shard (default: an update rewrites only the shards holding the "
        "records it replaces or deletes, and new records go to new shards)."),
    rows_per_shard: int | None = typer.Option(
        None, "--rows-per-shard", min=1, help="Records per shard [default: 500,000]."),
    compact_small_fraction: float = typer.Option(
        0.25, "--compact-small-fraction", min=0.0, max=1.0,
        help="A shard below this share of --rows-per-shard counts as small."),
    compact_max_small: int = typer.Option(
        8, "--compact-max-small", min=0,
        help="Merge the small shards once more than this many pile up."),
    cfg: CorpusConfig = None,  # type: ignore[assignment]  # derived: workers, exclude_pmids, ...
) -> None:
    """Ingest PubMed/MEDLINE files into a columnar corpus (resumable; re-runs are no-ops).

    On a corpus that already has shards (a daily update file on the baseline), only the shards
    that hold a (PMID, Version) the files replace or delete are rewritten."""
    from kailin.corpus.store import ingest

    report = ingest(
        files,
        out,
        exclude_pmids=cfg.exclude_pmids,
        default_exclude=not no_default_exclusions,
        workers=cfg.workers,
        progress=not no_progress,
        incremental=not full_rewrite,
        **({"rows_per_shard": rows_per_shard} if rows_per_shard else {}),
        compact_small_fraction=compact_small_fraction,
        compact_max_small=compact_max_small,
        salvage=cfg.salvage,
    )
    _echo_json(report.summary())


@app.command("stats")
def stats_cmd(
    corpus_dir: Path | None = typer.Argument(None, help="Corpus directory (default with "
                                             "--config: the run's)."),
    config: Path | None = config_option("the corpus folder"),
) -> None:
    """Counts: records, abstracts, MeSH coverage, years, journals, ingestion totals."""
    from kailin.corpus.query import stats

    _echo_json(stats(need(corpus_dir, run_files(config), "corpus", "CORPUS_DIR")))


@app.command("show")
def show_cmd(
    args: list[str] = typer.Argument(..., metavar="[CORPUS_DIR] PMID",
                                     help="Corpus directory (default with --config: the "
                                          "run's) and PubMed ID."),
    config: Path | None = config_option("the corpus folder"),
) -> None:
    """Print the live record of PMID as JSON (title and abstract without the source file's line
    layout: see kailin.corpus.pubmed_xml.tidy_layout)."""
    from kailin.corpus.pubmed_xml import tidy_layout
    from kailin.corpus.query import show

    corpus_dir, pmid_text = _corpus_and(args, config, "PMID")
    try:
        pmid = int(pmid_text)
    except ValueError:
        raise typer.BadParameter(f"{pmid_text!r} is not a PubMed ID") from None
    rec = show(corpus_dir, pmid)
    if rec is None:
        typer.echo(f"PMID {pmid} is not in {corpus_dir}", err=True)
        raise typer.Exit(1)
    for key in ("title", "abstract"):
        if isinstance(rec.get(key), str):
            rec[key] = tidy_layout(rec[key])
    _echo_json(rec)


@app.command("sql")
def sql_cmd(
    args: list[str] = typer.Argument(..., metavar="[CORPUS_DIR] QUERY",
                                     help="Corpus directory (default with --config: the "
                                          "run's) and SQL; the view `corpus` holds the live "
                                          "records."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or jsonl."),
    limit: int = typer.Option(50, "--limit", help="Rows shown in table format (0 = all)."),
    config: Path | None = config_option("the corpus folder"),
) -> None:
    """Plain SQL over the shards with DuckDB, e.g. "select year, count(*) from corpus group by 1"."""
    from kailin.corpus.query import sql

    corpus_dir, query = _corpus_and(args, config, "QUERY")
    t = sql(corpus_dir, query)
    rows = t.to_pylist()
    if fmt == "jsonl":
        for r in rows:
            typer.echo(json.dumps(r, ensure_ascii=False, default=str))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(t.column_names)
        for r in rows:
            w.writerow([r[c] for c in t.column_names])
    elif fmt == "table":
        from rich.console import Console
        from rich.table import Table

        tab = Table(*t.column_names)
        for r in rows[: limit or None]:
            tab.add_row(*[str(r[c])[:120] for c in t.column_names])
        Console().print(tab)
        if limit and len(rows) > limit:
            typer.echo(f"({len(rows)} rows, {limit} shown; --limit 0 for all)")
    else:
        raise typer.BadParameter("--format must be table, csv or jsonl")


@app.command("select")
def select_cmd(
    corpus_dir: Path | None = typer.Argument(None, help="Corpus directory (default with "
                                             "--config: the run's)."),
    mesh: list[str] = typer.Option(
        ..., "--mesh", "-m", help="MeSH descriptor (name, entry term or UI); repeatable."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Subset corpus directory to write."),
    major_only: bool = typer.Option(False, "--major-only", help="Only major-topic headings."),
    no_descendants: bool = typer.Option(
        False, "--no-descendants", help="Match the descriptors only, not those below them."
    ),
    years: str | None = typer.Option(None, "--years", help="e.g. 2000-2024, 2010-, -1999."),
    config: Path | None = config_option("the corpus folder"),
) -> None:
    """Write the records annotated with these descriptors (or any descendant) as a corpus."""
    from kailin.corpus.query import select

    _echo_json(
        select(
            need(corpus_dir, run_files(config), "corpus", "CORPUS_DIR"),
            mesh,
            out,
            major_only=major_only,
            descendants=not no_descendants,
            years=years,
        )
    )


@app.command("demo")
def demo_cmd(
    out: Path | None = typer.Option(None, "--out", "-o", help="Corpus directory to build "
                                    "(default with --config: the run's corpus/full)."),
    config: Path | None = config_option("--out"),
) -> None:
    """Build the bundled demo corpus (~2,160 real abstracts with MeSH) from the repo's samples."""
    from kailin.corpus.demo import build_demo_corpus

    files = run_files(config)
    if out is None and files is not None:
        out = files.run_dir / "corpus" / "full"
    _echo_json(build_demo_corpus(need(out, files, "run_dir", "--out")).summary())


def _corpus_and(args: list[str], config: Path | None, what: str) -> tuple[Path, str]:
    """``[CORPUS_DIR] WHAT``: two arguments as given; one, with --config: the run's corpus."""
    if len(args) == 2:
        return Path(args[0]), args[1]
    if len(args) == 1 and config is not None:
        return need(None, run_files(config), "corpus", "CORPUS_DIR"), args[0]
    raise typer.BadParameter(f"give CORPUS_DIR {what} (or --config RUN.yaml and {what})")
