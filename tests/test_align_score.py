"""`kailin score`: the ScoreStage with small fakes (exact contract), then for real (BM25 index
over real PubMedQA + NLM abstracts, the packaged MeSH build)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kailin.align.prefer import PreferConfig, build_preferences
from kailin.align.score import ScoreStage, score_questions
from kailin.align.sft import format_prompt
from kailin.engine.executors.local import LocalExecutor
from kailin.errors import InputError
from kailin.io import read_parquet
from kailin.mesh.score import DEFAULT_SCORE_K, DEFAULT_SCORING


@dataclass
class FakeHit:
    pmid: int
    score: float
    title: str
    abstract: str
    mesh_uis: list[str] = field(default_factory=list)


class FakeIndex:
    """Returns docs whose MeSH equals the query's first word (a UI), skipping excluded PMIDs."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int, list]] = []
        self.docs = [FakeHit(100 + i, 1.0, f"doc {i}", "", [ui])
                     for i, ui in enumerate(["D1", "D1", "D2", "D2", "D3"])]

    def search(self, queries, k=4, exclude_pmids=None):
        self.calls.append((list(queries), k, list(exclude_pmids or [])))
        out = []
        for i, q in enumerate(queries):
            ui = q.split()[0]
            ex = exclude_pmids[i] if exclude_pmids else None
            hits = [h for h in self.docs if h.mesh_uis == [ui] and h.pmid != ex]
            out.append(hits[:k])
        return out


class FakeScorer:
    """Share of context descriptors equal to a source descriptor (NaN when undefined)."""

    def doc_scores(self, sources, contexts, source_major=None, context_major=None):
        out = []
        for s, cs in zip(sources, contexts, strict=True):
            vals = [np.mean([u in s for u in c]) for c in cs if c]
            out.append(float(np.mean(vals)) if s and vals else float("nan"))
        return np.array(out)


class FakeMesh:
    def scorer(self, measure="kailin", faithful=False, **options):
        self.asked = {"measure": measure, "faithful": faithful, **options}
        return FakeScorer()


def questions_table() -> pa.Table:
    return pa.table({
        "pmid": pa.array([1, 1, 2, 2, 3], pa.int64()),
        "generator": ["a", "b", "a", "b", "a"],
        "prompt": ["p1", "p1", "p2", "p2", "p3"],
        "question": ["D1 what?", "D2 what?", "D2 why?", "", "D9 none?"],
        "raw": ["r"] * 5,
        "mesh_uis": [["D1"], ["D1"], ["D2"], ["D2"], ["D1"]],
    })


def test_stage_adds_contract_columns_with_fakes() -> None:
    idx = FakeIndex()
    stage = ScoreStage("unused-index", index=idx, mesh=FakeMesh(), k=2)
    out = stage(questions_table())
    assert out.column_names == ["pmid", "generator", "prompt", "question", "raw", "mesh_uis",
                                "context_pmids", "context_titles", "contexts_passed_over",
                                "score"]
    rows = out.to_pylist()
    assert rows[0]["context_pmids"] == [100, 101] and rows[0]["score"] == 1.0
    assert rows[1]["context_pmids"] == [102, 103] and rows[1]["score"] == 0.0
    assert rows[2]["score"] == 1.0
    # empty question: nothing retrieved, NaN; no hits: NaN
    assert rows[3]["context_pmids"] == [] and math.isnan(rows[3]["score"])
    assert rows[4]["context_pmids"] == [] and math.isnan(rows[4]["score"])
    # one batched search, the empty question not sent, the source PMID excluded per query
    assert len(idx.calls) == 1
    queries, k, excl = idx.calls[0]
    assert queries == ["D1 what?", "D2 what?", "D2 why?", "D9 none?"] and k == 2
    assert excl == [1, 1, 2, 3]


def test_include_source_and_fingerprint() -> None:
    idx = FakeIndex()
    stage = ScoreStage("unused", index=idx, mesh=FakeMesh(), exclude_source=False)
    stage(questions_table())
    assert idx.calls[0][2] == [None] * 4
    other = ScoreStage("unused", index=idx, mesh=FakeMesh(), exclude_source=True)
    assert stage.fingerprint() != other.fingerprint()


def test_missing_source_mesh_needs_corpus() -> None:
    t = questions_table().drop_columns(["mesh_uis"])
    stage = ScoreStage("unused", index=FakeIndex(), mesh=FakeMesh())
    with pytest.raises(InputError, match="--corpus"):
        stage(t)


def test_local_executor_resumes(tmp_path: Path) -> None:
    stage = ScoreStage("unused", index=FakeIndex(), mesh=FakeMesh(), k=2)
    stats = LocalExecutor(rows_per_shard=2, progress=False).run(stage, questions_table(),
                                                                 tmp_path / "s")
    assert stats["shards"] == 3 and stats["skipped"] == 0 and stats["rows_out"] == 5
    stats = LocalExecutor(rows_per_shard=2, progress=False).run(stage, questions_table(),
                                                                 tmp_path / "s")
    assert stats["skipped"] == 3
    assert read_parquet(tmp_path / "s").num_rows == 5


# -- for real --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("bm25s")
    from kailin.retrieval import build_index
    from test_retrieval_fixtures import build_test_corpus, pubmedqa_records

    root = tmp_path_factory.mktemp("score")
    corpus = build_test_corpus(root / "corpus", n_pubmedqa=80, n_nlm=300)
    build_index(corpus, root / "index", kind="bm25", progress=False)
    recs = pubmedqa_records(80)[:24]
    # generator "real": PubMedQA's own question for the abstract; "shuffled": the question of
    # another abstract (a deliberately bad generator)
    rows = []
    for i, r in enumerate(recs):
        other = recs[(i + 7) % len(recs)]
        for gen, q in (("real", r["question"]), ("shuffled", other["question"])):
            rows.append({"pmid": r["pmid"], "generator": gen,
                         "prompt": format_prompt(r["abstract"]), "question": q})
    qdir = root / "questions"
    qdir.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), qdir / "part-00000.parquet")
    return {"root": root, "corpus": corpus, "index": root / "index", "questions": qdir}


@pytest.mark.slow
def test_real_scores_prefer_real_questions(real_setup: dict) -> None:
    out = real_setup["root"] / "scores"
    stats = score_questions(real_setup["questions"], real_setup["index"], out,
                            corpus_dir=real_setup["corpus"], rows_per_shard=16, progress=False)
    assert stats["rows_out"] == 48
    t = read_parquet(out)
    assert {"context_pmids", "context_titles", "score"} <= set(t.column_names)
    for row in t.to_pylist():
        assert len(row["context_pmids"]) == DEFAULT_SCORE_K
        assert row["pmid"] not in row["context_pmids"]  # the source is excluded
    by_gen: dict[str, list[float]] = {}
    for g, s in zip(t["generator"].to_pylist(), t["score"].to_pylist(), strict=True):
        by_gen.setdefault(g, []).append(s)
    real, shuffled = np.nanmean(by_gen["real"]), np.nanmean(by_gen["shuffled"])
    assert 0 < shuffled < real <= 1
    # the real question wins most pairs
    pairs, _ = build_preferences(t, PreferConfig(tau=None))
    chosen = pairs["chosen_generator"].to_pylist()
    assert chosen.count("real") > 0.5 * len(chosen)
    # a re-run costs nothing; the index docstore gives the same source MeSH as the corpus
    stats2 = score_questions(real_setup["questions"], real_setup["index"], out,
                             corpus_dir=real_setup["corpus"], rows_per_shard=16, progress=False)
    assert stats2["skipped"] == stats2["shards"]
    out2 = real_setup["root"] / "scores_docstore"
    score_questions(real_setup["questions"], real_setup["index"], out2, rows_per_shard=16,
                    progress=False)
    t2 = read_parquet(out2)
    np.testing.assert_allclose(t2["score"].to_numpy(), t["score"].to_numpy())


@pytest.mark.slow
def test_cli_score(real_setup: dict) -> None:
    from typer.testing import CliRunner

    from kailin.cli.main import app

    out = real_setup["root"] / "scores_cli"
    res = CliRunner().invoke(app, ["score", str(real_setup["questions"]), "--index",
                                   str(real_setup["index"]), "--corpus",
                                   str(real_setup["corpus"]), "--out", str(out), "-k", "2"])
    assert res.exit_code == 0, res.output
    assert "real: n=24" in res.output
    t = read_parquet(out)
    assert all(len(c) == 2 for c in t["context_pmids"].to_pylist())
    assert json.loads((out / "_stage.json").read_text())["stage"] == "score"


def test_stage_uses_the_default_document_score_and_the_papers_with_faithful() -> None:
    mesh = FakeMesh()
    ScoreStage("unused", index=FakeIndex(), mesh=mesh).setup()
    assert mesh.asked == DEFAULT_SCORING
    stage = ScoreStage("unused", index=FakeIndex(), mesh=mesh, faithful=True)
    stage.setup()
    assert mesh.asked["measure"] == "kailin" and mesh.asked["faithful"] is True
    assert mesh.asked["aggregate"] == "mean" and mesh.asked["exclude"] is None
    assert stage.k == 4
    assert stage.fingerprint() != ScoreStage("unused", index=FakeIndex(), mesh=mesh).fingerprint()
    with pytest.raises(InputError, match="faithful"):
        ScoreStage("unused", index=FakeIndex(), mesh=mesh, faithful=True, measure="resnik")
