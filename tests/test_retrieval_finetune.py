"""``kailin index finetune`` on a small real corpus: the consistency filter, hard-negative mining
that skips false negatives (shared major MeSH topics), and a tiny training run whose saved model
loads, resumes and builds a dense index."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kailin.corpus.schema import CORPUS_SCHEMA
from kailin.retrieval.finetune import (
    FinetuneConfig,
    consistency_filter,
    finetune,
    is_false_negative,
    is_held_out,
    mine_negatives,
    mine_pairs,
    topic_sets,
)
from test_retrieval_fixtures import NLM, _to_uis

N_DOCS = 80


def nlm_with_majors(limit: int) -> list[dict]:
    """The NLM benchmark abstracts with their MeSH topics and MajorTopic flags ('*')."""
    docs: dict[str, dict] = defaultdict(dict)
    for f in sorted(NLM.glob("*/*.TiAbMe")):
        for line in f.read_text(encoding="ascii", errors="replace").splitlines():
            if line.count("|") >= 2:
                pmid, kind, rest = line.split("|", 2)
                docs[pmid].setdefault(kind, rest)
    recs = []
    for pmid, d in sorted(docs.items(), key=lambda kv: int(kv[0])):
        if "a" not in d or "t" not in d:
            continue
        major: dict[str, bool] = {}
        for e in (e for e in d.get("m", "").split("|") if e):
            parts = e.split("!")
            name = parts[0].rstrip("*")
            major[name] = major.get(name, False) or any(p.endswith("*") for p in parts)
        uis: list[str] = []
        flags: list[bool] = []
        for name, is_major in major.items():
            ui = _to_uis([name])[0]
            if ui not in uis:
                uis.append(ui)
                flags.append(is_major)
        recs.append((int(pmid), d["t"], d["a"], uis, flags))
    # records on a few shared major topics first (so that false negatives exist), then others
    counts: dict[str, int] = defaultdict(int)
    for r in recs:
        for ui, f in zip(r[3], r[4], strict=True):
            counts[ui] += f
    top = set(sorted(counts, key=lambda u: -counts[u])[:6])
    recs.sort(
        key=lambda r: (not any(f and u in top for u, f in zip(r[3], r[4], strict=True)), r[0])
    )
    return recs[:limit]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "corpus"
    (out / "data").mkdir(parents=True)
    recs = nlm_with_majors(N_DOCS)
    cols = {f.name: [None] * len(recs) for f in CORPUS_SCHEMA}
    cols.update(
        pmid=[r[0] for r in recs],
        version=[1] * len(recs),
        title=[r[1] for r in recs],
        abstract=[r[2] for r in recs],
        mesh_uis=[r[3] for r in recs],
        mesh_major=[r[4] for r in recs],
        year=[2000] * len(recs),
    )
    pq.write_table(pa.table(cols, schema=CORPUS_SCHEMA), out / "data" / "part-00000.parquet")
    (out / "manifest.json").write_text(json.dumps({"records": len(recs)}))
    return out


def test_consistency_filter() -> None:
    ranked = np.array([[5, 1, 2], [3, 4, 0], [2, 9, 9]])
    assert consistency_filter(ranked, np.array([1, 0, 7]), 2).tolist() == [True, False, False]
    assert consistency_filter(ranked, np.array([1, 0, 7]), 3).tolist() == [True, True, False]
    assert consistency_filter(ranked, np.array([1, 0, 7]), 0).all()


def test_false_negative_rule_and_mining() -> None:
    topics = [{"A", "B"}, {"A", "B", "C"}, {"A"}, {"D"}, set(), {"B", "E"}]
    assert is_false_negative(topics[0], topics[1], 0.5)  # shares both
    assert is_false_negative(topics[0], topics[2], 0.5)  # shares half
    assert not is_false_negative(topics[0], topics[2], 0.75)
    assert not is_false_negative(topics[0], topics[3], 0.5)
    assert not is_false_negative(topics[0], topics[4], 0.5)  # no topics: no evidence
    ranked = np.array([[0, 1, 2, 3, 4, 5]])
    negs, skipped = mine_negatives(ranked, np.array([0]), topics, n=2, start=1, overlap=0.5)
    assert negs == [[3, 4]] and skipped == 2  # the positive is not counted as skipped
    negs, _ = mine_negatives(ranked, np.array([0]), topics, n=2, start=5, overlap=0.5)
    assert negs == [[4]]  # not enough ranks left
    # major topics decide; records without a major flag fall back to all their topics
    assert topic_sets([["A", "B"], ["C", "D"]], [[True, False], None]) == [{"A"}, {"C", "D"}]


def test_held_out_split_is_deterministic() -> None:
    pm = np.arange(1, 20001)
    held = is_held_out(pm, 0.1)
    assert 0.08 < held.mean() < 0.12
    assert (held == is_held_out(pm, 0.1)).all() and not is_held_out(pm, 0.0).any()
    assert (is_held_out(pm, 0.05) <= held).all()  # nested: a smaller hold-out is a subset


def test_mine_pairs_on_real_records(corpus: Path) -> None:
    cfg = FinetuneConfig(
        holdout=0.2,
        mine_max_seq_length=64,
        filter_top_n=3,
        negatives=2,
        neg_start=2,
        neg_depth=40,
        false_negative_overlap=0.5,
    )
    mined = mine_pairs(corpus, cfg, progress=False)
    s, t = mined.stats, mined.table
    assert s["records"] == N_DOCS and 0 < s["held_out"] < N_DOCS / 2
    assert s["consistent_pairs"] <= s["candidate_pairs"] and s["consistency_rate"] > 0.7
    assert s["pairs"] == t.num_rows > 20
    assert s["false_negatives_skipped"] > 0  # the real records share major topics
    table = pq.read_table(corpus / "data")
    pmids = np.asarray(table.column("pmid").to_pylist())
    held = set(pmids[is_held_out(pmids, 0.2, cfg.seed)].tolist())
    assert not held & set(t.column("pmid").to_pylist())
    by_abs = {a: i for i, a in enumerate(table.column("abstract").to_pylist())}
    topics = topic_sets(
        table.column("mesh_uis").to_pylist(), table.column("mesh_major").to_pylist()
    )
    for pmid, pos, n1, n2 in zip(
        *(t.column(c).to_pylist() for c in ("pmid", "positive", "negative_1", "negative_2")),
        strict=True,
    ):
        assert int(pmids[by_abs[pos]]) == pmid
        src = topics[by_abs[pos]]
        for neg in (n1, n2):
            assert neg != pos and int(pmids[by_abs[neg]]) not in held
            assert not is_false_negative(src, topics[by_abs[neg]], 0.5)
    # a stricter filter keeps fewer pairs
    strict = mine_pairs(
        corpus,
        FinetuneConfig(holdout=0.2, filter_top_n=1, negatives=0, mine_max_seq_length=64),
        progress=False,
    )
    assert strict.stats["consistent_pairs"] <= s["consistent_pairs"]


@pytest.mark.slow
def test_tiny_training_run_loads_resumes_and_indexes(corpus: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from typer.testing import CliRunner

    from kailin.cli.index import app
    from kailin.retrieval import build_index

    out = tmp_path / "model"
    args = [
        "finetune",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--max-seq-length",
        "64",
        "--mine-max-seq-length",
        "64",
        "--save-steps",
        "1",
        "--holdout",
        "0.2",
        "--quiet",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 steps" in res.output
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["complete"] and meta["steps"] == 2 and meta["mining"]["pairs"] > 20
    assert (out / "modules.json").exists() and (out / "checkpoints" / "checkpoint-2").exists()
    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 64
    # resume: the mined pairs are reused and training continues from the last checkpoint
    cfg = FinetuneConfig(
        holdout=0.2,
        mine_max_seq_length=64,
        max_seq_length=64,
        batch_size=8,
        max_steps=3,
        save_steps=1,
    )
    meta2 = finetune(corpus, out, cfg, progress=False)
    assert meta2["resumed_from"].endswith("checkpoint-2") and meta2["steps"] == 3
    assert meta2["mining"] == meta["mining"]
    index = build_index(corpus, tmp_path / "dense", kind="dense", model=str(out), progress=False)
    assert index.meta["params"]["dense"]["model"] == str(out.resolve())
    title = pq.read_table(corpus / "data").column("title")[0].as_py()
    assert index.search([title], k=3)[0][0].title == title
    index.close()


def test_no_checkpoint_after_the_last_step_unless_save_steps_says_so() -> None:
    from types import SimpleNamespace

    from kailin.retrieval.finetune import _no_final_checkpoint

    cb = _no_final_checkpoint()

    def saves(step: int, max_steps: int, save_steps: int) -> bool:
        control = SimpleNamespace(should_save=True)  # as transformers sets it at the end
        state = SimpleNamespace(global_step=step, max_steps=max_steps, save_steps=1)
        cb.on_step_end(SimpleNamespace(save_steps=save_steps), state, control)
        return control.should_save

    assert not saves(120, 120, 100)  # the last step, no multiple of save_steps: dropped
    assert saves(100, 100, 100)  # a multiple: kept (a longer run resumes from it)
    assert saves(100, 120, 100)  # a periodic checkpoint before the end: kept
