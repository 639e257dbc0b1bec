"""The run engine with small stand-in stages (no models): status says why a stage is stale,
--only refuses stale inputs, trainer folders from another key are replaced, input files are keyed
by content, a failed stage is recorded and re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kailin.errors import InputError
from kailin.pipeline.config import RunConfig
from kailin.pipeline.run import KEY_STAMP, RunContext, StageSpec, run_pipeline, run_status

CALLS: list[str] = []


def _specs(fail: set[str] = frozenset()) -> list[StageSpec]:
    def a(ctx: RunContext) -> dict:
        CALLS.append("a")
        ctx.path("a.txt").write_text(str(ctx.cfg.corpus.limit))
        return {"n": ctx.cfg.corpus.limit}

    def b(ctx: RunContext) -> dict:
        CALLS.append("b")
        if "b" in fail:
            raise RuntimeError("boom")
        out = ctx.path("model")
        (out / "weights").write_text(ctx.path("a.txt").read_text() + str(ctx.cfg.dpo.beta))
        return {}

    def c(ctx: RunContext) -> dict:
        CALLS.append("c")
        return {}

    return [
        StageSpec("a", a, lambda c: {"corpus": {"limit": c.corpus.limit}}, outputs=["a.txt"],
                  files=lambda c, base: [base / "input.txt"]),
        StageSpec("b", b, lambda c: {"dpo": {"beta": c.dpo.beta}}, ["a"], outputs=["model"],
                  mode="resume"),
        StageSpec("c", c, lambda c: {"export": c.export.model_dump()}, ["b"]),
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
    run_pipeline(cfg, base, run_dir=base / "run", stages=_specs(kw.pop("fail", set())),
                 progress=False, **kw)
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
    assert st["c"]["reasons"] == ["input b changed"]
    (base / "input.txt").write_text("two")  # the input file's content
    st = _status(base, _cfg())
    assert st["a"]["reasons"] == [f"file {(base / 'input.txt').resolve()} changed"]
    assert _run(base, _cfg()) == ["a", "b", "c"]


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
