"""The ``policy_questions`` step: the aligned generator writes one question per distilled
abstract, scored like the generators' (``policy/``; the export is made of them with
``export.questions_from: policy``)."""

from __future__ import annotations

from typing import Any

from kailin.engine.keys import digest
from kailin.engine.run import RunContext, StageSpec
from kailin.io import iter_parquet_batches, write_json_atomic
from kailin.pipeline.stages.common import (
    QUESTION_READS,
    QUESTION_STAT_COLUMNS,
    SCORE_READS,
    WORK_COLUMNS,
    dpo_generator,
    flat,
    mesh_files,
    policy_budget,
    policy_model,
    policy_reads,
    question_stage,
    scorer,
)


def run(ctx: RunContext) -> dict:
    """The aligned generator writes one question per distilled abstract, scored like the
    generators' (its contexts are the dataset's)."""
    from kailin.generate.questions import question_stats

    gen = dpo_generator(ctx.cfg)
    model, rnd = policy_model(ctx)
    label = f"{gen}-dpo-round{rnd}"
    key = ctx.key
    ctx.executor().run(question_stage(ctx, gen, model, label=label,
                                       max_new_tokens=policy_budget(ctx.cfg)),
                       ctx.path("corpus", "work.parquet"), ctx.path("policy", "questions"),
                       key=digest({"k": key, "q": label}), columns=WORK_COLUMNS)
    ctx.executor().run(scorer(ctx), ctx.path("policy", "questions"),
                       ctx.path("policy", "scores"), key=digest({"k": key, "s": label}))
    write_json_atomic(ctx.path("policy", "policy.json"),
                      {"generator": label, "model": model, "round": rnd})
    qs = iter_parquet_batches(ctx.path("policy", "questions"),
                              columns=list(QUESTION_STAT_COLUMNS))
    return {"model_round": rnd, **flat(question_stats(qs))}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("policy_questions", run,
                      reads=("export.questions_from", *policy_reads(cfg), *QUESTION_READS,
                             *SCORE_READS),
                      inputs=["dpo", "steering", "index", "corpus", "workset"],
                      enabled=lambda c: c.export.questions_from == "policy",
                      outputs=["policy"], mode="self", files=mesh_files, code="1")]
