"""Entry point of the ``kailin`` command.

Each concern registers its sub-app or commands here, one import each. Commands are thin: they
parse arguments, call the library, print. :class:`~kailin.errors.KailinError` is shown as a
one-line message (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from kailin import __version__
from kailin.errors import KailinError

app = typer.Typer(
    name="kailin",
    help="Distil AI-ready biomedical training data from PubMed, guided by the MeSH hierarchy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kailin {__version__}")
        raise typer.Exit()


class _JsonFormatter(logging.Formatter):
    """One JSON object per log line (time, level, logger, message) for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


#: loggers of libraries whose INFO lines and warnings only show with --verbose
THIRD_PARTY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "sentence_transformers",
                       "httpx", "httpcore", "urllib3", "filelock", "torch", "accelerate", "peft",
                       "trl", "vllm", "qdrant_client", "fsspec", "numexpr")


def quiet_third_party(verbose: bool = False, progress: bool = True) -> None:
    """Third-party progress bars and warnings off unless ``verbose``; every bar (kailin's too)
    off when ``progress`` is false. Environment variables are set only where the user has not
    set them, and before the libraries are imported (commands import them lazily)."""
    import os
    import warnings

    if not progress:
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads TQDM_* as defaults
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # hub, transformers, datasets
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # library warnings (FutureWarning, UserWarning...)
    warnings.filterwarnings("default", module=r"kailin(\.|$)")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Log debug messages; show third-party progress bars and "
                                      "warnings (hidden by default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Only warnings, errors and each command's summary lines; "
                                    "no progress bars."),
    no_progress: bool = typer.Option(False, "--no-progress", envvar="KAILIN_NO_PROGRESS",
                                     help="No progress bars (kailin's included)."),
    log_json: bool = typer.Option(False, "--log-json", envvar="KAILIN_LOG_JSON",
                                  help="Structured logs: one JSON object per line."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """kailin: KAILIN / m-KAILIN dataset distillation."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)
    from kailin import progress

    progress.set_enabled(not (quiet or no_progress))  # every command's bars, whatever its options
    quiet_third_party(verbose=verbose, progress=not (quiet or no_progress))


# --- registration: one line per concern ----------------------------------------------------
from kailin.cli import mesh as _mesh  # noqa: E402

app.add_typer(_mesh.app, name="mesh")
from kailin.cli import evaluate as _evaluate  # noqa: E402

app.add_typer(_evaluate.app, name="evaluate")
from kailin.cli import dataset as _dataset  # noqa: E402

app.add_typer(_dataset.app, name="dataset")
from kailin.cli import align as _align  # noqa: E402

app.command("score")(_align.score)
app.command("prefer")(_align.prefer)
from kailin.cli import evaluate_generator as _evaluate_generator  # noqa: E402, F401
from kailin.cli import train as _train  # noqa: E402
from kailin.cli import train_downstream as _train_downstream  # noqa: E402, F401

app.add_typer(_train.app, name="train")
from kailin.cli import corpus as _corpus  # noqa: E402

app.add_typer(_corpus.app, name="corpus")
app.command("ingest")(_corpus.ingest_cmd)
from kailin.cli import index as _index  # noqa: E402

app.add_typer(_index.app, name="index")
from kailin.cli import generate as _generate  # noqa: E402

app.add_typer(_generate.app, name="generate")
from kailin.cli import run as _run  # noqa: E402

app.command("run")(_run.run)
app.command("status")(_run.status)
from kailin.cli import report as _report  # noqa: E402

app.command("report")(_report.report)
app.command("results")(_report.results)


def main() -> None:
    try:
        app()
    except KailinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
