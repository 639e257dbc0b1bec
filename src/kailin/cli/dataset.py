"""``kailin dataset``: teacher answers and the AI-ready dataset export."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Answer questions with a teacher LLM and export the AI-ready dataset.",
                  no_args_is_help=True)


@app.command("answers")
def answers(
    scores: Path = typer.Argument(..., help="Scores table (Parquet file or directory)."),
    out: Path = typer.Argument(..., help="Output directory (Parquet parts; resumable)."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus dir for the texts."),
    teacher: str = typer.Option("smollm2", "--teacher",
                                help="Teacher LLM spec (kailin.llm): smollm2, hf:ID_OR_PATH, PATH, openai:URL#MODEL, vllm:ID."),
    grounding: str = typer.Option(
        "lexical", "--grounding", help="Grounding check: nli, llm-judge, embedding, lexical, none."
    ),
    grounding_model: str | None = typer.Option(
        None, "--grounding-model",
        help="NLI CrossEncoder dir (nli), judge LLM (llm-judge, default smollm2), or "
             "sentence-transformers model (embedding, default all-MiniLM-L6-v2).",
    ),
    threshold: float | None = typer.Option(None, "--threshold",
                                           help="Grounded when score >= threshold."),
    n_contexts: int = typer.Option(4, "--n-contexts", help="Contexts shown to the teacher."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    batch_size: int = typer.Option(4, "--batch-size"),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N rows."),
    rows_per_shard: int = typer.Option(64, "--rows-per-shard"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Answer each question from its contexts with a teacher LLM and check grounding."""
    from kailin.dataset.answers import AnswerStage
    from kailin.errors import InputError
    from kailin.io import read_parquet
    from kailin.pipeline.executors.local import LocalExecutor

    try:
        src = read_parquet(scores)
    except FileNotFoundError as exc:
        raise InputError(f"{scores}: {exc}") from None
    if limit is not None:
        src = src.slice(0, limit)
    stage = AnswerStage(teacher=teacher, corpus_dir=str(corpus) if corpus else None,
                        n_contexts=n_contexts, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, grounding=grounding,
                        grounding_model=grounding_model, grounding_threshold=threshold,
                        device=device)
    stats = LocalExecutor(rows_per_shard=rows_per_shard).run(stage, src, out)
    typer.echo(f"answers: {stats['rows_out']} rows in {out} ({stats['skipped']} of "
               f"{stats['shards']} shards already done)")


@app.command("export")
def export(
    records: Path = typer.Argument(..., help="Scores or answers table (Parquet file/dir)."),
    out: Path = typer.Argument(..., help="Output directory of the dataset."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus dir for the texts."),
    formats: str = typer.Option("cpt,sft,triples", "--formats",
                                help="Comma-separated: cpt, sft, triples."),
    template_file: Path | None = typer.Option(
        None, "--template-file", help="CPT template (default: the authors' format)."),
    cpt_with_answer: bool = typer.Option(
        False, "--cpt-with-answer", help="Append ' The answer is: {answer}' (m-KAILIN)."),
    n_contexts: int = typer.Option(4, "--n-contexts"),
    select: str = typer.Option("best", "--select",
                               help="best: top-scoring question per PMID; all: every row."),
    min_score: float | None = typer.Option(None, "--min-score"),
    max_score: float | None = typer.Option(None, "--max-score"),
    require_grounded: bool = typer.Option(False, "--require-grounded",
                                          help="Keep only answers judged grounded."),
    decontaminate: bool = typer.Option(True, "--decontaminate/--no-decontaminate",
                                       help="Drop PubMedQA test PMIDs (default on)."),
    exclude_pmids: Path | None = typer.Option(
        None, "--exclude-pmids", help="More PMIDs to exclude (one per line or a JSON list/dict)."),
    mesh_dir: Path | None = typer.Option(None, "--mesh-dir",
                                         help="MeSH build for category coverage."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
) -> None:
    """Export CPT text, SFT chat records and triples (Parquet + JSONL) with a dataset card."""
    import json

    from kailin.config import from_options
    from kailin.dataset.export import ExportConfig, export_dataset
    from kailin.errors import InputError

    extra: list[int] = []
    if exclude_pmids is not None:
        if not exclude_pmids.is_file():
            raise InputError(f"--exclude-pmids {exclude_pmids}: no such file")
        txt = exclude_pmids.read_text(encoding="utf-8")
        try:
            obj = json.loads(txt)
            extra = [int(x) for x in obj]
        except (ValueError, TypeError):
            try:
                extra = [int(x) for x in txt.split()]
            except ValueError:
                raise InputError(f"--exclude-pmids {exclude_pmids}: not a list of PMIDs") from None
    mesh = None
    if mesh_dir is not None:
        from kailin.mesh import load_mesh

        mesh = load_mesh(mesh_dir)
    cfg = from_options(
        ExportConfig, n_contexts=n_contexts,
        template=template_file.read_text(encoding="utf-8").strip() if template_file else None,
        cpt_with_answer=cpt_with_answer, select=select, min_score=min_score,
        max_score=max_score, require_grounded=require_grounded,
        exclude_pubmedqa_test=decontaminate,
        formats=[f.strip() for f in formats.split(",") if f.strip()],
        extra_exclude_pmids=extra,
    )
    stats = export_dataset(records, out, corpus_dir=corpus, config=cfg, mesh=mesh, plots=plots)
    dec = stats["decontamination"]
    typer.echo(f"exported {stats['records']} records to {out}: "
               + ", ".join(f"{k} {v['rows']}" for k, v in stats["splits"].items()))
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
) -> None:
    """AdaptLLM peer arm (arXiv 2309.09530): each abstract followed by reading-comprehension
    tasks mined from it with regex patterns (no LLM, no MeSH)."""
    from kailin.dataset.adaptllm import source_documents, write_adaptllm

    docs = source_documents(source, corpus, with_contexts)
    stats = write_adaptllm(docs, out, provenance={"source": str(source),
                                                  "with_contexts": with_contexts})
    typer.echo(f"{stats['records']} AdaptLLM texts ({stats['tasks']} tasks; "
               f"{stats['records_without_task']} without a task, {stats['skipped_no_abstract']}"
               f" without an abstract) -> {out}/cpt")
