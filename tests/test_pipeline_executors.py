"""Executors: shard-by-shard resume, fingerprint invalidation, and Ray == local."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from kailin.engine.executors.local import LocalExecutor
from kailin.engine.stage import Stage
from kailin.errors import InputError
from kailin.io import read_parquet
from kailin.mesh import load_mesh

# workers must import this module to unpickle the test stage
RAY = {"rows_per_shard": 25, "num_cpus": 2, "progress": False,
       "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(
           [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}}}
PQAL = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"


class MeshPairStage(Stage):
    """Scores each record's MeSH against the next record's (a real, deterministic stage)."""

    name = "mesh-pair"
    stateful = True

    def __init__(self, measure: str = "kailin", fail_on: int | None = None,
                 error: str = "crash") -> None:
        super().__init__()
        self.measure = measure
        self.fail_on = fail_on
        self.error = error
        self.calls = 0

    def setup(self) -> None:
        self.scorer = load_mesh().scorer(self.measure)

    def fingerprint_config(self) -> dict:
        return {"measure": self.measure}

    def process(self, batch: pa.Table) -> pa.Table:
        self.calls += 1
        if self.fail_on is not None and batch.column("pmid")[0].as_py() == self.fail_on:
            if self.error == "input":
                raise InputError(f"record {self.fail_on}: simulated bad record")
            raise RuntimeError("simulated crash")
        mesh = batch.column("mesh").to_pylist()
        nxt = mesh[1:] + mesh[:1]
        scores = self.scorer.doc_scores(mesh, [[m] for m in nxt])
        return pa.table({"pmid": batch.column("pmid"), "score": scores})


@pytest.fixture(scope="module")
def records() -> pa.Table:
    data = json.loads(PQAL.read_text())
    mesh = load_mesh()
    pmids = sorted(int(p) for p in data)[:120]
    return pa.table({"pmid": pmids,
                     "mesh": [mesh.vocab.resolve(data[str(p)]["MESHES"])[0] for p in pmids]})


def test_local_resume_after_crash(tmp_path: Path, records: pa.Table) -> None:
    out = tmp_path / "out"
    shard_rows = 32  # 120 rows -> shards of 32, 32, 32, 24; the crash is in shard 2
    crashing = MeshPairStage(fail_on=records.column("pmid")[64].as_py())
    with pytest.raises(RuntimeError):
        LocalExecutor(rows_per_shard=shard_rows, progress=False).run(crashing, records, out)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet",
                                                          "part-00001.parquet"]
    stage = MeshPairStage()
    stats = LocalExecutor(rows_per_shard=shard_rows, progress=False).run(stage, records, out)
    assert stats["skipped"] == 2 and stage.calls == 2  # only shards 2 and 3 recomputed
    result = read_parquet(out)
    assert result.column("pmid").to_pylist() == records.column("pmid").to_pylist()
    # a finished run costs nothing
    again = MeshPairStage()
    stats = LocalExecutor(rows_per_shard=shard_rows, progress=False).run(again, records, out)
    assert again.calls == 0 and stats["skipped"] == 4
    # other settings invalidate the parts
    other = MeshPairStage(measure="path")
    LocalExecutor(rows_per_shard=shard_rows, progress=False).run(other, records, out)
    assert other.calls == 4
    assert read_parquet(out).column("score").to_pylist() != result.column("score").to_pylist()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_matches_local(tmp_path: Path, records: pa.Table) -> None:
    pytest.importorskip("ray")
    from kailin.engine.executors.ray import RayExecutor

    local = LocalExecutor(rows_per_shard=25, progress=False).run(MeshPairStage(), records,
                                                                 tmp_path / "local")
    ray_stats = RayExecutor(**RAY).run(MeshPairStage(), records, tmp_path / "ray")
    assert ray_stats["rows_out"] == local["rows_out"] == records.num_rows
    a = read_parquet(tmp_path / "local")
    b = read_parquet(tmp_path / "ray")
    assert a.equals(b)
    # resumable under Ray too: drop one shard's output and marker, rerun
    (tmp_path / "ray" / "part-00002.parquet").unlink()
    (tmp_path / "ray" / "_done" / "00002.json").unlink()
    try:
        st = RayExecutor(**RAY).run(MeshPairStage(), records, tmp_path / "ray")
        assert st["skipped"] == 4
        assert read_parquet(tmp_path / "ray").equals(a)
        assert sum(st["nodes"].values()) == 1  # the one shard recomputed, on this node
        # a stage's own error raised in a Ray worker reaches the caller naming the record (as
        # the InputError itself where Ray keeps the cause; this Ray wraps it in RayTaskError)
        import ray

        bad = MeshPairStage(fail_on=records.column("pmid")[50].as_py(), error="input")
        with pytest.raises((InputError, ray.exceptions.RayError), match="simulated bad record"):
            RayExecutor(**RAY).run(bad, records, tmp_path / "bad")
    finally:
        import ray

        ray.shutdown()  # free the local instance's workers for the tests that follow


def test_ray_gives_model_stages_the_gpus_asked_for() -> None:
    pytest.importorskip("ray")
    from kailin.engine.executors.ray import RayExecutor

    class Plain(Stage):
        name = "plain"

        def process(self, batch: pa.Table) -> pa.Table:
            return batch

    assert RayExecutor(num_gpus_per_worker=0.5).gpus_for(MeshPairStage()) == 0.5  # stateful
    assert RayExecutor(num_gpus_per_worker=0.5).gpus_for(Plain()) == 0.0
    assert RayExecutor().gpus_for(MeshPairStage()) == 0.0


def test_assigned_device_is_the_gpu_ray_assigned_as_torch_numbers_it() -> None:
    from kailin.engine.executors.ray import assigned_device
    from kailin.errors import KailinError

    assert assigned_device([], "") is None  # no GPU asked for: Ray hides every GPU
    assert assigned_device([1], "1") == "cuda:0"  # Ray's usual: only the worker's own GPUs
    assert assigned_device([3, 2], "3,2") == "cuda:0"
    assert assigned_device(["1"], "0,1") == "cuda:1"  # RAY_EXPERIMENTAL_NOSET_CUDA_...
    assert assigned_device([2], None) == "cuda:2"  # nothing set: the machine's numbering
    with pytest.raises(KailinError, match="does not list"):
        assigned_device([2], "0,1")


def test_question_stage_takes_the_executors_device_unless_set() -> None:
    from kailin.generate.questions import QuestionGenerationStage
    from kailin.llm.spec import BackendOptions

    auto = QuestionGenerationStage(["g=smollm2"], use_cache=False)
    auto.place("cuda:0")
    auto.setup()  # builds the backend, loads no model
    assert auto._backends["g"].device_arg == "cuda:0"
    cpu = QuestionGenerationStage(["g=smollm2"], options=BackendOptions(device="cpu"),
                                  use_cache=False)
    cpu.place("cuda:0")
    cpu.setup()
    assert cpu._backends["g"].device_arg == "cpu"
