"""The optional ``retriever`` stage on a tiny real config (88 real MEDLINE records, the packaged
MiniLM, one training step): it writes a sentence-transformers folder that the dense index is built
with, never trains on held-out PMIDs, is keyed like every stage (a no-op re-run does no work, a
finished training with the same key is kept, a changed setting re-trains and re-indexes and
makes every reader of the index stale), and impossible wirings are rejected at load."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from kailin.engine.run import plan_run, run_status
from kailin.errors import InputError
from kailin.io import read_parquet
from kailin.pipeline.config import RunConfig, load_config
from kailin.pipeline.stages import pipeline_stages, run_config
from kailin.pipeline.stages.retriever import RETRIEVER_DIR

ROOT = Path(__file__).resolve().parents[1]
MEDSAMP = ROOT / "data/samples/pubmed_xml_samples/medsamp2006.xml"
FIRST = ["corpus", "workset", "retriever", "index"]
BASE: dict[str, Any] = {
    "run_dir": "run",
    "corpus": {"inputs": [str(MEDSAMP)], "limit": 20, "heldout": 5},
    "index": {"kind": "dense", "k": 2},
    "retriever": {"enabled": True, "max_steps": 1, "batch_size": 8, "max_seq_length": 32,
                  "mine_max_seq_length": 32, "filter_top_n": 20, "negatives": 1},
    "generators": [{"name": "a", "model": "smollm2", "sft": {"enabled": False}},
                   {"name": "b", "model": "smollm2", "temperature": 0.6,
                    "sft": {"enabled": False}}],
    "downstream": {"enabled": False},
    "pubmedqa": {"enabled": False},
}


def _cfg(**changes: dict) -> RunConfig:
    raw = json.loads(json.dumps(BASE))
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    return RunConfig.model_validate(raw)


def _run(tmp: Path, cfg: RunConfig) -> tuple[set[str], dict]:
    m = run_config(cfg, tmp, run_dir=tmp / "run", progress=False, only=FIRST)
    return set(m["ran"]), m


def _keys(cfg: RunConfig, tmp: Path) -> dict[str, str]:
    return {p.spec.name: p.key for p in plan_run(cfg, tmp, tmp / "run", pipeline_stages(cfg))
            if p.enabled}


@pytest.mark.slow
def test_retriever_stage_trains_indexes_and_is_keyed(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from kailin.retrieval import load_index

    run = tmp_path / "run"
    cfg = _cfg()
    ran, m = _run(tmp_path, cfg)
    assert ran == set(FIRST)
    counts = m["stages"]["retriever"]["counts"]
    assert counts["steps"] == 1 and counts["pairs"] > 8

    # the fine-tuned encoder: a sentence-transformers folder with its token limit
    model_dir = run / RETRIEVER_DIR
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 32
    assert model.encode(["a title"]).shape[1] == 384

    # the dense index was built with it
    index = load_index(run / "index")
    params = index.meta["params"]
    assert index.meta["kind"] == "dense"
    assert Path(params.get("dense", params)["model"]) == model_dir.resolve()
    index.close()

    # held-out abstracts (and PubMedQA test PMIDs) are neither pairs nor negatives
    held = set(read_parquet(run / "corpus" / "heldout.parquet")["pmid"].to_pylist())
    assert len(held) == 5
    meta = json.loads((model_dir / "kailin_train.json").read_text())
    assert held <= set(meta["settings"]["exclude_pmids"])
    assert meta["mining"]["held_out"] >= len(held)
    pairs = pq.read_table(model_dir / "pairs.parquet")
    assert not held & set(pairs["pmid"].to_pylist())
    texts = set(pairs["positive"].to_pylist()) | set(pairs["negative_1"].to_pylist())
    held_abs = set(read_parquet(run / "corpus" / "heldout.parquet")["abstract"].to_pylist())
    assert not texts & held_abs

    # `kailin status` shows the stage; the index's readers have not run
    rows = {r["stage"]: r for r in run_status(run, cfg, tmp_path, pipeline_stages(cfg))}
    assert [r for r in rows][:4] == FIRST
    assert rows["retriever"]["status"] == "done" and rows["index"]["status"] == "done"
    assert rows["score"]["status"] == "missing"

    # a no-op re-run does no work and touches no output
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()
              and "state" not in p.parts and p.name != "manifest.json"}
    t0 = time.perf_counter()
    ran, _ = _run(tmp_path, cfg)
    assert ran == set() and time.perf_counter() - t0 < 10
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # a finished training with the same key is kept (state lost: the stage runs, trains nothing)
    (run / "state" / "retriever.json").unlink()
    ran, m = _run(tmp_path, cfg)
    assert ran == {"retriever"}  # same key as before: the index is up to date
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == \
        mtimes[model_dir / "model.safetensors"]
    assert m["stages"]["retriever"]["counts"]["steps"] == 1

    # a retriever setting: the retriever re-trains, the index is rebuilt, every reader of the
    # index goes stale; the stages that do not read it keep their keys
    cfg2 = _cfg(retriever={"max_steps": 2})
    before, after = _keys(cfg, tmp_path), _keys(cfg2, tmp_path)
    changed = {s for s in after if before[s] != after[s]}
    assert {"retriever", "index", "score", "signal", "prefer", "dpo", "generator_eval",
            "answers", "export"} <= changed
    assert not changed & {"corpus", "workset", "questions"}
    rows = {r["stage"]: r for r in run_status(run, cfg2, tmp_path, pipeline_stages(cfg2))}
    assert rows["retriever"]["status"] == "stale"
    assert "setting retriever.max_steps changed" in rows["retriever"]["reasons"]
    assert any(r.startswith("input retriever") for r in rows["index"]["reasons"])
    ran, m = _run(tmp_path, cfg2)
    assert ran == {"retriever", "index"}
    assert m["stages"]["retriever"]["counts"]["steps"] == 2
    assert json.loads((model_dir / "kailin_train.json").read_text())["steps"] == 2
    assert (model_dir / "_kailin_key.json").is_file()
    assert json.loads((model_dir / "_kailin_key.json").read_text())["key"] == \
        json.loads((run / "state" / "retriever.json").read_text())["key"]
    assert (run / "index" / "meta.json").stat().st_mtime_ns != mtimes[run / "index" / "meta.json"]

    # switched off: the index is built with the packaged MiniLM again
    cfg3 = _cfg(retriever={"enabled": False})
    assert "retriever" not in _keys(cfg3, tmp_path)
    assert _keys(cfg3, tmp_path)["index"] != _keys(cfg2, tmp_path)["index"]


def test_question_pairs_train_after_the_questions(tmp_path: Path) -> None:
    names = [s.name for s in pipeline_stages(_cfg(retriever={"pairs": "question"}))]
    assert names.index("questions") < names.index("retriever") < names.index("index") \
        < names.index("score")
    spec = next(s for s in pipeline_stages(_cfg(retriever={"pairs": "question"}))
                if s.name == "retriever")
    assert "questions" in spec.inputs
    # title pairs: right after the workset; off: not listed, the index right after the workset
    assert [s.name for s in pipeline_stages(_cfg())][:4] == FIRST
    names = [s.name for s in pipeline_stages(_cfg(retriever={"enabled": False,
                                                              "pairs": "question"}))]
    assert names[:3] == ["corpus", "workset", "index"] and "retriever" not in names


def test_index_model_without_retriever_changes_the_index(tmp_path: Path) -> None:
    """(The generic key test runs with the retriever on, where index.model is rejected.)"""
    off = _cfg(retriever={"enabled": False})
    other = _cfg(retriever={"enabled": False}, index={"model": "some/encoder"})
    k1, k2 = _keys(off, tmp_path), _keys(other, tmp_path)
    assert k1["index"] != k2["index"] and k1["workset"] == k2["workset"]


def test_retriever_is_off_by_default_and_in_the_demo() -> None:
    assert not RunConfig().retriever.enabled
    cfg, _ = load_config(ROOT / "configs" / "demo.yaml")
    assert not cfg.retriever.enabled
    assert "retriever" not in [s.name for s in pipeline_stages(cfg)]


@pytest.mark.parametrize(("text", "message"), [
    ("retriever: {enabled: true}", "a bm25 index uses none: set index.kind to dense or hybrid"),
    ("index: {kind: hybrid, model: x}\nretriever: {enabled: true}",
     "leave index.model unset"),
    ("index: {kind: dense}\nretriever: {enabled: true, pairs: abstract}", r"retriever\.pairs"),
    ("index: {kind: dense}\nretriever: {enabled: true, batch_size: 1}",
     r"retriever\.batch_size"),
])
def test_impossible_wirings_are_rejected_at_load(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(p)
