"""The ``prefer`` step: chosen / rejected pairs and the filters' counts
(``preferences/``)."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.pipeline.stages.common import flat


def run(ctx: RunContext) -> dict:
    """``kailin prefer`` with the ``preferences`` section (labeller evaluator: ranked by the
    evaluator stage's agent)."""
    from kailin.align.prefer import prefer

    stats = prefer(ctx.path("scores"), ctx.path("preferences"), ctx.cfg.preferences,
                   evaluator=ctx.path("evaluator"))
    return flat({k: v for k, v in stats.items() if k not in ("settings", "output")})



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("prefer", run, reads=("preferences",), inputs=["score", "evaluator"],
                      outputs=["preferences"], code="1")]
