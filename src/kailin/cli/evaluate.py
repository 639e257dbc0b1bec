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
