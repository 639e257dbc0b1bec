"""``kailin train``: SFT and DPO of question generators, and the m-KAILIN evaluator agent."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train question generators (SFT, DPO) and the evaluator agent.",
                  no_args_is_help=True)


def _summary(meta: dict) -> str:
    if meta.get("skipped"):
        return "already trained with these settings (nothing to do)"
    loss = meta.get("train_loss")
    resumed = f", resumed from {meta['resumed_from']}" if meta.get("resumed_from") else ""
    return (f"{meta['global_step']} steps in {meta['seconds']:.1f}s, train loss "
            f"{loss:.4f}{resumed}")


@app.command("sft")
def sft(
    data: list[str] = typer.Argument(..., help="Training data: PubMedQA JSON (ori_pqal.json / "
                                     "ori_pqaa.json), PubMedQA JSONL (question+passage), BioASQ "
                                     "JSON, or the word 'pubmedqa' (packaged PQA-L)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, model/)."),
    model: str = typer.Option("smollm2", "--model", help="Base model: 'smollm2', a local "
                              "checkpoint, or a hub id."),
    question_type: str = typer.Option("any", "--question-type", help="yesno | general | any: "
                                      "the kind of questions this generator learns."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA."),
    lora_r: int = typer.Option(16, "--lora-r"),
    lora_alpha: int = typer.Option(32, "--lora-alpha"),
    lr: float | None = typer.Option(None, "--lr", help="Default 1e-4 (LoRA) / 2e-5 (full)."),
    epochs: float = typer.Option(6.0, "--epochs", help="Paper: 6."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after N steps (overrides "
                                  "epochs)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    max_length: int = typer.Option(1024, "--max-length", help="Tokens per example."),
    save_steps: int = typer.Option(200, "--save-steps"),
    max_examples: int | None = typer.Option(None, "--max-examples"),
    include_test: bool = typer.Option(False, "--include-pubmedqa-test", help="Keep the PQA-L "
                                      "test PMIDs (excluded by default)."),
    seed: int = typer.Option(0, "--seed"),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep the "
                                          "checkpoints after the final model is saved (removed "
                                          "by default; a killed run keeps them and resumes)."),
) -> None:
    """Supervised fine-tuning of a question generator (document -> question), resumable."""
    from kailin.align.sft import SFTConfig, train_sft
    from kailin.config import from_options

    # the options' defaults are SFTConfig.authors()
    s = from_options(SFTConfig, lora=not full, lora_r=lora_r, lora_alpha=lora_alpha,
                     learning_rate=lr, epochs=epochs, max_steps=max_steps,
                     batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                     save_steps=save_steps, logging_steps=10, limit=max_examples, seed=seed,
                     keep_checkpoints=keep_checkpoints)
    meta = train_sft(data, out, s, exclude_test=not include_test, model=model,
                     question_type=question_type)
    typer.echo(f"SFT -> {out}/model: {_summary(meta)}")


@app.command("dpo")
def dpo(
    pairs: Path = typer.Argument(..., help="Preference pairs (`kailin prefer` output directory, "
                                 "or Parquet/JSON with prompt, chosen, rejected)."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints/, adapter/, "
                             "model/)."),
    model: str = typer.Option("smollm2", "--model", help="The SFT-ed generator: a `kailin train "
                              "sft` output, a checkpoint, a hub id, or 'smollm2'."),
    beta: float = typer.Option(0.1, "--beta"),
    lr: float = typer.Option(5e-4, "--lr"),
    warmup_steps: int = typer.Option(100, "--warmup-steps"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    lora_r: int = typer.Option(8, "--lora-r"),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    epochs: float = typer.Option(3.0, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    grad_accum: int = typer.Option(4, "--grad-accum"),
    max_length: int = typer.Option(1024, "--max-length"),
    max_chars: int | None = typer.Option(None, "--max-chars", help="Drop pairs whose prompt + "
                                         "answer exceed N characters (authors: 1024)."),
    save_steps: int = typer.Option(50, "--save-steps"),
    max_pairs: int | None = typer.Option(None, "--max-pairs"),
    seed: int = typer.Option(0, "--seed"),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep the "
                                          "checkpoints after the final model is saved (removed "
                                          "by default; a killed run keeps them and resumes)."),
) -> None:
    """DPO of a question generator with LoRA (defaults: the authors' run), resumable."""
    from kailin.align.dpo import DPOConfig, train_dpo
    from kailin.config import from_options

    # --max-steps N > 0 replaces the epochs (the trainer's rule), else --epochs passes
    steps = {"max_steps": max_steps, "epochs": None} if max_steps > 0 else {"epochs": epochs}
    c = from_options(DPOConfig, beta=beta, learning_rate=lr, warmup_steps=warmup_steps,
                     weight_decay=weight_decay, lora_r=lora_r, lora_alpha=lora_alpha,
                     batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                     max_chars=max_chars, save_steps=save_steps, logging_steps=10,
                     max_pairs=max_pairs, seed=seed, keep_checkpoints=keep_checkpoints,
                     **steps)
    meta = train_dpo(pairs, out, c, model=model)
    typer.echo(f"DPO -> {out}/model: {_summary(meta)}")


@app.command("evaluator")
def evaluator(
    scores: Path = typer.Argument(..., help="MeSH-scored questions (`kailin score` output): "
                                  "the cold-start labels."),
    out: Path = typer.Option(..., "--out", help="Evaluator directory."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of PMIDs held out "
                                        "to measure agreement."),
    l2: float = typer.Option(1.0, "--l2", help="L2 penalty."),
    encoder: str | None = typer.Option(None, "--encoder", help="Sentence encoder (default: the "
                                       "packaged all-MiniLM-L6-v2)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the m-KAILIN evaluator agent on MeSH labels; report held-out agreement."""
    from kailin.align.evaluator import train_evaluator

    meta = train_evaluator(scores, out, test_fraction=test_fraction, seed=seed, l2=l2,
                           model=encoder)
    m = meta["metrics"]
    test = "n/a" if m["test_agreement"] is None else f"{m['test_agreement']:.3f}"
    ref = m["test_agreement_q_src_only"]
    typer.echo(f"evaluator -> {out}: {m['train_pairs']} training pairs, held-out agreement "
               f"with MeSH labels {test} on {m['test_pairs']} pairs ({m['test_pmids']} PMIDs)"
               + ("" if ref is None else f"; q-source-similarity alone: {ref:.3f}"))
