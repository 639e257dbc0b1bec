"""The ``evaluator`` step (optional): train the m-KAILIN judge on the MeSH labels
(``evaluator/``)."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec


def run(ctx: RunContext) -> dict:
    from kailin.align.evaluator import train_evaluator

    c = ctx.cfg.evaluator
    res = train_evaluator(ctx.path("scores"), ctx.path("evaluator"), test_fraction=c.test_fraction,
                          seed=c.seed, l2=c.l2, model=c.encoder)
    return {k: v for k, v in res.items() if isinstance(v, int | float | str)}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("evaluator", run, reads=("evaluator",), inputs=["score"],
                      enabled=lambda c: c.evaluator.enabled
                      or c.preferences.labeller == "evaluator",
                      outputs=["evaluator"], mode="resume", code="1")]
