"""The m-KAILIN evaluator agent: the pairwise model learns, and on real MeSH-scored questions it
trains, reports held-out agreement, and relabels scores for `kailin prefer`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kailin.align.evaluator import (
    FEATURES,
    META_FILE,
    MODEL_FILE,
    PairwiseLogistic,
    labelled_pairs,
    load_evaluator,
    relabel_scores,
    source_from_prompt,
    train_evaluator,
)
from kailin.align.sft import format_prompt
from kailin.errors import InputError
from kailin.io import read_parquet


def test_pairwise_logistic_recovers_a_known_preference() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    true_w = np.array([2.0, -1.0, 0.0])
    u = X @ true_w
    a, b = rng.integers(0, 400, 600), rng.integers(0, 400, 600)
    keep = a != b
    a, b = a[keep], b[keep]
    # Bradley-Terry labels: a wins with probability sigmoid(u_a - u_b)
    win = rng.random(len(a)) < 1 / (1 + np.exp(-(u[a] - u[b])))
    pairs = np.where(win[:, None], np.c_[a, b], np.c_[b, a])
    mdl = PairwiseLogistic.fit(X, pairs[:400], l2=0.1)
    w = mdl.weights / X.std(axis=0)  # back to raw feature units
    assert w[0] > 1.0 and w[1] < -0.4 and abs(w[2]) < 0.4
    test = pairs[400:]
    u_hat = mdl.utility(X)
    agree = np.mean(u_hat[test[:, 0]] > u_hat[test[:, 1]])
    assert agree > 0.75
    assert np.allclose(mdl.prob_first_better(X[:5], X[:5]), 0.5)


def test_labelled_pairs_rules() -> None:
    t = pa.table({"pmid": [1, 1, 1, 2, 2, 3, 3],
                  "question": ["a?", "b?", "c?", "d?", "", "e?", "f?"],
                  "score": [0.3, 0.1, 0.3, 0.2, 0.1, float("nan"), 0.2]})
    pairs, pm = labelled_pairs(t)
    # pmid 1: (a,b) and (c,b); the a-c tie is no label; pmid 2 has one real question; 3 has NaN
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (2, 1)]
    assert pm.tolist() == [1, 1]


def test_source_from_prompt() -> None:
    assert source_from_prompt(format_prompt("The abstract.")) == "The abstract."
    assert source_from_prompt("Read 「X y」 please") == "X y"
    assert source_from_prompt("plain") == "plain"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MeSH scores: 40 PubMedQA abstracts x 3 questions (its own, two of other abstracts),
    retrieved from a BM25 index over real abstracts and scored with the packaged MeSH."""
    pytest.importorskip("bm25s")
    pytest.importorskip("sentence_transformers")
    from kailin.align.score import score_questions
    from kailin.retrieval import build_index
    from test_retrieval_fixtures import build_test_corpus, pubmedqa_records

    root = tmp_path_factory.mktemp("evaluator")
    corpus = build_test_corpus(root / "corpus", n_pubmedqa=120, n_nlm=300)
    build_index(corpus, root / "index", kind="bm25", progress=False)
    recs = pubmedqa_records(120)[:40]
    rows = []
    for i, r in enumerate(recs):
        for gen, q in (("own", r["question"]), ("other1", recs[(i + 5) % 40]["question"]),
                       ("other2", recs[(i + 17) % 40]["question"])):
            rows.append({"pmid": r["pmid"], "generator": gen,
                         "prompt": format_prompt(r["abstract"]), "question": q})
    (root / "q").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "q" / "part-00000.parquet")
    score_questions(root / "q", root / "index", root / "scores", corpus_dir=corpus,
                    progress=False)
    return root / "scores"


@pytest.fixture()
def one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_train_report_and_relabel(scored: Path, tmp_path: Path, one_thread) -> None:
    from typer.testing import CliRunner

    from kailin.cli.main import app

    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["train", "evaluator", str(scored), "--out", str(out),
                                   "--test-fraction", "0.25"])
    assert res.exit_code == 0, res.output
    assert "held-out agreement" in res.output
    meta = json.loads((out / META_FILE).read_text())
    m = meta["metrics"]
    assert m["test_pmids"] > 0 and m["train_pmids"] > 0 and m["test_pairs"] > 0
    assert m["train_pairs"] + m["test_pairs"] <= 3 * 40
    assert 0 <= m["test_agreement"] <= 1 and m["train_agreement"] > 0.5
    assert set(meta["weights"]) == set(FEATURES)
    assert (out / MODEL_FILE).is_file()
    mdl, _ = load_evaluator(out)
    assert mdl.weights.shape == (len(FEATURES),)

    t = read_parquet(scored).slice(0, 12)
    relabelled = relabel_scores(t, out)
    s = relabelled["score"].to_numpy()
    assert np.all((s > 0) & (s < 1))
    np.testing.assert_array_equal(relabelled["mesh_score"].to_numpy(), t["score"].to_numpy())

    # the evaluator as the preference labeller
    res = CliRunner().invoke(app, ["prefer", str(scored), "--out", str(tmp_path / "p"),
                                   "--labeller", "evaluator", "--evaluator", str(out)])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "p" / "prefer_stats.json").read_text())
    assert stats["settings"]["tau"] is None
    assert stats["kept"] == 40  # one pair per PMID: three distinct questions, distinct scores
    pairs = read_parquet(tmp_path / "p")
    assert all(c > r for c, r in zip(pairs["chosen_score"].to_pylist(),
                                     pairs["rejected_score"].to_pylist(), strict=True))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an evaluator"):
        load_evaluator(tmp_path)
    t = pa.table({"pmid": [1], "prompt": ["p"], "question": ["q?"], "score": [0.1]})
    with pytest.raises(InputError, match="two differently scored"):
        train_evaluator(t, tmp_path / "e")
