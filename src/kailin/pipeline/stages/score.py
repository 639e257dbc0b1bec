"""The ``score`` step: the top-k contexts of every question and their knowledge-hierarchy
(MeSH) score (record-level; ``scores/<generator>/``); and the ``signal`` step, the run's
self-check that the document score carries information on this corpus."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import iter_parquet_batches, write_json_atomic
from kailin.pipeline.stages.common import (
    SCORE_READS,
    corpus_dir,
    drop_other_dirs,
    flat,
    mesh_files,
    score_key,
    scorer,
)


def run(ctx: RunContext) -> dict:
    from kailin.align.score import summarize_scores

    out = ctx.path("scores")
    gens = [g.name for g in ctx.cfg.generators]
    drop_other_dirs(out, set(gens))  # (and _done/ of the one-folder layout)
    for p in [*out.glob("part-*.parquet"), out / "_stage.json"]:
        p.unlink(missing_ok=True)
    # one folder per generator, as the questions: a generator's scores are cut into the same
    # shards whatever the other generators wrote, so only changed shards are scored again
    stage, key = scorer(ctx), score_key(ctx)
    rows = computed = 0
    for g in gens:
        stats = ctx.executor().run(stage, ctx.path("questions", g), out / g, key=key)
        rows += stats["rows_out"]
        computed += stats["computed"]
    scores = iter_parquet_batches(out, columns=["generator", "score"])
    return {"rows": rows, "shards_computed": computed, **flat(summarize_scores(scores))}


def run_signal(ctx: RunContext) -> dict:
    """The per-run self-check: does the document score carry information on this corpus?"""
    from kailin.evaluate.signal import title_selfcheck
    from kailin.retrieval import load_index

    stage = scorer(ctx)
    res = title_selfcheck(corpus_dir(ctx), load_index(ctx.path("index")),
                          mesh_dir=ctx.resolve(ctx.cfg.mesh.dir), scoring=stage.scoring,
                          k=stage.k, sample=ctx.cfg.mesh.selfcheck_sample,
                          max_passed_over=stage.max_passed_over)
    write_json_atomic(ctx.path("reports", "signal_selfcheck.json"), res)
    return {k: res[k] for k in ("sample", "auc_other", "auc_generic", "nan_share")
            if isinstance(res.get(k), int | float)}



def steps(cfg: Any) -> list[StageSpec]:
    return [
        StageSpec("score", run, reads=(*SCORE_READS, "generators"),
                  inputs=["questions", "index", "corpus"],
                  outputs=["scores"], mode="self", files=mesh_files, code="1"),
        StageSpec("signal", run_signal, reads=SCORE_READS, inputs=["index", "corpus"],
                  enabled=lambda c: c.mesh.selfcheck_sample > 0,
                  outputs=["reports/signal_selfcheck.json"], files=mesh_files, code="1"),
    ]
