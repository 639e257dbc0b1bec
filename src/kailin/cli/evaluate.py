"""``kailin evaluate``: PubMedQA evaluation (and, from kailin.cli.evaluate_generator, the
question-generator evaluation registered on the same app)."""

from __future__ import annotations

from pathlib import Path

import typer

from kailin.cli.derive import settings_command
from kailin.cli.runconf import config_option, run_files
from kailin.evaluate.perplexity import PerplexityConfig
from kailin.evaluate.pubmedqa_finetune import PubMedQAFinetuneConfig
from kailin.evaluate.pubmedqa_model import PubMedQAConfig
from kailin.evaluate.signal import SignalEvalConfig

app = typer.Typer(help="Evaluate generators and downstream models.", no_args_is_help=True)


@app.command("pubmedqa")
@settings_command(PubMedQAConfig, param="config", section="pubmedqa",
                  defaults=PubMedQAConfig(n_boot=1000), names={"settings": "--setting"},
                  skip=("enabled",))
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
    max_length: int = typer.Option(1024, "--max-length", help="Prompt token limit."),
    chat: str = typer.Option("auto", "--chat", help="Chat template: auto, always, never."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="For --method generate."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cpu)."),
    save_predictions: Path | None = typer.Option(
        None, "--save-predictions", help="Directory for pred_{setting}.json (official format)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    config: PubMedQAConfig = None,  # type: ignore[assignment]  # derived: one option per field
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
            model, adapter=adapter, settings=list(config.settings), method=config.method,
            limit=config.limit, batch_size=config.batch_size, max_length=max_length, chat=chat,
            max_new_tokens=max_new_tokens, device=device, predictions_dir=save_predictions,
            calibration=config.calibration, n_boot=config.n_boot, seed=seed,
        )
        for s, r in res["settings"].items():
            typer.echo(pq.format_table(r, title=f"PubMedQA {s} ({config.method})"))
            typer.echo(_continuous_line(r))
    if json_out is not None:
        write_json_atomic(json_out, res)
        typer.echo(f"wrote {json_out}")


@app.command("perplexity")
@settings_command(PerplexityConfig, param="cfg")
def perplexity(
    model: str = typer.Option(..., "--model", "-m",
                              help="Causal LM: local path, hub id, kailin training output, or "
                                   "'smollm2'."),
    texts: Path = typer.Option(..., "--texts",
                               help="Parquet file/folder or JSONL with a 'text' column (and "
                                    "optional 'pmid' / 'id')."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the results here and the per-text NLLs beside it "
                             "(OUT's stem + .per_text.parquet)."),
    quiet: bool = typer.Option(False, "--quiet", "--no-progress", help="No progress bars."),
    cfg: PerplexityConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Held-out perplexity: the token-weighted mean NLL of a model on a table of texts."""
    from kailin.evaluate.perplexity import evaluate_perplexity

    r = evaluate_perplexity(model, texts, **cfg.model_dump(), json_out=json_out,
                            progress=not quiet)
    typer.echo(f"mean NLL {r['mean_nll']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] "
               f"nats/token (perplexity {r['perplexity']:.2f}) over {r['tokens']} tokens of "
               f"{r['n']} texts; {r['windows']} windows, {r['truncated_texts']} texts truncated "
               f"({r['tokens_dropped']} tokens left out)")
    if json_out is not None:
        typer.echo(f"wrote {json_out} and {r['per_text_file']}")


@app.command("contamination")
def contamination(
    train: list[str] = typer.Option(
        ..., "--train", help="ARM=TABLE: an arm's training data (an export's cpt/, sft/ or "
                             "triples/ folder, a control's cpt/); repeatable."),
    texts: Path | None = typer.Option(
        None, "--texts", help="Evaluation texts (Parquet/JSONL with 'text', optional 'pmid'/"
                              "'id'); default: built from --heldout and PubMedQA."),
    heldout: Path | None = typer.Option(
        None, "--heldout", help="The run's corpus/heldout.parquet (with --write-texts or "
                                "without --texts)."),
    no_pubmedqa: bool = typer.Option(False, "--no-pubmedqa",
                                     help="Leave the PubMedQA test contexts out of the built "
                                          "texts."),
    write_texts: Path | None = typer.Option(
        None, "--write-texts", help="Write the built evaluation texts here (Parquet), for "
                                    "kailin evaluate perplexity --texts."),
    span_words: int = typer.Option(25, "--span-words",
                                   help="Words in a shared span that counts as a copy."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report here."),
    config: Path | None = config_option("--heldout (RUN/corpus/heldout.parquet)"),
) -> None:
    """Whether any held-out evaluation text (by PMID or by a long shared span) occurs in any
    arm's training data; exit code 1 when one does."""
    from kailin.errors import InputError
    from kailin.evaluate.contamination import check_contamination, heldout_eval_texts
    from kailin.io import write_json_atomic, write_parquet_atomic

    arms: dict[str, str] = {}
    for spec in train:
        arm, sep, path = spec.partition("=")
        if not sep or not arm or not path:
            raise InputError(f"--train {spec!r}: give ARM=TABLE, e.g. dpo=runs/x/export/cpt")
        arms[arm] = path
    files = run_files(config)
    if heldout is None and files is not None and files.heldout.is_file():
        heldout = files.heldout
    if texts is not None:
        from kailin.evaluate.perplexity import load_texts

        table = load_texts(texts)
    else:
        table = heldout_eval_texts(heldout, pubmedqa=not no_pubmedqa)
    if table.num_rows == 0:
        raise InputError("no evaluation texts: give --texts, or --heldout and/or leave out "
                         "--no-pubmedqa")
    if write_texts is not None:
        write_parquet_atomic(table, write_texts)
        typer.echo(f"wrote {table.num_rows} evaluation texts to {write_texts}")
    rep = check_contamination(table, arms, span_words=span_words)
    for arm, a in rep["arms"].items():
        typer.echo(f"{arm}: {a['rows']} training rows; {a['pmid_hits']} evaluation texts by "
                   f"PMID, {a['text_hits']} by text")
    typer.echo("clean" if rep["clean"] else
               f"CONTAMINATED: {rep['contaminated']} of {rep['n_eval']} evaluation texts, e.g. "
               + ", ".join(list(rep["items"])[:5]))
    if json_out is not None:
        write_json_atomic(json_out, rep)
        typer.echo(f"wrote {json_out}")
    if not rep["clean"]:
        raise typer.Exit(1)


def _continuous_line(r: dict) -> str:
    """The gold margin and the calibrated figures of one setting, beside the predicted labels."""
    def counts(c: dict) -> str:
        return "/".join(f"{k} {v}" for k, v in c["predicted"].items())

    lines = [f"  predicted: {counts(r['label_counts'])}"]
    m = r.get("gold_margin")
    if m:
        lines.append(f"  gold margin {m['mean']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]")
    c = r.get("calibrated")
    if c:
        cm = c["gold_margin"]
        lines.append(f"  {c['method']}-calibrated: accuracy {c['accuracy']:.4f}  macro-F1 "
                     f"{c['macro_f1']:.4f}  gold margin {cm['mean']:+.4f}  predicted: "
                     f"{counts(c['label_counts'])}")
    return "\n".join(lines)


@app.command("pubmedqa-finetuned")
@settings_command(PubMedQAFinetuneConfig, param="cfg", names={"max_steps": "--steps"},
                  aliases={"max_steps": ("--max-steps",)},
                  custom={"lora": ("full", lambda full: not full)})
def pubmedqa_finetuned(
    model: str = typer.Option(..., "--model", "-m",
                              help="The model to fine-tune and evaluate: local path, hub id, "
                                   "kailin training output (e.g. a CPT arm), or 'smollm2'."),
    out: Path = typer.Option(..., "--out", help="Output directory (the fine-tuned model, "
                             "pred_{setting}.json, pubmedqa_finetuned.json)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report here."),
    full: bool | None = typer.Option(None, "--full", help="Full fine-tuning instead of LoRA."),
    quiet: bool = typer.Option(False, "--quiet", "--no-progress", help="No progress bars."),
    cfg: PubMedQAFinetuneConfig = None,  # type: ignore[assignment]  # derived: one per field
) -> None:
    """PubMedQA fine-tuned (LinkBERT/BioGPT protocol): fine-tune on the 450 non-test PQA-L
    items of a fold, evaluate on the 500 test items (reasoning-required)."""
    from kailin.evaluate import pubmedqa as pq
    from kailin.evaluate.pubmedqa_finetune import finetune_and_evaluate
    from kailin.io import write_json_atomic

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
@settings_command(SignalEvalConfig, param="cfg")
def signal(
    corpus_dir: Path = typer.Argument(..., help="Corpus folder (kailin ingest): the sources' "
                                      "and contexts' MeSH."),
    index: Path = typer.Option(..., "--index", help="Index folder (kailin index build)."),
    questions: Path = typer.Option(
        ..., "--questions",
        help="Trusted questions: PubMedQA JSON (ori_pqal.json), the PQA-A JSONL sample, or "
             "Parquet/JSONL with pmid and question.",
    ),
    mesh_dir: Path | None = typer.Option(None, "--mesh", help="MeSH build (default: packaged)."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Folder for signal.json and signal.md."),
    top: int = typer.Option(30, "--top", help="Rows printed (all rows go to --out)."),
    quiet: bool = typer.Option(False, "--quiet", "--no-progress", help="No progress bars."),
    cfg: SignalEvalConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """How well the MeSH document score tells a trusted question from a bad one (AUC)."""
    from kailin.evaluate import signal as sg

    report = sg.evaluate_signal(
        corpus_dir, index, questions, configs=cfg.configs(), mesh_dir=mesh_dir, split=cfg.split,
        max_items=cfg.max_items, max_passed_over=cfg.max_passed_over, k_sweep=cfg.k_sweep,
        n_boot=cfg.n_boot, seed=cfg.seed, progress=not quiet,
    )
    typer.echo(sg.format_markdown(report, limit=top))
    if out is not None:
        jp, mp = sg.write_report(report, out)
        typer.echo(f"wrote {jp} and {mp}")
