"""``--config RUN.yaml`` on the commands that look at a run's files (``kailin corpus``, ``mesh``,
``index search``, ``report``...): the pipeline config (as ``kailin run`` takes it) supplies the
folders the command would otherwise need on the line: the corpus (the config's
``corpus.corpus_dir``, else the run's ``corpus/selected`` or ``corpus/full``), the MeSH build
(``mesh.dir``), the index (``RUN/index``), the run folder. What is given on the line wins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from kailin.errors import InputError


def config_option(what: str) -> Any:
    """The ``--config FILE`` option of a command that reads ``what`` from a run config."""
    return typer.Option(None, "--config", exists=True, dir_okay=False,
                        help=f"Pipeline config (YAML, as `kailin run` takes) that supplies "
                             f"{what}: the run's; what the line gives wins.")


@dataclass(frozen=True)
class RunFiles:
    """Where a run config puts what a command reads."""

    config: Path
    run_dir: Path
    corpus: Path
    mesh: Path | None

    @property
    def index(self) -> Path:
        return self.run_dir / "index"

    @property
    def steering(self) -> Path:
        return self.run_dir / "reports" / "steering.json"

    @property
    def heldout(self) -> Path:
        return self.run_dir / "corpus" / "heldout.parquet"


def run_files(config: Path | None) -> RunFiles | None:
    """The run's files of the pipeline config ``config`` (None: none given)."""
    if config is None:
        return None
    from kailin.pipeline.config import load_config

    cfg, base = load_config(config)

    def resolve(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    run_dir = resolve(cfg.run_dir)
    c = cfg.corpus
    corpus = (resolve(c.corpus_dir) if c.corpus_dir else run_dir / "corpus" /
              ("selected" if c.select_mesh or c.select_years else "full"))
    return RunFiles(config, run_dir, corpus, resolve(cfg.mesh.dir) if cfg.mesh.dir else None)


def need(value: Any, files: RunFiles | None, attr: str, what: str) -> Any:
    """``value`` when given, else the run's ``attr`` (``--config``), else an error asking for
    ``what``."""
    if value is not None:
        return value
    if files is None:
        raise InputError(f"give {what} (or --config RUN.yaml)")
    return getattr(files, attr)


def mesh_of(mesh_dir: Path | None, files: RunFiles | None) -> Path | None:
    """``--mesh`` when given, else the run's MeSH build, else None (the packaged build)."""
    return mesh_dir if mesh_dir is not None or files is None else files.mesh
