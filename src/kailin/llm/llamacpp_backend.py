"""Local generation with llama.cpp (``llama-cpp-python``, in process), batched over sequences.

One llama.cpp context holds up to ``batch_size`` sequences in a unified KV cache; each step
decodes one token of every unfinished sequence in a single ``llama_decode`` call, so the
weights are read once per step for the whole micro-batch (what makes batching pay on a CPU).
Prompts are prefilled together in chunks of ``n_batch`` tokens. Greedy decoding takes the arg
max of the logits; sampling (temperature, top_p, repetition_penalty) is done in numpy with a
per-micro-batch seed.

Tokenisation: when a Hugging Face tokenizer folder is given (the packaged ``smollm2`` uses its
dequantised checkpoint's), prompts are rendered, tokenised and decoded exactly as the
transformers backend does, so both backends see the same token ids and only the arithmetic
differs. Otherwise llama.cpp's own tokenizer and the GGUF's chat template are used.

``llama-cpp-python`` is optional: :func:`llama_cpp_available` says whether it imports, and
building this backend without it raises :class:`~kailin.errors.MissingDependencyError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kailin.errors import InputError, MissingDependencyError
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

INSTALL_HINT = ("the llama.cpp backend needs llama-cpp-python: pip install 'llama-cpp-python' "
                "(or 'kailin[test]')")


def llama_cpp_available() -> bool:
    """True when ``llama_cpp`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # missing, or a broken native build
        raise MissingDependencyError(f"{INSTALL_HINT} ({exc})") from exc
    return llama_cpp


class LlamaCppBackend(Backend):
    """Generate with a GGUF model through llama.cpp.

    Args:
        model: path of a ``.gguf`` file.
        tokenizer: optional Hugging Face tokenizer folder (``AutoTokenizer``) to render chat
            templates, tokenise and decode with; ``None`` uses the GGUF's own tokenizer.
        batch_size: sequences decoded together (the context's ``n_seq_max``).
        threads: CPU threads for llama.cpp; ``None`` keeps llama-cpp-python's default
            (half the cores). On a busy shared CPU use no more than the free cores.
        n_ctx: KV-cache size in tokens shared by the sequences of a micro-batch (prompt plus
            ``max_new_tokens`` of each); micro-batches are cut so they fit.
        n_batch: tokens per ``llama_decode`` call while prefilling.
    """

    kind = "llamacpp"

    def __init__(self, model: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None,
                 batch_size: int = 8, threads: int | None = None, n_ctx: int = 8192,
                 n_batch: int = 512) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(model).expanduser()
        if not path.is_file():
            raise InputError(f"{model}: no such GGUF file")
        if not llama_cpp_available():
            raise MissingDependencyError(INSTALL_HINT)
        self.path = path
        self.tokenizer_dir = str(tokenizer) if tokenizer is not None else None
        self.batch_size = batch_size
        self.threads = threads
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self._llm: Any = None
        self._ctx: Any = None
        self._ctx_seqs = 0
        self._tok: Any = None
        self._lc: Any = None

    @property
    def model_name(self) -> str:
        return str(self.path.resolve())

    def identity(self) -> dict[str, Any]:
        st = self.path.stat()
        fp = hashlib.sha256(f"{self.path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        ident = {"backend": self.kind, "model": self.model_name, "weights": fp[:16]}
        if self.tokenizer_dir:
            ident["tokenizer"] = str(Path(self.tokenizer_dir).resolve())
        return ident

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        if self._llm is not None:
            return
        lc = _import_llama_cpp()
        kw: dict[str, Any] = {"n_ctx": 256, "n_batch": 256, "verbose": False}
        if self.threads is not None:
            kw["n_threads"] = kw["n_threads_batch"] = max(1, self.threads)
        log.info("loading %s with llama.cpp", self.path)
        try:
            self._llm = lc.Llama(str(self.path), **kw)
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{self.path}: llama.cpp cannot load it: {exc}") from exc
        self._lc = lc
        if self.tokenizer_dir is not None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        self._eos = {self._llm.token_eos()}
        eot = self._token_id("<|im_end|>")
        if eot is not None:
            self._eos.add(eot)
        if self._tok is not None and self._tok.eos_token_id is not None:
            self._eos.add(int(self._tok.eos_token_id))
        self._n_vocab = self._llm.n_vocab()

    def _token_id(self, piece: str) -> int | None:
        ids = self._llm.tokenize(piece.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def _context(self, n_seqs: int) -> Any:
        """A context for ``n_seqs`` sequences in one unified KV cache of ``n_ctx`` tokens."""
        if self._ctx is not None and self._ctx_seqs >= n_seqs:
            return self._ctx
        lc = self._lc
        if self._ctx is not None:
            lc.llama_free(self._ctx)
        p = lc.llama_context_default_params()
        p.n_ctx = self.n_ctx
        p.n_batch = self.n_batch
        p.n_ubatch = self.n_batch
        p.n_seq_max = max(n_seqs, self.batch_size)
        p.kv_unified = True
        p.n_threads = p.n_threads_batch = self._llm.n_threads
        ctx = lc.llama_init_from_model(self._llm.model, p)
        if not ctx:
            raise InputError(f"{self.path}: llama.cpp could not create a context (n_ctx={self.n_ctx})")
        self._ctx, self._ctx_seqs = ctx, p.n_seq_max
        return ctx

    # -- text <-> tokens ----------------------------------------------------------------------
    def render(self, req: Request) -> str:
        """The exact text fed to the model for ``req`` (chat template applied)."""
        self.load()
        if not is_chat(req):
            return req  # type: ignore[return-value]
        cont = continues_final_message(req)
        if self._tok is not None:
            if not getattr(self._tok, "chat_template", None):
                raise InputError(f"{self.tokenizer_dir}: the tokenizer has no chat template; "
                                 "use --mode raw")
            return self._tok.apply_chat_template(req, tokenize=False,
                                                 add_generation_prompt=not cont,
                                                 continue_final_message=cont)
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise InputError(f"{self.path}: the GGUF has no chat template; use --mode raw")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(template).render(messages=req, add_generation_prompt=not cont,
                                                bos_token="", eos_token="")
        if cont:  # cut after the final message's content, as transformers does
            last = req[-1]["content"].strip()  # type: ignore[index]
            i = text.rfind(last)
            if i == -1:
                raise InputError("cannot continue the final message with this chat template")
            text = text[: i + len(last)]
        return text

    def _encode(self, text: str, chat: bool) -> list[int]:
        if self._tok is not None:
            return list(self._tok(text, add_special_tokens=not chat).input_ids)
        return list(self._llm.tokenize(text.encode(), add_bos=not chat, special=True))

    def _decode(self, ids: list[int]) -> str:
        if self._tok is not None:
            return self._tok.decode(ids, skip_special_tokens=True)
        ids = [i for i in ids if i not in self._eos]
        return self._llm.detokenize(ids).decode("utf-8", errors="replace")

    # -- generation ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        return self.generate_each(requests, params, None)

    def generate_each(self, requests: Sequence[Request], params: SamplingParams,
                      on_result: Callable[[int, Completion], None] | None) -> list[Completion]:
        reqs = [validate_request(r, i) for i, r in enumerate(requests)]
        if not reqs:
            return []
        self.load()
        ids = [self._encode(self.render(r), is_chat(r)) for r in reqs]
        for i, x in enumerate(ids):
            if len(x) + params.max_new_tokens > self.n_ctx:
                raise InputError(f"request #{i}: {len(x)} prompt tokens + {params.max_new_tokens} "
                                 f"new tokens exceed the llama.cpp context (n_ctx={self.n_ctx})")
        order = sorted(range(len(reqs)), key=lambda i: -len(ids[i]))
        out: list[Completion | None] = [None] * len(reqs)
        batches: list[list[int]] = []
        cur: list[int] = []
        used = 0
        for i in order:  # micro-batches of <= batch_size sequences that fit in n_ctx
            need = len(ids[i]) + params.max_new_tokens
            if cur and (len(cur) >= self.batch_size or used + need > self.n_ctx):
                batches.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += need
        batches.append(cur)
        for b, idx in enumerate(batches):
            gens = self._run_batch([ids[i] for i in idx], params, b)
            for i, (gen, finish) in zip(idx, gens, strict=True):
                text, cut = apply_stop(self._decode(gen), params.stop)
                out[i] = Completion(text, len(ids[i]), len(gen), "stop" if cut else finish)
                if on_result is not None:
                    on_result(i, out[i])
        return [c for c in out if c is not None]

    def _run_batch(self, prompts: list[list[int]], params: SamplingParams,
                   b: int) -> list[tuple[list[int], str]]:
        import numpy as np

        lc = self._lc
        ctx = self._context(len(prompts))
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        n_vocab = self._n_vocab
        rng = np.random.default_rng(None if params.seed is None else params.seed + b)
        batch = lc.llama_batch_init(max(self.n_batch, len(prompts)), 0, 1)
        try:
            def decode(items: list[tuple[int, int, int, bool]]) -> dict[int, Any]:
                """items: (token, pos, seq, want_logits); returns seq -> logits row."""
                batch.n_tokens = len(items)
                for k, (t, pos, s, want) in enumerate(items):
                    batch.token[k] = t
                    batch.pos[k] = pos
                    batch.n_seq_id[k] = 1
                    batch.seq_id[k][0] = s
                    batch.logits[k] = want
                rc = lc.llama_decode(ctx, batch)
                if rc != 0:
                    raise InputError(f"llama_decode failed (code {rc}); try a larger n_ctx")
                rows = {}
                for k, (_t, _pos, s, want) in enumerate(items):
                    if want:
                        ptr = lc.llama_get_logits_ith(ctx, k)
                        rows[s] = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()
                return rows

            # prefill: the prefix all prompts share once (sequence 0, then copied to the
            # others' KV cache), then the rest of each prompt; logits only for last tokens
            shared = _common_prefix(prompts) if len(prompts) > 1 else 0
            logits: dict[int, Any] = {}
            chunk: list[tuple[int, int, int, bool]] = []
            if shared:
                for k in range(0, shared, self.n_batch):
                    decode([(t, k + j, 0, False)
                            for j, t in enumerate(prompts[0][k: min(shared, k + self.n_batch)])])
                mem = lc.llama_get_memory(ctx)
                for s in range(1, len(prompts)):
                    lc.llama_memory_seq_cp(mem, 0, s, 0, shared)
            for s, p in enumerate(prompts):
                for pos in range(shared, len(p)):
                    chunk.append((p[pos], pos, s, pos == len(p) - 1))
                    if len(chunk) == self.n_batch:
                        logits.update(decode(chunk))
                        chunk = []
            if chunk:
                logits.update(decode(chunk))
            gen: list[list[int]] = [[] for _ in prompts]
            finish = ["length"] * len(prompts)
            active = list(range(len(prompts)))
            while active:
                step: list[tuple[int, int, int, bool]] = []
                for s in list(active):
                    t = self._pick(logits[s], prompts[s] + gen[s], params, rng)
                    gen[s].append(t)
                    if t in self._eos:
                        finish[s] = "stop"
                    elif len(gen[s]) < params.max_new_tokens and not (
                            params.stop and apply_stop(self._decode(gen[s]), params.stop)[1]):
                        step.append((t, len(prompts[s]) + len(gen[s]) - 1, s, True))
                        continue
                    active.remove(s)
                if step:
                    logits = decode(step)
            return list(zip(gen, finish, strict=True))
        finally:
            lc.llama_batch_free(batch)

    @staticmethod
    def _pick(row: Any, context: list[int], params: SamplingParams, rng: Any) -> int:
        import numpy as np

        if params.repetition_penalty != 1.0:  # as transformers: over prompt and output tokens
            seen = np.unique(np.asarray(context, dtype=np.int64))
            v = row[seen]
            row[seen] = np.where(v > 0, v / params.repetition_penalty,
                                 v * params.repetition_penalty)
        if params.greedy:
            return int(np.argmax(row))
        z = row.astype(np.float64) / params.temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if params.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(rng.choice(len(p), p=p))

    def close(self) -> None:
        if self._ctx is not None and self._lc is not None:
            self._lc.llama_free(self._ctx)
        self._ctx = None
        if self._llm is not None:
            self._llm.close()
        self._llm = None
        self._tok = None


def _common_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one own token per prompt."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)
