"""Downstream training on the exported dataset: continued pretraining (CPT) on packed text, and
SFT on the teacher's answers. trl ``SFTTrainer`` + LoRA, any causal LM.

CPT follows the authors' ``CPT/Full_Text_CPT.py`` (MET §4.3): each record is ``text + EOS``,
packed into fixed-length sequences (``packing_strategy="wrapped"``: concatenate and cut, the
classic CPT packing), LoRA r 16 / alpha 32 / dropout 0 on q, k, v, o, gate, up, down, lr 2e-5,
cosine schedule, warmup 10 %, batch 2 x accumulation 8, 600 steps, seed 3407. The authors used
max_seq_length 8192 on Llama-3-70B; the default here is 1024 (set ``max_length``).

Answers SFT trains on the ``sft`` config's chat records: the system and user turns are the prompt,
the assistant turn (the teacher's answer) is the completion, and only the completion is in the
loss.

Output directories follow :mod:`kailin.train.common`: ``OUT/checkpoints/checkpoint-N`` (resumed
from the last one), ``OUT/adapter``, ``OUT/model`` (merged, safetensors), ``OUT/kailin_train.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kailin.errors import InputError
from kailin.train.common import (
    LoraSettings,
    build_lora_config,
    data_digest,
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

#: the authors' CPT LoRA targets (all attention and MLP projections of a Llama block)
CPT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class DownstreamSettings:
    """Settings of ``kailin train cpt`` / ``kailin train answers`` (defaults: the authors' CPT)."""

    model: str = "smollm2"
    use_lora: bool = True
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(
        r=16, alpha=32, dropout=0.0, target_modules=CPT_LORA_TARGETS))
    learning_rate: float = 2e-5
    max_steps: int = 600
    epochs: float = 1.0
    batch_size: int = 2
    grad_accum: int = 8
    max_length: int = 1024
    packing: bool = True
    warmup: float = 0.1
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    save_steps: int = 100
    save_total_limit: int = 10
    logging_steps: int = 10
    seed: int = 3407
    max_examples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d


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
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
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


def _train(kind: str, records: list[dict[str, Any]], out_dir: str | os.PathLike[str],
           s: DownstreamSettings, source: str, callbacks: list[Any] | None) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = Path(out_dir)
    sdict = s.to_dict() | {"kind": kind, "data": source, "n_examples": len(records),
                           "data_digest": data_digest(records)}
    if (done := finished_run(out, sdict)) is not None:
        return done
    ckpt_dir = prepare_checkpoints(out, sdict, ignore=("max_steps", "epochs"))
    tok = load_tokenizer(s.model)
    model = load_model(s.model)
    extra: dict[str, Any] = (
        {"packing": s.packing, "packing_strategy": "wrapped", "completion_only_loss": False,
         "dataset_text_field": "text"}
        if kind == "cpt" else {"packing": False, "completion_only_loss": True}
    )
    cfg = SFTConfig(**training_args(s, ckpt_dir, s.learning_rate, s.warmup, **extra))
    trainer = SFTTrainer(
        model=model, args=cfg, train_dataset=Dataset.from_list(records), processing_class=tok,
        peft_config=build_lora_config(s.lora) if s.use_lora else None, callbacks=callbacks,
    )
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
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.perf_counter() - t0, 2),
        "log_history": trainer.state.log_history,
    }
    save_final_model(trainer.model, tok, out, meta)
    return meta


def train_cpt(data: str | os.PathLike[str], out_dir: str | os.PathLike[str],
              settings: DownstreamSettings | None = None,
              callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Continued pretraining on the ``cpt`` config (or any Parquet/JSONL with ``text``)."""
    require_training()
    s = settings or DownstreamSettings()
    rows = _read_rows(data, "cpt", "text")
    records = [{"text": r["text"]} for r in rows if (r.get("text") or "").strip()]
    if s.max_examples:
        records = records[: s.max_examples]
    return _train("cpt", records, out_dir, s, str(data), callbacks)


def train_answers(data: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  settings: DownstreamSettings | None = None,
                  callbacks: list[Any] | None = None) -> dict[str, Any]:
    """SFT on the ``sft`` config's chat records (loss on the assistant turn only)."""
    require_training()
    s = settings or DownstreamSettings()
    rows = _read_rows(data, "sft", "messages")
    records = []
    for i, r in enumerate(rows):
        msgs = r["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise InputError(f"{data}: record {i} (pmid {r.get('pmid')}) does not end with an "
                             "assistant message")
        records.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]],
                        "completion": [{"role": "assistant", "content": msgs[-1]["content"]}]})
    if s.max_examples:
        records = records[: s.max_examples]
    return _train("answers", records, out_dir, s, str(data), callbacks)
