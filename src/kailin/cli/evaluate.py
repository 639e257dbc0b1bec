"""``kailin evaluate``: PubMedQA evaluation (and, from kailin.cli.evaluate_generator, the
question-generator evaluation registered on the same app)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Evaluate generators and downstream models.", no_args_is_help=True)


@app.command("pubmedqa")
def pubmedqa(
    predictions: Path | None = typer.Option(
        None, "--predictions", "-p",
        help='Score an official-format prediction file {"PMID": "yes|no|maybe", ...}.',
    ),
    ground_truth: Path | None = typer.Option(
        None, "--ground-truth", help="Ground-truth labels (default: packaged PQA-L test labels)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m",
        help="Evaluate a causal LM: local path, hub id, kailin training output, or 'smollm2'.",
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="A LoRA adapter to apply."),
    setting: list[str] = typer.Option(
        ["reasoning_required", "question_only"], "--setting",
        help="reasoning_required (question + contexts) and/or question_only; repeatable.",
    ),
    method: str = typer.Option(
        "loglik", "--method", help="loglik (score yes/no/maybe) or generate (generate + parse)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only N test items, evenly spaced over the split (label proportions kept)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per forward pass."),
    max_length: int = typer.Option(1024, "--max-length", help="Prompt token limit."),
    chat: str = typer.Option("auto", "--chat", help="Chat template: auto, always, never."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="For --method generate."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cpu)."),
    save_predictions: Path | None = typer.Option(
        None, "--save-predictions", help="Directory for pred_{setting}.json (official format)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
) -> None:
    """PubMedQA (PQA-L test, 500 PMIDs): score a prediction file, or evaluate a model."""
    from kailin.errors import InputError
    from kailin.evaluate import pubmedqa as pq
    from kailin.io import write_json_atomic

    if (predictions is None) == (model is None):
        raise InputError("give exactly one of --predictions PRED.json or --model MODEL")
    if predictions is not None:
        res = pq.score_prediction_file(predictions, ground_truth)
        typer.echo(pq.format_table(res, title=f"PubMedQA ({predictions.name})"))
    else:
        if ground_truth is not None:
            raise InputError("--ground-truth applies to --predictions; --model always uses "
                             "the packaged PQA-L test labels")
        from kailin.evaluate.pubmedqa_model import evaluate_model

        res = evaluate_model(
            model, adapter=adapter, settings=setting, method=method, limit=limit,
            batch_size=batch_size, max_length=max_length, chat=chat,
            max_new_tokens=max_new_tokens, device=device, predictions_dir=save_predictions,
        )
        for s, r in res["settings"].items():
            typer.echo(pq.format_table(r, title=f"PubMedQA {s} ({method})"))
    if json_out is not None:
        write_json_atomic(json_out, res)
        typer.echo(f"wrote {json_out}")


@app.command("pubmedqa-finetuned")
def pubmedqa_finetuned(
    model: str = typer.Option(..., "--model", "-m",
                              help="The model to fine-tune and evaluate: local path, hub id, "
                                   "kailin training output (e.g. a CPT arm), or 'smollm2'."),
    out: Path = typer.Option(..., "--out", help="Output directory (the fine-tuned model, "
                             "pred_{setting}.json, pubmedqa_finetuned.json)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report here."),
    steps: int = typer.Option(200, "--steps", help="Fine-tuning steps (same for every model)."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate."),
    seed: int = typer.Option(3407, "--seed"),
    max_length: int = typer.Option(512, "--max-length",
                                   help="Tokens per item; longer contexts are cut (counted)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    fold: int = typer.Option(0, "--fold", help="Official PQA-L CV fold 0-9 (450 train / 50 "
                             "dev)."),
    setting: str = typer.Option("reasoning_required", "--setting",
                                help="reasoning_required or question_only."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA."),
    lora_r: int = typer.Option(16, "--lora-r"),
    lora_alpha: int = typer.Option(32, "--lora-alpha"),
    limit: int | None = typer.Option(None, "--limit", help="Only N test items, evenly spaced "
                                     "over the split."),
    eval_batch_size: int = typer.Option(8, "--eval-batch-size"),
    chat: str = typer.Option("auto", "--chat", help="Chat template: auto, always, never."),
    quiet: bool = typer.Option(False, "--quiet", "--no-progress", help="No progress bars."),
) -> None:
    """PubMedQA fine-tuned (LinkBERT/BioGPT protocol): fine-tune on the 450 non-test PQA-L
    items of a fold, evaluate on the 500 test items (reasoning-required)."""
    from kailin.config import from_options
    from kailin.evaluate import pubmedqa as pq
    from kailin.evaluate.pubmedqa_finetune import FinetuneConfig, finetune_and_evaluate
    from kailin.io import write_json_atomic

    cfg = from_options(FinetuneConfig, fold=fold, setting=setting, max_steps=steps,
                       learning_rate=lr, batch_size=batch_size, grad_accum=grad_accum,
                       max_length=max_length, lora=not full, lora_r=lora_r,
                       lora_alpha=lora_alpha, seed=seed, limit=limit,
                       eval_batch_size=eval_batch_size, chat=chat)
    res = finetune_and_evaluate(model, out, cfg, progress=not quiet)
    typer.echo(pq.format_table(res["test"], title=f"PubMedQA fine-tuned {res['setting']} "
                                                  f"(fold {res['fold']})"))
    f = res["fit"]
    typer.echo(f"dev accuracy {res['dev']['accuracy']:.4f} macro-F1 {res['dev']['macro_f1']:.4f}"
               f" (n {res['dev']['n']}); contexts cut to {f['max_length']} tokens: train "
               f"{f['train_truncated']}, dev {f['dev_truncated']}, test {f['test_truncated']}; "
               "dropped 0")
    if json_out is not None:
        write_json_atomic(json_out, res)
        typer.echo(f"wrote {json_out}")


@app.command("signal")
def signal(
    corpus_dir: Path = typer.Argument(..., help="Corpus folder (kailin ingest): the sources' "
                                      "and contexts' MeSH."),
    index: Path = typer.Option(..., "--index", help="Index folder (kailin index build)."),
    questions: Path = typer.Option(
        ..., "--questions",
        help="Trusted questions: PubMedQA JSON (ori_pqal.json), the PQA-A JSONL sample, or "
             "Parquet/JSONL with pmid and question.",
    ),
    measure: list[str] = typer.Option(
        [], "--measure",
        help="Measures to compare (repeatable; default all: kailin, faithful, lin, resnik, "
             "jiang, path, embedding, hybrid).",
    ),
    aggregate: list[str] = typer.Option([], "--aggregate",
                                        help="mean and/or bma (repeatable; default both)."),
    exclude: list[str] = typer.Option([], "--exclude",
                                      help="none and/or check-tags (repeatable; default both)."),
    major_weight: list[float] = typer.Option(
        [], "--major-weight", help="Weights of MajorTopicYN descriptors (default 1 and 2)."),
    rank_weighting: list[str] = typer.Option(
        [], "--rank-weighting", help="none and/or reciprocal (default both)."),
    ic_power: list[float] = typer.Option(
        [], "--ic-power", help="Descriptor weights (IC/MaxIC)^p: values of p (default 0 and 1)."),
    hybrid_alpha: list[float] = typer.Option(
        [], "--hybrid-alpha", help="Weights of Resnik in the hybrid measure (default 0.5)."),
    k: list[int] = typer.Option([], "--k", help="Contexts per question (default 4)."),
    k_sweep: int = typer.Option(3, "--k-sweep",
                                help="Also score the best N configurations at k = 1..8."),
    split: str = typer.Option("all", "--split",
                              help="PubMedQA PQA-L only: dev (outside the test split), test, "
                                   "all."),
    mesh_dir: Path | None = typer.Option(None, "--mesh", help="MeSH build (default: packaged)."),
    max_items: int | None = typer.Option(None, "--max-items", help="Use at most N questions."),
    max_passed_over: int = typer.Option(
        16, "--max-passed-over",
        help="Contexts without MeSH passed over per question before giving up."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the negatives and the bootstrap."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Folder for signal.json and signal.md."),
    top: int = typer.Option(30, "--top", help="Rows printed (all rows go to --out)."),
    quiet: bool = typer.Option(False, "--quiet", "--no-progress", help="No progress bars."),
) -> None:
    """How well the MeSH document score tells a trusted question from a bad one (AUC)."""
    from kailin.evaluate import signal as sg

    configs = sg.candidate_configs(
        measures=measure or sg.SIGNAL_MEASURES,
        aggregates=aggregate or ("mean", "bma"),
        excludes=exclude or ("none", "check-tags"),
        major_weights=major_weight or (1.0, 2.0),
        rank_weightings=rank_weighting or ("none", "reciprocal"),
        ks=k or (4,),
        ic_powers=ic_power or (0.0, 1.0),
        hybrid_alphas=hybrid_alpha or (0.5,),
    )
    report = sg.evaluate_signal(
        corpus_dir, index, questions, configs=configs, mesh_dir=mesh_dir, split=split,
        max_items=max_items, max_passed_over=max_passed_over, k_sweep=k_sweep, n_boot=n_boot,
        seed=seed, progress=not quiet,
    )
    typer.echo(sg.format_markdown(report, limit=top))
    if out is not None:
        jp, mp = sg.write_report(report, out)
        typer.echo(f"wrote {jp} and {mp}")
