"""Dense (FAISS), hybrid and Qdrant indexes with the packaged MiniLM encoder (tiny corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kailin.errors import InputError
from kailin.retrieval import build_index, load_index
from kailin.retrieval.dense import (
    FaissBuilder,
    choose_faiss_type,
    default_embedding_model_path,
    resolve_model,
    search_params,
)
from test_retrieval_fixtures import build_test_corpus, pubmedqa_records

pytestmark = pytest.mark.slow

N_PQA, N_NLM = 20, 20
OPTS = {"max_seq_length": 128}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_corpus(tmp_path_factory.mktemp("c") / "corpus", N_PQA, N_NLM)


@pytest.fixture(scope="module")
def dense_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("d") / "dense"
    build_index(corpus, out, kind="dense", progress=False, batch_size=16, **OPTS)
    return out


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return pubmedqa_records(N_PQA)


def test_default_model_path() -> None:
    p = default_embedding_model_path()
    assert (p / "modules.json").exists() and (p / "model.safetensors").exists()
    assert resolve_model(None) == str(p)
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(InputError, match="not found"):
        resolve_model("./no/such/model")


def test_choose_faiss_type() -> None:
    assert choose_faiss_type(10, "auto", 100) == "flat"
    assert choose_faiss_type(1000, "auto", 100) == "hnsw"
    assert choose_faiss_type(10, "ivf", 100) == "ivf"
    with pytest.raises(InputError):
        choose_faiss_type(10, "pq", 100)


def test_dense_search(dense_dir: Path, questions: list[dict]) -> None:
    meta = json.loads((dense_dir / "meta.json").read_text())
    d = meta["params"]["dense"]
    assert (d["faiss_index"], d["dim"], d["count"], d["max_seq_length"]) == ("flat", 384, 40, 128)
    index = load_index(dense_dir)
    hits = index.search([q["question"] for q in questions], k=4)
    top1 = np.mean([h[0].pmid == q["pmid"] for h, q in zip(hits, questions, strict=True)])
    assert top1 >= 0.8, top1
    assert all(len(h) == 4 and -1.0 <= h[0].score <= 1.0 for h in hits)
    left = index.search(
        [q["question"] for q in questions[:5]],
        k=3,
        exclude_pmids=[q["pmid"] for q in questions[:5]],
    )
    assert all(
        q["pmid"] not in {h.pmid for h in hs} and len(hs) == 3
        for q, hs in zip(questions, left, strict=False)
    )
    ranged = index.search([questions[0]["question"]], k=4, years=(2012, 2014))[0]
    assert ranged and all(2012 <= h.year <= 2014 for h in ranged)


def test_faiss_types_agree_with_exact(dense_dir: Path) -> None:
    index = load_index(dense_dir)
    flat = index.dense.index
    vecs = flat.reconstruct_n(0, flat.ntotal)
    queries = vecs[:10]
    _, exact = flat.search(queries, 5)
    for kind, opts in [("hnsw", {}), ("ivf", {"nlist": 1})]:
        b = FaissBuilder(kind, vecs.shape[1], len(vecs), opts)
        for start in range(0, len(vecs), 7):  # incremental adds
            b.add(vecs[start : start + 7])
        approx = b.finish()
        assert approx.ntotal == len(vecs)
        sp = search_params(approx, b.params, None)
        _, got = approx.search(queries, 5, params=sp)
        assert (got[:, 0] == np.arange(10)).all()
        overlap = np.mean([len(set(a) & set(g)) / 5 for a, g in zip(exact, got, strict=True)])
        assert overlap >= 0.9, (kind, overlap)
        mask = np.zeros(len(vecs), bool)
        mask[::2] = True
        _, masked = approx.search(queries, 3, params=search_params(approx, b.params, mask))
        assert all(r < 0 or r % 2 == 0 for r in masked.ravel())


def test_hybrid_reuses_dense(
    corpus: Path, dense_dir: Path, tmp_path: Path, questions: list[dict]
) -> None:
    out = tmp_path / "hybrid"
    build_index(corpus, out, kind="hybrid", progress=False, reuse_dense=str(dense_dir), **OPTS)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["fusion"] == {
        "method": "rrf",
        "rrf_k": 60.0,
        "depth": 100,
        "weights": [1.0, 1.0],
    }
    assert meta["params"]["dense"]["reused_from"] == str(dense_dir.resolve())
    index = load_index(out)
    qs = [q["question"] for q in questions]
    hits = index.search(qs, k=4)
    assert np.mean([h[0].pmid == q["pmid"] for h, q in zip(hits, questions, strict=True)]) >= 0.8
    # RRF scores: at most 2/(60+1)
    assert all(0 < h.score <= 2 / 61 + 1e-6 for hs in hits for h in hs)
    # the fused top hit is ranked high by at least one of the two halves
    lex, _ = index.bm25.search(qs[:5], 10, None)
    sem, _ = index.dense.search(qs[:5], 10, None)
    pmids = index.docstore.pmids
    for i, hs in enumerate(hits[:5]):
        assert hs[0].pmid in set(pmids[lex[i][lex[i] >= 0]]) | set(pmids[sem[i]])
    # a dense index of another corpus cannot be reused
    other = build_test_corpus(tmp_path / "other", 5, 5)
    with pytest.raises(InputError, match=r"another version|different number"):
        build_index(
            other, tmp_path / "h2", kind="hybrid", progress=False, reuse_dense=str(dense_dir)
        )


def test_qdrant_local(corpus: Path, dense_dir: Path, tmp_path: Path, questions: list[dict]) -> None:
    out = tmp_path / "qdrant"
    idx = build_index(corpus, out, kind="qdrant", progress=False, batch_size=16, **OPTS)
    qs = [q["question"] for q in questions[:8]]
    try:
        assert idx.meta["params"]["qdrant"]["count"] == 40
        hits = idx.search(qs, k=4)
        ranged = idx.search(qs[:2], k=4, years=(2012, 2014))
        left = idx.search(qs, k=4, exclude_pmids=[q["pmid"] for q in questions[:8]])
    finally:
        idx.close()
    with load_index(dense_dir) as dense:
        expect = dense.search(qs, k=4)
    # same encoder and cosine: the same ranking as exact FAISS
    for a, b in zip(hits, expect, strict=True):
        assert [h.pmid for h in a] == [h.pmid for h in b]
        assert a[0].score == pytest.approx(b[0].score, abs=1e-4)
    assert all(h.year is not None and 2012 <= h.year <= 2014 for hs in ranged for h in hs)
    assert all(
        q["pmid"] not in {h.pmid for h in hs} for q, hs in zip(questions, left, strict=False)
    )
    # reload from disk (embedded storage inside the index directory)
    with load_index(out) as again:
        assert [h.pmid for h in again.search(qs[:1], k=4)[0]] == [h.pmid for h in hits[0]]


def test_qdrant_reuses_dense_vectors(
    corpus: Path, dense_dir: Path, tmp_path: Path, questions: list[dict]
) -> None:
    qs = [q["question"] for q in questions[:5]]
    with build_index(
        corpus, tmp_path / "q", kind="qdrant", progress=False, reuse_dense=str(dense_dir)
    ) as idx:
        assert idx.meta["params"]["qdrant"]["max_seq_length"] == 128
        got = idx.search(qs, k=4)
    with load_index(dense_dir) as dense:
        expect = dense.search(qs, k=4)
    assert [[h.pmid for h in hs] for hs in got] == [[h.pmid for h in hs] for hs in expect]
