"""The ``sft:<generator>`` steps: supervised fine-tuning of each question generator
(``models/<generator>-sft``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kailin.engine.run import RunContext, StageSpec
from kailin.pipeline.stages.common import gen

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig


def sft_data(ctx: RunContext, data: str) -> list[str]:
    return [data if data == "pubmedqa" else str(ctx.resolve(data))]


def run_for(gen_name: str):
    def fn(ctx: RunContext) -> dict:
        from kailin.align.sft import train_sft

        g = next(g for g in ctx.cfg.generators if g.name == gen_name)
        meta = train_sft(sft_data(ctx, g.sft.data), ctx.path("models", f"{gen_name}-sft"),
                         g.sft, model=g.model, question_type=g.question_type)
        return {k: meta[k] for k in ("n_examples", "train_loss", "steps") if k in meta}

    return fn


def sft_files(cfg: RunConfig, base: Path, name: str) -> list[Path]:
    data = gen(cfg, name).sft.data
    return [] if data == "pubmedqa" else [Path(data) if Path(data).is_absolute() else base / data]



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec(f"sft:{g.name}", run_for(g.name),
                      reads=tuple(f"generators.{g.name}.{k}" for k in ("model", "question_type",
                                                                       "sft")),
                      enabled=lambda c, n=g.name: gen(c, n).sft.enabled,
                      outputs=[f"models/{g.name}-sft"], mode="resume",
                      files=lambda c, b, n=g.name: sft_files(c, b, n), code="1")
            for g in cfg.generators]
