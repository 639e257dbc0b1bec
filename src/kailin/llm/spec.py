"""Generator specs: one string that picks a backend and a model.

==================================  ==========================================================
SPEC                                meaning
==================================  ==========================================================
``smollm2``                         the packaged SmolLM2-135M-Instruct (:mod:`.packaged`) on
                                    the local transformers backend
``gemma3-270m``                     the packaged Gemma 3 270M base model, the same way
``hf:ID_OR_PATH``                   transformers; a hub id (``hf:HuggingFaceTB/SmolLM2-360M-
                                    Instruct``) or a local checkpoint folder (``hf:./ckpt``)
``./ckpt``, ``/abs/ckpt``,          transformers, without the prefix: an existing folder or a
``org/name``                        hub id of the form ``org/name``
``openai:URL#MODEL``                an OpenAI-compatible server at ``URL`` (the base URL that
                                    ends before ``/chat/completions``, usually ``.../v1``)
                                    serving ``MODEL``: ``openai:http://127.0.0.1:8000/v1#m``
``vllm:ID_OR_PATH``                 vLLM's offline engine (``vllm:smollm2`` works too)
``llamacpp:PATH.gguf``              llama.cpp in process (``llama-cpp-python``), batched over
                                    sequences; ``llamacpp:smollm2`` is the packaged GGUF with
                                    the checkpoint's tokenizer
==================================  ==========================================================

The API key of ``openai:`` generators comes from the environment variable named by
:attr:`BackendOptions.api_key_env` (default ``OPENAI_API_KEY``), never from the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kailin.errors import InputError
from kailin.llm.base import Backend

#: the packaged models (:data:`kailin.llm.packaged.PACKAGED_MODELS`): SmolLM2-135M-Instruct and
#: the Gemma 3 270M base model
PACKAGED = {"smollm2", "gemma3-270m"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

SPEC_HELP = (
    "smollm2 | hf:HUB_ID_OR_PATH | PATH | ORG/NAME | openai:BASE_URL#MODEL | vllm:HUB_ID_OR_PATH"
    " | llamacpp:PATH.gguf"
)


@dataclass(frozen=True)
class GeneratorSpec:
    """A parsed spec. ``model`` is ``"smollm2"`` for the packaged model (resolved on load)."""

    backend: str  # "transformers" | "openai" | "vllm" | "llamacpp"
    model: str
    base_url: str | None = None
    spec: str = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "model": self.model,
                "base_url": self.base_url}

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` for cache keys: a local model by the content of its weights, not its
        path (a copied run folder keeps its questions; a checkpoint overwritten in place does
        not)."""
        from pathlib import Path

        from kailin.io import content_fingerprint

        out = self.to_dict()
        if self.model and Path(self.model).expanduser().exists():
            out["model"] = {"local": Path(self.model).name,
                            "content": content_fingerprint(Path(self.model).expanduser())}
        return out


@dataclass
class BackendOptions:
    """Settings that apply to every backend of a run (each backend uses its own)."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    threads: int | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 0.5
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)


def parse_spec(spec: str, name: str = "") -> GeneratorSpec:
    """Parse a SPEC string (see the module docstring); InputError explains a bad one."""
    s = spec.strip()
    where = f"generator {name!r}: " if name else ""
    if not s:
        raise InputError(f"{where}empty model spec (expected {SPEC_HELP})")
    if s.lower() in PACKAGED:
        return GeneratorSpec("transformers", s.lower(), spec=s, name=name)
    if s.startswith("openai:"):
        rest = s[len("openai:"):]
        url, sep, model = rest.rpartition("#")
        if not sep or not url or not model:
            raise InputError(
                f"{where}{s!r}: an OpenAI-compatible spec is openai:BASE_URL#MODEL, e.g. "
                "openai:http://127.0.0.1:8000/v1#HuggingFaceTB/SmolLM2-135M-Instruct"
            )
        if not url.startswith(("http://", "https://")):
            raise InputError(f"{where}{s!r}: BASE_URL must start with http:// or https://")
        return GeneratorSpec("openai", model, base_url=url.rstrip("/"), spec=s, name=name)
    if s.startswith("vllm:"):
        model = s[len("vllm:"):]
        if not model:
            raise InputError(f"{where}{s!r}: expected vllm:HUB_ID_OR_PATH")
        return GeneratorSpec("vllm", model, spec=s, name=name)
    if s.startswith("llamacpp:"):
        model = s[len("llamacpp:"):]
        if model.lower() in PACKAGED:
            return GeneratorSpec("llamacpp", model.lower(), spec=s, name=name)
        if not model.endswith(".gguf"):
            raise InputError(f"{where}{s!r}: expected llamacpp:PATH.gguf or llamacpp:smollm2")
        if not Path(model).expanduser().is_file():
            raise InputError(f"{where}{s!r}: no such GGUF file")
        return GeneratorSpec("llamacpp", str(Path(model).expanduser()), spec=s, name=name)
    if s.startswith("hf:"):
        model = s[len("hf:"):]
        if not model:
            raise InputError(f"{where}{s!r}: expected hf:HUB_ID_OR_PATH")
        return GeneratorSpec("transformers", model, spec=s, name=name)
    p = Path(s).expanduser()
    if p.exists():
        return GeneratorSpec("transformers", str(p), spec=s, name=name)
    if s.startswith((".", "/", "~")):
        raise InputError(f"{where}{s!r}: no such model folder")
    if _HUB_RE.match(s):
        return GeneratorSpec("transformers", s, spec=s, name=name)
    raise InputError(f"{where}{s!r}: unknown model spec (expected {SPEC_HELP})")


def parse_generator(arg: str) -> GeneratorSpec:
    """Parse ``NAME=SPEC`` (the command line's ``--generator``)."""
    name, sep, spec = arg.partition("=")
    name = name.strip()
    if not sep or not _NAME_RE.match(name):
        raise InputError(
            f"--generator {arg!r}: expected NAME=SPEC with NAME made of letters, digits, '_', "
            f"'-', '.' (e.g. general=smollm2); SPEC is {SPEC_HELP}"
        )
    return parse_spec(spec, name=name)


def parse_generators(args: list[str]) -> list[GeneratorSpec]:
    specs = [parse_generator(a) for a in args]
    if not specs:
        raise InputError("give at least one --generator NAME=SPEC")
    seen: set[str] = set()
    for g in specs:
        if g.name in seen:
            raise InputError(f"--generator: the name {g.name!r} is used twice")
        seen.add(g.name)
    return specs


def resolve_model(model: str) -> str:
    """Map the packaged model's name to its local checkpoint; other models pass through."""
    if model in PACKAGED:
        from kailin.llm.packaged import packaged_checkpoint

        return str(packaged_checkpoint(model))
    return model


def build_backend(spec: GeneratorSpec | str, options: BackendOptions | None = None) -> Backend:
    """Instantiate the backend a spec names (models load lazily, on first use)."""
    g = parse_spec(spec) if isinstance(spec, str) else spec
    o = options or BackendOptions()
    if g.backend == "transformers":
        from kailin.llm.transformers_backend import TransformersBackend

        return TransformersBackend(resolve_model(g.model), device=o.device, dtype=o.dtype,
                                   batch_size=o.batch_size, threads=o.threads)
    if g.backend == "openai":
        from kailin.llm.openai_http import OpenAIBackend

        assert g.base_url is not None
        return OpenAIBackend(g.base_url, g.model, api_key_env=o.api_key_env,
                             concurrency=o.concurrency, timeout=o.timeout,
                             max_retries=o.max_retries, backoff=o.backoff)
    if g.backend == "vllm":
        from kailin.llm.vllm_backend import VLLMBackend, require_vllm

        require_vllm()
        return VLLMBackend(resolve_model(g.model), **o.vllm_kwargs)
    if g.backend == "llamacpp":
        from kailin.llm.llamacpp_backend import LlamaCppBackend

        gguf, tokenizer = g.model, None
        if g.model in PACKAGED:
            import importlib.util

            from kailin.llm import packaged

            gguf = str(getattr(packaged, packaged.PACKAGED_MODELS[g.model].gguf)())
            if importlib.util.find_spec("transformers") is not None:
                tokenizer = resolve_model(g.model)  # same token ids as the transformers path
        return LlamaCppBackend(gguf, tokenizer=tokenizer, batch_size=o.batch_size,
                               threads=o.threads)
    raise InputError(f"unknown backend {g.backend!r}")
