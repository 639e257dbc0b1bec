"""The OpenAI-compatible HTTP backend against local servers (loopback only).

A scripted stdlib server follows the chat-completions and completions schema and answers 429,
500 and slow responses on demand; a slow test also runs llama-cpp-python's real server on the
packaged SmolLM2 GGUF when llama_cpp is importable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kailin.llm.base import SamplingParams
from kailin.llm.openai_http import HTTPBackendError, OpenAIBackend, parse_retry_after

SECRET = "sk-test-DO-NOT-LOG-12345"


class FakeOpenAI:
    """Scripted OpenAI-compatible server. Behaviour is chosen by markers in the prompt text:

    ``[429xN]`` answer 429 (Retry-After from ``retry_after``) to the first N attempts;
    ``[500xN]`` answer 500 to the first N attempts; ``[slowxN]`` sleep past the client timeout
    on the first N attempts; ``[400]`` answer 400 (not retried); ``[503]`` always 503.
    Otherwise reply ``"What is <first words>?"``.
    """

    def __init__(self, retry_after: str | None = "0", delay: float = 0.0) -> None:
        self.retry_after = retry_after
        self.delay = delay
        self.attempts: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.auth: set[str | None] = set()
        self.bodies: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.times: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n))
                with fake._lock:
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    fake.handle(self, body)
                finally:
                    with fake._lock:
                        fake.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, h: BaseHTTPRequestHandler, status: int, obj: Any,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        path = h.path
        chat = path.endswith("/chat/completions")
        if not chat and not path.endswith("/completions"):
            return self._send(h, 404, {"error": {"message": "not found"}})
        text = (" ".join(m["content"] for m in body["messages"]) if chat else body["prompt"])
        with self._lock:
            self.paths[path] += 1
            self.auth.add(h.headers.get("authorization"))
            self.bodies.append(body)
            self.attempts[text] += 1
            k = self.attempts[text]
            self.times.setdefault(text, []).append(time.monotonic())
        if self.delay:
            time.sleep(self.delay)
        for kind in ("429", "500", "slow"):
            marker = f"[{kind}x"
            if marker in text:
                n = int(text.split(marker, 1)[1].split("]", 1)[0])
                if k <= n:
                    if kind == "429":
                        hdr = {"Retry-After": self.retry_after} if self.retry_after else {}
                        return self._send(h, 429, {"error": {"message": "rate limited"}}, hdr)
                    if kind == "500":
                        return self._send(h, 500, {"error": {"message": "boom"}})
                    time.sleep(1.0)
        if "[400]" in text:
            return self._send(h, 400, {"error": {"message": "bad request: context too long"}})
        if "[503]" in text:
            return self._send(h, 503, {"error": {"message": "overloaded"}})
        words = text.replace("[", " ").replace("]", " ").split()[:3]
        out = "Sure! Here is a question: What is " + " ".join(words) + "?"
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(out.split()),
                 "total_tokens": len(text.split()) + len(out.split())}
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": out}
        else:
            choice["text"] = out
        return self._send(h, 200, {"id": "x", "object": "chat.completion" if chat else
                                   "text_completion", "model": body["model"],
                                   "choices": [choice], "usage": usage})


@pytest.fixture()
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def backend(server: FakeOpenAI, **kw: Any) -> OpenAIBackend:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 3)
    return OpenAIBackend(server.url, "fake-model", api_key_env="KAILIN_TEST_KEY", **kw)


def test_chat_and_completion_schema_and_key(server, monkeypatch, caplog) -> None:
    monkeypatch.setenv("KAILIN_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    b = backend(server)
    params = SamplingParams(max_new_tokens=16, stop=("\n",))
    out = b.generate(["alpha beta gamma delta",
                      [{"role": "user", "content": "one two three four"},
                       {"role": "assistant", "content": "Question:"}]], params)
    assert out[0].text == "Sure! Here is a question: What is alpha beta gamma?"
    assert out[1].text.endswith("What is one two three?")
    assert out[0].prompt_tokens == 4 and out[0].completion_tokens == 10
    assert out[0].finish_reason == "stop"
    assert server.paths == Counter({"/v1/completions": 1, "/v1/chat/completions": 1})
    assert server.auth == {f"Bearer {SECRET}"}
    chat_body = next(x for x in server.bodies if "messages" in x)
    assert chat_body["max_tokens"] == 16 and chat_body["stop"] == ["\n"]
    assert chat_body["continue_final_message"] is True  # trailing assistant prefix continued
    assert SECRET not in caplog.text and SECRET not in repr(b)
    assert SECRET not in json.dumps(b.identity())


def test_retries_on_429_500_and_timeouts(server, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    b = backend(server)
    reqs = ["a [429x2] x", "b [500x1] x", "c [slowx1] x", "d plain x"]
    out = b.generate(reqs, SamplingParams())
    assert [o.text.rsplit("is ", 1)[1] for o in out] == ["a 429x2 x?", "b 500x1 x?",
                                                          "c slowx1 x?", "d plain x?"]
    assert server.attempts["a [429x2] x"] == 3
    assert server.attempts["b [500x1] x"] == 2
    assert server.attempts["c [slowx1] x"] == 2
    assert server.attempts["d plain x"] == 1
    assert b.retries == 4 and b.attempts == 8


def test_non_retryable_and_exhausted_errors(server, monkeypatch) -> None:
    monkeypatch.setenv("KAILIN_TEST_KEY", SECRET)
    b = backend(server, max_retries=2)
    with pytest.raises(HTTPBackendError, match="HTTP 400: bad request") as e400:
        b.generate(["x [400]"], SamplingParams())
    assert server.attempts["x [400]"] == 1
    with pytest.raises(HTTPBackendError, match="after 3 attempts: HTTP 503") as e503:
        b.generate(["y [503]"], SamplingParams())
    assert server.attempts["y [503]"] == 3
    assert SECRET not in str(e400.value) and SECRET not in str(e503.value)


def test_exponential_backoff_and_retry_after() -> None:
    s = FakeOpenAI(retry_after=None)
    try:
        b = OpenAIBackend(s.url, "m", backoff=0.1, max_retries=3, timeout=2)
        b.generate(["p [500x3]"], SamplingParams())
        t = s.times["p [500x3]"]
        gaps = [t[i + 1] - t[i] for i in range(3)]
        # 0.1, 0.2, 0.4 s (+ <=10% jitter): each wait roughly doubles
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4
        assert gaps[2] > gaps[0] * 2.5
        s.retry_after = "1"
        b.generate(["q [429x1]"], SamplingParams())
        t = s.times["q [429x1]"]
        assert t[1] - t[0] >= 0.95  # Retry-After overrides the 0.1 s backoff
    finally:
        s.close()


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10.5


def test_bounded_concurrency() -> None:
    s = FakeOpenAI(delay=0.1)
    try:
        b = OpenAIBackend(s.url, "m", concurrency=3, timeout=5)
        t0 = time.perf_counter()
        out = b.generate([f"req {i}" for i in range(12)], SamplingParams())
        dt = time.perf_counter() - t0
        assert len(out) == 12 and out[5].text.endswith("req 5?")
        assert s.max_inflight == 3
        assert dt < 12 * 0.1  # concurrent, not serial
    finally:
        s.close()


def test_stage_over_http_with_cache_and_cli(server, tmp_path: Path, monkeypatch) -> None:
    """The question stage through the CLI: rerun pays nothing, stats count rejects."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from kailin.cli.main import app
    from kailin.corpus.schema import CORPUS_SCHEMA
    from kailin.io import read_parquet

    corpus = tmp_path / "corpus"
    (corpus / "data").mkdir(parents=True)
    data = json.loads((Path(__file__).resolve().parents[1] /
                       "src/kailin/data/pubmedqa/ori_pqal.json").read_text())
    items = list(data.items())[:5]
    cols: dict[str, list] = {f.name: [None] * len(items) for f in CORPUS_SCHEMA}
    cols["pmid"] = [int(k) for k, _ in items]
    cols["title"] = [v["QUESTION"] for _, v in items]
    cols["abstract"] = [" ".join(v["CONTEXTS"]) for _, v in items]
    cols["abstract"][1] = ""
    cols["abstract"][2] = "[500x1] " + cols["abstract"][3]
    pq.write_table(pa.table(cols, schema=CORPUS_SCHEMA), corpus / "data" / "part-0.parquet")
    (corpus / "manifest.json").write_text("{}")
    monkeypatch.setenv("MY_KEY", SECRET)
    args = ["generate", "questions", str(corpus), "-g", f"remote=openai:{server.url}#fake-model",
            "-g", f"chat=openai:{server.url}#other", "--out", str(tmp_path / "q"),
            "--api-key-env", "MY_KEY", "--cache", str(tmp_path / "cache.sqlite"),
            "--rows-per-shard", "2", "--max-new-tokens", "24", "--mode", "raw"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    n_calls = sum(server.paths.values())
    assert n_calls == 4 * 2 + 1  # 4 abstracts x 2 generators, one 500 retried
    t = read_parquet(tmp_path / "q").sort_by([("pmid", "ascending"), ("generator", "ascending")])
    for col in ["pmid", "generator", "prompt", "question", "raw", "prompt_tokens",
                "completion_tokens", "reject_reason"]:
        assert col in t.column_names
    rows = t.to_pylist()
    assert len(rows) == 10
    ok = [r for r in rows if r["reject_reason"] is None]
    assert len(ok) == 8 and all(r["question"].startswith("What is ") for r in ok)
    assert all(r["question"].endswith("?") for r in ok)
    assert ok[0]["prompt"].startswith("user:Please analyze the information in the context in "
                                      "the field of bioinformatics:「")
    assert ok[0]["prompt"].endswith("」 from bioinfo and generate a question for it. \n\nassistant:")
    assert [r["reject_reason"] for r in rows if r["question"] == ""] == ["no_abstract"] * 2
    stats = json.loads((tmp_path / "q" / "stats.json").read_text())
    assert stats["rows"] == 10 and stats["accepted"] == 8
    assert stats["rejections"]["no_abstract"] == 2
    assert stats["generators"]["remote"]["reject_reasons"]["no_abstract"] == 1
    # a fresh output folder: every answer comes from the cache, no HTTP request at all
    args2 = [a if a != str(tmp_path / "q") else str(tmp_path / "q2") for a in args]
    res = CliRunner().invoke(app, args2)
    assert res.exit_code == 0, res.output
    assert sum(server.paths.values()) == n_calls
    stats2 = json.loads((tmp_path / "q2" / "stats.json").read_text())
    assert stats2["this_run"]["generators"]["remote"] == {"cache_hits": 4, "cache_misses": 0,
                                                          "prompts_sent": 0,
                                                          "backend_batches": 0}
    # rerun into the same folder: finished shards are skipped
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0
    assert json.loads((tmp_path / "q" / "stats.json").read_text())["this_run"][
        "skipped_shards"] == 3
    # bad generator spec: a one-line error, exit code 2
    res = CliRunner().invoke(app, ["generate", "questions", str(corpus), "-g", "x=openai:nope",
                                   "--out", str(tmp_path / "q3")])
    assert res.exit_code != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_llama_cpp_server_on_packaged_gguf() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from kailin.llm.packaged import smollm2_gguf

    port = _free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kailin-llama-server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "1024", "--n_threads", "2", "--verbose", "False"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        import httpx

        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start: " + log_path.read_text()[-2000:])
            time.sleep(0.5)
        b = OpenAIBackend(url, "smollm2", concurrency=2, timeout=60, max_retries=1)
        params = SamplingParams(max_new_tokens=16)
        out = b.generate([
            [{"role": "user", "content": "Write one question about insulin and diabetes."}],
            "The capital of France is",
        ], params)
        assert out[0].text.strip() and 0 < out[0].completion_tokens <= 16
        assert out[0].prompt_tokens > 5
        assert "Paris" in out[1].text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_killed_batch_keeps_every_completion_it_received(tmp_path: Path) -> None:
    """A client killed (SIGKILL) at 90% of one HTTP batch: the re-run re-issues <= 10% of the
    calls, because each completion was committed to the cache the moment it arrived."""
    from kailin.llm.cache import CachedBackend, ResponseCache

    n = 60
    srv = FakeOpenAI(delay=0.05)
    cache_path = tmp_path / "cache.sqlite"
    prompts = [f"prompt number {i} about topic {i}" for i in range(n)]
    script = (
        "import json, sys\n"
        "from kailin.llm.base import SamplingParams\n"
        "from kailin.llm.cache import CachedBackend, ResponseCache\n"
        "from kailin.llm.openai_http import OpenAIBackend\n"
        f"b = OpenAIBackend({srv.url!r}, 'fake-model', concurrency=2, timeout=5)\n"
        f"c = CachedBackend(b, ResponseCache({str(cache_path)!r}))\n"
        f"c.generate(json.loads({json.dumps(json.dumps(prompts))}), SamplingParams())\n"
    )
    try:
        proc = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.monotonic() + 60
        cache = None
        while time.monotonic() < deadline:
            if cache is None and cache_path.exists():
                cache = ResponseCache(cache_path)
            if cache is not None and len(cache) >= int(0.9 * n):
                break
            assert proc.poll() is None, "the client finished before it could be killed"
            time.sleep(0.01)
        proc.kill()  # the batch never returns: the old code cached nothing of it
        proc.wait()
        assert cache is not None
        kept = len(cache)
        assert int(0.9 * n) <= kept < n
        before = sum(srv.paths.values())
        cb = CachedBackend(backend(srv, concurrency=2), ResponseCache(cache_path))
        out = cb.generate(prompts, SamplingParams())
        reissued = sum(srv.paths.values()) - before
        assert [o.text for o in out] == [f"Sure! Here is a question: What is {' '.join(p.split()[:3])}?"
                                         for p in prompts]
        assert reissued == n - kept <= 0.1 * n
        assert cb.hits == kept and cb.stored == reissued
        print(f"killed at {kept}/{n} cached; re-run re-issued {reissued} calls")
    finally:
        srv.close()
