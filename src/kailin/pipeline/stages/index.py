"""The ``index`` step: a BM25, dense or hybrid index of the corpus (``index/``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kailin.engine.run import RunContext, StageSpec
from kailin.pipeline.stages.common import CORPUS_DIR_READS, corpus_dir, local_or_hub
from kailin.pipeline.stages.retriever import RETRIEVER_DIR

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig


def index_model(ctx: RunContext) -> str | None:
    """The encoder of a dense or hybrid index: ``index.model``, else the retriever stage's
    fine-tuned model when that stage is on, else None (the packaged MiniLM)."""
    ix = ctx.cfg.index
    if ix.model:  # a folder relative to the config file, or a hub id
        return local_or_hub(ctx, ix.model)
    if ctx.cfg.retriever.enabled and ix.kind in ("dense", "hybrid"):
        return str(ctx.path(RETRIEVER_DIR))
    return None


def index_model_files(cfg: RunConfig, base: Path) -> list[Path]:
    """``index.model`` when it is a local folder: keyed by content, so retraining the encoder in
    place rebuilds the index."""
    m = cfg.index.model
    if not m or cfg.index.kind == "bm25":
        return []
    p = Path(m).expanduser()
    p = p if p.is_absolute() else base / p
    return [p] if p.exists() else []


def run(ctx: RunContext) -> dict:
    from kailin.retrieval import build_index

    ix = ctx.cfg.index
    opts: dict[str, Any] = {}
    if (model := index_model(ctx)) is not None:
        opts["model"] = model
    if ix.shards != 1:  # (how the index is built, not what it answers: not in any key)
        opts["shards"] = ix.shards
    index = build_index(corpus_dir(ctx), ctx.path("index"), kind=ix.kind, overwrite=True,
                        progress=ctx.progress, **opts)
    return {"kind": ix.kind,
            "documents": int(index.describe().get("counts", {}).get("documents", 0))}



def index_output(ctx: RunContext) -> str:
    """What the index holds, for its readers' keys: its identity (the meta file less the
    corpus's path and kailin's version) and the bytes of every other file. An index rebuilt from
    the same corpus with the same settings, in this folder or a copy, digests the same."""
    from kailin.engine.keys import FileDigests, digest
    from kailin.retrieval.base import META_FILE, index_identity

    root = ctx.path("index")
    files = FileDigests()
    return digest({"identity": index_identity(root),
                   "files": {f.relative_to(root).as_posix(): files.file(f)
                             for f in sorted(root.rglob("*"))
                             if f.is_file() and f.name != META_FILE}})


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("index", run, reads=("index.kind", "index.model", "retriever.enabled",
                                           *CORPUS_DIR_READS),
                      uses=("index.shards",),
                      inputs=["corpus", "retriever"], outputs=["index"],
                      files=index_model_files, output_digest=index_output, code="1")]
