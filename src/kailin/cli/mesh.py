"""``kailin mesh``: build a MeSH folder, score descriptor pairs, check measures against humans."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import typer

from kailin.cli.runconf import config_option, mesh_of, run_files
from kailin.errors import InputError

app = typer.Typer(help="MeSH vocabulary, hierarchy, information content and similarity.",
                  no_args_is_help=True)

MEASURE_HELP = ("kailin (default here: corrected KAILIN), lin, resnik, jiang, wu-palmer, path, "
                "leacock-chodorow, embedding. Not `kailin score`'s default, which is embedding "
                "(aggregated bma): pass --measure embedding to see the similarity it uses.")


@app.command("build")
def build(
    descriptors: Path = typer.Option(..., "--descriptors", help="NLM descriptor XML (descYYYY.xml"
                                     "[.gz]), NLM mtrees file, or the tab-separated UI/name/entry"
                                     " terms/tree numbers table."),
    out: Path | None = typer.Option(None, "--out", help="Folder to write the MeSH build into."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus folder (kailin ingest): "
                                       "descriptor frequencies are counted over its records."),
    frequencies: Path | None = typer.Option(None, "--frequencies", help="Tab-separated document"
                                            " frequency table (columns descriptor_ui or "
                                            "descriptor_name, doc_freq)."),
    config: Path | None = config_option("--out (the config's mesh.dir) and --corpus"),
) -> None:
    """Build a MeSH folder: vocabulary, hierarchy, frequencies and information content."""
    from kailin.mesh.build import build_mesh

    files = run_files(config)
    if files is not None:
        out = out or files.mesh
        if corpus is None and frequencies is None and files.corpus.is_dir():
            corpus = files.corpus  # frequencies over the run's corpus, once it exists
    if out is None:
        raise InputError("give --out (or --config RUN.yaml whose mesh.dir names the build)")
    mesh = build_mesh(descriptors, out, corpus=corpus, frequencies=frequencies)
    m = mesh.meta
    typer.echo(f"{out}: {m['descriptors']} descriptors, {m['tree_numbers']} tree numbers, "
               f"{m['categories']} categories, {m['descriptors_with_frequency']} descriptors "
               "with a frequency")


def _scorer(mesh_dir: Path | None, measure: str, faithful: bool, aggregate: str = "mean"):
    from kailin.mesh.build import load_mesh

    mesh = load_mesh(mesh_dir)
    return mesh, mesh.scorer(measure=measure, faithful=faithful, aggregate=aggregate)


@app.command("similarity")
def similarity(
    a: str | None = typer.Argument(None, help="Descriptor UI or name."),
    b: str | None = typer.Argument(None, help="Descriptor UI or name."),
    mesh_dir: Path | None = typer.Option(None, "--mesh", help="MeSH build folder (default: the "
                                         "packaged MeSH 2024 build)."),
    measure: str = typer.Option("kailin", "--measure", help=MEASURE_HELP),
    faithful: bool = typer.Option(False, "--faithful", help="The authors' cal_mesh_score.py "
                                  "formula exactly (kailin measure only)."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Tab-separated file of pairs (two UI"
                                      " or name columns, no header): one value per line."),
    config: Path | None = config_option("--mesh (the config's mesh.dir)"),
) -> None:
    """Similarity of two descriptors, or of every pair in a file (--pairs).

    The default measure is the corrected KAILIN one (kailin), not the embedding measure that
    `kailin score` defaults to; the measure used is named on stderr (stdout holds only the
    values)."""
    mesh, scorer = _scorer(mesh_of(mesh_dir, run_files(config)), measure, faithful)
    from kailin.mesh.score import DEFAULT_SCORING

    note = "" if measure == DEFAULT_SCORING["measure"] else (
        f"; `kailin score` defaults to {DEFAULT_SCORING['measure']}: --measure "
        f"{DEFAULT_SCORING['measure']} to match it")
    typer.echo(f"measure: {measure}{' (faithful)' if faithful else ''}{note}", err=True)
    if pairs is None:
        if a is None or b is None:
            raise InputError("give two descriptors A B, or --pairs FILE")
        typer.echo(f"{scorer.similarity(a, b):.6f}")
        return
    if a is not None or b is not None:
        raise InputError("give either two descriptors or --pairs FILE, not both")
    ia, ib = [], []
    import io

    from kailin.io import read_text_strict

    with io.StringIO(read_text_strict(pairs, "pairs file"), newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or not "".join(row).strip():
                raise InputError(f"{pairs}:{lineno}: empty line (expected two tab-separated "
                                 "descriptors)")
            if len(row) < 2:
                raise InputError(f"{pairs}:{lineno}: expected two tab-separated descriptors")
            try:
                ia.append(mesh.vocab.id_of[mesh.require(row[0])])
                ib.append(mesh.vocab.id_of[mesh.require(row[1])])
            except InputError as exc:
                raise InputError(f"{pairs}:{lineno}: {exc}") from None
    vals = scorer.pair_similarities(np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64))
    sys.stdout.write("".join(f"{v:.6f}\n" for v in vals))


@app.command("info")
def info(
    descriptor: str = typer.Argument(..., help="Descriptor UI or name."),
    mesh_dir: Path | None = typer.Option(None, "--mesh", help="MeSH build folder."),
    config: Path | None = config_option("--mesh (the config's mesh.dir)"),
) -> None:
    """Show a descriptor: name, tree numbers, parents, children, depth and IC."""
    from kailin.mesh.build import load_mesh

    mesh = load_mesh(mesh_of(mesh_dir, run_files(config)))
    ui = mesh.require(descriptor)
    h = mesh.hierarchy
    i = mesh.vocab.id_of[ui]

    def fmt(uis: set[str]) -> str:
        return ", ".join(f"{u} {mesh.name(u)}" for u in sorted(uis)) or "-"

    typer.echo(f"{ui}  {mesh.name(ui)}")
    typer.echo(f"tree numbers: {', '.join(mesh.tree_numbers(ui)) or '-'}")
    typer.echo(f"categories:   {', '.join(h.categories_of(ui)) or '-'}")
    typer.echo(f"depth:        {h.depth(ui)}")
    typer.echo(f"parents:      {fmt(h.parents(ui))}")
    typer.echo(f"children:     {fmt(h.children(ui))}")
    typer.echo(f"descendants:  {len(h.descendants(ui))}")
    typer.echo(f"frequency:    {mesh.df[i]:g}")
    typer.echo(f"IC (global):  {mesh.ic_global[i]:.4f}")
    cats = {c: mesh.ic_faithful.ic[i, h.cat_id[c]] for c in h.categories_of(ui)}
    typer.echo("IC (faithful, per category): "
               + (", ".join(f"{c}={v:.4f}" for c, v in cats.items()) or "-"))
    terms = mesh.entry_terms(ui)
    typer.echo(f"entry terms:  {'; '.join(terms[:12])}{' ...' if len(terms) > 12 else ''}")


@app.command("lca")
def lca(
    a: str = typer.Argument(..., help="Descriptor UI or name."),
    b: str = typer.Argument(..., help="Descriptor UI or name."),
    mesh_dir: Path | None = typer.Option(None, "--mesh", help="MeSH build folder."),
    config: Path | None = config_option("--mesh (the config's mesh.dir)"),
) -> None:
    """KAILIN's lowest common ancestor of two descriptors (longest common tree-number prefix)."""
    from kailin.mesh.build import load_mesh

    mesh = load_mesh(mesh_of(mesh_dir, run_files(config)))
    u = mesh.hierarchy.lca(mesh.require(a), mesh.require(b))
    typer.echo("none" if u is None else f"{u}\t{mesh.name(u)}")


@app.command("evaluate")
def evaluate(
    files: list[Path] = typer.Argument(..., help="Rated term-pair CSV files (mesh 1, mesh 2, "
                                       "rating columns), e.g. data/samples/term_similarity_dev/"
                                       "*.csv"),
    mesh_dir: Path | None = typer.Option(None, "--mesh", help="MeSH build folder."),
    measures: str = typer.Option("kailin,faithful,path,wu-palmer,leacock-chodorow,resnik,lin,"
                                 "jiang", "--measures", help="Comma-separated measures "
                                 "('faithful' = kailin --faithful)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the rows as JSON."),
    config: Path | None = config_option("--mesh (the config's mesh.dir)"),
) -> None:
    """Spearman correlation of each measure with human similarity ratings."""
    from rich.console import Console
    from rich.table import Table

    from kailin.io import write_json_atomic
    from kailin.mesh.build import load_mesh
    from kailin.mesh.human_eval import correlations

    mesh = load_mesh(mesh_of(mesh_dir, run_files(config)))
    names = [m.strip() for m in measures.split(",") if m.strip()]
    scorers = {n: (mesh.scorer("kailin", faithful=True) if n == "faithful" else mesh.scorer(n))
               for n in names}
    rows = correlations(mesh, list(files), scorers)
    table = Table(title="Spearman correlation with human ratings")
    for col in ("set", "rating", "n", *names):
        table.add_column(col)
    for r in rows:
        table.add_row(r["set"], r["rating"], str(r["n"]), *(f"{r[n]:.3f}" for n in names))
    table.add_row("mean", "", "", *(f"{np.nanmean([r[n] for r in rows]):.3f}" for n in names))
    Console(width=max(120, Console().width)).print(table)
    if json_out:
        write_json_atomic(json_out, rows)
