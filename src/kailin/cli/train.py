"""``kailin train``: SFT and DPO of question generators, and the m-KAILIN evaluator agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from kailin.align.dpo import DPOConfig
from kailin.align.evaluator import EvaluatorConfig
from kailin.align.sft import SFTConfig
from kailin.cli.derive import settings_command

#: option spellings of the trainers' settings that the commands have always had
_NAMES = {"limit": "--max-examples"}


def _no_lora(full: bool) -> bool:
    """``--full``: full fine-tuning, i.e. ``lora`` false."""
    return not full


app = typer.Typer(help="Train question generators (SFT, DPO) and the evaluator agent.",
                  no_args_is_help=True)


def _summary(meta: dict) -> str:
    if meta.get("skipped"):
        return "already trained with these settings (nothing to do)"
    loss = meta.get("train_loss")
    resumed = f", resumed from {meta['resumed_from']}" if meta.get("resumed_from") else ""
    return (f"{meta['global_step']} steps in {meta['seconds']:.1f}s, train loss "
            f"{loss:.4f}{resumed}")


def _steps_replace_epochs(values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``--max-steps N`` (N > 0) replaces the default epochs, the trainer's rule; ``-1`` (or 0)
    keeps training by epochs."""
    if "max_steps" in given:
        if given["max_steps"] > 0:
            if "epochs" not in given:
                values["epochs"] = None
        else:
            values.pop("max_steps", None)
    return values


@app.command("sft")
@settings_command(SFTConfig, defaults=SFTConfig.authors(), custom={"lora": ("full", _no_lora)},
                  names=_NAMES)
def sft(
    data: list[str] = typer.Argument(..., help="Training data: PubMedQA JSON (ori_pqal.json / "
                                     "ori_pqaa.json), PubMedQA JSONL (question+passage), BioASQ "
                                     "JSON, or the word 'pubmedqa' (packaged PQA-L)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, model/)."),
    model: str = typer.Option("smollm2", "--model", help="Base model: 'smollm2', a local "
                              "checkpoint, or a hub id."),
    question_type: str = typer.Option("any", "--question-type", help="yesno | general | any: "
                                      "the kind of questions this generator learns."),
    full: bool | None = typer.Option(None, "--full", help="Full fine-tuning instead of LoRA "
                                     "(default learning rate 2e-5 instead of 1e-4)."),
    include_test: bool = typer.Option(False, "--include-pubmedqa-test", help="Keep the PQA-L "
                                      "test PMIDs (excluded by default)."),
    settings: SFTConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Supervised fine-tuning of a question generator (document -> question), resumable."""
    from kailin.align.sft import train_sft

    meta = train_sft(data, out, settings, exclude_test=not include_test, model=model,
                     question_type=question_type)
    typer.echo(f"SFT -> {out}/model: {_summary(meta)}")


@app.command("dpo")
@settings_command(DPOConfig, defaults=DPOConfig.authors(), adjust=_steps_replace_epochs,
                  section="dpo")
def dpo(
    pairs: Path = typer.Argument(..., help="Preference pairs (`kailin prefer` output directory, "
                                 "or Parquet/JSON with prompt, chosen, rejected)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, adapter/, "
                             "model/)."),
    model: str = typer.Option("smollm2", "--model", help="The SFT-ed generator: a `kailin train "
                              "sft` output, a checkpoint, a hub id, or 'smollm2'."),
    settings: DPOConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """DPO of a question generator with LoRA (defaults: the authors' run), resumable."""
    from kailin.align.dpo import train_dpo

    meta = train_dpo(pairs, out, settings, model=model)
    typer.echo(f"DPO -> {out}/model: {_summary(meta)}")


@app.command("evaluator")
@settings_command(EvaluatorConfig, param="cfg", skip=("enabled",), section="evaluator")
def evaluator(
    scores: Path = typer.Argument(..., help="MeSH-scored questions (`kailin score` output): "
                                  "the cold-start labels."),
    out: Path = typer.Option(..., "--out", help="Evaluator directory."),
    cfg: EvaluatorConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Train the m-KAILIN evaluator agent on MeSH labels; report held-out agreement."""
    from kailin.align.evaluator import train_evaluator

    meta = train_evaluator(scores, out, test_fraction=cfg.test_fraction, seed=cfg.seed,
                           l2=cfg.l2, model=cfg.encoder)
    m = meta["metrics"]
    test = "n/a" if m["test_agreement"] is None else f"{m['test_agreement']:.3f}"
    ref = m["test_agreement_q_src_only"]
    typer.echo(f"evaluator -> {out}: {m['train_pairs']} training pairs, held-out agreement "
               f"with MeSH labels {test} on {m['test_pairs']} pairs ({m['test_pmids']} PMIDs)"
               + ("" if ref is None else f"; q-source-similarity alone: {ref:.3f}"))
