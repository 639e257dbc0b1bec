"""``kailin generate``: write candidate questions for the abstracts of a corpus."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from kailin.cli.derive import settings_command
from kailin.generate.questions import GenerationConfig
from kailin.llm.spec import SPEC_HELP

app = typer.Typer(help="Generate questions (and other texts) from a corpus with LLMs.",
                  no_args_is_help=True)


def _template(value: str) -> str:
    """--template: a format string, or a file holding one."""
    from kailin.generate.prompts import load_template

    return load_template(value)


@app.command("questions")
@settings_command(GenerationConfig, param="config", section="generation",
                  defaults=GenerationConfig(max_new_tokens=64, max_abstract_chars=None),
                  custom={"template": ("template", _template)})
def questions(
    corpus_dir: Path = typer.Argument(..., help="Corpus folder (written by `kailin ingest`)."),
    generator: list[str] = typer.Option(
        ..., "--generator", "-g",
        help=f"NAME=SPEC, repeatable. SPEC: {SPEC_HELP}. E.g. -g general=smollm2 "
             "-g domain=openai:http://127.0.0.1:8000/v1#BioMistral-7B.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (Parquet parts + stats.json)."),
    template: str | None = typer.Option(
        None, "--template",
        help="Prompt template (Python format string with {abstract}, {title}, {pmid}) or a file "
             "holding one. Default: KAILIN's prompt.",
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="SQLite response cache (default: the user cache folder)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the response cache."),
    rows_per_shard: int = typer.Option(64, "--rows-per-shard",
                                       help="Records per output part (unit of resume)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N records."),
    config: GenerationConfig = None,  # type: ignore[assignment]  # derived: one option per field
) -> None:
    """Each generator writes one question per abstract; rejected outputs are counted."""
    from kailin.generate.questions import generate_questions
    from kailin.llm.spec import parse_generators

    if logging.getLogger().level > logging.DEBUG:  # one INFO line per HTTP request otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    specs = parse_generators(generator)
    stats = generate_questions(corpus_dir, specs, out, template=config.template_obj(),
                               params=config.sampling(), options=config.backend_options(),
                               cache_path=cache, use_cache=not no_cache,
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
