"""The run steps of ``kailin run``, in order: one line per step module. A new step is its
module (its reads, its ``run()``), its library code and one line here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kailin.engine.run import StageSpec, run_pipeline
from kailin.pipeline.stages import (
    answers,
    corpus,
    downstream,
    downstream_results,
    dpo,
    evaluator,
    export,
    generator_eval,
    index,
    perplexity,
    policy_questions,
    prefer,
    pubmedqa,
    pubmedqa_finetune,
    questions,
    retriever,
    score,
    sft,
    steering,
    workset,
)

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig

#: the step modules in run order (the retriever and the index move after the questions when
#: the retriever trains on the questions: nothing in between reads the index)
STEPS = (corpus, workset, retriever, index, sft, questions, score, evaluator, prefer, dpo,
         generator_eval, steering, policy_questions, answers, export, downstream, perplexity,
         pubmedqa, pubmedqa_finetune, downstream_results)


def pipeline_stages(cfg: RunConfig) -> list[StageSpec]:
    """The standard steps of ``cfg``, in order, each with what it reads."""
    late = cfg.retriever.enabled and cfg.retriever.pairs == "question"
    order = list(STEPS)
    if late:
        for m in (retriever, index):
            order.remove(m)
        i = order.index(questions) + 1
        order[i:i] = [retriever, index]
    specs: list[StageSpec] = []
    for m in order:
        if m is retriever and not cfg.retriever.enabled:
            continue  # listed only when on
        specs += m.steps(cfg)
    return specs


def run_config(cfg: RunConfig, base_dir: Path, run_dir: Path | None = None, **kwargs: Any
               ) -> dict:
    """Run ``cfg`` with the standard steps (see :func:`kailin.engine.run.run_pipeline`)."""
    return run_pipeline(cfg, base_dir, run_dir=run_dir, stages=pipeline_stages(cfg), **kwargs)
