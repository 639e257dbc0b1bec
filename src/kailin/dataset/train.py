"""Downstream training on the exported dataset: continued pretraining (CPT) on packed text, and
SFT on the teacher's answers. trl ``SFTTrainer`` + LoRA, any causal LM.

CPT follows the authors' ``CPT/Full_Text_CPT.py`` (MET §4.3): each record is ``text + EOS``,
packed into fixed-length sequences (``packing_strategy="wrapped"``: concatenate and cut, the
classic CPT packing), LoRA r 16 / alpha 32 / dropout 0 on q, k, v, o, gate, up, down, lr 2e-5,
cosine schedule, warmup 10 %, batch 2 x accumulation 8, 600 steps, seed 3407. The authors used
max_seq_length 8192 on Llama-3-70B; the default here is 1024 (set ``max_length``).

Answers SFT trains on the ``sft`` config's chat records: the system and user turns are the prompt,
the assistant turn (the teacher's answer) is the completion, and only the completion is in the
loss. Every record is fitted to ``max_length`` before trl sees it (:mod:`kailin.train.fit`): its
contexts are cut, the longest first, keeping the template, the question and the answer whole
(trl would otherwise truncate the end, and drop a record whose prompt alone fills
``max_length``). ``kailin_train.json`` counts ``truncated`` records and ``dropped`` ones (only
those whose question and answer alone exceed ``max_length``, each with its reason in
``dropped_records``); ``n_examples`` is what was trained on. ``fit="error"`` fails instead.

Output directories follow :mod:`kailin.train.common`: ``OUT/checkpoints/checkpoint-N`` (resumed
from the last one), ``OUT/adapter``, ``OUT/model`` (merged, safetensors), ``OUT/kailin_train.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kailin.errors import InputError, KailinError
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
from kailin.train.fit import fit_contexts

log = logging.getLogger(__name__)

#: the authors' CPT LoRA targets (all attention and MLP projections of a Llama block)
CPT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DownstreamTrainConfig(TrainingSettings):
    """Settings of ``kailin train cpt`` / ``kailin train answers``, and of the pipeline's
    ``downstream`` section (``kailin.pipeline.config.DownstreamConfig``). The defaults are the
    pipeline's (a few steps); :meth:`authors` (the commands' defaults) is the authors' CPT:
    LoRA r 16 on every projection, 2e-5, 600 steps of batch 2 x 8."""

    added_fields: ClassVar[tuple[str, ...]] = (
        "lora_r", "lora_alpha", "epochs", "grad_accum", "packing", "warmup", "lr_scheduler",
        "weight_decay", "save_steps", "save_total_limit", "logging_steps", "seed", "limit",
        "lora", "keep_checkpoints", "fit")

    model: str = Field("smollm2", description="the model to train: smollm2, a local "
                       "checkpoint or a hub id")
    lora: bool = Field(True, description="LoRA (false: full fine-tuning)")
    lora_r: int = Field(16, ge=1, description="LoRA rank (the authors': 16)")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (the authors': 32)")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (the authors': "
                                 "2e-5)")
    max_steps: int = Field(10, ge=-1, description="training steps (-1: epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is -1")
    batch_size: int = Field(2, ge=1, description="sequences per device and step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps (the authors': "
                            "8)")
    max_length: int = Field(512, ge=32, description="tokens per (packed) sequence")
    packing: bool = Field(True, description="CPT: pack the texts into full sequences")
    warmup: float = Field(0.1, ge=0, description="warm-up: steps (>= 1) or a ratio (< 1)")
    lr_scheduler: str = Field("cosine", description="transformers' lr_scheduler_type")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps "
                                   "(default: max_steps, or 100 with epochs)")
    save_total_limit: int = Field(10, ge=1, description="checkpoints kept")
    logging_steps: int | None = Field(None, ge=1, description="log every N steps (default: a "
                                      "fifth of max_steps, or 10 with epochs)")
    seed: int = Field(3407, description="training seed (the authors')")
    limit: int | None = Field(None, ge=1, description="train on the first N records only")
    fit: Literal["truncate", "error"] = Field(
        "truncate", description="answers SFT: a record longer than max_length has its contexts "
        "cut (truncate, counted in kailin_train.json) or is an error (error)")

    @classmethod
    def authors(cls, **overrides: Any) -> DownstreamTrainConfig:
        """The authors' CPT run (the commands' defaults)."""
        return cls(**{"max_steps": 600, "grad_accum": 8, "max_length": 1024, "save_steps": 100,
                      "logging_steps": 10, **overrides})

    def resolved(self) -> DownstreamTrainConfig:
        return self.model_copy(update=step_intervals(self.max_steps, self.save_steps,
                                                     self.logging_steps, 100))

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=0.0,
                            target_modules=CPT_LORA_TARGETS)

    def identity(self) -> dict[str, Any]:
        """What makes a trained model (in the shape of the former ``DownstreamSettings``
        record, so trainings finished before keep counting)."""
        r = self.resolved()
        return {"model": r.model, "use_lora": r.lora, "lora": r.lora_settings().to_dict(),
                "learning_rate": r.learning_rate, "max_steps": r.max_steps, "epochs": r.epochs,
                "batch_size": r.batch_size, "grad_accum": r.grad_accum,
                "max_length": r.max_length, "packing": r.packing, "warmup": r.warmup,
                "lr_scheduler": r.lr_scheduler, "weight_decay": r.weight_decay,
                "save_steps": r.save_steps, "save_total_limit": r.save_total_limit,
                "logging_steps": r.logging_steps, "seed": r.seed, "max_examples": r.limit}


def _read_rows(path: str | os.PathLike[str], config: str, column: str) -> list[dict[str, Any]]:
    """Rows of an export directory's ``config`` (``DIR/{config}/train.parquet``), or of a Parquet
    / JSONL file."""
    p = Path(path)
    if p.is_dir() and (p / config).is_dir():
        p = p / config
    if p.is_dir():
        cands = sorted(p.glob("*.parquet")) or sorted(p.glob("*.jsonl"))
        if not cands:
            raise InputError(f"{path}: no {config}/train.parquet (give a `kailin dataset export` "
                             "directory or a Parquet/JSONL file)")
        p = cands[0]
    if not p.is_file():
        raise InputError(f"{path}: no such file or directory")
    if p.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(read_text_strict(p, "training data").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p}:{i}: not JSON ({exc})") from None
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    if rows and column not in rows[0]:
        raise InputError(f"{p}: records lack the column {column!r} (have {', '.join(rows[0])})")
    if not rows:
        raise InputError(f"{p}: holds no records")
    return rows


_CONTEXT_LINE = re.compile(r"\[\d+\] ?(.*)$")


def split_user_contexts(content: str) -> tuple[list[str], str] | None:
    """``(contexts, rest)`` of a user turn written by ``kailin.dataset.export.sft_messages``
    (``Contexts:\n[1] ...\n[2] ...\n\nQuestion: ...``), else None."""
    if not content.startswith("Contexts:\n"):
        return None
    head, sep, rest = content[len("Contexts:\n"):].partition("\n\n")
    if not sep:
        return None
    contexts = []
    for line in head.split("\n") if head else []:
        m = _CONTEXT_LINE.match(line)
        if m is None:
            return None
        contexts.append(m.group(1))
    return contexts, rest


def join_user_contexts(contexts: list[str], rest: str) -> str:
    """The inverse of :func:`split_user_contexts`."""
    lines = "\n".join(f"[{i + 1}] {c}" for i, c in enumerate(contexts))
    return f"Contexts:\n{lines}\n\n{rest}"


def record_tokens(tok: Any, record: dict[str, Any]) -> int:
    """Tokens of a prompt-completion record as trl's ``SFTTrainer`` tokenizes it (chat template
    for conversational records, plain text + EOS otherwise)."""
    if isinstance(record["prompt"], list):
        ids = tok.apply_chat_template(record["prompt"] + record["completion"], tokenize=True,
                                      return_dict=True)["input_ids"]
        return len(ids)
    text = record["prompt"] + record["completion"]
    return len(tok(text=text)["input_ids"]) + int(not text.endswith(tok.eos_token or "\0"))


def fit_chat_records(records: list[dict[str, Any]], tok: Any, max_length: int,
                     fit: str = "truncate", source: str = "",
                     pmids: list[Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit conversational prompt-completion records to ``max_length`` by cutting the contexts
    of their user turn (see :mod:`kailin.train.fit`). Returns the records to train on and the
    counts ``{"truncated", "dropped", "dropped_records": [{"record", "pmid", "reason"}],
    "max_tokens_before", "max_tokens_after"}``; with ``fit="error"`` a record that does not fit
    is an :class:`InputError` naming it."""
    if fit not in ("truncate", "error"):
        raise InputError(f"fit must be 'truncate' or 'error', got {fit!r}")
    out: list[dict[str, Any]] = []
    truncated, dropped = 0, []
    before = after = 0
    for i, rec in enumerate(records):
        pmid = pmids[i] if pmids else None
        n = record_tokens(tok, rec)
        before = max(before, n)
        if n <= max_length:
            out.append(rec)
            after = max(after, n)
            continue
        where = f"{source}: record {i}" + (f" (pmid {pmid})" if pmid is not None else "")
        if fit == "error":
            raise InputError(f"{where} takes {n} tokens, more than max_length {max_length}; "
                             "raise --max-length or use --fit truncate")
        users = [j for j, m in enumerate(rec["prompt"]) if m["role"] == "user"]
        parsed = split_user_contexts(rec["prompt"][users[-1]]["content"]) if users else None
        if parsed is None:
            dropped.append({"record": i, "pmid": pmid, "tokens": n,
                            "reason": "too long and its user turn has no 'Contexts:' block to cut"})
            continue
        contexts, rest = parsed
        j = users[-1]

        def with_contexts(ctx: list[str], rec: dict[str, Any] = rec, j: int = j,
                          rest: str = rest) -> dict[str, Any]:
            prompt = [dict(m) for m in rec["prompt"]]
            prompt[j]["content"] = join_user_contexts(ctx, rest)
            return {**rec, "prompt": prompt}

        res = fit_contexts(contexts, lambda c: record_tokens(tok, with_contexts(c)), tok,
                           max_length)
        if res.contexts is None:
            dropped.append({"record": i, "pmid": pmid, "tokens": res.tokens,
                            "reason": res.reason})
            continue
        truncated += 1
        after = max(after, res.tokens)
        out.append(with_contexts(res.contexts))
    if truncated or dropped:
        log.warning("%s: %d of %d record(s) had their contexts cut to fit max_length %d; %d "
                    "dropped (question and answer alone too long)", source, truncated,
                    len(records), max_length, len(dropped))
    return out, {"truncated": truncated, "dropped": len(dropped), "dropped_records": dropped,
                 "max_tokens_before": before, "max_tokens_after": after}


def _train(kind: str, records: list[dict[str, Any]], out_dir: str | os.PathLike[str],
           s: DownstreamTrainConfig, source: str, callbacks: list[Any] | None,
           fitted: dict[str, Any] | None = None, tok: Any = None) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = Path(out_dir)
    s = s.resolved()
    sdict = s.identity() | {"kind": kind, "data": source, "n_examples": len(records),
                           "data_digest": data_digest(records)}
    if (done := finished_run(out, sdict)) is not None:
        return done
    ckpt_dir = prepare_checkpoints(out, sdict, ignore=("max_steps", "epochs"))
    tok = tok if tok is not None else load_tokenizer(s.model)
    model = load_model(s.model)
    extra: dict[str, Any] = (
        {"packing": s.packing, "packing_strategy": "wrapped", "completion_only_loss": False,
         "dataset_text_field": "text"}
        if kind == "cpt" else {"packing": False, "completion_only_loss": True}
    )
    cfg = SFTConfig(**training_args(s, ckpt_dir, s.learning_rate, s.warmup, **extra))
    trainer = SFTTrainer(
        model=model, args=cfg, train_dataset=Dataset.from_list(records), processing_class=tok,
        peft_config=build_lora_config(s.lora_settings()) if s.lora else None,
        callbacks=callbacks,
    )
    attach_progress(trainer, kind)
    # what trl really trains on (unpacked kinds: one row per record; it drops rows that its
    # truncation leaves without a loss token, which fitting is there to prevent)
    n_trained = len(records) if kind == "cpt" else len(trainer.train_dataset)
    if n_trained < len(records):
        raise KailinError(f"{source}: trl kept {n_trained} of {len(records)} records after "
                          f"tokenizing at max_length {s.max_length}; none may be lost")
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming %s from %s", kind, resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    meta = {
        "kind": kind,
        "settings": sdict,
        "base_model": s.model,
        "resumed_from": resume,
        "n_examples": n_trained,
        **(fitted or {}),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.perf_counter() - t0, 2),
        "log_history": trainer.state.log_history,
    }
    save_final_model(trainer.model, tok, out, meta)
    finish_checkpoints(ckpt_dir, s.keep_checkpoints)
    return meta


def train_cpt(data: str | os.PathLike[str], out_dir: str | os.PathLike[str],
              settings: DownstreamTrainConfig | None = None,
              callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Continued pretraining on the ``cpt`` config (or any Parquet/JSONL with ``text``)."""
    require_training()
    s = settings or DownstreamTrainConfig()
    rows = _read_rows(data, "cpt", "text")
    records = [{"text": r["text"]} for r in rows if (r.get("text") or "").strip()]
    if s.limit:
        records = records[: s.limit]
    return _train("cpt", records, out_dir, s, str(data), callbacks)


def train_answers(data: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  settings: DownstreamTrainConfig | None = None,
                  callbacks: list[Any] | None = None) -> dict[str, Any]:
    """SFT on the ``sft`` config's chat records (loss on the assistant turn only)."""
    require_training()
    s = settings or DownstreamTrainConfig()
    rows = _read_rows(data, "sft", "messages")
    if s.limit:
        rows = rows[: s.limit]
    records = []
    for i, r in enumerate(rows):
        msgs = r["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise InputError(f"{data}: record {i} (pmid {r.get('pmid')}) does not end with an "
                             "assistant message")
        records.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]],
                        "completion": [{"role": "assistant", "content": msgs[-1]["content"]}]})
    tok = load_tokenizer(s.model)
    records, fitted = fit_chat_records(records, tok, s.max_length, s.fit, str(data),
                                       [r.get("pmid") for r in rows])
    if not records:
        raise InputError(f"{data}: no record fits max_length {s.max_length} even with its "
                         f"contexts removed ({fitted['dropped_records'][0]['reason']}); raise "
                         "--max-length")
    return _train("answers", records, out_dir, s, str(data), callbacks, fitted, tok)


def model_tag(spec: str) -> str:
    """A model spec as a folder and JSON key: every run of characters other than letters and
    digits becomes ``-`` (``smollm2`` -> ``smollm2``, ``hf:org/Model-1B`` -> ``hf-org-Model-1B``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(spec)).strip("-") or "model"


class DownstreamConfig(DownstreamTrainConfig):
    """The ``downstream`` stage: CPT on the export with the settings of ``kailin train cpt``
    (``kailin.dataset.train.DownstreamTrainConfig``; ``cpt_steps`` is its ``max_steps``), the
    control arms with the same settings, then optionally SFT on the answered records."""

    renamed: ClassVar[dict[str, str]] = {"max_steps": "cpt_steps"}
    added_fields: ClassVar[tuple[str, ...]] = (
        *DownstreamTrainConfig.added_fields, "adaptllm", "equal_tokens", "token_budget", "seeds",
        "models", "finetune_models")

    enabled: bool = Field(True, description="run the downstream stage")
    sft_steps: int = Field(0, ge=0, description="after CPT, SFT steps on the answered "
                           "records (export's sft config; needs answers)")
    controls: bool = Field(False, description="also train, with the same steps and settings, "
                           "CPT on the same abstracts without questions (raw_abstracts) and, "
                           "when the export comes from the policy, CPT on an export of the "
                           "pre-DPO questions (pre_dpo); pubmedqa compares them with paired "
                           "bootstrap CIs")
    adaptllm: bool = Field(False, description="also train the peer arm adaptllm: CPT on AdaptLLM "
                           "reading-comprehension texts (kailin.dataset.adaptllm) mined from the "
                           "same raw abstracts (and contexts) the export used")
    equal_tokens: bool = Field(False, description="give every trained arm the same training "
                               "tokens (kailin.dataset.budget): each arm is cut to the budget "
                               "and trained for BudgetPlan.max_steps (one pass) instead of "
                               "cpt_steps")
    token_budget: int | None = Field(None, ge=1, description="with equal_tokens: the budget "
                                     "in tokens (default: the smallest arm's tokens)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="train "
                             "every arm once per entry: entry s trains with seed `seed + s` "
                             "into <arm>-s<s> (0 is `seed` itself)")
    models: list[str] | None = Field(None, min_length=1, description="the downstream models, "
                                     "each a model spec (default: [model]); results are keyed "
                                     "by each one's tag (the spec, non-alphanumerics as -)")
    finetune_models: list[str] | None = Field(None, description="which of models also get the "
                                              "fine-tuned PubMedQA (pubmedqa_finetune; default: "
                                              "all)")

    @model_validator(mode="after")
    def _models(self) -> DownstreamConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"downstream.seeds must be distinct: {self.seeds}")
        models = self.models or [self.model]
        if len({model_tag(m) for m in models}) != len(models):
            raise ValueError(f"downstream.models: two models share a tag: {models}")
        bad = [m for m in self.finetune_models or [] if m not in models]
        if bad:
            raise ValueError(f"downstream.finetune_models {bad} are not in downstream.models "
                             f"{models}")
        if self.multi() and self.sft_steps:
            raise ValueError("downstream.sft_steps runs in the single-model layout only: leave "
                             "adaptllm, equal_tokens, models and seeds unset, or set sft_steps 0")
        if self.token_budget is not None and not self.equal_tokens:
            raise ValueError("downstream.token_budget needs equal_tokens: true")
        return self

    def model_list(self) -> list[str]:
        """The downstream models (``models``, default ``[model]``)."""
        return list(self.models or [self.model])

    def finetune_list(self) -> list[str]:
        """The models that get the fine-tuned PubMedQA."""
        return list(self.model_list() if self.finetune_models is None else self.finetune_models)

    def multi(self) -> bool:
        """Whether the per-model, per-seed layout is used (``models/downstream/<tag>/<arm>-s<s>``):
        any of adaptllm, equal_tokens, models or seeds other than [0] is set. Otherwise the
        single-model layout (``models/downstream``, ``models/downstream-<arm>``) is kept."""
        return bool(self.adaptllm or self.equal_tokens or self.models or self.seeds != [0])

    def sft_settings(self, model: str) -> DownstreamTrainConfig:
        """The settings of the SFT after CPT: these, for ``sft_steps`` steps from ``model``."""
        return DownstreamTrainConfig(**{
            **{k: getattr(self, k) for k in DownstreamTrainConfig.model_fields},
            "model": model, "max_steps": self.sft_steps, "save_steps": None,
            "logging_steps": None})
