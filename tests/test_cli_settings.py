"""The command line is derived from the settings classes: every field of a command's settings
class is an option of that command (a new setting is one field in one file), the options that
existed before keep their names, --config FILE reads the same settings from YAML, and the line
wins over the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kailin.align.dpo import DPOConfig
from kailin.align.evaluator import EvaluatorConfig
from kailin.align.generator_eval import GeneratorEvalConfig
from kailin.align.prefer import PreferConfig
from kailin.align.score import ScoreConfig
from kailin.align.sft import SFTConfig
from kailin.cli.main import app
from kailin.corpus.config import CorpusConfig
from kailin.dataset.answers import AnswerConfig
from kailin.dataset.export import ExportConfig
from kailin.dataset.train import DownstreamTrainConfig
from kailin.errors import InputError
from kailin.evaluate.perplexity import PerplexityConfig
from kailin.evaluate.pubmedqa_finetune import PubMedQAFinetuneConfig
from kailin.evaluate.pubmedqa_model import PubMedQAConfig
from kailin.evaluate.signal import SignalEvalConfig
from kailin.generate.questions import GenerationConfig
from kailin.retrieval import IndexBuildConfig
from kailin.retrieval.finetune import FinetuneConfig

#: every command whose settings are a library class, and that class
COMMANDS = {
    ("score",): ScoreConfig,
    ("prefer",): PreferConfig,
    ("train", "sft"): SFTConfig,
    ("train", "dpo"): DPOConfig,
    ("train", "cpt"): DownstreamTrainConfig,
    ("train", "answers"): DownstreamTrainConfig,
    ("index", "finetune"): FinetuneConfig,
    ("dataset", "export"): ExportConfig,
    ("generate", "questions"): GenerationConfig,
    ("dataset", "answers"): AnswerConfig,
    ("evaluate", "pubmedqa"): PubMedQAConfig,
    ("evaluate", "pubmedqa-finetuned"): PubMedQAFinetuneConfig,
    ("ingest",): CorpusConfig,
    ("index", "build"): IndexBuildConfig,
    ("train", "evaluator"): EvaluatorConfig,
    ("evaluate", "signal"): SignalEvalConfig,
    ("evaluate", "generator"): GeneratorEvalConfig,
    ("evaluate", "perplexity"): PerplexityConfig,
}
#: options the commands had before they were derived, which must keep working
KEPT = {
    ("score",): ["--k", "-k", "--measure", "--faithful", "--aggregate", "--exclude",
                 "--ic-power", "--major-weight", "--rank-weighting", "--max-passed-over",
                 "--include-source", "--rows-per-shard", "--mesh", "--corpus"],
    ("prefer",): ["--tau", "--band", "--min-margin", "--invalid-rejected", "--max-pairs",
                  "--validity-share", "--labeller", "--evaluator"],
    ("train", "sft"): ["--full", "--lora-r", "--lora-alpha", "--lr", "--epochs", "--max-steps",
                       "--batch-size", "--grad-accum", "--max-length", "--save-steps",
                       "--max-examples", "--include-pubmedqa-test", "--seed", "--model",
                       "--question-type"],
    ("train", "dpo"): ["--beta", "--lr", "--warmup-steps", "--weight-decay", "--lora-r",
                       "--lora-alpha", "--epochs", "--max-steps", "--batch-size", "--grad-accum",
                       "--max-length", "--max-chars", "--save-steps", "--max-pairs", "--seed"],
    ("train", "cpt"): ["--model", "--full", "--lora-r", "--lora-alpha", "--lr", "--max-steps",
                       "--epochs", "--batch-size", "--grad-accum", "--max-length", "--no-packing",
                       "--save-steps", "--max-examples", "--seed"],
    ("index", "finetune"): ["--base", "--pairs", "--questions", "--max-steps", "--epochs",
                            "--batch-size", "--loss", "--mini-batch-size", "--lr",
                            "--max-seq-length", "--filter-top-n", "--negatives", "--neg-start",
                            "--neg-depth", "--false-negative-overlap", "--base-index",
                            "--mine-max-seq-length", "--max-records", "--holdout",
                            "--exclude-pmids", "--save-steps", "--device", "--bf16",
                            "--no-resume", "--quiet"],
    ("generate", "questions"): ["--generator", "-g", "--out", "--mode", "--template",
                                "--response-prefix", "--system", "--max-abstract-chars",
                                "--max-new-tokens", "--temperature", "--top-p", "--seed",
                                "--repetition-penalty", "--batch-size", "--device", "--dtype",
                                "--threads", "--api-key-env", "--concurrency", "--timeout",
                                "--max-retries", "--cache", "--no-cache", "--rows-per-shard",
                                "--limit"],
    ("evaluate", "pubmedqa-finetuned"): ["--model", "-m", "--out", "--json", "--steps", "--lr",
                                         "--seed", "--max-length", "--batch-size",
                                         "--grad-accum", "--fold", "--setting", "--full",
                                         "--lora-r", "--lora-alpha", "--limit",
                                         "--eval-batch-size", "--chat", "--quiet"],
    ("dataset", "answers"): ["--corpus", "--teacher", "--grounding", "--grounding-model",
                             "--threshold", "--n-contexts", "--max-new-tokens", "--batch-size",
                             "--limit", "--rows-per-shard", "--device", "--cache", "--no-cache"],
    ("evaluate", "pubmedqa"): ["--predictions", "-p", "--ground-truth", "--model", "-m",
                               "--adapter", "--setting", "--method", "--limit", "--batch-size",
                               "--max-length", "--chat", "--max-new-tokens", "--device",
                               "--save-predictions", "--json", "--calibration", "--n-boot",
                               "--seed"],
    ("dataset", "export"): ["--corpus", "--formats", "--template-file", "--cpt-with-answer",
                            "--n-contexts", "--select", "--min-score", "--max-score",
                            "--require-grounded", "--decontaminate", "--no-decontaminate",
                            "--exclude-pmids", "--mesh-dir", "--plots"],
    # hand-written before they were derived (or given --config): every spelling stays
    ("ingest",): ["--out", "-o", "--exclude-pmids", "--workers", "-w", "--no-default-exclusions",
                  "--no-progress", "--full-rewrite", "--rows-per-shard",
                  "--compact-small-fraction", "--compact-max-small", "--salvage"],
    ("index", "build"): ["--out", "-o", "--kind", "--backend", "--model", "--query-model",
                         "--faiss-index", "--exact-threshold", "--nlist", "--nprobe",
                         "--ef-search", "--max-seq-length", "--rrf-k", "--reuse-dense",
                         "--qdrant-url", "--collection", "--shards", "--batch-size",
                         "--overwrite", "--quiet", "-q"],
    ("index", "search"): ["-k", "--top-k", "--exclude-pmid", "--from-year", "--to-year",
                          "--corpus", "--json"],
    ("index", "evaluate"): ["--queries", "--limit", "--corpus", "--json", "--quiet", "-q"],
    ("index", "embed-mesh"): ["--out", "--mesh", "--model", "--mode", "--pairs", "--quiet", "-q"],
    ("train", "evaluator"): ["--out", "--test-fraction", "--l2", "--encoder", "--seed"],
    ("evaluate", "signal"): ["--index", "--questions", "--measure", "--aggregate", "--exclude",
                             "--major-weight", "--rank-weighting", "--ic-power", "--hybrid-alpha",
                             "--k", "--k-sweep", "--split", "--mesh", "--max-items",
                             "--max-passed-over", "--n-boot", "--seed", "--out", "--top",
                             "--quiet", "--no-progress"],
    ("evaluate", "generator"): ["--before", "--after", "--before-scores", "--after-scores",
                                "--before-generator", "--after-generator", "--corpus", "--index",
                                "--mesh", "--n", "--exclude", "--k", "-k", "--work", "--mode",
                                "--max-new-tokens", "--device", "--n-boot", "--seed", "--json"],
    ("evaluate", "perplexity"): ["--model", "-m", "--texts", "--json", "--max-length",
                                 "--stride", "--truncate", "--batch-size", "--limit", "--n-boot",
                                 "--seed", "--device", "--quiet", "--no-progress"],
    ("evaluate", "contamination"): ["--train", "--texts", "--heldout", "--no-pubmedqa",
                                    "--write-texts", "--span-words", "--json"],
    ("mesh", "build"): ["--descriptors", "--out", "--corpus", "--frequencies"],
    ("mesh", "similarity"): ["--mesh", "--measure", "--faithful", "--pairs"],
    ("mesh", "info"): ["--mesh"],
    ("mesh", "lca"): ["--mesh"],
    ("mesh", "evaluate"): ["--mesh", "--measures", "--json"],
    ("dataset", "adaptllm"): ["--corpus", "--with-contexts"],
    ("corpus", "sql"): ["--format", "-f", "--limit"],
    ("corpus", "select"): ["--mesh", "-m", "--out", "-o", "--major-only", "--no-descendants",
                           "--years"],
    ("corpus", "demo"): ["--out", "-o"],
    ("report",): ["--out", "--pairs", "--seed"],
    ("results",): ["--out"],
    ("run",): ["--out", "--only", "--from", "--force", "--executor", "--no-progress", "--set",
               "--check"],
}


def _callback(path: tuple[str, ...]) -> Any:
    """The decorated function behind ``kailin PATH``."""
    group: typer.Typer = app
    for name in path[:-1]:
        group = next(g.typer_instance for g in group.registered_groups if g.name == name)
    return next(c.callback for c in group.registered_commands
                if (c.name or c.callback.__name__) == path[-1])


def _click_command(path: tuple[str, ...]) -> Any:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_setting_is_an_option(path: tuple[str, ...]) -> None:
    fn, cls = _callback(path), COMMANDS[path]
    assert fn.settings_class is cls
    params = {p.name: p for p in _click_command(path).params}
    missing = [f for f in cls.model_fields
               if fn.settings_params.get(f) not in params and f not in fn.settings_skipped]
    assert not missing, f"kailin {' '.join(path)}: no option for {missing}"
    assert "config_file" in params and "--config" in params["config_file"].opts


@pytest.mark.parametrize("path", sorted(KEPT))
def test_options_that_existed_keep_their_names(path: tuple[str, ...]) -> None:
    opts = {o for p in _click_command(path).params for o in (*p.opts, *p.secondary_opts)}
    assert set(KEPT[path]) - opts == set()


def _capture(monkeypatch: pytest.MonkeyPatch, target: str, attr: str) -> dict:
    import importlib

    seen: dict = {}

    def fake(*args: Any, **kwargs: Any) -> dict:
        seen["args"], seen["kwargs"] = args, kwargs
        raise typer.Exit(0)

    monkeypatch.setattr(importlib.import_module(target), attr, fake)
    return seen


def test_config_file_then_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, "kailin.align.prefer", "prefer")
    cfg = tmp_path / "prefer.yaml"
    cfg.write_text("min_margin: 0.2\nmax_pairs: 7\n")
    r = CliRunner().invoke(app, ["prefer", "s", "--out", "o", "--config", str(cfg),
                                 "--max-pairs", "3", "--tau", "none"])
    assert r.exit_code == 0, r.output
    settings = seen["args"][2]
    assert (settings.min_margin, settings.max_pairs, settings.tau) == (0.2, 3, None)
    # a kailin run config: its section, the run's own keys left out
    run = tmp_path / "run.yaml"
    run.write_text("preferences:\n  min_margin: 0.3\ndpo:\n  beta: 0.2\n  generator: dom\n"
                   "  max_steps: 4\n")
    r = CliRunner().invoke(app, ["prefer", "s", "--out", "o", "--config", str(run)])
    assert r.exit_code == 0, r.output
    assert seen["args"][2].min_margin == 0.3
    seen = _capture(monkeypatch, "kailin.align.dpo", "train_dpo")
    r = CliRunner().invoke(app, ["train", "dpo", "p", "--out", "o", "--config", str(run)])
    assert r.exit_code == 0, r.output
    s = seen["args"][2]
    assert (s.beta, s.max_steps, s.batch_size) == (0.2, 4, 16)  # the command's defaults kept
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_margn: 0.2\n")
    r = CliRunner().invoke(app, ["prefer", "s", "--out", "o", "--config", str(bad)])
    assert isinstance(r.exception, InputError)
    assert "min_margn: not settings of PreferConfig" in str(r.exception)


def test_defaults_and_spellings_are_the_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, "kailin.align.sft", "train_sft")
    r = CliRunner().invoke(app, ["train", "sft", "pubmedqa", "--out", "o", "--full",
                                 "--lr", "3e-5", "--max-examples", "5"])
    assert r.exit_code == 0, r.output
    s = seen["args"][2]
    assert s == SFTConfig.authors(lora=False, learning_rate=3e-5, limit=5)
    seen = _capture(monkeypatch, "kailin.align.dpo", "train_dpo")
    r = CliRunner().invoke(app, ["train", "dpo", "p", "--out", "o", "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    s = seen["args"][2]
    assert (s.max_steps, s.epochs) == (2, None)  # --max-steps replaces the epochs
    r = CliRunner().invoke(app, ["train", "dpo", "p", "--out", "o", "--max-steps", "-1"])
    assert (seen["args"][2].epochs) == 3.0  # -1: by epochs, as before
    r = CliRunner().invoke(app, ["train", "dpo", "p", "--out", "o", "--beta", "-1x"])
    assert r.exit_code == 2  # not a number: click's usage error
    seen = _capture(monkeypatch, "kailin.dataset.train", "train_cpt")
    r = CliRunner().invoke(app, ["train", "cpt", "d", "--out", "o", "--no-packing"])
    assert r.exit_code == 0, r.output
    assert seen["args"][2] == DownstreamTrainConfig.authors(packing=False)
    r = CliRunner().invoke(app, ["train", "sft", "pubmedqa", "--out", "o", "--lr", "-1"])
    assert isinstance(r.exception, InputError)  # (kailin's main: `error: ...`, rc 2)
    assert str(r.exception).startswith("--lr: ")


def test_step_names_as_aliases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One name per step where the contracts allow: the YAML takes `score:` and `prefer:` for
    the `mesh` and `preferences` sections, `kailin train cpt` takes --cpt-steps (the downstream
    section's name) for --max-steps."""
    from kailin.pipeline.config import RunConfig

    cfg = RunConfig.model_validate({"score": {"aggregate": "mean"},
                                    "prefer": {"min_margin": 0.1}})
    assert (cfg.mesh.aggregate, cfg.preferences.min_margin) == ("mean", 0.1)
    with pytest.raises(ValueError, match="score and mesh name one section"):
        RunConfig.model_validate({"score": {}, "mesh": {}})
    seen = _capture(monkeypatch, "kailin.dataset.train", "train_cpt")
    r = CliRunner().invoke(app, ["train", "cpt", "d", "--out", "o", "--cpt-steps", "7"])
    assert r.exit_code == 0, r.output
    assert seen["args"][2].max_steps == 7
    run = tmp_path / "run.yaml"  # the downstream section of a run config: cpt_steps
    run.write_text("downstream:\n  cpt_steps: 9\n  controls: true\n")
    r = CliRunner().invoke(app, ["train", "cpt", "d", "--out", "o", "--config", str(run)])
    assert r.exit_code == 0, r.output
    assert seen["args"][2].max_steps == 9


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command of the app, walking its groups."""
    if hasattr(cmd, "commands"):
        return [c for name, sub in cmd.commands.items() for c in _commands(sub, (*path, name))]
    return [(path, cmd)]


def test_every_command_but_run_has_config() -> None:
    """`kailin run` takes the config as its argument; every other command has --config FILE."""
    found = _commands(typer.main.get_command(app))
    assert len(found) > 30
    missing = [" ".join(p) for p, c in found
               if p != ("run",) and not any("--config" in q.opts for q in c.params)]
    assert not missing, f"no --config: {missing}"


def test_run_config_supplies_the_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config RUN.yaml on the commands that look at a run: the corpus, MeSH build, index and
    run folder come from the config (relative to its folder); the line wins."""
    import kailin.cli.index as cli_index
    import kailin.corpus.query as query
    import kailin.mesh.build as mesh_build
    from kailin.cli.runconf import run_files

    run = tmp_path / "run.yaml"
    run.write_text("run_dir: out\ncorpus:\n  corpus_dir: corp\nmesh:\n  dir: meshb\n")
    files = run_files(run)
    assert (files.run_dir, files.corpus, files.mesh, files.index) == (
        tmp_path / "out", tmp_path / "corp", tmp_path / "meshb", tmp_path / "out" / "index")
    seen: dict = {}

    def fake(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] = args
            raise typer.Exit(0)
        return call

    monkeypatch.setattr(query, "stats", fake("stats"))
    monkeypatch.setattr(query, "show", fake("show"))
    monkeypatch.setattr(cli_index, "_load", fake("load"))
    monkeypatch.setattr(mesh_build, "load_mesh", fake("mesh"))
    runner = CliRunner()
    for args in (["corpus", "stats", "--config", str(run)],
                 ["corpus", "show", "--config", str(run), "123"],
                 ["index", "search", "--config", str(run), "a question"],
                 ["mesh", "info", "D001", "--config", str(run)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
    assert seen["stats"] == (tmp_path / "corp",)
    assert seen["show"] == (tmp_path / "corp", 123)
    assert seen["load"][0] == tmp_path / "out" / "index"
    assert seen["mesh"] == (tmp_path / "meshb",)
    r = runner.invoke(app, ["corpus", "show", "other", "7", "--config", str(run)])
    assert seen["show"] == (Path("other"), 7)  # given on the line: the line's
    r = runner.invoke(app, ["report", "--config", str(run)])
    assert isinstance(r.exception, InputError) and "out: no such run folder" in str(r.exception)
    r = runner.invoke(app, ["corpus", "stats"])
    assert isinstance(r.exception, InputError) and "CORPUS_DIR" in str(r.exception)


def test_index_build_reads_the_run_index_section(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, "kailin.retrieval", "build_index")
    run = tmp_path / "run.yaml"
    run.write_text("index:\n  kind: bm25\n  shards: 3\n  k: 6\n")
    r = CliRunner().invoke(app, ["index", "build", "c", "--out", "o", "--config", str(run)])
    assert r.exit_code == 0, r.output
    assert seen["kwargs"]["kind"] == "bm25" and seen["kwargs"]["shards"] == 3
    r = CliRunner().invoke(app, ["index", "build", "c", "--out", "o", "--kind", "dense",
                                 "--backend", "qdrant", "--model", "m", "--collection", "x"])
    assert r.exit_code == 0, r.output
    kw = seen["kwargs"]
    assert (kw["kind"], kw["model"], kw["collection"], kw["batch_size"]) == ("qdrant", "m", "x",
                                                                             1024)
    assert "shards" not in kw and "faiss_index" not in kw
