"""``kailin train cpt`` / ``kailin train answers``: downstream training on the exported dataset.

Registered on the ``train`` app of :mod:`kailin.cli.train` (importing this module adds them).
"""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.cli.train import _summary, app

__all__ = ["app"]


def _settings(model: str, full: bool, lora_r: int, lora_alpha: int, lr: float, max_steps: int,
              epochs: float, batch_size: int, grad_accum: int, max_length: int, save_steps: int,
              max_examples: int | None, seed: int, packing: bool = True,
              fit: str = "truncate") -> object:
    from kailin.config import from_options
    from kailin.dataset.train import DownstreamTrainConfig

    # the options' defaults are DownstreamTrainConfig.authors()
    return from_options(
        DownstreamTrainConfig, model=model, lora=not full, lora_r=lora_r, lora_alpha=lora_alpha,
        learning_rate=lr, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
        grad_accum=grad_accum, max_length=max_length, save_steps=save_steps, logging_steps=10,
        limit=max_examples, seed=seed, packing=packing, fit=fit,
    )


_DATA_HELP = "A `kailin dataset export` directory, or a Parquet/JSONL file."


@app.command("cpt")
def cpt(
    data: Path = typer.Argument(..., help=_DATA_HELP + " Uses the cpt config (`text`)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, model/)."),
    model: str = typer.Option("smollm2", "--model",
                              help="Any causal LM: 'smollm2', a local checkpoint, or a hub id."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA."),
    lora_r: int = typer.Option(16, "--lora-r", help="Authors: 16."),
    lora_alpha: int = typer.Option(32, "--lora-alpha", help="Authors: 32."),
    lr: float = typer.Option(2e-5, "--lr", help="Authors: 2e-5."),
    max_steps: int = typer.Option(600, "--max-steps", help="Authors: 600 (-1: use --epochs)."),
    epochs: float = typer.Option(1.0, "--epochs"),
    batch_size: int = typer.Option(2, "--batch-size", help="Authors: 2."),
    grad_accum: int = typer.Option(8, "--grad-accum", help="Authors: 8."),
    max_length: int = typer.Option(1024, "--max-length", help="Packed sequence length "
                                   "(authors: 8192)."),
    no_packing: bool = typer.Option(False, "--no-packing", help="One record per sequence."),
    save_steps: int = typer.Option(100, "--save-steps"),
    max_examples: int | None = typer.Option(None, "--max-examples"),
    seed: int = typer.Option(3407, "--seed"),
) -> None:
    """Continued pretraining on packed CPT text (trl SFTTrainer + LoRA), resumable."""
    from kailin.dataset.train import train_cpt

    s = _settings(model, full, lora_r, lora_alpha, lr, max_steps, epochs, batch_size, grad_accum,
                  max_length, save_steps, max_examples, seed, packing=not no_packing)
    meta = train_cpt(data, out, s)
    typer.echo(f"CPT -> {out}/model: {_summary(meta)}")


@app.command("answers")
def answers(
    data: Path = typer.Argument(..., help=_DATA_HELP + " Uses the sft config (`messages`)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, model/)."),
    model: str = typer.Option("smollm2", "--model",
                              help="Any causal LM: 'smollm2', a local checkpoint, or a hub id."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA."),
    lora_r: int = typer.Option(16, "--lora-r"),
    lora_alpha: int = typer.Option(32, "--lora-alpha"),
    lr: float = typer.Option(1e-4, "--lr"),
    max_steps: int = typer.Option(-1, "--max-steps", help="-1: train --epochs."),
    epochs: float = typer.Option(1.0, "--epochs"),
    batch_size: int = typer.Option(2, "--batch-size"),
    grad_accum: int = typer.Option(8, "--grad-accum"),
    max_length: int = typer.Option(1024, "--max-length"),
    save_steps: int = typer.Option(100, "--save-steps"),
    max_examples: int | None = typer.Option(None, "--max-examples"),
    seed: int = typer.Option(3407, "--seed"),
    fit: str = typer.Option("truncate", "--fit",
                            help="A record longer than --max-length: truncate (cut its contexts, "
                                 "the longest first; counted in kailin_train.json) or error."),
) -> None:
    """SFT on the teacher's answers (chat records; loss on the answer only), resumable."""
    from kailin.dataset.train import train_answers

    s = _settings(model, full, lora_r, lora_alpha, lr, max_steps, epochs, batch_size, grad_accum,
                  max_length, save_steps, max_examples, seed, packing=False, fit=fit)
    meta = train_answers(data, out, s)
    counts = (f"; {meta['n_examples']} records ({meta['truncated']} with contexts cut to fit, "
              f"{meta['dropped']} dropped)" if "truncated" in meta else "")
    typer.echo(f"answers SFT -> {out}/model: {_summary(meta)}{counts}")
