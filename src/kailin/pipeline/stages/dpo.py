"""The ``dpo`` step: DPO of the aligned generator on the preference pairs
(``models/<generator>-dpo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.errors import KailinError
from kailin.io import read_parquet, weights_fingerprint
from kailin.pipeline.stages.common import (
    DPO_GENERATOR_READS,
    dpo_generator,
    generator_model,
    pairs_dpo,
)


def run(ctx: RunContext) -> dict:
    from kailin.align.dpo import train_dpo
    from kailin.align.prefer import PREFERENCES_FILE

    gen = dpo_generator(ctx.cfg)
    pairs = read_parquet(ctx.path("preferences", PREFERENCES_FILE))
    if pairs.num_rows == 0:
        raise KailinError("dpo: the preference stage kept no pairs; loosen preferences.tau / "
                          "band / min_margin or distil more abstracts (corpus.limit)")
    # the folder is the stage's own: a finished training on the same pairs, settings and base
    # weights is kept when only an upstream key changed (e.g. corpus.heldout), other
    # checkpoints are replaced
    model = generator_model(ctx, gen)
    base = Path(model)
    meta = train_dpo(pairs, ctx.path("models", f"{gen}-dpo"), ctx.cfg.dpo, model=model,
                     replace_stale=True, extend=False,
                     identity={"base_weights": weights_fingerprint(base)} if base.is_dir()
                     else None)
    return {"pairs": pairs.num_rows,
            **{k: meta[k] for k in ("train_loss", "steps") if k in meta}}



def steps(cfg: Any) -> list[StageSpec]:
    g = dpo_generator(cfg)
    return [StageSpec("dpo", run, reads=("dpo", *DPO_GENERATOR_READS),
                      inputs=["prefer", f"sft:{g}"], enabled=pairs_dpo,
                      outputs=[f"models/{g}-dpo"], mode="self", code="1")]
