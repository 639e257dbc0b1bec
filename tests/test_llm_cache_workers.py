"""The SQLite response cache shared by several workers: concurrent processes writing one file
lose nothing and never fail on a lock; the question stage on Ray with two workers against an
OpenAI-compatible server fills one cache that a re-run answers from, without one HTTP call."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pyarrow as pa
import pytest

from kailin.llm.base import Completion
from kailin.llm.cache import ResponseCache

PQAL = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"


def _writer(path: str, worker: int, n: int) -> None:
    cache = ResponseCache(path)
    for i in range(n):  # one committed transaction per completion, as CachedBackend writes
        cache.put_many([(f"w{worker}-{i}", "fake", "m", Completion(f"text {worker} {i}", 1, 2,
                                                                    "stop"))])
        if i % 25 == 0:  # readers interleave with the writers
            assert len(cache.get_many([f"w{worker}-{j}" for j in range(i + 1)])) == i + 1
    cache.close()


def test_concurrent_processes_share_one_cache_file(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    cache = ResponseCache(path)
    assert len(cache) == 4 * 150
    got = cache.get_many([f"w3-{i}" for i in range(150)])
    assert got["w3-149"].text == "text 3 149" and got["w3-0"].completion_tokens == 2


@pytest.mark.ray
def test_question_stage_on_ray_workers_shares_the_cache(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from kailin.engine.executors.ray import RayExecutor
    from kailin.generate.prompts import PromptTemplate
    from kailin.generate.questions import QuestionGenerationStage
    from kailin.io import read_parquet
    from kailin.llm.base import SamplingParams
    from kailin.llm.spec import BackendOptions
    from test_llm_openai_http import FakeOpenAI

    data = json.loads(PQAL.read_text())
    items = sorted(data.items())[:12]
    records = pa.table({"pmid": pa.array([int(k) for k, _ in items], pa.int64()),
                        "title": [v["QUESTION"] for _, v in items],
                        "abstract": [" ".join(v["CONTEXTS"]) for _, v in items]})
    server = FakeOpenAI()
    cache = tmp_path / "cache.sqlite"
    try:
        def stage() -> QuestionGenerationStage:
            return QuestionGenerationStage(
                [f"remote=openai:{server.url}#fake-model"], template=PromptTemplate(mode="raw"),
                params=SamplingParams(max_new_tokens=16),
                options=BackendOptions(api_key_env="", concurrency=2), cache_path=cache)

        ex = dict(rows_per_shard=2, num_cpus=2, concurrency=2, progress=False)
        st = RayExecutor(**ex).run(stage(), records, tmp_path / "q1")
        assert st["rows_out"] == 12
        calls = sum(server.paths.values())
        assert calls == 12  # one request per abstract, none lost to a locked database
        assert len(ResponseCache(cache)) == 12
        q = read_parquet(tmp_path / "q1")
        assert sorted(q["pmid"].to_pylist()) == sorted(records["pmid"].to_pylist())
        # a fresh output folder on Ray again: every answer from the shared cache
        RayExecutor(**ex).run(stage(), records, tmp_path / "q2")
        assert sum(server.paths.values()) == calls
        assert read_parquet(tmp_path / "q2").sort_by("pmid")["question"].equals(
            q.sort_by("pmid")["question"])
    finally:
        server.close()
        import ray

        ray.shutdown()
