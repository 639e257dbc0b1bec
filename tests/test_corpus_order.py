"""Rows in PMID order without sorting the corpus (kailin.corpus.query.pmid_ordered), and the
corpus stats' distinct PMID count without a hash of every PMID."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import kailin.corpus.store as store
from kailin.corpus import CORPUS_SCHEMA, open_corpus
from kailin.corpus.query import connect, pmid_ordered, stats
from kailin.io import duckdb_table, write_batches_atomic
from kailin.pipeline.stages.workset import WORKSET_WHERE

ROOT = Path(__file__).resolve().parents[1]
PQA = ROOT / "src" / "kailin" / "data" / "pubmedqa" / "ori_pqal.json"
WHERE = WORKSET_WHERE


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """The 500 real PubMedQA records as corpus rows, by PMID."""
    out = tmp_path_factory.mktemp("pqa") / "c"
    store.ingest([PQA], out, progress=False, default_exclude=False)
    return open_corpus(out).read().sort_by("pmid")


def corpus_of(root: Path, shards: list[pa.Table]) -> Path:
    (root / "data").mkdir(parents=True)
    for i, t in enumerate(shards):
        pq.write_table(t, root / "data" / f"part-{i:05d}.parquet", row_group_size=37)
    return root


def sorted_rows(root: Path, limit: int | None = None, offset: int = 0) -> list[int]:
    cut = (f" limit {limit}" if limit is not None else "") + (f" offset {offset}" if offset else "")
    return duckdb_table(connect(root).sql(
        f"select pmid from corpus where {WHERE} order by pmid{cut}"))["pmid"].to_pylist()


class Spy:
    """Runs pmid_ordered, noting whether DuckDB was asked to sort and how often the rows were
    consumed; the rows are written as a file (atomically, as the workset stage does)."""

    def __init__(self, root: Path) -> None:
        self.root, self.sorted, self.tries = root, False, 0
        self.con = connect(root)
        real = self.con.sql

        class Con:  # DuckDB's connection cannot take attributes: a thin wrapper
            def __getattr__(_, name):
                return getattr(self.con, name)

            def sql(_, q):
                self.sorted |= "ORDER BY" in q.upper()
                return real(q)

        self.wrapped = Con()

    def __call__(self, **kw) -> list[int]:
        target = self.root / "out.parquet"

        def consume(batches):
            self.tries += 1
            return write_batches_atomic(batches, CORPUS_SCHEMA, target)

        n = pmid_ordered(self.wrapped, self.root, WHERE, consume, **kw)
        got = pq.read_table(target)["pmid"].to_pylist()
        assert n == len(got)
        return got


def test_disjoint_sorted_shards_stream_without_a_sort(records, tmp_path) -> None:
    # three shards of consecutive PMID ranges, listed out of order by name
    root = corpus_of(tmp_path / "c", [records.slice(300), records.slice(0, 150),
                                      records.slice(150, 150)])
    spy = Spy(root)
    assert spy() == sorted_rows(root) and not spy.sorted and spy.tries == 1
    want = sorted_rows(root)
    assert len(want) > 300
    assert spy(limit=100) == want[:100]
    assert spy(limit=50, offset=100) == want[100:150]
    assert spy(limit=10_000, offset=len(want) - 3) == want[-3:]
    assert not spy.sorted


def test_overlapping_shards_are_sorted_by_duckdb(records, tmp_path) -> None:
    odd = pc.equal(pc.bit_wise_and(records["pmid"], 1), 1)
    root = corpus_of(tmp_path / "c", [records.filter(odd), records.filter(pc.invert(odd))])
    spy = Spy(root)
    assert spy() == sorted_rows(root) and spy.sorted and spy.tries == 1
    assert spy(limit=20, offset=7) == sorted_rows(root, 20, 7)


def test_a_shard_unsorted_inside_falls_back_to_the_sort(records, tmp_path) -> None:
    """The footers say the ranges are disjoint, but one shard's rows run backwards: the streamed
    try stops at the first PMID out of order, its file is not kept, and DuckDB sorts."""
    backwards = records.slice(250).take(pa.array(range(249, -1, -1)))
    root = corpus_of(tmp_path / "c", [records.slice(0, 250), backwards])
    spy = Spy(root)
    got = spy()
    assert got == sorted_rows(root) and spy.sorted and spy.tries == 2
    assert [p.name for p in root.iterdir() if p.name.startswith(".out")] == []


def test_stats_count_distinct_pmids_with_several_versions(records, tmp_path) -> None:
    """distinct_pmids = records less the later Versions of a PMID that is live more than once
    (a join of the later Versions, not a hash of every PMID)."""
    v2 = records.slice(0, 5).set_column(CORPUS_SCHEMA.get_field_index("version"), "version",
                                        pa.array([2] * 5, pa.int32()))
    v3 = records.slice(0, 2).set_column(CORPUS_SCHEMA.get_field_index("version"), "version",
                                        pa.array([3] * 2, pa.int32()))
    # a Version 2 whose Version 1 is not live counts as a PMID of its own
    alone = records.slice(490, 1).set_column(CORPUS_SCHEMA.get_field_index("version"),
                                             "version", pa.array([2], pa.int32()))
    base = records.slice(0, 490)
    root = corpus_of(tmp_path / "c", [base, pa.concat_tables([v2, v3, alone])])
    s = stats(root)
    truth = connect(root).sql("select count(distinct pmid) from corpus").fetchall()[0][0]
    assert s["records"] == 490 + 5 + 2 + 1 and s["distinct_pmids"] == truth == 491
