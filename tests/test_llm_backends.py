"""Generation interface, specs, response cache, packaged SmolLM2 and the transformers backend."""

from __future__ import annotations

import json
import pickle
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kailin.errors import InputError, MissingDependencyError
from kailin.llm.base import (
    Backend,
    Completion,
    Request,
    SamplingParams,
    apply_stop,
    request_key,
    validate_request,
)
from kailin.llm.cache import CachedBackend, ResponseCache
from kailin.llm.spec import build_backend, parse_generator, parse_generators, parse_spec

PQAL = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"


def abstracts(n: int, chars: int = 600) -> list[str]:
    data = json.loads(PQAL.read_text())
    return [" ".join(v["CONTEXTS"])[:chars] for v in list(data.values())[:n]]


class CountingBackend(Backend):
    kind = "fake"

    def __init__(self) -> None:
        self.calls: list[list[Request]] = []

    @property
    def model_name(self) -> str:
        return "echo"

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        self.calls.append(list(requests))
        return [Completion(f"Q{len(str(r))}?", len(str(r)), 2, "stop") for r in requests]


# -- interface --------------------------------------------------------------------------------
def test_sampling_params_validate_and_normalise() -> None:
    with pytest.raises(InputError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(InputError):
        SamplingParams(top_p=0)
    with pytest.raises(InputError):
        SamplingParams(temperature=-1)
    # greedy ignores top_p / seed, so they must not split the cache
    a, b = SamplingParams(seed=1, top_p=0.5), SamplingParams(seed=2)
    assert a.to_dict() == b.to_dict()
    s1, s2 = SamplingParams(temperature=0.7, seed=1), SamplingParams(temperature=0.7, seed=2)
    assert s1.to_dict() != s2.to_dict()
    ident = {"backend": "x", "model": "m"}
    assert request_key(ident, "p", a) == request_key(ident, "p", b)
    assert request_key(ident, "p", s1) != request_key(ident, "p", s2)
    assert request_key(ident, "p", a) != request_key(ident, [{"role": "user", "content": "p"}], a)


def test_validate_request_and_stop() -> None:
    assert validate_request("x") == "x"
    with pytest.raises(InputError, match="request #3"):
        validate_request([{"role": "user"}], 3)
    with pytest.raises(InputError):
        validate_request([], 0)
    assert apply_stop("What is X?\nAnswer: Y", ["\nAnswer"]) == ("What is X?", True)
    assert apply_stop("abc", []) == ("abc", False)


# -- specs ------------------------------------------------------------------------------------
def test_parse_specs(tmp_path: Path) -> None:
    assert parse_spec("smollm2").backend == "transformers"
    assert parse_spec("smollm2").model == "smollm2"
    g = parse_spec("hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (g.backend, g.model) == ("transformers", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert parse_spec("org/model").backend == "transformers"
    assert parse_spec(str(tmp_path)).model == str(tmp_path)
    o = parse_spec("openai:http://127.0.0.1:8000/v1/#org/Model-7B")
    assert (o.backend, o.base_url, o.model) == ("openai", "http://127.0.0.1:8000/v1", "org/Model-7B")
    v = parse_spec("vllm:meta-llama/Llama-3.1-8B-Instruct")
    assert (v.backend, v.model) == ("vllm", "meta-llama/Llama-3.1-8B-Instruct")
    for bad in ["", "openai:http://x/v1", "openai:ftp://x#m", "./nope/ckpt", "vllm:", "what"]:
        with pytest.raises(InputError):
            parse_spec(bad)
    assert parse_generator("domain=smollm2").name == "domain"
    with pytest.raises(InputError, match="NAME=SPEC"):
        parse_generator("smollm2")
    with pytest.raises(InputError, match="twice"):
        parse_generators(["a=smollm2", "a=org/m"])


def test_vllm_missing_is_a_clear_error() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(MissingDependencyError, match="pip install vllm"):
        build_backend("vllm:org/model")


# -- cache ------------------------------------------------------------------------------------
def test_cache_second_run_makes_no_backend_call(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    params = SamplingParams(max_new_tokens=8)
    reqs: list[Request] = ["alpha", "beta", [{"role": "user", "content": "gamma"}], "alpha"]
    fake = CountingBackend()
    first = CachedBackend(fake, ResponseCache(db)).generate(reqs, params)
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 3  # duplicate sent once
    assert [c.cached for c in first] == [False, False, False, False]
    fake2 = CountingBackend()
    cb = CachedBackend(fake2, ResponseCache(db))
    second = cb.generate(reqs, params)
    assert fake2.calls == []  # a re-run pays nothing
    assert cb.hits == 4 and cb.misses == 0 and cb.prompts_sent == cb.backend_batches == 0
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second)
    # different parameters are a different key
    cb.generate(["alpha"], SamplingParams(max_new_tokens=9))
    assert len(fake2.calls) == 1
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 4


def test_cache_pickles_and_is_shared_by_threads(tmp_path: Path) -> None:
    cache = pickle.loads(pickle.dumps(ResponseCache(tmp_path / "c.sqlite")))
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            cb = CachedBackend(CountingBackend(), cache)
            cb.generate([f"p{k}-{i}" for i in range(20)], SamplingParams())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 80


# -- packaged model ---------------------------------------------------------------------------
def test_packaged_checkpoint_build_is_once_under_concurrency(tmp_path: Path, monkeypatch) -> None:
    from kailin.llm import packaged

    calls: list[Path] = []

    def fake_convert(gguf: Path, out: Path, pm: object = None) -> None:
        calls.append(out)
        time.sleep(0.3)
        (out / "model.safetensors").write_bytes(b"x")
        (out / packaged._MARKER).write_text(json.dumps({"format_version":
                                                        packaged._FORMAT_VERSION}))

    monkeypatch.setattr(packaged, "_convert", fake_convert)
    monkeypatch.setattr(packaged, "smollm2_gguf", lambda: tmp_path / "fake.gguf")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        packaged.smollm2_checkpoint(tmp_path / "models"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and results[0].name == packaged.CHECKPOINT_NAME
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_packaged_smollm2_checkpoint_is_a_normal_safetensors_checkpoint() -> None:
    pytest.importorskip("transformers")
    from kailin.llm.packaged import smollm2_checkpoint, smollm2_gguf

    assert smollm2_gguf().suffix == ".gguf"
    path = smollm2_checkpoint()
    t0 = time.perf_counter()
    assert smollm2_checkpoint() == path
    assert time.perf_counter() - t0 < 1.0  # cached
    assert (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text


# -- transformers backend ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from kailin.llm.spec import BackendOptions

    threads = torch.get_num_threads()
    backend = build_backend("smollm2", BackendOptions(device="cpu", batch_size=4, threads=1))
    backend.load()
    yield backend
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_transformers_batched_generation(smol) -> None:
    texts = abstracts(3, 300)
    reqs: list[Request] = [
        [{"role": "user", "content": f"Write a question about this text: {t}"},
         {"role": "assistant", "content": "Question:"}]
        for t in texts
    ] + ["The capital of France is"]
    params = SamplingParams(max_new_tokens=12)
    batched = smol.generate(reqs, params)
    assert len(batched) == 4
    tok = smol.tokenizer
    for r, c in zip(reqs, batched, strict=True):
        assert 0 < c.completion_tokens <= 12
        assert c.finish_reason in {"stop", "length"}
        rendered = smol.render(r)
        n = len(tok(rendered, add_special_tokens=isinstance(r, str)).input_ids)
        assert c.prompt_tokens == n
    # chat prefill is continued, not closed
    assert smol.render(reqs[0]).endswith("<|im_start|>assistant\nQuestion:")
    # one at a time gives the same greedy text for a request (left padding is masked)
    single = smol.generate([reqs[3]], params)[0]
    assert single.text == batched[3].text
    assert "Paris" in single.text


@pytest.mark.slow
def test_transformers_sampling_seed_reproducible(smol) -> None:
    req = ["Biomedical question:"]
    p1 = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    a = smol.generate(req, p1)[0].text
    b = smol.generate(req, p1)[0].text
    assert a == b
    others = {smol.generate(req, SamplingParams(max_new_tokens=10, temperature=1.0,
                                                 top_p=0.95, seed=s))[0].text
              for s in range(8, 11)}
    assert len(others | {a}) > 1  # seeds change samples


def test_vllm_backend_with_a_stand_in_engine(monkeypatch) -> None:
    """The vLLM code path against a stand-in ``vllm`` module with vLLM's offline API."""
    import importlib.machinery
    import types
    from types import SimpleNamespace

    calls: list[tuple[str, Any]] = []

    class FakeSP:
        def __init__(self, **kw: Any) -> None:
            self.kw = kw

    class FakeLLM:
        def __init__(self, model: str, **kw: Any) -> None:
            calls.append(("init", (model, kw)))

        @staticmethod
        def _out(text: str, n_prompt: int) -> Any:
            return SimpleNamespace(prompt_token_ids=list(range(n_prompt)), outputs=[
                SimpleNamespace(text=text, token_ids=[1, 2, 3], finish_reason="stop")])

        def generate(self, prompts: list[str], sp: FakeSP, use_tqdm: bool = True) -> list:
            calls.append(("generate", (prompts, sp.kw)))
            return [self._out(f"G:{p}###tail", len(p.split())) for p in prompts]

        def chat(self, msgs: list, sp: FakeSP, use_tqdm: bool = True,
                 add_generation_prompt: bool = True, continue_final_message: bool = False):
            calls.append(("chat", (len(msgs), add_generation_prompt, continue_final_message)))
            return [self._out(f"C:{m[-1]['content']}", 7) for m in msgs]

    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSP
    monkeypatch.setitem(sys.modules, "vllm", mod)
    from kailin.llm.spec import BackendOptions

    b = build_backend("vllm:org/m", BackendOptions(vllm_kwargs={"tensor_parallel_size": 2}))
    reqs: list[Request] = [
        "a b c",
        [{"role": "user", "content": "u1"}],
        [{"role": "user", "content": "u2"}, {"role": "assistant", "content": "Question:"}],
    ]
    out = b.generate(reqs, SamplingParams(max_new_tokens=5, stop=("###",), temperature=0.5,
                                          seed=3))
    assert [o.text for o in out] == ["G:a b c", "C:u1", "C:Question:"]
    assert out[0].finish_reason == "stop" and out[0].prompt_tokens == 3
    assert out[1].completion_tokens == 3
    assert calls[0] == ("init", ("org/m", {"tensor_parallel_size": 2}))
    gen_kw = calls[1][1][1]
    assert gen_kw["max_tokens"] == 5 and gen_kw["seed"] == 3 and gen_kw["stop"] == ["###"]
    assert ("chat", (1, True, False)) in calls and ("chat", (1, False, True)) in calls


@pytest.mark.slow
def test_transformers_stop_string_ends_generation(smol) -> None:
    """A stop string ends the row during generation (not only cut afterwards): the completion
    is shorter than the budget, finishes ``stop`` and does not hold the stop string."""
    req = [{"role": "user", "content": "List the numbers from one to fifty, one per line."}]
    free = smol.generate([req], SamplingParams(max_new_tokens=40))[0]
    assert "\n" in free.text
    stopped = smol.generate([req], SamplingParams(max_new_tokens=40, stop=("\n",)))[0]
    assert stopped.finish_reason == "stop" and "\n" not in stopped.text
    assert stopped.completion_tokens < free.completion_tokens
    assert free.text.startswith(stopped.text)
