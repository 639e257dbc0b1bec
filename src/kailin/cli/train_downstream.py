"""``kailin train cpt`` / ``kailin train answers``: downstream training on the exported dataset.

Registered on the ``train`` app of :mod:`kailin.cli.train` (importing this module adds them).
"""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.cli.derive import settings_command
from kailin.cli.train import _NAMES, _no_lora, _summary, app
from kailin.dataset.train import DownstreamTrainConfig


def _no_packing(no_packing: bool) -> bool:
    """``--no-packing``: ``packing`` false."""
    return not no_packing


__all__ = ["app"]


_DATA_HELP = "A `kailin dataset export` directory, or a Parquet/JSONL file."


@app.command("cpt")
@settings_command(DownstreamTrainConfig, defaults=DownstreamTrainConfig.authors(),
                  custom={"lora": ("full", _no_lora), "packing": ("no_packing", _no_packing)},
                  names=_NAMES, aliases={"max_steps": ("--cpt-steps",)}, section="downstream",
                  section_renamed={"cpt_steps": "max_steps"})
def cpt(
    data: Path = typer.Argument(..., help=_DATA_HELP + " Uses the cpt config (`text`)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, model/)."),
    full: bool | None = typer.Option(None, "--full", help="Full fine-tuning instead of LoRA."),
    no_packing: bool | None = typer.Option(None, "--no-packing", help="One record per "
                                           "sequence."),
    settings: DownstreamTrainConfig = None,  # type: ignore[assignment]  # derived options
) -> None:
    """Continued pretraining on packed CPT text (trl SFTTrainer + LoRA), resumable."""
    from kailin.dataset.train import train_cpt

    meta = train_cpt(data, out, settings)
    typer.echo(f"CPT -> {out}/model: {_summary(meta)}")


@app.command("answers")
@settings_command(DownstreamTrainConfig,
                  defaults=DownstreamTrainConfig.authors(learning_rate=1e-4, max_steps=-1,
                                                         packing=False),
                  custom={"lora": ("full", _no_lora), "packing": ("no_packing", _no_packing)},
                  names=_NAMES)
def answers(
    data: Path = typer.Argument(..., help=_DATA_HELP + " Uses the sft config (`messages`)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, model/)."),
    full: bool | None = typer.Option(None, "--full", help="Full fine-tuning instead of LoRA."),
    no_packing: bool | None = typer.Option(None, "--no-packing", help="One record per "
                                           "sequence (the default here)."),
    settings: DownstreamTrainConfig = None,  # type: ignore[assignment]  # derived options
) -> None:
    """SFT on the teacher's answers (chat records; loss on the answer only), resumable."""
    from kailin.dataset.train import train_answers

    meta = train_answers(data, out, settings)
    counts = (f"; {meta['n_examples']} records ({meta['truncated']} with contexts cut to fit, "
              f"{meta['dropped']} dropped)" if "truncated" in meta else "")
    typer.echo(f"answers SFT -> {out}/model: {_summary(meta)}{counts}")
