"""DPO of a question generator on MeSH preference pairs (KAILIN step 4).

:class:`DPOSettings` holds the authors' run (``DPO/trl_dpo/dpo_llama2.py`` + ``run_dpo.sh``,
METHOD 4.2) as defaults: beta 0.1; lr 5e-4 with a cosine schedule; 100 warmup steps; weight
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
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.align.sft import RESUMABLE_CHANGES, fit_document
from kailin.errors import InputError
from kailin.io import read_parquet
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


@dataclass
class DPOSettings:
    """DPO settings; defaults = the authors' run (see the module docstring)."""

    model: str = "smollm2"
    beta: float = 0.1
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.05
    lora: LoraSettings = field(default_factory=LoraSettings)
    batch_size: int = 16
    grad_accum: int = 4
    epochs: float = 3.0
    max_steps: int = -1
    max_length: int = 1024
    max_chars: int | None = None
    save_steps: int = 50
    save_total_limit: int = 3
    logging_steps: int = 10
    seed: int = 0
    max_pairs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d


def load_pairs(path: str | os.PathLike[str]) -> pa.Table:
    """Preference pairs (``kailin prefer`` output dir, or any Parquet/JSON(L) with prompt,
    chosen, rejected)."""
    p = Path(path)
    if p.is_file() and p.suffix in {".json", ".jsonl"}:
        text = p.read_text(encoding="utf-8")
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


def _records(t: pa.Table, s: DPOSettings, tok: Any) -> list[dict[str, str]]:
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
    settings: DPOSettings | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """DPO the generator ``settings.model`` on ``pairs``; resume from the last checkpoint; save
    the adapter and the merged model. A finished run with the same settings returns at once."""
    require_training()
    s = settings or DPOSettings()
    out = Path(out_dir)
    table = pairs if isinstance(pairs, pa.Table) else load_pairs(pairs)
    if s.max_pairs:
        table = table.slice(0, s.max_pairs)
    cols = [c for c in ("prompt", "chosen", "rejected") if c in table.column_names]
    sdict = s.to_dict() | {"n_pairs": table.num_rows,
                           "data_digest": data_digest(table.select(cols).to_pylist())}
    if (done := finished_run(out, sdict)) is not None:
        return done

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ckpt_dir = prepare_checkpoints(out, sdict, ignore=RESUMABLE_CHANGES)

    tok = load_tokenizer(s.model)
    records = _records(table, s, tok)
    if not records:
        raise InputError("no usable preference pairs (empty texts, or none fits max_length)")
    model = load_model(s.model)
    cfg = DPOConfig(**training_args(s, ckpt_dir, s.learning_rate, s.warmup_steps,
                                    beta=s.beta))
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=cfg,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        peft_config=build_lora_config(s.lora),
        callbacks=callbacks,
    )
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming DPO from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    meta = {
        "kind": "dpo",
        "settings": sdict,
        "base_model": s.model,
        "n_records": len(records),
        "resumed_from": resume,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.perf_counter() - t0, 2),
        "log_history": trainer.state.log_history,
    }
    save_final_model(trainer.model, tok, out, meta)
    return meta
