"""``kailin index``: build, search and evaluate retrieval indexes (see docs/retrieval.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from kailin.cli.derive import settings_command
from kailin.cli.files import read_pmids
from kailin.cli.runconf import config_option, mesh_of, need, run_files
from kailin.retrieval import IndexBuildConfig
from kailin.retrieval.finetune import FinetuneConfig

# third-party chatter at INFO/DEBUG (FAISS CPU-feature probing, bm25s internals)
for _name in ("faiss.loader", "bm25s", "sentence_transformers.base.model"):
    logging.getLogger(_name).setLevel(logging.WARNING)

app = typer.Typer(
    help="Context retrieval indexes over a corpus: BM25, dense (FAISS), hybrid, Qdrant.",
    no_args_is_help=True,
)


def _years(from_year: int | None, to_year: int | None) -> tuple[int | None, int | None] | None:
    return None if from_year is None and to_year is None else (from_year, to_year)


def _load(index_dir: Path, corpus: Path | None):
    from kailin.retrieval import load_index

    return load_index(index_dir, corpus=corpus, on_stale="error")


@app.command("build")
@settings_command(IndexBuildConfig, param="cfg", skip=("k", "leave_source_out"), section="index")
def build(
    corpus_dir: Path = typer.Argument(..., help="Corpus directory (manifest.json + data/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cfg: IndexBuildConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Build an index over CORPUS_DIR into --out."""
    from kailin.retrieval import build_index

    kind, opts = cfg.build_options()
    index = build_index(corpus_dir, out, kind=kind, overwrite=overwrite,
                        batch_size=cfg.batch_size, progress=not quiet, **opts)
    m = index.meta
    n_shards = m["params"].get("bm25", {}).get("shards", 1) if m["kind"] == "bm25" else 1
    typer.echo(
        f"{m['kind']} index of {m['counts']['documents']} documents in {out} "
        + (f"({n_shards} shards) " if n_shards > 1 else "")
        + f"(corpus {m['corpus']['manifest_hash']})"
    )
    index.close()


def _mesh_namer():
    try:
        from kailin.mesh import load_mesh

        mesh = load_mesh()
    except Exception:  # no MeSH build available: show UIs
        return lambda ui: ui

    def name(ui: str) -> str:
        try:
            return mesh.names(ui)
        except (KeyError, IndexError):
            return ui

    return name


@app.command("search")
def search(
    args: list[str] = typer.Argument(..., metavar="[INDEX_DIR] QUERY...",
                                     help="Index directory (default with --config: the run's "
                                          "index; a first argument that is no folder is a "
                                          "query), then one or more queries."),
    k: int = typer.Option(4, "-k", "--top-k", help="Hits per query."),
    exclude_pmid: int | None = typer.Option(
        None, "--exclude-pmid", help="Leave this PMID out (the question's source document)."
    ),
    from_year: int | None = typer.Option(None, "--from-year", help="Earliest publication year."),
    to_year: int | None = typer.Option(None, "--to-year", help="Latest publication year."),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="Check the index is up to date with this corpus directory."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
    config: Path | None = config_option("INDEX_DIR"),
) -> None:
    """Search the index; print a table of hits with their MeSH names."""
    from rich.console import Console
    from rich.table import Table

    files = run_files(config)
    if files is not None and not Path(args[0]).is_dir():
        index_dir, query = files.index, args
    elif len(args) >= 2:
        index_dir, query = Path(args[0]), args[1:]
    else:
        raise typer.BadParameter("give INDEX_DIR QUERY... (or --config RUN.yaml and QUERY...)")
    index = _load(index_dir, corpus)
    try:
        hits = index.search(
            query,
            k=k,
            exclude_pmids=[exclude_pmid] * len(query) if exclude_pmid else None,
            years=_years(from_year, to_year),
        )
    finally:
        index.close()
    if json_out:
        typer.echo(
            json.dumps(
                [
                    {"query": q, "hits": [h.to_dict() for h in hs]}
                    for q, hs in zip(query, hits, strict=True)
                ],
                indent=2,
            )
        )
        return
    name = _mesh_namer()
    console = Console(width=max(Console().width, 120))
    for q, hs in zip(query, hits, strict=True):
        t = Table(title=f"{q}  ({index.kind}, top {k})", show_lines=True)
        t.add_column("#", justify="right")
        t.add_column("PMID")
        t.add_column("score", justify="right")
        t.add_column("year")
        t.add_column("title / abstract", overflow="fold", ratio=3)
        t.add_column("MeSH", overflow="fold", ratio=2)
        for rank, h in enumerate(hs, 1):
            text = h.title or h.abstract
            text = text if len(text) <= 160 else text[:157] + "..."
            t.add_row(
                str(rank),
                str(h.pmid),
                f"{h.score:.4f}",
                str(h.year or ""),
                text,
                "; ".join(name(ui) for ui in h.mesh_uis),
            )
        if not hs:
            t.caption = "no hits"
        console.print(t)


@app.command("evaluate")
def evaluate(
    index_dir: Path | None = typer.Argument(None, help="Index directory (default with "
                                            "--config: the run's)."),
    queries: Path = typer.Option(
        ..., "--queries", help="PubMedQA JSON (QUESTION per PMID key) or TSV query<TAB>PMID."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N queries."),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="Check the index is up to date with this corpus directory."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as a JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    config: Path | None = config_option("INDEX_DIR"),
) -> None:
    """recall@1/4/10 and MRR of the index on labelled queries (the source is not left out).

    Queries whose relevant PMID is not in the index are counted apart (not_in_corpus) and left
    out of the metrics."""
    from rich.console import Console
    from rich.table import Table

    from kailin.retrieval.evaluate import evaluate as run_eval
    from kailin.retrieval.evaluate import load_queries

    labelled = load_queries(queries)[:limit]
    files = run_files(config)
    index_dir = need(index_dir, files, "index", "INDEX_DIR")
    index = _load(index_dir, corpus)
    try:
        res = run_eval(index, labelled, progress=not quiet and not json_out)
    finally:
        index.close()
    res["queries"] = str(queries)
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    t = Table(title=f"{index_dir} ({res['kind']}, {res['documents']} documents)")
    for col in ("queries", "not in corpus", "recall@1", "recall@4", "recall@10",
                f"MRR@{res['mrr_depth']}"):
        t.add_column(col, justify="right")

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    t.add_row(str(res["n"]), str(res["not_in_corpus"]),
              *(fmt(res[f"recall@{k}"]) for k in (1, 4, 10)), fmt(res["mrr"]))
    t.caption = (f"metrics over the {res['n']} of {res['n_queries']} queries whose relevant PMID "
                 f"is in the index; {res['not_in_corpus']} not in the corpus are left out")
    Console().print(t)


@app.command("embed-mesh")
def embed_mesh(
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for mesh_embeddings.npy/.json (default: a cache folder; give "
        "the MeSH build folder to store them with the build).",
    ),
    mesh_dir: Path | None = typer.Option(
        None, "--mesh", help="MeSH build folder (default: the packaged MeSH 2024 build)."
    ),
    model: str | None = typer.Option(None, "--model", help="Encoder (default: packaged MiniLM)."),
    mode: str = typer.Option("full", "--mode", help="Text: name, name+entries or full (+ tree)."),
    pairs: list[Path] = typer.Option(
        [], "--pairs", help="Only the descriptors of these rated-pair CSV files (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    config: Path | None = config_option("--mesh (the config's mesh.dir)"),
) -> None:
    """Embed MeSH descriptors (name, entry terms, tree path) for the `embedding` measure."""
    from kailin.mesh import load_mesh
    from kailin.mesh.embeddings import build_mesh_embeddings, rated_pair_uis

    mesh = load_mesh(mesh_of(mesh_dir, run_files(config)))
    uis = rated_pair_uis(pairs, mesh) if pairs else None
    path = build_mesh_embeddings(mesh, model, out, uis=uis, mode=mode, progress=not quiet)
    meta = json.loads((path / "mesh_embeddings.json").read_text(encoding="utf-8"))
    typer.echo(
        f"{path}: {meta['embedded']} of {meta['descriptors']} descriptors embedded "
        f"({meta['dim']} dims, {meta['mode']})"
    )


@app.command("finetune")
@settings_command(FinetuneConfig, param="cfg", section="retriever",
                  custom={"exclude_pmids": ("exclude_pmids",
                                            lambda p: read_pmids(p, "--exclude-pmids")),
                          "dtype": ("bf16", lambda bf16: "bfloat16" if bf16 else "float32")})
def finetune_cmd(
    corpus_dir: Path = typer.Argument(..., help="Corpus directory (manifest.json + data/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the fine-tuned model."),
    exclude_pmids: Path | None = typer.Option(
        None, "--exclude-pmids", help="File of PMIDs (one a line, or PubMedQA JSON) to leave out."
    ),
    bf16: bool | None = typer.Option(None, "--bf16", help="bf16 mixed precision (GPU)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Mine again and start from step 0."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    cfg: FinetuneConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Fine-tune the dense encoder on CORPUS_DIR (title/question -> abstract, hard negatives)."""
    from kailin.retrieval.finetune import finetune

    meta = finetune(corpus_dir, out, cfg, resume=not no_resume, progress=not quiet)
    m = meta["mining"]
    typer.echo(
        f"{out}: {meta['steps']} steps on {m['pairs']} pairs ({m['consistent_pairs']} of "
        f"{m['candidate_pairs']} passed the consistency filter, "
        f"{m['false_negatives_skipped']} false negatives skipped) in {meta['train_seconds']}s; "
        f"use it with `kailin index build --kind dense --model {out}`"
    )
