"""The run engine with small stand-in stages (no models): status says why a stage is stale,
--only refuses stale inputs, trainer folders from another key are replaced, input files are keyed
by content, a failed stage is recorded and re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kailin.engine.run import KEY_STAMP, RunContext, StageSpec, run_pipeline, run_status
from kailin.errors import InputError
from kailin.pipeline.config import RunConfig

CALLS: list[str] = []


def _specs(fail: set[str] = frozenset(), code: dict[str, str] | None = None,
           suffix: str = "") -> list[StageSpec]:
    code = code or {}
    def a(ctx: RunContext) -> dict:
        CALLS.append("a")
        ctx.path("a.txt").write_text(str(ctx.cfg.corpus.limit))
        return {"n": ctx.cfg.corpus.limit}

    def b(ctx: RunContext) -> dict:
        CALLS.append("b")
        if "b" in fail:
            raise RuntimeError("boom")
        out = ctx.path("model")
        (out / "weights").write_text(ctx.path("a.txt").read_text() + str(ctx.cfg.dpo.beta)
                                     + suffix)
        return {}

    def c(ctx: RunContext) -> dict:
        CALLS.append("c")
        return {}

    return [
        StageSpec("a", a, lambda c: {"corpus": {"limit": c.corpus.limit}}, outputs=["a.txt"],
                  files=lambda c, base: [base / "input.txt"], code=code.get("a", "1")),
        StageSpec("b", b, lambda c: {"dpo": {"beta": c.dpo.beta}}, ["a"], outputs=["model"],
                  mode="resume", code=code.get("b", "1")),
        StageSpec("c", c, lambda c: {"export": c.export.model_dump()}, ["b"],
                  code=code.get("c", "1")),
    ]


def _cfg(**kw: object) -> RunConfig:
    return RunConfig.model_validate({"corpus": {"limit": 3}, **kw})


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "input.txt").write_text("one")
    CALLS.clear()
    return tmp_path


def _run(base: Path, cfg: RunConfig, **kw: object) -> list[str]:
    CALLS.clear()
    specs = _specs(kw.pop("fail", set()), kw.pop("code", None), kw.pop("suffix", ""))
    run_pipeline(cfg, base, run_dir=base / "run", stages=specs, progress=False, **kw)
    return list(CALLS)


def _status(base: Path, cfg: RunConfig) -> dict[str, dict]:
    return {r["stage"]: r for r in run_status(base / "run", cfg, base, _specs())}


def test_status_says_what_changed(base: Path) -> None:
    assert _run(base, _cfg()) == ["a", "b", "c"]
    assert _run(base, _cfg()) == []
    assert {s: r["status"] for s, r in _status(base, _cfg()).items()} == {
        "a": "done", "b": "done", "c": "done"}
    st = _status(base, _cfg(dpo={"beta": 0.2}))
    assert st["a"]["status"] == "done"
    assert st["b"]["status"] == "stale" and st["b"]["reasons"] == ["setting dpo.beta changed"]
    assert st["c"]["status"] == "stale" and st["c"]["reasons"] == [
        "input b re-runs first (this stage re-runs only if what b writes changes)"]
    (base / "input.txt").write_text("two")  # the input file's content
    st = _status(base, _cfg())
    assert st["a"]["reasons"] == [f"file {(base / 'input.txt').resolve()} changed"]
    assert _run(base, _cfg()) == ["a"]  # a writes what it wrote: b and c stay (early cutoff)


def test_missing_and_only(base: Path) -> None:
    with pytest.raises(InputError, match="not a run folder"):
        run_status(base / "run")
    _run(base, _cfg(), only=["a"])
    st = _status(base, _cfg())
    assert st["a"]["status"] == "done" and st["b"]["status"] == "missing"
    with pytest.raises(InputError, match=r"--only: .*b \(missing\)"):
        _run(base, _cfg(), only=["c"])
    with pytest.raises(InputError, match="--force nope: no such stage"):
        _run(base, _cfg(), force=["nope"])


def test_trainer_folder_from_another_key_is_replaced(base: Path) -> None:
    _run(base, _cfg())
    model = base / "run" / "model"
    (model / "checkpoint-1").mkdir()
    old_key = json.loads((model / KEY_STAMP).read_text())["key"]
    assert _run(base, _cfg(dpo={"beta": 0.3})) == ["b", "c"]
    assert not (model / "checkpoint-1").exists()  # old checkpoints gone, no error
    assert json.loads((model / KEY_STAMP).read_text())["key"] != old_key
    assert (model / "weights").read_text() == "30.3"


def test_a_resumed_step_may_write_a_report_file_beside_its_folders(base: Path) -> None:
    """A ``resume`` step's outputs are folders, except those named like a file: a report such
    as ``reports/x.json`` is written by the step, not made a folder before it runs (the
    pubmedqa_finetune step failed on that: "Is a directory")."""
    def t(ctx: RunContext) -> dict:
        (ctx.path("models", "t") / "w").write_text(str(ctx.cfg.dpo.beta))
        ctx.path("reports").mkdir(exist_ok=True)
        ctx.path("reports", "t.json").write_text(json.dumps({"beta": ctx.cfg.dpo.beta}))
        return {}

    specs = [StageSpec("t", t, reads=("dpo.beta",), outputs=["models/t", "reports/t.json"],
                       mode="resume")]
    for beta in (0.1, 0.1, 0.3):
        run_pipeline(_cfg(dpo={"beta": beta}), base, run_dir=base / "run", stages=specs,
                     progress=False)
        report = base / "run" / "reports" / "t.json"
        assert report.is_file() and json.loads(report.read_text()) == {"beta": beta}
        assert (base / "run" / "models" / "t" / KEY_STAMP).is_file()


def test_failed_stage_is_recorded_and_rerun(base: Path) -> None:
    with pytest.raises(RuntimeError):
        _run(base, _cfg(), fail={"b"})
    st = _status(base, _cfg())
    assert st["b"]["status"] == "failed" and "boom" in st["b"]["error"]
    assert _run(base, _cfg()) == ["b", "c"]


def test_corpus_input_dropped_leaves_none_of_its_records(tmp_path: Path) -> None:
    from kailin.corpus.reader import open_corpus
    from kailin.pipeline.stages import pipeline_stages

    samples = Path(__file__).resolve().parents[1] / "data" / "samples" / "pubmed_xml_samples"
    a, b = samples / "medsamp2006.xml", samples / "pubmed-29768149.xml"

    def run(inputs: list[Path]) -> list[str]:
        cfg = RunConfig.model_validate({"corpus": {"inputs": [str(p) for p in inputs],
                                                   "exclude_pmids": None}})
        m = run_pipeline(cfg, tmp_path, run_dir=tmp_path / "run",
                         stages=pipeline_stages(cfg)[:2], progress=False)
        return m["ran"]

    assert run([a]) == ["corpus", "workset"]
    n_a = open_corpus(tmp_path / "run" / "corpus" / "full").num_rows
    assert run([a, b]) == ["corpus", "workset"]  # an added file: ingested on top
    n_ab = open_corpus(tmp_path / "run" / "corpus" / "full").num_rows
    assert n_ab > n_a
    assert run([a, b]) == []
    assert run([a]) == ["corpus", "workset"]  # a dropped file: none of its records stay
    assert open_corpus(tmp_path / "run" / "corpus" / "full").num_rows == n_a


def test_early_cutoff_a_stage_that_writes_the_same_leaves_its_readers(base: Path) -> None:
    assert _run(base, _cfg()) == ["a", "b", "c"]
    # forced, a writes the same bytes: b and c keep their keys
    assert _run(base, _cfg(), force=["a"]) == ["a"]
    assert _run(base, _cfg()) == []
    # a changed input that leads to the same output: only a re-runs
    (base / "input.txt").write_text("other content")
    assert _run(base, _cfg()) == ["a"]
    # a's output changes: its readers follow
    assert _run(base, _cfg(corpus={"limit": 4})) == ["a", "b", "c"]


def test_code_version_bump_reruns_that_stage_and_what_reads_a_change(base: Path) -> None:
    assert _run(base, _cfg()) == ["a", "b", "c"]
    # b's code version bumped, its output unchanged: b re-runs, c stays (early cutoff)
    assert _run(base, _cfg(), code={"b": "2"}) == ["b"]
    assert _run(base, _cfg(), code={"b": "2"}) == []
    # a code change that changes what b writes (the bump that comes with it): b and c re-run,
    # a (upstream) never
    assert _run(base, _cfg(), code={"b": "3"}, suffix="!") == ["b", "c"]
    assert (base / "run" / "model" / "weights").read_text() == "30.1!"
    # status says why
    st = {r["stage"]: r for r in run_status(base / "run", _cfg(), base,
                                             _specs(code={"b": "4"}, suffix="!"))}
    assert st["a"]["status"] == "done"
    assert st["b"]["reasons"] == ["code version 3 -> 4"]


def test_copied_run_folder_recomputes_nothing(base: Path, tmp_path_factory) -> None:
    import shutil

    assert _run(base, _cfg()) == ["a", "b", "c"]
    other = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(base / "run", other / "run")
    (other / "input.txt").write_text("one")
    CALLS.clear()
    run_pipeline(_cfg(), other, run_dir=other / "run", stages=_specs(), progress=False)
    assert CALLS == []


def test_keys_of_an_older_scheme_say_why_once(base: Path) -> None:
    assert _run(base, _cfg()) == ["a", "b", "c"]
    state = base / "run" / "state" / "a.json"
    st = json.loads(state.read_text())
    st["parts"].pop("scheme")
    st["key"] = "old"
    state.write_text(json.dumps(st))
    reasons = _status(base, _cfg())["a"]["reasons"]
    assert len(reasons) == 1 and "re-runs once" in reasons[0]
    assert _run(base, _cfg()) == ["a"]  # the same output: nothing after it


def test_a_step_reads_only_what_it_declares(base: Path) -> None:
    """The key holds exactly the declared settings, and the step's code gets a view that
    refuses any other: a key that misses a setting the code reads fails the first run."""
    from kailin.engine.view import UndeclaredSetting

    def honest(ctx: RunContext) -> dict:
        return {"limit": ctx.cfg.corpus.limit}

    def sneaky(ctx: RunContext) -> dict:
        return {"beta": ctx.cfg.dpo.beta}

    ok = [StageSpec("a", honest, reads=("corpus.limit",))]
    m = run_pipeline(_cfg(), base, run_dir=base / "run", stages=ok, progress=False)
    assert m["stages"]["a"]["counts"] == {"limit": 3}
    assert m["stages"]["a"]["parts"]["settings"] == {"corpus.limit": 3}
    # another setting changes nothing for this step
    m = run_pipeline(_cfg(dpo={"beta": 0.3}), base, run_dir=base / "run", stages=ok,
                     progress=False)
    assert m["ran"] == []
    bad = [StageSpec("b", sneaky, reads=("corpus.limit",))]
    with pytest.raises(UndeclaredSetting, match=r"step b reads setting dpo, which it does not declare"):
        run_pipeline(_cfg(), base, run_dir=base / "run2", stages=bad, progress=False)
