"""The ``retriever`` step (off by default): fine-tune the dense index's encoder on the run's
corpus (:func:`kailin.retrieval.finetune.finetune`, as ``kailin index finetune``) into
``models/retriever``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kailin.engine.keys import digest, table_digest
from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet, write_json_atomic
from kailin.pipeline.stages.common import CORPUS_DIR_READS, corpus_dir, local_or_hub

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig

log = logging.getLogger("kailin.run")


#: the retriever stage's fine-tuned encoder (a sentence-transformers folder); like every trainer's
#: output it holds kailin.train.common.TRAIN_META, the record of a finished training (settings
#: and data digest: a re-run with the same ones returns)
RETRIEVER_DIR = "models/retriever"



def retriever_inputs(cfg: RunConfig) -> list[str]:
    """The stages the retriever reads: the corpus; the workset when it holds abstracts out
    (their PMIDs are never trained on); the questions with ``pairs: question``."""
    out = ["corpus"]
    if cfg.corpus.limit and cfg.corpus.heldout:
        out.append("workset")
    if cfg.retriever.pairs == "question" and not cfg.retriever.questions:
        out.append("questions")
    return out


def retriever_files(cfg: RunConfig, base: Path) -> list[Path]:
    """Files outside the run that the retriever reads (keyed by content): retriever.questions
    and retriever.base_index when given."""
    r = cfg.retriever
    paths = [p for p in (r.questions if r.pairs == "question" else None, r.base_index) if p]
    return [Path(p) if Path(p).is_absolute() else base / p for p in paths]


def retriever_excluded(ctx: RunContext) -> list[int]:
    """PMIDs the fine-tuning never sees (neither as pairs nor as negatives): the workset's
    held-out abstracts and the PubMedQA test PMIDs."""
    from kailin.corpus.sources import default_exclusions

    out = set(default_exclusions())
    if "workset" in retriever_inputs(ctx.cfg):
        held = read_parquet(ctx.path("corpus", "heldout.parquet"), columns=["pmid"])
        out |= {int(p) for p in held["pmid"].to_pylist()}
    return sorted(out)


def finetune_config(ctx: RunContext) -> Any:
    """The retriever section as the library's :class:`FinetuneConfig`, with the run's paths
    resolved, its questions (pairs: question) and the PMIDs it must never train on added."""
    from kailin.retrieval.finetune import FinetuneConfig

    r = ctx.cfg.retriever
    questions = None
    if r.pairs == "question":
        questions = str(ctx.resolve(r.questions)) if r.questions else str(ctx.path("questions"))
    lib = {k: getattr(r, k) for k in FinetuneConfig.model_fields}
    return FinetuneConfig(**{
        **lib, "base": local_or_hub(ctx, r.base), "questions": questions,
        "exclude_pmids": sorted(set(r.exclude_pmids) | set(retriever_excluded(ctx))),
        "base_index": str(ctx.resolve(r.base_index)) if r.base_index else None})


def retriever_data_digest(ctx: RunContext, pairs: str) -> str:
    """What the pairs are mined from: the corpus shards (and the questions)."""
    from kailin.corpus.reader import open_corpus

    parts = {"corpus": open_corpus(corpus_dir(ctx)).manifest_hash()}
    if pairs == "question":
        qs = read_parquet(ctx.path("questions"))
        parts["questions"] = table_digest(qs.select(
            [c for c in ("pmid", "question", "reject_reason") if c in qs.column_names]))
    return digest(parts)


def run(ctx: RunContext) -> dict:
    """Fine-tune the dense encoder on the run's corpus (:func:`kailin.retrieval.finetune.
    finetune`, as ``kailin index finetune``) into ``models/retriever``. The engine replaces the
    folder when the stage's key changes and keeps it (resuming from its checkpoints) when it is
    the same; a finished training with the same settings and data is not redone."""
    from kailin.retrieval.finetune import finetune
    from kailin.train.common import TRAIN_META

    out = ctx.path(RETRIEVER_DIR)
    fcfg = finetune_config(ctx)
    settings = json.loads(json.dumps(
        {**fcfg.identity(), "data_digest": retriever_data_digest(ctx, fcfg.pairs)}, default=str))
    meta_path = out / TRAIN_META
    done = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if done.get("settings") == settings and (out / "modules.json").is_file():
        log.info("%s: already trained with these settings and data", out)
        meta = done
    else:
        meta_path.unlink(missing_ok=True)
        meta = finetune(corpus_dir(ctx), out, fcfg, progress=ctx.progress)
        meta = {"kind": "retriever", "settings": settings,
                **{k: v for k, v in meta.items() if k not in ("config", "complete")}}
        write_json_atomic(meta_path, meta)  # written last: its presence means finished
    m = meta.get("mining") or {}
    return {"pairs": m.get("pairs"), "consistency_rate": m.get("consistency_rate"),
            "excluded_records": m.get("held_out"), "steps": meta.get("steps"),
            "train_loss": meta.get("train_loss"), "train_seconds": meta.get("train_seconds")}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("retriever", run,
                      reads=("retriever", "corpus.limit", "corpus.heldout", *CORPUS_DIR_READS),
                      inputs=retriever_inputs(cfg), enabled=lambda c: c.retriever.enabled,
                      outputs=[RETRIEVER_DIR], mode="resume", files=retriever_files,
                      code="1")]
