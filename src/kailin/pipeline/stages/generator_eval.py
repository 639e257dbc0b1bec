"""The ``generator_eval`` step: the MeSH score of the generator's held-out questions before
and after DPO, with a bootstrap CI (``reports/generator.json``)."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet, write_json_atomic
from kailin.pipeline.stages.common import (
    DPO_GENERATOR_READS,
    QUESTION_READS,
    SCORE_READS,
    dpo_generator,
    generator_model,
    mesh_files,
    pairs_dpo,
    question_key,
    question_stage,
    score_key,
    scorer,
)


def run(ctx: RunContext) -> dict:
    from kailin.align.generator_eval import compare_score_tables, json_result

    gen = dpo_generator(ctx.cfg)
    held = read_parquet(ctx.path("corpus", "heldout.parquet"),
                        columns=["pmid", "title", "abstract"])
    tables = {}
    for tag, model, model_stage in (
            ("before", generator_model(ctx, gen), f"sft:{gen}"),
            ("after", str(ctx.path("models", f"{gen}-dpo", "model")), "dpo")):
        stage = question_stage(ctx, gen, model)
        ctx.executor().run(stage, held, ctx.path("generator_eval", tag, "questions"),
                           key=question_key(ctx, gen, model_stage))
        ctx.executor().run(scorer(ctx), ctx.path("generator_eval", tag, "questions"),
                           ctx.path("generator_eval", tag, "scores"), key=score_key(ctx))
        tables[tag] = read_parquet(ctx.path("generator_eval", tag, "scores"))
    res = compare_score_tables(tables["before"], tables["after"])
    out = json_result(res)
    out.update({"generator": gen, "before_model": generator_model(ctx, gen),
                "after_model": str(ctx.path("models", f"{gen}-dpo", "model"))})
    write_json_atomic(ctx.path("reports", "generator.json"), out)
    return {k: v for k, v in out.items() if isinstance(v, int | float)}



def steps(cfg: Any) -> list[StageSpec]:
    g = dpo_generator(cfg)
    return [StageSpec("generator_eval", run,
                      reads=(*QUESTION_READS, *SCORE_READS, *DPO_GENERATOR_READS),
                      inputs=["dpo", f"sft:{g}", "index", "corpus", "workset"],
                      enabled=lambda c: pairs_dpo(c) and c.corpus.heldout > 0,
                      outputs=["generator_eval", "reports/generator.json"], mode="self",
                      files=mesh_files, code="1")]
