"""Local generation with Hugging Face transformers: CPU or GPU, batched with left padding.

Requests are sorted by length and cut into micro-batches of ``batch_size`` so little compute is
spent on padding; results come back in the caller's order. Chat requests go through the
tokenizer's chat template (a trailing assistant message is continued, not closed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kailin.errors import InputError, require
from kailin.io import weights_fingerprint
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


class TransformersBackend(Backend):
    """Generate with ``AutoModelForCausalLM``.

    Args:
        model: a local checkpoint directory or a Hugging Face hub id.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU) or a torch dtype name.
        batch_size: requests per forward pass.
        revision: hub revision (ignored for local paths).
        gguf_file: load this GGUF file from ``model`` (dequantised by transformers).
        threads: CPU threads for torch (``torch.set_num_threads``, process-wide); ``None`` keeps
            torch's default. On a busy shared CPU, fewer threads than cores avoids OpenMP
            oversubscription, which can slow generation down by an order of magnitude.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        revision: str | None = None,
        gguf_file: str | None = None,
        threads: int | None = None,
    ) -> None:
        require("torch", "train")
        require("transformers", "train")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self._model_arg = str(model)
        self.device_arg = device
        self.dtype_arg = dtype
        self.batch_size = batch_size
        self.revision = revision
        self.gguf_file = gguf_file
        self.threads = threads
        self._model: Any = None
        self._tok: Any = None
        self._device: Any = None
        local = Path(self._model_arg).expanduser()
        self._local = local if local.exists() else None
        if self._local is None and (self._model_arg.startswith((".", "/", "~"))
                                    or self._model_arg.count("/") > 1):
            raise InputError(
                f"{self._model_arg}: no such model directory (give a local checkpoint folder or "
                "a Hugging Face hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)"
            )

    @property
    def model_name(self) -> str:
        return str(self._local.resolve()) if self._local is not None else self._model_arg

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"backend": self.kind, "model": self.model_name}
        if self._local is not None and self._local.is_dir():
            ident["weights"] = weights_fingerprint(self._local)
        if self.revision:
            ident["revision"] = self.revision
        if self.gguf_file:
            ident["gguf_file"] = self.gguf_file
        if self.dtype_arg != "auto":  # other weights' precision, other text: not a cache hit
            ident["dtype"] = self.dtype_arg
        return ident

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads is not None:
            torch.set_num_threads(max(1, self.threads))
        dev = self.device_arg
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(dev)
        if self.dtype_arg == "auto":
            dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, self.dtype_arg, None)
            if not isinstance(dtype, torch.dtype):
                raise InputError(f"unknown dtype {self.dtype_arg!r} (use float32, bfloat16, ...)")
        src = str(self._local) if self._local is not None else self._model_arg
        kw: dict[str, Any] = {}
        if self.revision:
            kw["revision"] = self.revision
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        log.info("loading %s on %s (%s)", src, self._device, dtype)
        try:
            tok = AutoTokenizer.from_pretrained(src, **kw)
            model = AutoModelForCausalLM.from_pretrained(src, **kw, **_dtype_kwarg(dtype))
        except OSError as exc:
            raise InputError(f"{src}: cannot load the model: {exc}") from exc
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.to(self._device)
        model.eval()
        self._tok, self._model = tok, model

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tok

    # -- generation ---------------------------------------------------------------------------
    def render(self, req: Request) -> str:
        """The exact text fed to the model for ``req`` (chat template applied)."""
        tok = self.tokenizer
        if not is_chat(req):
            return req  # type: ignore[return-value]
        if not getattr(tok, "chat_template", None):
            raise InputError(
                f"{self.model_name}: the tokenizer has no chat template; use a plain prompt "
                "template (--mode raw) for this model"
            )
        cont = continues_final_message(req)
        return tok.apply_chat_template(
            req, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for v in (self._model.generation_config.eos_token_id, self._tok.eos_token_id):
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
        return ids

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        return self.generate_each(requests, params, None)

    def generate_each(self, requests: Sequence[Request], params: SamplingParams,
                      on_result: Callable[[int, Completion], None] | None
                      ) -> list[Completion]:
        """Each micro-batch's completions go to ``on_result`` as soon as it is decoded."""
        reqs = [validate_request(r, i) for i, r in enumerate(requests)]
        if not reqs:
            return []
        self.load()
        import torch

        tok, model = self._tok, self._model
        texts = [self.render(r) for r in reqs]
        # chat renders already hold their special tokens; plain prompts get BOS etc.
        ids = [tok(t, add_special_tokens=not is_chat(r)).input_ids
               for t, r in zip(texts, reqs, strict=True)]
        order = sorted(range(len(reqs)), key=lambda i: -len(ids[i]))
        eos = self._eos_ids()
        out: list[Completion | None] = [None] * len(reqs)
        gen_kw: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": tok.pad_token_id,
            "do_sample": not params.greedy,
        }
        if params.greedy:
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        else:
            gen_kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.repetition_penalty != 1.0:
            gen_kw["repetition_penalty"] = params.repetition_penalty
        if params.stop:  # a row ends at its stop string instead of running to the budget
            gen_kw.update(stop_strings=[s for s in params.stop if s], tokenizer=tok)
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size]
            enc = tok.pad({"input_ids": [ids[i] for i in idx]}, padding=True,
                          return_tensors="pt").to(self._device)
            if not params.greedy and params.seed is not None:
                torch.manual_seed(params.seed + b)
            with torch.inference_mode():
                gen = model.generate(**enc, **gen_kw)
            new = gen[:, enc["input_ids"].shape[1] :].tolist()
            n_prompt = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(idx):
                gen_ids = new[row]
                finish = "length"
                for j, t in enumerate(gen_ids):
                    if t in eos:
                        gen_ids = gen_ids[: j + 1]
                        finish = "stop"
                        break
                text = tok.decode(gen_ids, skip_special_tokens=True)
                text, cut = apply_stop(text, params.stop)
                out[i] = Completion(text, int(n_prompt[row]), len(gen_ids),
                                    "stop" if cut else finish)
                if on_result is not None:
                    on_result(i, out[i])
        return [c for c in out if c is not None]

    def close(self) -> None:
        self._model = None
        self._tok = None


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers >= 4.56 names the argument ``dtype``; older releases ``torch_dtype``."""
    import inspect

    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    if "dtype" in params:
        return {"dtype": dtype}
    try:
        import transformers

        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        if (major, minor) >= (4, 56):
            return {"dtype": dtype}
    except ValueError:
        pass
    return {"torch_dtype": dtype}
