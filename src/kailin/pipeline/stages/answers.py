"""The ``answers`` step: a teacher answers each distilled question from its contexts, and
the answer's grounding in them is scored (record-level; ``answers/``)."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet
from kailin.pipeline.stages.common import (
    CORPUS_DIR_READS,
    best_questions,
    corpus_dir,
    dump,
    export_scores,
    flat,
)


def run(ctx: RunContext) -> dict:
    from kailin.dataset.answers import AnswerStage, grounding_rates

    a = ctx.cfg.answers
    best = best_questions(export_scores(ctx))
    if a.limit:
        best = best.slice(0, a.limit)
    stage = AnswerStage.from_config(a, corpus_dir=str(corpus_dir(ctx)), n_contexts=ctx.cfg.index.k,
                                    grounding_model=grounding_model(ctx))
    key = ctx.sub_key({"answers": dump(a), "k": ctx.cfg.index.k}, ["corpus"])
    stats = ctx.executor().run(stage, best, ctx.path("answers"), key=key)
    return {"rows": stats["rows_out"], "shards_computed": stats["computed"],
            **flat(grounding_rates(read_parquet(ctx.path("answers"))))}


def grounding_model(ctx: RunContext) -> str | None:
    m = ctx.cfg.answers.grounding_model
    if m and (m.startswith((".", "/", "~")) or (ctx.base_dir / m).exists()):
        return str(ctx.resolve(m))
    return m



#: the answer settings the teacher's answers depend on (``filter_ungrounded`` is applied by the
#: export, so changing it re-asks no teacher)
READS = ("answers.enabled", "answers.teacher", "answers.max_new_tokens", "answers.grounding",
         "answers.grounding_model", "answers.grounding_threshold", "answers.limit",
         "answers.instruction", "answers.stop", "answers.repetition_penalty", "index.k",
         "export.questions_from", *CORPUS_DIR_READS)


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("answers", run, reads=READS,
                      inputs=["score", "policy_questions", "corpus"],
                      enabled=lambda c: c.answers.enabled, outputs=["answers"], mode="self",
                      code="2")]
