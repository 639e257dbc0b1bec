"""``kailin dataset``: teacher answers and the AI-ready dataset export."""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.cli.derive import settings_command
from kailin.cli.files import read_pmids, read_text
from kailin.cli.runconf import config_option, run_files
from kailin.dataset.answers import AnswerConfig
from kailin.dataset.export import ExportConfig

app = typer.Typer(help="Answer questions with a teacher LLM and export the AI-ready dataset.",
                  no_args_is_help=True)


@app.command("answers")
@settings_command(AnswerConfig, param="config", section="answers",
                  defaults=AnswerConfig(grounding="lexical", max_new_tokens=256),
                  names={"grounding_threshold": "--threshold"},
                  skip=("enabled", "filter_ungrounded"))
def answers(
    scores: Path = typer.Argument(..., help="Scores table (Parquet file or directory)."),
    out: Path = typer.Argument(..., help="Output directory (Parquet parts; resumable)."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus dir for the texts."),
    n_contexts: int = typer.Option(4, "--n-contexts", help="Contexts shown to the teacher."),
    batch_size: int = typer.Option(4, "--batch-size"),
    rows_per_shard: int = typer.Option(64, "--rows-per-shard"),
    device: str | None = typer.Option(None, "--device"),
    cache: Path | None = typer.Option(
        None, "--cache", help="SQLite response cache (default: the user cache folder)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Send every prompt to the teacher "
                                  "(default: answers already in the LLM response cache are "
                                  "reused, with their finish reason)."),
    config: AnswerConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Answer each question from its contexts with a teacher LLM and check grounding
    (filtering the ungrounded ones is the export's: ``--require-grounded``)."""
    from kailin.dataset.answers import AnswerStage
    from kailin.engine.executors.local import LocalExecutor
    from kailin.errors import InputError
    from kailin.io import read_parquet

    try:
        src = read_parquet(scores)
    except FileNotFoundError as exc:
        raise InputError(f"{scores}: {exc}") from None
    if config.limit is not None:
        src = src.slice(0, config.limit)
    max_new_tokens = config.max_new_tokens
    stage = AnswerStage.from_config(config, corpus_dir=str(corpus) if corpus else None,
                                    n_contexts=n_contexts, batch_size=batch_size, device=device,
                                    use_cache=not no_cache,
                                    cache_path=str(cache) if cache else None)
    stats = LocalExecutor(rows_per_shard=rows_per_shard).run(stage, src, out)
    typer.echo(f"answers: {stats['rows_out']} rows in {out} ({stats['skipped']} of "
               f"{stats['shards']} shards already done)")
    if stats["rows_out"]:
        reasons = read_parquet(out, columns=["finish_reason"]).column("finish_reason")
        cut = reasons.to_pylist().count("length")
        typer.echo(f"answers cut at --max-new-tokens {max_new_tokens} (finish_reason length): "
                   f"{cut} of {len(reasons)} ({cut / len(reasons):.1%}); the export leaves them "
                   "out of the SFT records")


@app.command("export")
@settings_command(
    ExportConfig, param="cfg", defaults=ExportConfig(n_contexts=4), section="export",
    custom={"template": ("template_file",
                         lambda p: read_text(p, "--template-file", "template").strip()),
            "exclude_pubmedqa_test": ("decontaminate", bool),
            "formats": ("formats", lambda v: [f.strip() for f in v.split(",") if f.strip()]),
            "extra_exclude_pmids": ("exclude_pmids", lambda p: read_pmids(p, "--exclude-pmids"))})
def export(
    records: Path = typer.Argument(..., help="Scores or answers table (Parquet file/dir)."),
    out: Path = typer.Argument(..., help="Output directory of the dataset."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus dir for the texts."),
    formats: str | None = typer.Option(None, "--formats", help="Comma-separated: cpt, sft, "
                                       "triples (default all three)."),
    template_file: Path | None = typer.Option(
        None, "--template-file", help="CPT template (default: the authors' format)."),
    decontaminate: bool | None = typer.Option(None, "--decontaminate/--no-decontaminate",
                                              help="Drop PubMedQA test PMIDs (default on)."),
    exclude_pmids: Path | None = typer.Option(
        None, "--exclude-pmids", help="More PMIDs to exclude (one per line or a JSON list/dict)."),
    mesh_dir: Path | None = typer.Option(None, "--mesh-dir",
                                         help="MeSH build for category coverage."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    cfg: ExportConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Export CPT text, SFT chat records and triples (Parquet + JSONL) with a dataset card."""
    from kailin.dataset.export import export_dataset

    mesh = None
    if mesh_dir is not None:
        from kailin.mesh import load_mesh

        mesh = load_mesh(mesh_dir)
    stats = export_dataset(records, out, corpus_dir=corpus, config=cfg, mesh=mesh, plots=plots)
    dec = stats["decontamination"]
    typer.echo(f"exported {stats['records']} records to {out}: "
               + ", ".join(f"{k} {v['rows']}" for k, v in stats["splits"].items()))
    tr = stats.get("truncated_answers")
    if tr and tr["answers"]:
        typer.echo(f"truncated answers (hit the teacher's token limit): {tr['truncated']} of "
                   f"{tr['answers']} ({tr['truncated_share']:.1%}), "
                   + ("kept" if tr["kept_in_sft"] else "left out of sft") + "; "
                   f"{tr['unknown']} without a finish reason")
    if dec.get("enabled"):
        typer.echo(f"decontamination: excluded {dec['rows_excluded_source_pmid']} rows with a "
                   f"PubMedQA test PMID as source and {dec['rows_excluded_context_pmid']} with one "
                   "among the contexts")


@app.command("adaptllm")
def adaptllm(
    source: Path = typer.Argument(..., help="A `kailin dataset export` directory (its cpt "
                                  "PMIDs), or a Parquet/JSONL table with pmid (title and "
                                  "abstract, else looked up in --corpus)."),
    out: Path = typer.Argument(..., help="Output directory: cpt/train.parquet (pmid, text), "
                               "adaptllm.json."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus dir for the texts."),
    with_contexts: bool = typer.Option(False, "--with-contexts",
                                       help="Also the rows' context_pmids as documents."),
    config: Path | None = config_option("--corpus"),
) -> None:
    """AdaptLLM peer arm (arXiv 2309.09530): each abstract followed by reading-comprehension
    tasks mined from it with regex patterns (no LLM, no MeSH)."""
    from kailin.dataset.adaptllm import source_documents, write_adaptllm

    files = run_files(config)
    docs = source_documents(source, corpus if corpus is not None or files is None
                            else files.corpus, with_contexts)
    stats = write_adaptllm(docs, out, provenance={"source": str(source),
                                                  "with_contexts": with_contexts})
    typer.echo(f"{stats['records']} AdaptLLM texts ({stats['tasks']} tasks; "
               f"{stats['records_without_task']} without a task, {stats['skipped_no_abstract']}"
               f" without an abstract) -> {out}/cpt")
