"""``kailin generate``: write candidate questions for the abstracts of a corpus."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from kailin.llm.spec import SPEC_HELP

app = typer.Typer(help="Generate questions (and other texts) from a corpus with LLMs.",
                  no_args_is_help=True)


@app.command("questions")
def questions(
    corpus_dir: Path = typer.Argument(..., help="Corpus folder (written by `kailin ingest`)."),
    generator: list[str] = typer.Option(
        ..., "--generator", "-g",
        help=f"NAME=SPEC, repeatable. SPEC: {SPEC_HELP}. E.g. -g general=smollm2 "
             "-g domain=openai:http://127.0.0.1:8000/v1#BioMistral-7B.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (Parquet parts + stats.json)."),
    mode: str = typer.Option(
        "auto", "--mode",
        help="auto (default): chat for models with a chat template that kailin did not "
             "fine-tune, raw for KAILIN-tuned generators (the choice and why are logged); raw: "
             "KAILIN prompt as plain text; chat: the instruction inside the model's chat "
             "template.",
    ),
    template: str | None = typer.Option(
        None, "--template",
        help="Prompt template (Python format string with {abstract}, {title}, {pmid}) or a file "
             "holding one. Default: KAILIN's prompt.",
    ),
    response_prefix: str | None = typer.Option(
        None, "--response-prefix",
        help="Text that starts the model's answer (default: 'Question:' in chat mode, none in raw "
             "mode; pass '' for none).",
    ),
    system: str | None = typer.Option(None, "--system", help="System message (chat mode)."),
    max_abstract_chars: int | None = typer.Option(
        None, "--max-abstract-chars", help="Cut abstracts to this many characters."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens per question."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy decoding."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty",
                                             help="1.0 = none."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per forward pass (local)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (local)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 (local)."),
    threads: int | None = typer.Option(None, "--threads",
                                       help="CPU threads for torch (default: torch's choice)."),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env",
        help="Environment variable holding the API key of openai: generators.",
    ),
    concurrency: int = typer.Option(8, "--concurrency", help="HTTP requests in flight."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per HTTP request."),
    max_retries: int = typer.Option(5, "--max-retries", help="Retries on 429/5xx/timeouts."),
    cache: Path | None = typer.Option(
        None, "--cache", help="SQLite response cache (default: the user cache folder)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the response cache."),
    rows_per_shard: int = typer.Option(64, "--rows-per-shard",
                                       help="Records per output part (unit of resume)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N records."),
) -> None:
    """Each generator writes one question per abstract; rejected outputs are counted."""
    from kailin.generate.prompts import KAILIN_TEMPLATE, PromptTemplate
    from kailin.generate.prompts import load_template as _load
    from kailin.generate.questions import generate_questions
    from kailin.llm.base import SamplingParams
    from kailin.llm.spec import BackendOptions, parse_generators

    if logging.getLogger().level > logging.DEBUG:  # one INFO line per HTTP request otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    specs = parse_generators(generator)
    tmpl = PromptTemplate(
        template=_load(template) if template is not None else KAILIN_TEMPLATE,
        mode=mode, system=system, response_prefix=response_prefix,
        max_abstract_chars=max_abstract_chars,
    )
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed, repetition_penalty=repetition_penalty)
    options = BackendOptions(device=device, dtype=dtype, batch_size=batch_size, threads=threads,
                             api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                             max_retries=max_retries)
    stats = generate_questions(corpus_dir, specs, out, template=tmpl, params=params,
                               options=options, cache_path=cache, use_cache=not no_cache,
                               rows_per_shard=rows_per_shard, limit=limit)
    for name, g in stats["generators"].items():
        reasons = {k: v for k, v in g["reject_reasons"].items() if v}
        run = stats["this_run"]["generators"].get(name, {})
        pm = stats["prompt_modes"].get(name, {})
        typer.echo(f"{name}: prompt mode {pm.get('mode')} ({pm.get('why')})")
        typer.echo(f"{name}: {g['accepted']}/{g['rows']} questions accepted; rejected "
                   f"{json.dumps(reasons)}; {g['completion_tokens']} completion tokens; "
                   f"cache hits {run.get('cache_hits', 0)}, misses {run.get('cache_misses', 0)} "
                   f"({run.get('prompts_sent', 0)} prompts sent to the backend in "
                   f"{run.get('backend_batches', 0)} batches)")
    typer.echo(f"{out}: {stats['rows']} rows; stats in {out / 'stats.json'}")
    for w in stats["warnings"]:
        typer.echo(f"warning: {w}", err=True)
