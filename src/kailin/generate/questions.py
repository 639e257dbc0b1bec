"""Question generation: every configured generator writes one question per abstract.

:class:`QuestionGenerationStage` is a :class:`~kailin.engine.stage.Stage`: it maps a corpus
batch (``pmid``, ``title``, ``abstract``) to question rows, so the local executor or the Ray
executor can run it. Responses go through the SQLite response cache, so a re-run, or a run
resumed after a kill, sends no request it has already paid for.

Output rows (:data:`QUESTIONS_SCHEMA`), one per (record, generator):
``pmid, generator, backend, model, prompt_mode, prompt, question, raw, reject_reason,
finish_reason, prompt_tokens, completion_tokens``. ``question`` is ``""`` when the raw text was
rejected; ``reject_reason`` says why (see :mod:`kailin.generate.extract`, plus ``no_abstract``
for records without an abstract, which are not sent to any model).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from kailin.config import StageConfig
from kailin.engine.stage import Stage
from kailin.errors import InputError
from kailin.generate.extract import REJECT_REASONS, extract_question
from kailin.generate.prompts import PromptTemplate
from kailin.llm.base import Backend, SamplingParams
from kailin.llm.cache import CachedBackend, ResponseCache
from kailin.llm.spec import BackendOptions, GeneratorSpec, build_backend, parse_generator

log = logging.getLogger(__name__)

QUESTIONS_SCHEMA = pa.schema(
    [
        ("pmid", pa.int64()),
        ("generator", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_mode", pa.string()),
        ("prompt", pa.string()),
        ("question", pa.string()),
        ("raw", pa.string()),
        ("reject_reason", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
    ]
)
ALL_REJECT_REASONS = (*REJECT_REASONS, "no_abstract")
INPUT_COLUMNS = ["pmid", "title", "abstract"]


def _as_spec(g: GeneratorSpec | str) -> GeneratorSpec:
    return parse_generator(g) if isinstance(g, str) else g


class QuestionGenerationStage(Stage):
    """Corpus batch -> one question row per (record, generator).

    Args:
        generators: ``NAME=SPEC`` strings or parsed :class:`GeneratorSpec` (with names).
        template: how an abstract becomes a prompt (default: KAILIN's prompt in ``auto`` mode:
            each generator gets raw or chat prompting by :func:`kailin.generate.mode.resolve_mode`,
            logged with the reason; :attr:`modes` holds the choices).
        params: decoding settings (default greedy, 64 new tokens).
        options: backend settings (device, batch size, HTTP concurrency, API-key variable...).
        cache_path: the SQLite response cache (default ``user_cache_dir()/llm_cache.sqlite``).
        use_cache: ``False`` sends every request to the backend.
        min_words, max_words: bounds on an accepted question's length.
    """

    name = "generate_questions"
    stateful = True

    def __init__(
        self,
        generators: Sequence[GeneratorSpec | str],
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        options: BackendOptions | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        min_words: int = 3,
        max_words: int = 80,
    ) -> None:
        super().__init__()
        self.generators = [_as_spec(g) for g in generators]
        if not self.generators:
            raise InputError("question generation needs at least one generator")
        names = [g.name for g in self.generators]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise InputError(f"generators need distinct, non-empty names, got {names}")
        self.template = template or PromptTemplate()
        self.params = params or SamplingParams()
        self.options = options or BackendOptions()
        self.cache_path = str(cache_path) if cache_path is not None else None
        self.use_cache = use_cache
        self.min_words = min_words
        self.max_words = max_words
        self.uses_gpu = any(  # type: ignore[misc]
            g.backend == "vllm" or (g.backend == "transformers"
                                    and self.options.device.startswith("cuda"))
            for g in self.generators
        )
        self._backends: dict[str, Backend] = {}
        self._templates: dict[str, PromptTemplate] = {}
        #: generator name -> (mode, why), filled on setup
        self.modes: dict[str, tuple[str, str]] = {}

    @classmethod
    def from_config(cls, generators: Sequence[GeneratorSpec | str], config: GenerationConfig,
                    *, temperature: float | None = None, seed: int | None = None,
                    max_new_tokens: int | None = None, **kwargs: Any
                    ) -> QuestionGenerationStage:
        """The stage with the settings of a :class:`GenerationConfig` (what ``kailin generate
        questions``, the pipeline's questions step and the generator evaluation build);
        ``temperature``/``seed``/``max_new_tokens`` override its decoding (a generator's own,
        a policy's samples)."""
        return cls(list(generators), template=config.template_obj(),
                   params=config.sampling(temperature, seed, max_new_tokens),
                   options=config.backend_options(), **kwargs)

    def template_for(self, name: str) -> PromptTemplate:
        """The concrete (raw or chat) template of generator ``name``."""
        t = self._templates.get(name)
        if t is None:
            g = next(g for g in self.generators if g.name == name)
            if self.template.mode == "auto":
                from kailin.generate.mode import resolve_mode

                mode, why = resolve_mode(g)
                if name not in self.modes:
                    log.info("generator %s: prompt mode %s (auto: %s)", name, mode, why)
            else:
                mode, why = self.template.mode, "set explicitly"
            self.modes[name] = (mode, why)
            t = self._templates[name] = self.template.concrete(mode)
        return t

    # -- Stage protocol -----------------------------------------------------------------------
    def place(self, device: str) -> None:
        """The executor's device (Ray's GPU: ``cuda:0``) for generators whose device is
        ``auto`` or ``cuda``; an explicit one (``cpu``, ``cuda:1``) is kept."""
        if self.options.device in ("auto", "cuda"):
            self.options = dataclasses.replace(self.options, device=device)

    def setup(self) -> None:
        cache = ResponseCache(self.cache_path) if self.use_cache else None
        for g in self.generators:
            b = build_backend(g, self.options)
            self._backends[g.name] = CachedBackend(b, cache) if cache is not None else b
            self.template_for(g.name)

    def fingerprint_config(self) -> dict[str, Any]:
        return {
            "generators": [g.identity() for g in self.generators],
            "template": self.template.to_dict(),
            "params": self.params.to_dict(),
            "min_words": self.min_words,
            "max_words": self.max_words,
        }

    def counters(self) -> dict[str, dict[str, int]]:
        """Per generator, this process's requests answered from the cache (``cache_hits``) or
        not (``cache_misses``), the prompts sent to the backend for the misses (``prompts_sent``,
        distinct ones) and the batches they went in (``backend_batches``)."""
        out = {}
        for name, b in self._backends.items():
            if isinstance(b, CachedBackend):
                out[name] = {"cache_hits": b.hits, "cache_misses": b.misses,
                             "prompts_sent": b.prompts_sent,
                             "backend_batches": b.backend_batches}
        return out

    def process(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in ("pmid", "abstract") if c not in batch.column_names]
        if missing:
            raise InputError(
                f"question generation input lacks column(s) {missing}; it needs a corpus table "
                f"with {INPUT_COLUMNS} (see kailin.corpus.schema)"
            )
        pmids = batch.column("pmid").to_pylist()
        abstracts = batch.column("abstract").to_pylist()
        titles = (batch.column("title").to_pylist() if "title" in batch.column_names
                  else [None] * batch.num_rows)
        has_text = [bool(a and a.strip()) for a in abstracts]
        todo = [i for i, ok in enumerate(has_text) if ok]
        prompts: dict[str, list[str]] = {}
        per_gen: dict[str, dict[int, Any]] = {}
        for g in self.generators:
            backend = self._backends[g.name]
            tmpl = self.template_for(g.name)
            prompts[g.name] = [tmpl.prompt_text(p, t, a)
                               for p, t, a in zip(pmids, titles, abstracts, strict=True)]
            requests = [tmpl.render(pmids[i], titles[i], abstracts[i]) for i in todo]
            completions = backend.generate(requests, self.params) if requests else []
            per_gen[g.name] = dict(zip(todo, completions, strict=True))
        cols: dict[str, list[Any]] = {f.name: [] for f in QUESTIONS_SCHEMA}
        for i in range(batch.num_rows):
            for g in self.generators:
                backend = self._backends[g.name]
                c = per_gen[g.name].get(i)
                if c is None:
                    question, reason, raw, finish, pt, ct = "", "no_abstract", "", None, None, None
                else:
                    ex = extract_question(c.text, self.min_words, self.max_words)
                    question, reason = ex.question, ex.reject_reason
                    raw, finish, pt, ct = (c.text, c.finish_reason, c.prompt_tokens,
                                           c.completion_tokens)
                cols["pmid"].append(pmids[i])
                cols["generator"].append(g.name)
                cols["backend"].append(g.backend)
                cols["model"].append(g.model if g.backend != "openai"
                                     else f"{g.base_url}#{g.model}")
                cols["prompt_mode"].append(self.template_for(g.name).mode)
                cols["prompt"].append(prompts[g.name][i])
                cols["question"].append(question)
                cols["raw"].append(raw)
                cols["reject_reason"].append(reason)
                cols["finish_reason"].append(finish)
                cols["prompt_tokens"].append(pt)
                cols["completion_tokens"].append(ct)
        return pa.table(cols, schema=QUESTIONS_SCHEMA)


def question_stats(table: pa.Table | Iterable[pa.RecordBatch]) -> dict[str, Any]:
    """Per-generator row, acceptance, rejection-reason and token counts of a questions table, or
    of a stream of its record batches (bounded memory)."""
    out: dict[str, Any] = {"rows": 0, "accepted": 0,
                           "rejections": dict.fromkeys(ALL_REJECT_REASONS, 0), "generators": {}}
    for batch in (table.to_batches() if isinstance(table, pa.Table) else table):
        names = batch.schema.names

        def col(name: str, b: pa.RecordBatch = batch, n: list[str] = names) -> list:
            return b.column(n.index(name)).to_pylist()

        gens, reasons = col("generator"), col("reject_reason")
        pt, ct = col("prompt_tokens"), col("completion_tokens")
        out["rows"] += len(gens)
        for g, r, p_, c_ in zip(gens, reasons, pt, ct, strict=True):
            d = out["generators"].setdefault(g, {
                "rows": 0, "accepted": 0, "rejected": 0,
                "reject_reasons": dict.fromkeys(ALL_REJECT_REASONS, 0),
                "prompt_tokens": 0, "completion_tokens": 0})
            d["rows"] += 1
            d["prompt_tokens"] += p_ or 0
            d["completion_tokens"] += c_ or 0
            if r is None:
                d["accepted"] += 1
                out["accepted"] += 1
            else:
                d["rejected"] += 1
                d["reject_reasons"][r] = d["reject_reasons"].get(r, 0) + 1
                out["rejections"][r] = out["rejections"].get(r, 0) + 1
    out["rejected"] = out["rows"] - out["accepted"]
    return out


def generate_questions(
    corpus_dir: str | os.PathLike[str],
    generators: Sequence[GeneratorSpec | str],
    out_dir: str | os.PathLike[str],
    *,
    template: PromptTemplate | None = None,
    params: SamplingParams | None = None,
    options: BackendOptions | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    rows_per_shard: int = 64,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run :class:`QuestionGenerationStage` over a corpus directory into ``out_dir``.

    ``out_dir`` receives ``part-*.parquet`` (the questions table), the executor's resume markers,
    and ``stats.json`` (rejection counts, tokens, this run's cache hits and backend calls).
    A re-run skips finished shards; a killed run resumes where it stopped.
    """
    from kailin.corpus.reader import open_corpus
    from kailin.engine.executors.local import LocalExecutor
    from kailin.io import read_parquet, write_json_atomic

    corpus = open_corpus(corpus_dir)
    table = corpus.read(columns=INPUT_COLUMNS)
    if limit is not None:
        table = table.slice(0, limit)
    stage = QuestionGenerationStage(generators, template=template, params=params,
                                    options=options, cache_path=cache_path, use_cache=use_cache)
    out = Path(out_dir)
    _check_input(out, {"corpus": corpus.manifest_hash(), "records": table.num_rows,
                       "rows_per_shard": rows_per_shard})
    # a failure leaves no output folder that looks finished (LocalExecutor.run cleans up)
    run = LocalExecutor(rows_per_shard=rows_per_shard, progress=progress).run(stage, table, out)
    result = read_parquet(out) if run["rows_out"] else QUESTIONS_SCHEMA.empty_table()
    stats = question_stats(result)
    stats = {
        "corpus": str(corpus_dir),
        "records": table.num_rows,
        **stats,
        "generators_config": [g.to_dict() for g in stage.generators],
        "template": stage.template.to_dict(),
        "prompt_modes": {n: {"mode": m, "why": w} for n, (m, w) in stage.modes.items()},
        "params": stage.params.to_dict(),
        "this_run": {
            "shards": run["shards"],
            "skipped_shards": run["skipped"],
            "seconds": round(run["seconds"], 3),
            "generators": stage.counters(),
        },
    }
    stats["warnings"] = rejection_warnings(stats)
    for w in stats["warnings"]:
        log.warning("%s", w)
    write_json_atomic(out / "stats.json", stats)
    return stats


#: below this accepted share (with at least MIN_ROWS_TO_WARN rows) a generator is "failing"
LOW_ACCEPTANCE = 0.2
MIN_ROWS_TO_WARN = 5


def rejection_warnings(stats: dict[str, Any]) -> list[str]:
    """One sentence per generator whose outputs were nearly all rejected, with the likely fix."""
    out = []
    modes = stats.get("prompt_modes", {})
    for name, g in stats.get("generators", {}).items():
        sent = g["rows"] - g["reject_reasons"].get("no_abstract", 0)
        if sent < MIN_ROWS_TO_WARN or g["accepted"] >= LOW_ACCEPTANCE * sent:
            continue
        reasons = sorted(((n, r) for r, n in g["reject_reasons"].items()
                          if n and r != "no_abstract"), reverse=True)
        top = ", ".join(f"{r} {n}" for n, r in reasons[:3])
        mode = modes.get(name, {}).get("mode", "?")
        fixes = []
        other = {"raw": "chat", "chat": "raw"}.get(mode)
        if other:
            fixes.append(f"--mode {other} (this run used {mode}: "
                         f"{modes.get(name, {}).get('why', '')})")
        top_reason = reasons[0][1] if reasons else None
        if top_reason in ("no_question", "too_long"):
            fixes.append("a larger --max-new-tokens, or --response-prefix 'Question:' in chat "
                         "mode")
        if top_reason == "too_short":
            fixes.append("a larger --max-new-tokens")
        if top_reason == "copies_prompt":
            fixes.append("a chat model with --mode chat, or a generator SFT'd with "
                         "`kailin train sft`")
        out.append(f"generator {name}: only {g['accepted']}/{sent} outputs were accepted as "
                   f"questions (rejected: {top}); try " + "; or ".join(fixes or ["another model"])
                   + ". The raw outputs are in the 'raw' column.")
    return out


def _check_input(out: Path, signature: dict[str, Any]) -> None:
    """Shards are resumed by position, so a different input (corpus, --limit, shard size)
    invalidates the finished shards of an earlier run: drop them, then record the new input."""
    import json

    from kailin.io import write_json_atomic

    path = out / "_input.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != signature:
            log.warning("%s: the input changed since the last run (%s -> %s); regenerating",
                        out, old, signature)
            for p in [*out.glob("part-*.parquet"), *(out / "_done").glob("*.json")]:
                p.unlink()
    write_json_atomic(path, signature)


def accepted(table: pa.Table) -> pa.Table:
    """Only the rows with an accepted question."""
    return table.filter(pc.is_null(table.column("reject_reason")))


class GenerationConfig(StageConfig):
    """How the generators write questions (prompt, decoding, backend options): the
    ``generation`` section of ``kailin run`` and the options of ``kailin generate questions``;
    :meth:`QuestionGenerationStage.from_config` builds the question stage from it."""

    added_fields: ClassVar[tuple[str, ...]] = (
        "system", "repetition_penalty", "device", "api_key_env", "concurrency", "timeout",
        "max_retries")

    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    template: str | None = None
    mode: Literal["auto", "raw", "chat"] = Field(
        "auto", description="auto: chat for models with a chat template that kailin did not "
        "fine-tune, raw for SFT/DPO-tuned generators; raw: the KAILIN prompt as text (what SFT "
        "trains on); chat: the model's chat template")
    response_prefix: str | None = Field(None, description="text the answer starts with "
                                        "(default: 'Question:' in chat mode, none in raw mode)")
    max_abstract_chars: int | None = Field(2000, ge=100)
    threads: int | None = Field(None, ge=1, description="torch threads per worker")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations of local (transformers) generators; "
        "auto: bfloat16 on GPU, float32 on CPU. bfloat16 is ~2x faster on CPUs with AVX512-BF16 "
        "or AMX (docs/llm.md), with greedy text that can differ from float32's")
    system: str | None = Field(None, description="system message (chat mode)")
    repetition_penalty: float = Field(1.0, gt=0, description="1.0 = none")
    device: str = Field("auto", description="local generators: auto, cpu, cuda, cuda:N")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the "
                             "API key of openai: generators")
    concurrency: int = Field(8, ge=1, description="openai: HTTP requests in flight")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per HTTP request")
    max_retries: int = Field(5, ge=0, description="openai: retries on 429/5xx/timeouts")

    def template_obj(self) -> PromptTemplate:
        return PromptTemplate(**({"template": self.template} if self.template else {}),
                              mode=self.mode, system=self.system,
                              response_prefix=self.response_prefix,
                              max_abstract_chars=self.max_abstract_chars)

    def sampling(self, temperature: float | None = None, seed: int | None = None,
                 max_new_tokens: int | None = None) -> SamplingParams:
        return SamplingParams(max_new_tokens=max_new_tokens or self.max_new_tokens,
                              temperature=self.temperature if temperature is None else temperature,
                              top_p=self.top_p, seed=self.seed if seed is None else seed,
                              repetition_penalty=self.repetition_penalty)

    def backend_options(self) -> BackendOptions:
        return BackendOptions(device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                              threads=self.threads, api_key_env=self.api_key_env,
                              concurrency=self.concurrency, timeout=self.timeout,
                              max_retries=self.max_retries)
