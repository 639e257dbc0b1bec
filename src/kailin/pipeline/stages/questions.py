"""The ``questions`` step: every generator writes one question per distilled abstract
(record-level, through the executor; one folder per generator under ``questions/``)."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import iter_parquet_batches
from kailin.pipeline.stages.common import (
    QUESTION_READS,
    QUESTION_STAT_COLUMNS,
    WORK_COLUMNS,
    drop_other_dirs,
    flat,
    generator_model,
    question_key,
    question_stage,
)


def run(ctx: RunContext) -> dict:
    from kailin.generate.questions import question_stats

    # the work set is streamed shard by shard, and the summary batch by batch: the driver never
    # holds the abstracts or the questions
    work = ctx.path("corpus", "work.parquet")
    drop_other_dirs(ctx.path("questions"), {g.name for g in ctx.cfg.generators})
    rows = computed = 0
    for g in ctx.cfg.generators:
        stage = question_stage(ctx, g.name, generator_model(ctx, g.name))
        stats = ctx.executor().run(stage, work, ctx.path("questions", g.name),
                                   key=question_key(ctx, g.name), columns=WORK_COLUMNS)
        rows += stats["rows_out"]
        computed += stats["computed"]
    qs = iter_parquet_batches(ctx.path("questions"), columns=list(QUESTION_STAT_COLUMNS))
    return {"rows": rows, "shards_computed": computed, **flat(question_stats(qs))}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("questions", run, reads=QUESTION_READS,
                      uses=("generation.batch_size", "generation.threads"),
                      inputs=["workset", *[f"sft:{g.name}" for g in cfg.generators]],
                      outputs=["questions"], mode="self", code="1")]
