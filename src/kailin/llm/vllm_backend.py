"""vLLM's offline engine (``vllm.LLM``) for GPU machines. vLLM is an optional dependency:
it is imported when the backend loads, with a clear error when it is missing."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from kailin.errors import MissingDependencyError
from kailin.llm.base import (
    Backend,
    Completion,
    Request,
    SamplingParams,
    apply_stop,
    continues_final_message,
    is_chat,
    validate_request,
)

log = logging.getLogger(__name__)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise MissingDependencyError(
            "the vllm: backend needs the Python package 'vllm' on a machine with a supported GPU: "
            "pip install vllm (or use hf:MODEL for transformers, or openai:URL#MODEL for a "
            "running vLLM server)"
        )


class VLLMBackend(Backend):
    """Generate with ``vllm.LLM`` (continuous batching on the GPU).

    Args:
        model: local checkpoint or hub id.
        engine_kwargs: passed to ``vllm.LLM`` (``tensor_parallel_size``, ``gpu_memory_utilization``,
            ``max_model_len``, ``dtype`` ...).
    """

    kind = "vllm"

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        require_vllm()
        self.model = str(model)
        self.engine_kwargs = engine_kwargs
        self._llm: Any = None

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> None:
        if self._llm is None:
            from vllm import LLM

            log.info("starting vLLM engine for %s", self.model)
            self._llm = LLM(model=self.model, **self.engine_kwargs)

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSP

        kw: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": 1.0 if params.greedy else params.top_p,
            "repetition_penalty": params.repetition_penalty,
            "n": 1,
        }
        if not params.greedy and params.seed is not None:
            kw["seed"] = params.seed
        if params.stop:
            kw["stop"] = list(params.stop)
        return VSP(**kw)

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        reqs = [validate_request(r, i) for i, r in enumerate(requests)]
        if not reqs:
            return []
        self.load()
        sp = self._sampling(params)
        out: list[Completion | None] = [None] * len(reqs)
        plain = [i for i, r in enumerate(reqs) if not is_chat(r)]
        chat = [i for i, r in enumerate(reqs) if is_chat(r)]
        results: list[tuple[int, Any]] = []
        if plain:
            res = self._llm.generate([reqs[i] for i in plain], sp, use_tqdm=False)
            results += list(zip(plain, res, strict=True))
        for cont in (False, True):
            idx = [i for i in chat if continues_final_message(reqs[i]) == cont]
            if idx:
                res = self._llm.chat([reqs[i] for i in idx], sp, use_tqdm=False,
                                     add_generation_prompt=not cont,
                                     continue_final_message=cont)
                results += list(zip(idx, res, strict=True))
        for i, r in results:
            o = r.outputs[0]
            text, cut = apply_stop(o.text, params.stop)
            out[i] = Completion(text, len(r.prompt_token_ids or []), len(o.token_ids),
                                "stop" if cut else o.finish_reason)
        return [c for c in out if c is not None]

    def close(self) -> None:
        self._llm = None
