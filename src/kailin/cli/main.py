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


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)


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


def main() -> None:
    try:
        app()
    except KailinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
