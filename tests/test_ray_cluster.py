"""A real two-node Ray cluster on this machine, started with ``ray start``.

The head node and a second node both listen on 127.0.0.1, each with its own ``--temp-dir``, a
custom resource naming it (``head`` / ``worker``), few CPUs and a small object store; the second
node has two *logical* GPUs (``--num-gpus 2``: Ray schedules on them, nothing uses CUDA). The
tests run the pipeline's record-level stages (questions with the packaged SmolLM2 on the CPU,
then MeSH scores) through :class:`RayExecutor` with ``address=``, check from the executor's stats
that both nodes did work, that a GPU stage's two actors get distinct GPUs and the device kailin
hands the model backend, and that killing the second node in the middle of a stage loses
nothing: a re-run gives the rows of the uninterrupted run. Every process the tests start is
killed by pid at the end (found by its node's temp dir), also when a test fails; ``ray stop``
is never used, since it would stop every Ray instance on the machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

from kailin.engine.executors.local import LocalExecutor
from kailin.errors import KailinError
from kailin.generate.questions import QuestionGenerationStage
from kailin.io import read_parquet

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"
OBJECT_STORE = 100 * 1024 * 1024


@dataclass
class Cluster:
    address: str
    dirs: dict[str, str]  # node name -> its --temp-dir
    env: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)  # node name -> Ray node id
    reference: pa.Table | None = None  # the questions of an uninterrupted run

    def pids(self, node: str) -> list[int]:
        """Processes of ``node``: this user's processes whose command line names its temp dir
        (raylet, object manager, agents, workers; GCS and monitors on the head)."""
        out = []
        needle = self.dirs[node].encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if d.stat().st_uid != os.getuid():
                    continue
                if needle in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
        return out

    def kill(self, node: str) -> list[int]:
        pids = self.pids(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


def _ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports() -> list[str]:
    p = _ports(6)
    base = 20000 + (os.getpid() * 97 + p[0]) % 30000  # worker ports: a range of 40
    return ["--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
            "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
            "--metrics-export-port", str(p[4]), "--runtime-env-agent-port", str(p[5]),
            "--min-worker-port", str(base), "--max-worker-port", str(base + 40)]


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    res = subprocess.run([str(RAY_BIN), "start", "--disable-usage-stats",
                          "--node-ip-address", "127.0.0.1",
                          "--object-store-memory", str(OBJECT_STORE), *args],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def _driver_token_auth() -> None:
    """Token auth for this process's next ray.init, as `ray start --head` decides it: Ray
    reads RAY_AUTH_MODE into a config it caches at its first use, so setting the variable
    alone did not reach a process that had used Ray before (the driver stayed 'disabled')."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: the variable is all there is
        os.environ["RAY_AUTH_MODE"] = "token"
        return
    assert maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    if not RAY_BIN.exists():
        pytest.skip("no ray command next to this Python")
    if ray.is_initialized():
        ray.shutdown()
    dirs = {"head": tempfile.mkdtemp(prefix="krh", dir="/tmp"),  # short: unix socket paths
            "worker": tempfile.mkdtemp(prefix="krw", dir="/tmp")}
    env = {**os.environ,
           # workers import kailin from this checkout, and this module (the probe stage)
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0",
           # a dead node is declared dead after ~3 s, not ~30 s
           "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "2",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           # the driver (this process) and both nodes in one auth mode, token auth with Ray's
           # own token file, whatever ran before: `ray start --head` turns token auth on when
           # ~/.ray/auth_token exists, a joining node only when RAY_AUTH_MODE says so, and a
           # driver after an in-process ray.init (which writes the file) is in token mode. Mixed
           # modes failed: InvalidAuthToken when the worker node joined, OwnerDiedError when
           # the nodes' workers fetched the driver's objects.
           "RAY_AUTH_MODE": "token"}
    subprocess.run([str(RAY_BIN), "get-auth-token", "--generate"], env=env,
                   capture_output=True, check=True, timeout=60)
    gcs, client = _ports(2)
    c = Cluster(f"127.0.0.1:{gcs}", dirs, env)
    mode = os.environ.pop("RAY_AUTH_MODE", None)
    _driver_token_auth()  # this process's ray.init below
    try:
        _ray_start(["--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                    "--num-cpus", "2", "--num-gpus", "0", "--resources", json.dumps({"head": 1}),
                    "--include-dashboard", "false", "--temp-dir", dirs["head"],
                    *_node_ports()], env)
        _ray_start(["--address", c.address, "--num-cpus", "2", "--num-gpus", "2",
                    "--resources", json.dumps({"worker": 1}), "--temp-dir", dirs["worker"],
                    *_node_ports()], env)
        ray.init(address=c.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": env["PYTHONPATH"]}})
        for n in ray.nodes():
            for name in ("head", "worker"):
                if n["Alive"] and n["Resources"].get(name):
                    c.ids[name] = n["NodeID"]
        assert set(c.ids) == {"head", "worker"}, ray.nodes()
        yield c
    finally:
        ray.shutdown()
        if mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = mode
        for node in ("worker", "head"):
            c.kill(node)
        deadline = time.time() + 20
        while time.time() < deadline and (c.pids("worker") or c.pids("head")):
            time.sleep(0.2)
        left = c.pids("worker") + c.pids("head")
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from kailin.retrieval import build_index
    from test_retrieval_fixtures import build_test_corpus

    root = tmp_path_factory.mktemp("cluster_data")
    corpus = build_test_corpus(root / "corpus", n_pubmedqa=20, n_nlm=60)
    build_index(corpus, root / "index", kind="bm25", progress=False)
    from kailin.corpus.reader import open_corpus

    t = open_corpus(corpus).read(["pmid", "title", "abstract"])
    return {"corpus": corpus, "index": root / "index", "records": t.slice(0, 8)}


class DeviceProbe(QuestionGenerationStage):
    """The question stage up to its backends (no model is loaded): each row says which device
    the transformers backend was built for, and the worker's Ray GPU ids. The first shard of
    each actor waits until ``parties`` actors have one (a file per actor in ``barrier``), so
    every actor of the pool takes part however slowly the others start."""

    name = "device_probe"

    def __init__(self, generators: list[str], barrier: Path, parties: int) -> None:
        super().__init__(generators, use_cache=False)
        self.barrier, self.parties = barrier, parties

    def process(self, batch: pa.Table) -> pa.Table:
        import ray

        me = self.barrier / str(os.getpid())
        if not me.exists():
            me.touch()
            deadline = time.time() + 120
            while len(list(self.barrier.iterdir())) < self.parties and time.time() < deadline:
                time.sleep(0.1)
        backend = self._backends["smol"]
        backend = getattr(backend, "backend", backend)  # under the response cache
        n = batch.num_rows
        return pa.table({"pmid": batch.column("pmid"), "device": [backend.device_arg] * n,
                         "gpu_ids": [",".join(str(g) for g in ray.get_gpu_ids())] * n})


def question_stage(cache: Path) -> QuestionGenerationStage:
    from kailin.generate.prompts import PromptTemplate
    from kailin.llm.base import SamplingParams
    from kailin.llm.spec import BackendOptions

    return QuestionGenerationStage(
        ["smol=smollm2"], template=PromptTemplate(max_abstract_chars=200),
        params=SamplingParams(max_new_tokens=8),
        options=BackendOptions(device="cpu", threads=1, batch_size=2), cache_path=cache)


def executor(cluster: Cluster, **kw):
    from kailin.engine.executors.ray import RayExecutor

    return RayExecutor(address=cluster.address, progress=False, **kw)


def sorted_rows(t: pa.Table) -> list[dict]:
    """Rows in (pmid, generator) order, a NaN as the string "nan" (NaN != NaN)."""
    rows = [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in t.to_pylist()]
    return sorted(rows, key=lambda r: (r["pmid"], r.get("generator") or ""))


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    return sorted_rows(a) == sorted_rows(b)


def test_questions_and_scores_run_on_both_nodes(cluster: Cluster, data: dict,
                                                tmp_path: Path) -> None:
    from kailin.align.score import ScoreStage

    ex = executor(cluster, rows_per_shard=2, concurrency=2)
    stats = ex.run(question_stage(tmp_path / "cache.sqlite"), data["records"], tmp_path / "q")
    assert stats["rows_in"] == 8 and stats["computed"] == 4
    # one actor per node (the executor spreads a model stage's actors), both nodes wrote shards
    assert set(stats["nodes"]) == set(cluster.ids.values()), stats
    assert sum(stats["nodes"].values()) == 4
    questions = read_parquet(tmp_path / "q")
    assert questions.num_rows == 8 and set(questions.column("pmid").to_pylist()) == set(
        data["records"].column("pmid").to_pylist())
    assert all(questions.column("raw").to_pylist())
    cluster.reference = questions

    # the MeSH score with the authors' measure (the default embedding measure would load an
    # encoder in every actor: the same code path, a minute more on a 2-core CI machine)
    score = ScoreStage(data["index"], corpus_dir=data["corpus"], k=2, measure="kailin")
    stats = executor(cluster, rows_per_shard=2, concurrency=2).run(score, tmp_path / "q",
                                                                   tmp_path / "s")
    assert set(stats["nodes"]) == set(cluster.ids.values()), stats
    assert stats["rows_out"] == 8
    local = LocalExecutor(rows_per_shard=2, progress=False).run(
        ScoreStage(data["index"], corpus_dir=data["corpus"], k=2, measure="kailin"),
        tmp_path / "q", tmp_path / "s_local")
    assert local["rows_out"] == 8
    scored = read_parquet(tmp_path / "s")
    assert scored.schema == read_parquet(tmp_path / "s_local").schema
    assert same_rows(scored, read_parquet(tmp_path / "s_local"))  # NaN scores included


def test_gpu_stage_actors_get_distinct_gpus_and_the_device_ray_assigned(
        cluster: Cluster, data: dict, tmp_path: Path) -> None:
    (tmp_path / "barrier").mkdir()
    stage = DeviceProbe(["smol=smollm2"], tmp_path / "barrier", parties=2)
    stats = executor(cluster, rows_per_shard=3, concurrency=2, num_gpus_per_worker=1).run(
        stage, data["records"], tmp_path / "probe")
    workers = list(stats["workers"].values())
    # only the second node has GPUs; each of the two actors got one of its own
    assert len(workers) == 2 and stats["nodes"] == {cluster.ids["worker"]: 3}, stats
    assert sorted(g for w in workers for g in w["gpu_ids"]) == ["0", "1"]
    for w in workers:
        assert w["cuda_visible_devices"] == w["gpu_ids"][0]
        assert w["device"] == "cuda:0"  # torch numbers the visible devices from 0
    rows = read_parquet(tmp_path / "probe").to_pylist()
    # what the transformers backend would be given: Ray's GPU, not "auto"
    assert {(r["device"], r["gpu_ids"]) for r in rows} == {("cuda:0", "0"), ("cuda:0", "1")}


def test_a_node_killed_mid_stage_loses_no_row(cluster: Cluster, data: dict,
                                              tmp_path: Path) -> None:
    import ray

    if cluster.reference is None:
        pytest.skip("needs the uninterrupted run of the first test")
    out = tmp_path / "q"
    ex = executor(cluster, rows_per_shard=2, concurrency=2)
    result: dict = {}

    def run() -> None:
        try:
            result["stats"] = ex.run(question_stage(tmp_path / "cache.sqlite"),
                                     data["records"], out)
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "_done").glob("*.json")):
        time.sleep(0.1)
    assert t.is_alive(), result  # the stage is still running: 4 shards, 1 done
    killed = cluster.kill("worker")
    assert killed
    t.join(timeout=240)
    assert not t.is_alive(), "the stage hung after its node died"
    print("after the kill:", repr(result.get("error")) if "error" in result
          else f"finished, shards per node {result['stats']['nodes']}")
    if "error" in result:  # a clear error naming the way out, not a hang or a raw Ray trace
        assert isinstance(result["error"], KailinError), repr(result["error"])
        assert "run again to resume" in str(result["error"])
    else:  # Ray Data moved the lost work to the head node
        assert result["stats"]["rows_out"] == 8
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert cluster.ids["worker"] not in alive
    done_before = len(list((out / "_done").glob("*.json")))
    stats = ex.run(question_stage(tmp_path / "cache.sqlite"), data["records"], out)
    assert stats["skipped"] == done_before and stats["shards"] == 4
    assert set(stats["nodes"]) <= {cluster.ids["head"]}
    assert same_rows(read_parquet(out), cluster.reference)
