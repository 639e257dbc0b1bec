"""LLM backends behind one interface, a response cache, and the packaged small model.

``Backend.generate(requests, params) -> list[Completion]`` where a request is a prompt string or
a list of chat messages. Backends: :class:`~kailin.llm.transformers_backend.TransformersBackend`,
:class:`~kailin.llm.openai_http.OpenAIBackend`, :class:`~kailin.llm.vllm_backend.VLLMBackend`,
:class:`~kailin.llm.llamacpp_backend.LlamaCppBackend` (optional ``llama-cpp-python``);
pick one from a spec string with :func:`~kailin.llm.spec.build_backend`. Heavy libraries (torch,
transformers, vllm, llama_cpp) are imported only when a model loads.
"""

from kailin.llm.base import Backend, Completion, Request, SamplingParams
from kailin.llm.cache import CachedBackend, ResponseCache
from kailin.llm.spec import BackendOptions, GeneratorSpec, build_backend, parse_spec

__all__ = [
    "Backend",
    "BackendOptions",
    "CachedBackend",
    "Completion",
    "GeneratorSpec",
    "Request",
    "ResponseCache",
    "SamplingParams",
    "build_backend",
    "parse_spec",
]
