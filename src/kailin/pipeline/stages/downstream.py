"""The ``downstream`` step: continued pretraining of a downstream LM on the export (and on the
control arms' data with the same steps), then optionally SFT on the answered records
(``models/downstream*``, ``controls/``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet
from kailin.pipeline.stages import export as export_step
from kailin.pipeline.stages.common import (
    best_questions,
    export_scores,
    generator_model,
    mesh_files,
)
from kailin.pipeline.stages.export import write_export

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig


#: the downstream control arms: tag -> (model folder, what it is trained on)
DOWNSTREAM_CONTROLS = {"raw_abstracts": "the export's abstracts and contexts, no questions",
                       "pre_dpo": "an export of the generators' (pre-DPO) questions"}



def control_arms(cfg: RunConfig) -> list[str]:
    """The downstream control arms this config trains."""
    if not cfg.downstream.controls:
        return []
    return [a for a in DOWNSTREAM_CONTROLS
            if a != "pre_dpo" or cfg.export.questions_from == "policy"]


def control_data(ctx: RunContext, arm: str) -> Path:
    """Write the CPT data of a control arm (an export of the same rows, see
    :data:`DOWNSTREAM_CONTROLS`); return its folder."""
    import pyarrow.compute as pc

    from kailin.dataset.export import RAW_TEMPLATE

    out = ctx.path("controls", arm)
    # the export's source abstracts, no more (answers.limit or filters may have cut some)
    keep = pa.array(sorted(set(read_parquet(ctx.path("export", "cpt"),
                                            columns=["pmid"])["pmid"].to_pylist())), pa.int64())

    def rows(scores: Path) -> pa.Table:
        best = best_questions(scores)
        return best.filter(pc.is_in(best["pmid"].cast(pa.int64()), value_set=keep))

    if arm == "raw_abstracts":
        write_export(ctx, rows(export_scores(ctx)), out, template=RAW_TEMPLATE,
                      questions={"from": "none (raw abstracts: downstream control)"})
    else:
        write_export(ctx, rows(ctx.path("scores")), out,
                      questions={"from": "generators (pre-DPO: downstream control)", "models": {
                          g.name: generator_model(ctx, g.name) for g in ctx.cfg.generators},
                          "round": 0})
    return out


def token_count(model: str, texts: list[str]) -> int:
    from kailin.train.common import load_tokenizer

    tok = load_tokenizer(model)
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def run(ctx: RunContext) -> dict:
    from kailin.dataset.train import train_cpt

    d = ctx.cfg.downstream
    meta = train_cpt(ctx.path("export", "cpt"), ctx.path("models", "downstream"), d)
    out = {"train_loss": meta.get("train_loss"), "steps": meta.get("global_step"),
           "records": (meta.get("settings") or {}).get("n_examples")}
    arms = control_arms(ctx.cfg)
    if arms:  # the same steps and settings on the control data: the same tokens are seen
        texts = read_parquet(ctx.path("export", "cpt"), columns=["text"])["text"].to_pylist()
        out["tokens"] = token_count(d.model, texts)
        for arm in arms:
            data = control_data(ctx, arm)
            m = train_cpt(data / "cpt", ctx.path("models", f"downstream-{arm}"), d)
            ctexts = read_parquet(data / "cpt", columns=["text"])["text"].to_pylist()
            out.update({f"{arm}.train_loss": m.get("train_loss"),
                        f"{arm}.steps": m.get("global_step"), f"{arm}.records": len(ctexts),
                        f"{arm}.tokens": token_count(d.model, ctexts)})
    if d.sft_steps:  # then SFT on the answered records (the export's sft config)
        from kailin.dataset.train import train_answers

        s2 = d.sft_settings(str(ctx.path("models", "downstream", "model")))
        m2 = train_answers(ctx.path("export"), ctx.path("models", "downstream-sft"), s2)
        out.update({"sft.train_loss": m2.get("train_loss"), "sft.steps": m2.get("global_step"),
                    "sft.records": (m2.get("settings") or {}).get("n_examples")})
    return out


def downstream_model(ctx: RunContext) -> str:
    """The downstream model after training: CPT, then SFT when ``downstream.sft_steps``."""
    sub = "downstream-sft" if ctx.cfg.downstream.sft_steps else "downstream"
    return str(ctx.path("models", sub, "model"))



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("downstream", run, reads=("downstream", *export_step.READS),
                      inputs=["export", "score", "policy_questions", "corpus"],
                      enabled=lambda c: c.downstream.enabled,
                      outputs=["models/downstream", "models/downstream-sft", "controls",
                               *[f"models/downstream-{a}" for a in DOWNSTREAM_CONTROLS]],
                      mode="resume", files=mesh_files, code="1")]
