"""Check a run config before any work: every path, model spec and input file that an enabled
step will read, resolved as the step will resolve it (relative to the config file), with every
problem reported at once by its key path. ``kailin run`` does this first (``kailin run --check``
does only this), and so does ``kailin status --config``; a problem found here would otherwise
surface when its step runs, hours into a real run.

It reads files' existence and the first bytes of input files; it loads no model and asks no
server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kailin.errors import InputError

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigProblems(InputError):
    """Every problem of a config, one per line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem"
                         f"{'s' if len(problems) != 1 else ''} found before any work:\n"
                         + "\n".join(f"  {p}" for p in problems))


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _model(base: Path, key: str, spec: str | None, out: list[Problem], *,
           kind: str = "model") -> None:
    """A model spec as the steps read it: ``smollm2``, a local folder (relative to the config
    file), a hub id ``org/name``, ``openai:URL#MODEL``, ``vllm:``, ``llamacpp:``."""
    from kailin.llm.spec import parse_spec

    if spec is None:
        return
    s = spec.strip()
    if s.startswith((".", "/", "~")) or (base / s).exists():
        if not _resolve(base, s).exists():
            out.append(Problem(key, f"{kind} folder {_resolve(base, s)} does not exist"))
        return
    try:
        parsed = parse_spec(s)
    except InputError as exc:
        out.append(Problem(key, str(exc)))
        return
    if parsed.backend == "transformers" and "/" in parsed.model and not Path(
            parsed.model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
        if not (hub / f"models--{parsed.model.replace('/', '--')}").exists():
            out.append(Problem(key, f"hub id {parsed.model!r} is not in the local cache "
                               f"({hub}) and HF_HUB_OFFLINE=1: give a local folder"))


def _file(base: Path, key: str, p: str | None, out: list[Problem], what: str = "file") -> None:
    if p is not None and not _resolve(base, p).exists():
        out.append(Problem(key, f"{what} {_resolve(base, p)} does not exist"))


def check_config(cfg: RunConfig, base_dir: Path) -> list[Problem]:
    """The problems of ``cfg`` (empty: nothing found), for the steps it enables."""
    from kailin.corpus.packaged import expand_input
    from kailin.pipeline.stages import pipeline_stages

    base = Path(base_dir)
    out: list[Problem] = []
    enabled = {s.name.split(":")[0] for s in pipeline_stages(cfg) if s.enabled(cfg)}
    c = cfg.corpus
    if not (c.demo or c.inputs or c.corpus_dir):
        out.append(Problem("corpus", "set demo: true, inputs: [files], or corpus_dir"))
    for i, spec in enumerate(c.inputs):
        try:
            files = expand_input(spec, base)
        except InputError as exc:
            out.append(Problem(f"corpus.inputs[{i}]", str(exc)))
            continue
        for f in files:
            if not f.exists():
                out.append(Problem(f"corpus.inputs[{i}]", f"{f} does not exist"))
    if c.corpus_dir is not None:
        d = _resolve(base, c.corpus_dir)
        if not (d / "data").is_dir():
            out.append(Problem("corpus.corpus_dir", f"{d} is not a corpus folder (no data/ "
                               "inside; create one with `kailin ingest`)"))
    _file(base, "corpus.exclude_pmids", c.exclude_pmids, out, "PMID file")
    if cfg.mesh.dir is not None:
        d = _resolve(base, cfg.mesh.dir)
        if not (d / "meta.json").is_file():
            out.append(Problem("mesh.dir", f"{d} is not a MeSH build (no meta.json; build one "
                               "with `kailin mesh build`)"))
    if cfg.index.kind != "bm25":
        _model(base, "index.model", cfg.index.model, out, kind="encoder")
    if "retriever" in enabled:
        _model(base, "retriever.base", cfg.retriever.base, out, kind="encoder")
        _file(base, "retriever.questions", cfg.retriever.questions, out, "questions table")
        _file(base, "retriever.base_index", cfg.retriever.base_index, out, "index folder")
    for i, g in enumerate(cfg.generators):
        _model(base, f"generators[{i}].model", g.model, out)
        if g.sft.enabled and g.sft.data != "pubmedqa":
            _file(base, f"generators[{i}].sft.data", g.sft.data, out, "SFT data file")
    if "answers" in enabled:
        _model(base, "answers.teacher", cfg.answers.teacher, out, kind="teacher")
        if cfg.answers.grounding == "nli":
            _file(base, "answers.grounding_model", cfg.answers.grounding_model, out,
                  "NLI CrossEncoder folder")
        elif cfg.answers.grounding in ("embedding", "llm-judge"):
            _model(base, "answers.grounding_model", cfg.answers.grounding_model, out,
                   kind="grounding model")
    if "downstream" in enabled or "pubmedqa" in enabled:
        _model(base, "downstream.model", cfg.downstream.model, out)
    run_dir = _resolve(base, cfg.run_dir)
    parent = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        out.append(Problem("run_dir", f"{run_dir}: {parent} is not writable"))
    return out


def require_valid(cfg: RunConfig, base_dir: Path, source: str) -> None:
    """Raise :class:`ConfigProblems` naming every problem of ``cfg``."""
    problems = check_config(cfg, base_dir)
    if problems:
        raise ConfigProblems(source, problems)
