"""Memory is bounded by the shard, not the input: executors stream their input shard by shard,
and the score stage keeps no per-record state from one shard to the next.

For the executors, the input is a Parquet folder of real abstracts (PubMedQA PQA-L contexts) cut
into many shards that cross file boundaries. Arrow memory (``pa.total_allocated_bytes``) in the
process that reads the input is sampled at every shard: from the first shard to the last it may
not grow by more than a fraction of the whole input (it grows by the whole input when shards are
collected).
``benchmarks/bench_memory.py`` measures peak RSS of the score stage on 5k and 50k real records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kailin.engine.executors.local import LocalExecutor, iter_input_shards
from kailin.engine.stage import Stage
from kailin.io import read_parquet

PQAL = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"
ROWS_PER_SHARD = 20
# Ray workers must import this module to unpickle the test stage
RAY = {"rows_per_shard": ROWS_PER_SHARD, "num_cpus": 2, "progress": False,
       "runtime_env": {"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}}}


class TextLengthStage(Stage):
    """Maps each abstract to its length; notes the Arrow memory in use at every shard."""

    name = "text-length"

    def __init__(self) -> None:
        super().__init__()
        self.allocated: list[int] = []

    def process(self, batch: pa.Table) -> pa.Table:
        self.allocated.append(pa.total_allocated_bytes())
        return pa.table({"pmid": batch.column("pmid"),
                         "chars": pc.utf8_length(batch.column("text"))})


@pytest.fixture(scope="module")
def abstracts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A folder of 10 Parquet files of 100 real abstracts each; the input's size in bytes."""
    data = json.loads(PQAL.read_text())
    pmids = sorted(int(p) for p in data)
    table = pa.table({"pmid": pmids,
                      "text": [" ".join(data[str(p)]["CONTEXTS"]) for p in pmids]})
    folder = tmp_path_factory.mktemp("abstracts")
    for i in range(0, table.num_rows, 100):
        pq.write_table(table.slice(i, 100), folder / f"part-{i // 100:05d}.parquet")
    return folder, table.nbytes


def test_local_executor_holds_one_shard_at_a_time(tmp_path: Path,
                                                  abstracts: tuple[Path, int]) -> None:
    folder, input_bytes = abstracts
    stage = TextLengthStage()
    stats = LocalExecutor(rows_per_shard=ROWS_PER_SHARD, progress=False).run(
        stage, folder, tmp_path / "out")
    assert stats["rows_out"] == 1000 and stats["shards"] == 1000 // ROWS_PER_SHARD
    # one shard is 2% of the input, a row group 10%
    growth = max(stage.allocated) - stage.allocated[0]
    assert growth < input_bytes / 5, (growth, input_bytes)
    out = read_parquet(tmp_path / "out")
    assert out.column("pmid").to_pylist() == read_parquet(folder).column("pmid").to_pylist()


@pytest.mark.ray
def test_ray_driver_holds_one_shard_at_a_time(tmp_path: Path, abstracts: tuple[Path, int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver used to collect every pending shard in a list before handing them to Ray;
    now each goes into the object store as it is cut."""
    pytest.importorskip("ray")
    import kailin.engine.executors.ray as ray_executor

    folder, input_bytes = abstracts
    seen: list[int] = []

    def sampled(src, rows_per_shard, columns=None):
        for shard in iter_input_shards(src, rows_per_shard, columns):
            seen.append(pa.total_allocated_bytes())
            yield shard

    monkeypatch.setattr(ray_executor, "iter_input_shards", sampled)
    try:
        stats = ray_executor.RayExecutor(**RAY).run(TextLengthStage(), folder, tmp_path / "ray")
    finally:
        import ray

        ray.shutdown()  # free the local instance's workers for the tests that follow
    assert stats["rows_out"] == 1000 and len(seen) == 1000 // ROWS_PER_SHARD
    growth = max(seen) - seen[0]
    assert growth < input_bytes / 5, (growth, input_bytes)
    LocalExecutor(rows_per_shard=ROWS_PER_SHARD, progress=False).run(
        TextLengthStage(), folder, tmp_path / "local")
    assert read_parquet(tmp_path / "ray").equals(read_parquet(tmp_path / "local"))


def test_score_stage_forgets_the_corpus_lookups_of_earlier_shards(tmp_path: Path) -> None:
    """With MajorTopic weights the stage looks up the sources' and contexts' flags in the corpus.
    When the questions carry ``mesh_uis`` the lookup cache used to be kept across shards, growing
    with every PMID seen; it now holds one shard's PMIDs at most."""
    pytest.importorskip("bm25s")
    from kailin.align.score import ScoreStage
    from kailin.corpus.reader import open_corpus
    from kailin.retrieval import build_index
    from test_retrieval_fixtures import build_test_corpus, pubmedqa_records

    corpus = build_test_corpus(tmp_path / "corpus", n_pubmedqa=40, n_nlm=100)
    build_index(corpus, tmp_path / "index", kind="bm25", progress=False)
    mesh_of = dict(zip(*open_corpus(corpus).read(["pmid", "mesh_uis"]).to_pydict().values(),
                       strict=True))
    recs = pubmedqa_records(40)
    questions = pa.table({"pmid": [r["pmid"] for r in recs],
                          "question": [r["question"] for r in recs],
                          "mesh_uis": [mesh_of[r["pmid"]] for r in recs]})
    stage = ScoreStage(tmp_path / "index", corpus_dir=corpus, measure="resnik", k=4,
                       major_weight=2.0)
    rows_per_shard = 8
    stats = LocalExecutor(rows_per_shard=rows_per_shard, progress=False).run(
        stage, questions, tmp_path / "scores")
    assert stats["shards"] == 5 and stats["rows_out"] == 40
    assert 0 < len(stage._lookup._cache) <= rows_per_shard * (1 + stage.k)
    scores = read_parquet(tmp_path / "scores").column("score").to_pylist()
    assert sum(s == s for s in scores) > 30  # scored (not NaN)


# --- the pipeline's stage functions stream too ------------------------------------------------
def _questions_folder(root: Path, n: int) -> Path:
    """A questions folder of several parts: two generators, some rejected rows."""
    out = root / "questions"
    out.mkdir()
    for part in range(3):
        rows = range(part * n, (part + 1) * n)
        pq.write_table(pa.table({
            "pmid": [i // 2 for i in rows],
            "generator": ["a" if i % 2 else "b" for i in rows],
            "prompt": [f"abstract {i // 2}" for i in rows],
            "question": [None if i % 7 == 0 else f"what about {i}?" for i in rows],
            "raw": [f"raw {i}" for i in rows],
            "reject_reason": ["no_question" if i % 7 == 0 else None for i in rows],
            "prompt_tokens": [10 + i % 3 for i in rows],
            "completion_tokens": [5 for _ in rows],
            "score": [float("nan") if i % 7 == 0 or i % 11 == 0 else (i % 10) / 10
                      for i in rows],
        }), out / f"part-{part:05d}.parquet")
    return out


def test_stage_summaries_stream_batches_with_the_tables_result(tmp_path: Path) -> None:
    """questions / score / policy_questions summarise their output batch by batch, as they
    would the whole table."""
    from kailin.align.score import summarize_scores
    from kailin.generate.questions import question_stats
    from kailin.io import iter_parquet_batches

    folder = _questions_folder(tmp_path, 50)
    table = read_parquet(folder)
    small = iter_parquet_batches(folder, batch_size=7)
    assert question_stats(small) == question_stats(table)
    assert question_stats(table)["generators"]["a"]["reject_reasons"]["no_question"] > 0
    a = summarize_scores(iter_parquet_batches(folder, columns=["generator", "score"],
                                              batch_size=7))
    assert a == summarize_scores(table) and a["a"]["nan"] > 0


def test_best_questions_from_a_folder_equal_those_of_the_table(tmp_path: Path) -> None:
    from kailin.engine.keys import table_digest
    from kailin.pipeline.stages.common import best_questions as _best_questions

    folder = _questions_folder(tmp_path, 40)
    best = _best_questions(folder)
    assert table_digest(best) == table_digest(_best_questions(read_parquet(folder)))
    assert best.num_rows == len(set(best["pmid"].to_pylist())) > 0


def test_work_set_is_streamed_with_the_same_shards(tmp_path: Path) -> None:
    """Passing the work set as a file with its columns (the question stages) gives the shards
    of the in-memory table: the same shard keys, so no shard is recomputed."""
    from kailin.engine.keys import table_digest

    folder = _questions_folder(tmp_path, 45)
    cols = ["pmid", "question"]
    from_table = [table_digest(s) for s in iter_input_shards(read_parquet(folder, cols), 16)]
    streamed = [table_digest(s) for s in iter_input_shards(folder, 16, cols)]
    assert streamed == from_table and len(streamed) == 9


def test_workset_stage_writes_batch_by_batch(tmp_path: Path) -> None:
    """The workset is written from DuckDB's batches (one in memory at a time) with the corpus
    schema, and equals the rows the query selects."""
    from kailin.corpus.demo import build_demo_corpus
    from kailin.corpus.query import connect
    from kailin.corpus.schema import CORPUS_SCHEMA
    from kailin.engine.run import RunContext
    from kailin.pipeline.config import RunConfig
    from kailin.pipeline.stages.workset import run as workset_stage

    run = tmp_path / "run"
    build_demo_corpus(run / "corpus" / "full")
    cfg = RunConfig.model_validate({"corpus": {"demo": True, "limit": 30, "heldout": 10}})
    out = workset_stage(RunContext(cfg, run, tmp_path, progress=False))
    assert out == {"distil": 30, "heldout": 10}
    work = pq.read_table(run / "corpus" / "work.parquet")
    held = pq.read_table(run / "corpus" / "heldout.parquet")
    assert work.schema.equals(CORPUS_SCHEMA) and held.schema.equals(CORPUS_SCHEMA)
    pmids = [r[0] for r in connect(run / "corpus" / "full").sql(
        "select pmid from corpus where coalesce(length(abstract), 0) > 0 and "
        "coalesce(len(mesh_uis), 0) > 0 order by pmid limit 40").fetchall()]
    assert work["pmid"].to_pylist() + held["pmid"].to_pylist() == pmids


def test_preferences_from_a_folder_equal_those_of_the_table(tmp_path: Path) -> None:
    """prefer reads the score parts through DuckDB batch by batch (one row per PMID in memory)
    with the same pairs and counts as from the table, NaN scores included."""
    from kailin.align.prefer import PreferConfig, build_preferences
    from kailin.engine.keys import table_digest

    folder = _questions_folder(tmp_path, 60)
    c = PreferConfig(min_margin=0.05, invalid_rejected=True, max_pairs=20)
    a, sa = build_preferences(read_parquet(folder), c)
    b, sb = build_preferences(folder, c)
    assert table_digest(a) == table_digest(b) and sa == sb
    assert sa["dropped"]["nan_score"] > 0 and sa["kept"] == 20


def test_parquet_scans_see_nan_scores_that_pyarrow_left_out_of_its_statistics(
        tmp_path: Path) -> None:
    """pyarrow writes a float column's min/max without its NaNs; DuckDB's own reader took those
    bounds to mean "no NaN" and folded isnan() to false (duckdb/duckdb#25521). kailin's scans
    (register_parquet, parquet_scan) see every NaN, in WHERE and in an aggregate's FILTER."""
    import duckdb

    from kailin.io import connect_duckdb, parquet_scan, register_parquet

    scores = [0.25, float("nan"), 0.75, float("nan"), None]
    pq.write_table(pa.table({"pmid": [1, 2, 3, 4, 5], "score": scores}), tmp_path / "s.parquet")
    meta = pq.ParquetFile(tmp_path / "s.parquet").metadata.row_group(0).column(1).statistics
    assert (meta.min, meta.max) == (0.25, 0.75)  # the statistics this is about
    plain = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{tmp_path / 's.parquet'}') WHERE isnan(score)")
    assert plain.fetchall()[0][0] == 0  # DuckDB's own reader, left alone: the bug is there
    con = connect_duckdb(tmp_path / "spill")
    register_parquet(con, "s", tmp_path)
    assert con.execute("SELECT count(*) FROM s WHERE isnan(score)").fetchall()[0][0] == 2
    assert con.execute("SELECT count(*) FILTER (WHERE isnan(score)), "
                       "count(*) FILTER (WHERE score > 0.5) FROM s").fetchall()[0] == (2, 3)
    scan = parquet_scan([tmp_path / "s.parquet"])
    assert con.execute(f"SELECT count(*) FROM {scan} WHERE isnan(score)").fetchall()[0][0] == 2


def test_every_duckdb_connection_is_bounded() -> None:
    """DuckDB's default memory limit is 80% of the machine: every connection kailin opens comes
    from kailin.io.connect_duckdb (bounded, spilling), none from duckdb.connect directly."""
    import ast

    from kailin.io import connect_duckdb, duckdb_memory_limit

    src = Path(__file__).resolve().parents[1] / "src" / "kailin"
    direct = []
    for f in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "connect" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "duckdb"):
                direct.append(f"{f.relative_to(src)}:{node.lineno}")
    # the one in kailin.io itself
    assert len(direct) == 1 and direct[0].startswith("io.py:"), direct
    import duckdb

    con = connect_duckdb()
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    ref = duckdb.connect()
    default = ref.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    ref.execute(f"SET memory_limit='{duckdb_memory_limit(threads)}'")
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit == ref.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit != default
