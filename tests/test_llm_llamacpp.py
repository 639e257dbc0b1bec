"""The llama.cpp backend (llama-cpp-python in process) on the packaged SmolLM2 GGUF."""

from __future__ import annotations

import builtins
import importlib.util
from pathlib import Path

import pytest

from kailin.errors import InputError, MissingDependencyError
from kailin.llm.base import Request, SamplingParams
from kailin.llm.spec import BackendOptions, build_backend, parse_spec

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python not installed")

PROMPTS: list[Request] = [
    [{"role": "user", "content": "Write a question about insulin and type 2 diabetes."},
     {"role": "assistant", "content": "Question:"}],
    [{"role": "user", "content": "Write a question about the BRCA1 gene in breast cancer."},
     {"role": "assistant", "content": "Question:"}],
    [{"role": "user", "content": "Write a question about statins."},
     {"role": "assistant", "content": "Question:"}],
    "The capital of France is",
]


def test_parse_llamacpp_specs(tmp_path: Path) -> None:
    g = parse_spec("llamacpp:smollm2")
    assert (g.backend, g.model) == ("llamacpp", "smollm2")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert parse_spec(f"llamacpp:{f}").model == str(f)
    for bad in ["llamacpp:", "llamacpp:./missing.gguf", f"llamacpp:{tmp_path}"]:
        with pytest.raises(InputError):
            parse_spec(bad)


def test_missing_llama_cpp_is_a_clear_error(monkeypatch) -> None:
    """Without llama_cpp the backend refuses at build time with an install hint, and the
    import helper turns an ImportError (missing or broken native library) into the same."""
    from kailin.llm import llamacpp_backend as lb

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    assert not lb.llama_cpp_available()
    with pytest.raises(MissingDependencyError, match="llama-cpp-python"):
        build_backend("llamacpp:smollm2")
    real_import = builtins.__import__

    def no_llama(name, *a, **k):  # type: ignore[no-untyped-def]
        if name == "llama_cpp":
            raise ImportError("libllama.so: cannot open shared object file")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(MissingDependencyError, match="libllama"):
        lb._import_llama_cpp()


def test_common_prefix() -> None:
    from kailin.llm.llamacpp_backend import _common_prefix

    assert _common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert _common_prefix([[1, 2], [1, 2]]) == 1  # each keeps one token of its own
    assert _common_prefix([[7, 1], [8, 1]]) == 0


@pytest.fixture(scope="module")
def llama():
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python not installed")
    pytest.importorskip("transformers")
    backend = build_backend("llamacpp:smollm2", BackendOptions(batch_size=4, threads=1))
    backend.load()
    yield backend
    backend.close()


@needs_llama
def test_llamacpp_completions_with_token_counts(llama) -> None:
    params = SamplingParams(max_new_tokens=12)
    outs = llama.generate(PROMPTS, params)
    assert len(outs) == len(PROMPTS)
    tok = llama._tok
    for r, c in zip(PROMPTS, outs, strict=True):
        assert 0 < c.completion_tokens <= 12
        assert c.finish_reason in {"stop", "length"}
        n = len(tok(llama.render(r), add_special_tokens=isinstance(r, str)).input_ids)
        assert c.prompt_tokens == n
        assert c.text.strip()
    assert llama.render(PROMPTS[0]).endswith("<|im_start|>assistant\nQuestion:")
    assert "Paris" in outs[3].text
    # deterministic for the same batch; NOT always identical to one at a time: llama.cpp's
    # kernels round differently for a different number of rows per decode step (documented)
    assert [c.text for c in llama.generate(PROMPTS, params)] == [c.text for c in outs]
    assert "Paris" in llama.generate([PROMPTS[3]], params)[0].text
    assert llama.identity()["backend"] == "llamacpp"


@needs_llama
def test_llamacpp_stop_and_seeded_sampling(llama) -> None:
    out = llama.generate(["The capital of France is"],
                         SamplingParams(max_new_tokens=16, stop=("Paris",)))[0]
    assert "Paris" not in out.text and out.finish_reason == "stop"
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    a = llama.generate(["Biomedical question:"], p)[0].text
    assert a == llama.generate(["Biomedical question:"], p)[0].text
    others = {llama.generate(["Biomedical question:"],
                             SamplingParams(max_new_tokens=10, temperature=1.0, seed=s))[0].text
              for s in range(8, 11)}
    assert len(others | {a}) > 1


@needs_llama
def test_llamacpp_gguf_tokenizer_matches_hf(llama) -> None:
    """Without a Hugging Face tokenizer the GGUF's own tokenizer and chat template are used;
    they render and tokenise the chat prompt as the checkpoint's tokenizer does."""
    from kailin.llm.llamacpp_backend import LlamaCppBackend

    bare = LlamaCppBackend(llama.path, tokenizer=None, batch_size=2, threads=1)
    try:
        for r in PROMPTS[:2]:
            assert bare.render(r) == llama.render(r)
            assert bare._encode(bare.render(r), True) == llama._encode(llama.render(r), True)
        out = bare.generate([PROMPTS[3]], SamplingParams(max_new_tokens=8))[0]
        assert "Paris" in out.text and out.completion_tokens
    finally:
        bare.close()


@needs_llama
@pytest.mark.slow
def test_llamacpp_greedy_close_to_transformers(llama) -> None:
    """Same token ids in, different arithmetic (Q4_1 kernels vs the dequantised fp32 weights):
    greedy texts agree on most prompts. The benchmark measures the share on real abstracts."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    tf = build_backend("smollm2", BackendOptions(device="cpu", batch_size=4, threads=1))
    try:
        params = SamplingParams(max_new_tokens=12)
        a = [c.text for c in tf.generate(PROMPTS, params)]
        b = [c.text for c in llama.generate(PROMPTS, params)]
        same = sum(x == y for x, y in zip(a, b, strict=True))
        assert same >= len(PROMPTS) // 2, (a, b)
    finally:
        tf.close()
        torch.set_num_threads(threads)
