"""Re-running `kailin run` after changing the config, on a tiny real config (real corpus, real
SmolLM2, real DPO step): a no-op re-run does nothing; a changed key re-runs exactly the stages
that read it and their readers, and their outputs change; shards whose input did not change are
kept; a smaller corpus leaves no stale part or marker; a trainer re-trains on its own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kailin.io import read_parquet
from kailin.pipeline.config import RunConfig
from kailin.pipeline.stages import run_config

GENS = ("greedy", "sampled")
BASE: dict[str, Any] = {
    "run_dir": "run",
    "executor": {"kind": "local", "rows_per_shard": 2},
    "corpus": {"demo": True, "limit": 6, "heldout": 0},
    "index": {"kind": "bm25", "k": 2},
    "generators": [
        {"name": "greedy", "model": "smollm2", "sft": {"enabled": False}},
        {"name": "sampled", "model": "smollm2", "temperature": 0.6, "seed": 1,
         "sft": {"enabled": False}},
    ],
    "generation": {"mode": "chat", "max_new_tokens": 28, "max_abstract_chars": 300,
                   "batch_size": 8, "threads": 2},
    "dpo": {"max_steps": 1, "batch_size": 1, "max_length": 160},
    "answers": {"teacher": "smollm2", "max_new_tokens": 8, "limit": 2, "grounding": "lexical"},
    "downstream": {"enabled": False},
    "pubmedqa": {"enabled": False},
}


def _with(base: dict | None = None, **changes: dict) -> dict:
    cfg = json.loads(json.dumps(BASE if base is None else base))
    for section, values in changes.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def _run(tmp: Path, raw: dict, **kw: Any) -> tuple[set[str], dict]:
    m = run_config(RunConfig.model_validate(raw), tmp, run_dir=tmp / "run", progress=False,
                   **kw)
    return set(m["ran"]), m


def _shards_ok(out: Path) -> int:
    """Every part has a marker and every marker a part, numbered 0..n-1; returns n."""
    parts = sorted(int(p.stem.split("-")[1]) for p in out.glob("part-*.parquet"))
    marks = sorted(int(p.stem) for p in (out / "_done").glob("*.json"))
    assert parts == marks == list(range(len(parts))), (out, parts, marks)
    return len(parts)


def _questions(run: Path) -> dict[tuple[int, str], str]:
    t = read_parquet(run / "questions").to_pylist()
    return {(r["pmid"], r["generator"]): r["raw"] if "raw" in r else r["question"] for r in t}


@pytest.mark.slow
def test_rerun_after_config_changes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ran, _ = _run(tmp_path, BASE)
    assert ran == {"corpus", "workset", "index", "questions", "score", "signal", "prefer", "dpo",
                   "answers", "export"}

    # 1. a no-op re-run does no work: every stage skipped, no output touched
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()
              and "state" not in p.parts and p.name not in ("manifest.json",
                                                            "file_digests.json")}
    t0 = time.perf_counter()
    ran, m = _run(tmp_path, BASE)
    noop_s = time.perf_counter() - t0
    assert ran == set() and noop_s < 10, noop_s
    assert all(s.get("skipped") or s["status"] == "disabled" for s in m["stages"].values())
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # 2. only an export setting: only export re-runs, and its output changes
    before = read_parquet(run / "export" / "cpt")["text"].to_pylist()
    ran, _ = _run(tmp_path, _with(export={"template": "Title: {title}\n{abstract}\n"
                                          "Q: {question}\nContexts: {contexts}"}))
    assert ran == {"export"}
    after = read_parquet(run / "export" / "cpt")["text"].to_pylist()
    assert after != before and after[0].startswith("Title: ")
    assert {p: p.stat().st_mtime_ns for p in mtimes if "export" not in p.parts} == {
        p: t for p, t in mtimes.items() if "export" not in p.parts}

    # 3. a generation setting: questions and every reader re-run; no score row keeps an old
    #    question (the stale-scores bug), the DPO model is re-trained in place
    q_before = _questions(run)
    dpo_meta = run / "models" / "greedy-dpo" / "kailin_train.json"
    dpo_t = dpo_meta.stat().st_mtime_ns
    cfg3 = _with(generation={"max_new_tokens": 20})
    ran, _ = _run(tmp_path, cfg3)
    assert ran == {"questions", "score", "prefer", "dpo", "answers", "export"}
    q_after = _questions(run)
    assert q_after.keys() == q_before.keys() and q_after != q_before
    qs = {(r["pmid"], r["generator"]): r["question"]
          for r in read_parquet(run / "questions").to_pylist()}
    sc = {(r["pmid"], r["generator"]): r["question"]
          for r in read_parquet(run / "scores").to_pylist()}
    assert sc == qs
    assert dpo_meta.stat().st_mtime_ns != dpo_t

    # 4. a larger corpus sample: only the new shards are generated, every abstract has its
    #    questions (the lost-rows bug); the index is not rebuilt
    cfg4 = json.loads(json.dumps(cfg3))
    cfg4["corpus"]["limit"] = 8
    ran, m = _run(tmp_path, cfg4)
    assert "index" not in ran and {"workset", "questions", "score"} <= ran
    assert m["stages"]["questions"]["counts"]["shards_computed"] == 2  # one per generator
    assert m["stages"]["score"]["counts"]["shards_computed"] == 2
    work = read_parquet(run / "corpus" / "work.parquet")["pmid"].to_pylist()
    assert len(work) == 8
    assert set(_questions(run)) == {(p, g) for p in work for g in GENS}
    for g in GENS:
        assert _shards_ok(run / "questions" / g) == 4

    # 5. a smaller corpus sample: no stale part or marker anywhere
    cfg5 = json.loads(json.dumps(cfg4))
    cfg5["corpus"]["limit"] = 6  # (the sample of step 3: the same pairs, so DPO has data)
    ran, m = _run(tmp_path, cfg5)
    assert m["stages"]["questions"]["counts"]["shards_computed"] == 0  # all kept
    for g in GENS:
        assert _shards_ok(run / "questions" / g) == 3
    assert all(_shards_ok(run / "scores" / g) == 3 for g in GENS)
    assert _shards_ok(run / "answers") == 1
    work = set(read_parquet(run / "corpus" / "work.parquet")["pmid"].to_pylist())
    assert set(read_parquet(run / "scores")["pmid"].to_pylist()) == work
    st = json.loads((run / "state" / "questions.json").read_text())
    assert st["status"] == "done" and st["counts"]["rows"] == 12

    # 6. a trainer setting: DPO re-trains by itself (no "delete the folder" error)
    cfg6 = json.loads(json.dumps(cfg5))
    cfg6["dpo"]["max_steps"] = 2
    ran, _ = _run(tmp_path, cfg6)
    assert ran == {"dpo"}
    assert json.loads(dpo_meta.read_text())["global_step"] == 2

    # 7. --force: the stage, and its readers if what it writes changes; --from: that stage and
    #    every later one. The forced prefer writes the same pairs: DPO is not even run
    dpo_t = dpo_meta.stat().st_mtime_ns
    ran, _ = _run(tmp_path, cfg6, force=["prefer"])
    assert ran == {"prefer"}  # it wrote the same pairs: DPO keeps its key (early cutoff)
    assert dpo_meta.stat().st_mtime_ns == dpo_t
    ran, _ = _run(tmp_path, cfg6, from_stage="answers")
    assert ran == {"answers", "export"}
    ran, _ = _run(tmp_path, cfg6)
    assert ran == set()


#: the same tiny config without the trainers and teacher, for one re-run per key
LIGHT = _with(dpo={"enabled": False}, answers={"enabled": False})


@pytest.fixture(scope="module")
def light_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("light")
    ran, _ = _run(base, LIGHT)
    assert ran == {"corpus", "workset", "index", "questions", "score", "signal", "prefer", "export"}
    return base


def _outputs(run: Path, name: str) -> list:
    t = read_parquet(run / name)
    cols = [c for c in ("pmid", "generator", "question", "score", "context_pmids", "text",
                        "chosen", "rejected") if c in t.column_names]
    return t.select(cols).to_pylist()


@pytest.mark.slow
@pytest.mark.parametrize(("section", "values", "expect", "changed_output"), [
    ("mesh", {"aggregate": "mean"}, {"score", "signal", "prefer", "export"}, "scores"),
    # the score looks at max(index.k, 6) contexts either way: the scores come out the same,
    # so prefer keeps its key (early cutoff); the export keeps index.k contexts and changes
    ("index", {"k": 3}, {"score", "signal", "export"}, "export/cpt"),
    ("generation", {"max_abstract_chars": 150}, {"questions", "score", "prefer", "export"},
     "questions"),
    ("preferences", {"min_margin": 0.05}, {"prefer"}, "preferences"),
])
def test_changing_a_key_reruns_its_readers(light_run: Path, tmp_path: Path, section: str,
                                           values: dict, expect: set[str],
                                           changed_output: str | None) -> None:
    import shutil

    shutil.copytree(light_run / "run", tmp_path / "run")
    before = _outputs(tmp_path / "run", changed_output) if changed_output else None
    ran, _ = _run(tmp_path, _with(LIGHT, **{section: values}))
    assert ran == expect
    if changed_output:
        assert _outputs(tmp_path / "run", changed_output) != before


@pytest.mark.slow
def test_index_rebuilt_from_unchanged_inputs_reruns_nothing_after_it(light_run: Path,
                                                                     tmp_path: Path) -> None:
    """Early cutoff: the index rebuilt from the same corpus with the same settings writes the
    same index, so score, signal, prefer and export keep their keys."""
    import shutil

    shutil.copytree(light_run / "run", tmp_path / "run")
    ran, m = _run(tmp_path, LIGHT, force=["index"])
    assert ran == {"index"}
    assert m["stages"]["index"]["output"] == json.loads(
        (light_run / "run" / "state" / "index.json").read_text())["output"]
    ran, _ = _run(tmp_path, LIGHT)
    assert ran == set()


@pytest.mark.slow
def test_copied_run_then_one_generator_changed(light_run: Path, tmp_path: Path) -> None:
    """A finished run folder copied elsewhere re-runs nothing; then one generator's settings
    change: of the per-generator work only that generator's question and score shards are
    made again (prefer and export, which pool both, re-run as keyed)."""
    import shutil

    shutil.copytree(light_run / "run", tmp_path / "run")
    ran, _ = _run(tmp_path, LIGHT)
    assert ran == set()
    cfg = json.loads(json.dumps(LIGHT))
    cfg["generators"][1]["temperature"] = 0.9  # "sampled" only
    marks = {g: {p.name: p.read_text() for p in (tmp_path / "run" / "questions" / g /
                                                  "_done").glob("*.json")} for g in GENS}
    ran, m = _run(tmp_path, cfg)
    assert ran == {"questions", "score", "prefer", "export"}
    shards = _shards_ok(tmp_path / "run" / "questions" / "sampled")
    assert m["stages"]["questions"]["counts"]["shards_computed"] == shards
    assert m["stages"]["score"]["counts"]["shards_computed"] == shards
    after = {p.name: p.read_text() for p in (tmp_path / "run" / "questions" / "greedy" /
                                              "_done").glob("*.json")}
    assert after == marks["greedy"]  # the other generator's shards untouched
