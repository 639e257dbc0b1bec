"""DPO of a question generator on MeSH preference pairs (KAILIN step 4).

:meth:`DPOConfig.authors` (the defaults of ``kailin train dpo``) is the authors' run
(``DPO/trl_dpo/dpo_llama2.py`` + ``run_dpo.sh``, METHOD 4.2): beta 0.1; lr 5e-4 with a cosine schedule; 100 warmup steps; weight
decay 0.05; LoRA r 8 / alpha 16 / dropout 0.05 on q_proj, k_proj, v_proj; per-device batch 16 x
gradient accumulation 4 (on 2 GPUs: 128 pairs per step); max_length 1024; 3 epochs; save every 50
steps; seed 0. The reference model is the frozen base with the adapter disabled (TRL's behaviour
for ``ref_model=None`` + a ``peft_config``), as in the authors' script.

What differs from the authors' run, on purpose: no 4-bit loading (bitsandbytes needs a GPU) and
no paged_adamw_32bit (plain AdamW) so it runs on CPU; lengths are in tokens, not the script's
character filter (set ``max_chars=1024`` to reproduce it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from kailin.align.sft import RESUMABLE_CHANGES, SCHEDULE_FREE_CHANGES, fit_document
from kailin.errors import InputError
from kailin.io import read_parquet, read_text_strict
from kailin.train.common import (
    LoraSettings,
    TrainingSettings,
    attach_progress,
    build_lora_config,
    capped_warmup,
    data_digest,
    finish_checkpoints,
    finished_run,
    last_checkpoint,
    load_model,
    load_tokenizer,
    prepare_checkpoints,
    require_training,
    save_final_model,
    training_args,
)

log = logging.getLogger(__name__)


class DPOConfig(TrainingSettings):
    """DPO settings: the ``dpo`` section of ``kailin run`` and the options of ``kailin train
    dpo``. The defaults are the pipeline's (a few steps); :meth:`authors` (the defaults of
    ``kailin train dpo``) is the authors' run, see the module docstring."""

    added_fields: ClassVar[tuple[str, ...]] = (
        "lora_alpha", "grad_accum", "weight_decay", "max_chars", "save_steps", "logging_steps",
        "seed", "max_pairs", "keep_checkpoints")

    max_steps: int = Field(10, ge=1, description="training steps (unless epochs)")
    batch_size: int = Field(2, ge=1, description="pairs per device and step")
    learning_rate: float = Field(5e-4, description="peak learning rate (cosine schedule)")
    warmup_steps: int | None = Field(None, ge=0, description="learning-rate warm-up steps "
                                     "(default: a tenth of max_steps, rounded down)")
    beta: float = Field(0.1, description="DPO beta (the authors': 0.1)")
    max_length: int = Field(512, ge=32, description="tokens of prompt + answer (the prompt's "
                            "abstract is cut to fit)")
    epochs: float | None = Field(None, gt=0, description="train for this many passes over the "
                                 "pairs instead of max_steps (warm-up: warmup_steps, default 0)")
    lora_r: int = Field(8, ge=1, description="LoRA rank (the authors': 8)")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha (default: 2 x lora_r, "
                                   "the authors' 16)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps (the authors': "
                            "4)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (the authors')")
    max_chars: int | None = Field(None, ge=1, description="drop pairs whose prompt + answer "
                                  "exceed N characters (the authors' filter: 1024)")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps (default: "
                                   "a quarter of the steps, at least 10)")
    logging_steps: int | None = Field(None, ge=1, description="log every N steps (default: a "
                                      "twentieth of the steps, at least 1)")
    seed: int = Field(0, description="training seed")
    max_pairs: int | None = Field(None, ge=1, description="train on the first N pairs only")

    @classmethod
    def authors(cls, **overrides: Any) -> DPOConfig:
        """The authors' run (``kailin train dpo``'s defaults): 3 epochs of batch 16 x 4, 100
        warm-up steps, max_length 1024, a checkpoint every 50 steps."""
        return cls(**{"epochs": 3.0, "batch_size": 16, "grad_accum": 4, "warmup_steps": 100,
                      "max_length": 1024, "lora_alpha": 16, "save_steps": 50,
                      "logging_steps": 10, **overrides})

    def warmup(self) -> int:
        """The warm-up steps: ``warmup_steps``, else a tenth of ``max_steps`` (0 with
        ``epochs``)."""
        if self.epochs is not None:
            return self.warmup_steps or 0
        return self.max_steps // 10 if self.warmup_steps is None else self.warmup_steps

    def steps(self, n_pairs: int) -> int:
        """Training steps on ``n_pairs`` pairs: ``max_steps``, or ``epochs`` passes."""
        if self.epochs is None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_pairs / (self.batch_size * self.grad_accum)))


#: LoRA and schedule settings no config sets (the authors' values)
LORA_DROPOUT, LR_SCHEDULER, SAVE_TOTAL_LIMIT = 0.05, "cosine", 3


def _resolved(c: DPOConfig, model: str, n_pairs: int) -> dict[str, Any]:
    """What the trainer gets (and what a finished run is recognised by): the config with the
    steps, warm-up, checkpoint and logging intervals and LoRA alpha worked out."""
    steps = c.steps(n_pairs)
    lora = LoraSettings(r=c.lora_r, alpha=c.lora_alpha or 2 * c.lora_r, dropout=LORA_DROPOUT)
    return {"model": model, "beta": c.beta, "learning_rate": c.learning_rate,
            "lr_scheduler": LR_SCHEDULER, "warmup_steps": capped_warmup(c.warmup(), steps),
            "weight_decay": c.weight_decay, "lora": lora.to_dict(), "batch_size": c.batch_size,
            "grad_accum": c.grad_accum, "epochs": c.epochs or 1.0, "max_steps": steps,
            "max_length": c.max_length, "max_chars": c.max_chars,
            "save_steps": c.save_steps or max(steps // 4, 10),
            "save_total_limit": SAVE_TOTAL_LIMIT,
            "logging_steps": c.logging_steps or max(1, steps // 20), "seed": c.seed,
            "max_pairs": c.max_pairs}


def load_pairs(path: str | os.PathLike[str]) -> pa.Table:
    """Preference pairs (``kailin prefer`` output dir, or any Parquet/JSON(L) with prompt,
    chosen, rejected)."""
    p = Path(path)
    if p.is_file() and p.suffix in {".json", ".jsonl"}:
        text = read_text_strict(p, "preference pairs file")
        rows = ([json.loads(x) for x in text.splitlines() if x.strip()] if p.suffix == ".jsonl"
                else json.loads(text))
        t = pa.Table.from_pylist(rows)
    else:
        try:
            t = read_parquet(p)
        except FileNotFoundError as exc:
            raise InputError(f"{exc}; give the output of `kailin prefer`") from exc
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in t.column_names]
    if missing:
        raise InputError(f"{p}: missing column(s) {missing}; preference pairs need prompt, "
                         "chosen, rejected")
    return t


def _records(t: pa.Table, s: DPOConfig, tok: Any) -> list[dict[str, str]]:
    """Pairs as TRL records; the prompt's abstract is cut so prompt + answer fit max_length."""
    from kailin.align.sft import KAILIN_PROMPT

    pre, post = KAILIN_PROMPT.split("{abstract}")
    out = []
    for r in t.select(["prompt", "chosen", "rejected"]).to_pylist():
        prompt, chosen, rejected = r["prompt"] or "", (r["chosen"] or "").strip(), (
            r["rejected"] or "").strip()
        if not prompt or not chosen or not rejected:
            continue
        chosen, rejected = " " + chosen, " " + rejected
        if s.max_chars and max(len(prompt) + len(chosen), len(prompt) + len(rejected)) > s.max_chars:
            continue
        reserve = max(len(tok(x, add_special_tokens=False)["input_ids"]) for x in (chosen, rejected))
        if prompt.startswith(pre) and prompt.endswith(post):  # the KAILIN template: cut the abstract
            doc = fit_document(tok, prompt[len(pre): len(prompt) - len(post)], KAILIN_PROMPT,
                               reserve + 1, s.max_length)
            if doc is None:
                continue
            prompt = pre + doc + post
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def train_dpo(
    pairs: str | os.PathLike[str] | pa.Table,
    out_dir: str | os.PathLike[str],
    config: DPOConfig | None = None,
    callbacks: list[Any] | None = None,
    model: str = "smollm2",
    replace_stale: bool = False,
    identity: dict[str, Any] | None = None,
    extend: bool = True,
) -> dict[str, Any]:
    """DPO the generator ``model`` (a ``kailin train sft`` output, a checkpoint, a hub id or
    'smollm2') on ``pairs`` with ``config``; resume from the last checkpoint; save the adapter
    and the merged model. A finished run with the same settings returns at once. Checkpoints in
    ``out_dir`` from other pairs or settings are refused, or removed with ``replace_stale`` (a
    pipeline stage that owns the folder). ``identity``: more that a finished run must match
    (e.g. the base model's :func:`kailin.io.weights_fingerprint`, when ``model`` is a folder
    that may be retrained in place). ``extend``: a run whose step budget (``max_steps``,
    ``epochs``) changed resumes from its checkpoints; its cosine schedule then differs from a
    fresh run's, so a pipeline stage passes False and its model depends on its config only."""
    require_training()
    c = config or DPOConfig()
    out = Path(out_dir)
    table = pairs if isinstance(pairs, pa.Table) else load_pairs(pairs)
    if c.max_pairs:
        table = table.slice(0, c.max_pairs)
    cols = [x for x in ("prompt", "chosen", "rejected") if x in table.column_names]
    run = _resolved(c, model, table.num_rows)
    sdict = run | {"n_pairs": table.num_rows,
                   "data_digest": data_digest(table.select(cols).to_pylist()),
                   **({"identity": identity} if identity else {})}
    if (done := finished_run(out, sdict)) is not None:
        return done

    from datasets import Dataset
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    ckpt_dir = prepare_checkpoints(out, sdict, ignore=RESUMABLE_CHANGES if extend
                                   else SCHEDULE_FREE_CHANGES, replace_stale=replace_stale)

    tok = load_tokenizer(model)
    records = _records(table, c, tok)
    if not records:
        raise InputError("no usable preference pairs (empty texts, or none fits max_length)")
    # the warm-up asked for: training_args cuts it as _resolved did, and says so
    args = TrlDPOConfig(**training_args(SimpleNamespace(**run), ckpt_dir, c.learning_rate,
                                        c.warmup(), beta=c.beta))
    trainer = DPOTrainer(
        model=load_model(model),
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        peft_config=build_lora_config(LoraSettings(**run["lora"])),
        callbacks=callbacks,
    )
    attach_progress(trainer, "dpo")
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming DPO from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    meta = {
        "kind": "dpo",
        "settings": sdict,
        "base_model": model,
        "n_records": len(records),
        "resumed_from": resume,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.perf_counter() - t0, 2),
        "log_history": trainer.state.log_history,
    }
    save_final_model(trainer.model, tok, out, meta)
    finish_checkpoints(ckpt_dir, c.keep_checkpoints)
    return meta


class DPOStageConfig(DPOConfig):
    """The ``dpo`` stage: the settings of ``kailin train dpo`` (``kailin.align.dpo.DPOConfig``,
    whose defaults these are; the command's are the authors' run) and which generator to
    align. Save, logging and warm-up intervals follow the steps unless set."""

    enabled: bool = Field(True, description="run the dpo stage")
    generator: str | None = Field(None, description="which generator to align (default: the "
                                  "first)")

    @model_validator(mode="after")
    def _warmup(self) -> DPOStageConfig:
        if self.warmup_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be below max_steps "
                             f"{self.max_steps} (the learning rate would never leave warm-up)")
        return self
