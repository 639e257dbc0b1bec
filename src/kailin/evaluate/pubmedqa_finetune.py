"""Fine-tuned PubMedQA: the LinkBERT / BioGPT protocol for comparing pretrained models.

Zero-shot PubMedQA (:mod:`kailin.evaluate.pubmedqa_model`) measures a small model's prior more
than its knowledge. The protocol of LinkBERT (Yasunaga et al. 2022) and BioGPT (Luo et al. 2022)
fine-tunes every model the same way on the expert-labelled PQA-L items outside the official test
set and then evaluates on the 500 test items, reasoning-required setting:

* **split**: PubMedQA's own convention, ``preprocess/split_dataset.py`` of the official repo
  (reproduced in ``kailin/data/pubmedqa/pqal_official_split.json``, see its PROVENANCE): the
  500 non-test PQA-L items in 10 stratified folds of 50; fold ``k`` trains on the other 450 and
  keeps its 50 as dev. Fold 0 by default; no test PMID is in any fold (checked).
* **training**: each item is the zero-shot prompt (contexts + question + "Answer the question
  with yes, no, or maybe.", in the tokenizer's chat template when it has one) with the label as
  the completion; loss on the label only; LoRA via :func:`kailin.dataset.train._train` (resume,
  final model, ``kailin_train.json``). Same seed, steps and hyper-parameters for every model.
* **length**: no item is dropped for length: a prompt longer than ``max_length`` has its
  contexts cut, the longest first (:mod:`kailin.train.fit`), in training, dev and test alike,
  and the cut items are counted.
* **evaluation**: the fine-tuned model scores yes / no / maybe by log-likelihood on the test
  items (and the dev fold); accuracy and macro-F1 as the official script, plus each item's
  prediction and log-probabilities for paired comparisons between models.

There is no model selection on dev (LinkBERT picks the best of several learning rates and
epochs on dev): every model is trained for the same steps and the dev scores are reported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.evaluate.pubmedqa import (
    LABELS,
    PubMedQAItem,
    load_pqal,
    official_split,
    score_predictions,
    test_items,
    test_pmids,
)
from kailin.io import write_json_atomic

log = logging.getLogger(__name__)

REPORT = "pubmedqa_finetuned.json"
PROTOCOL = ("PQA-L fine-tuning (LinkBERT/BioGPT protocol): train on the 450 non-test items of "
            "an official CV fold, dev on its 50, test on the official 500")


class PubMedQAFinetuneConfig(StageConfig):
    """Settings of ``kailin evaluate pubmedqa-finetuned`` (one set for every model compared)."""

    fold: int = Field(0, ge=0, le=9, description="official PQA-L CV fold: train on its 450 "
                      "items, dev on its 50")
    setting: Literal["reasoning_required", "question_only"] = Field(
        "reasoning_required", description="the prompt: contexts + question, or question only")
    max_steps: int = Field(200, ge=1, description="fine-tuning steps (the same for every model)")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, description="items per device and step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(512, ge=64, description="tokens per item: longer prompts have their "
                            "contexts cut (counted), no item is dropped")
    lora: bool = Field(True, description="LoRA (false: full fine-tuning)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    warmup: float = Field(0.1, ge=0, description="warm-up: steps (>= 1) or a ratio (< 1)")
    seed: int = Field(3407, description="training seed")
    limit: int | None = Field(None, ge=1, description="evaluate N test items evenly spaced over "
                              "the split (all 500 if unset)")
    eval_batch_size: int = Field(8, ge=1, description="prompts per forward pass when scoring")
    chat: Literal["auto", "always", "never"] = Field("auto", description="wrap prompts in the "
                                                     "tokenizer's chat template")


def fold_split(fold: int = 0) -> tuple[list[str], list[str]]:
    """``(train, dev)`` PMIDs of an official PQA-L CV fold (450 / 50), checked against the
    test set."""
    folds = official_split()["cv_folds"]
    if not 0 <= fold < len(folds):
        raise InputError(f"fold must be 0..{len(folds) - 1}, got {fold}")
    f = folds[fold]
    train, dev = [str(p) for p in f["train"]], [str(p) for p in f["dev"]]
    leak = (set(train) | set(dev)) & set(test_pmids())
    if leak or set(train) & set(dev):
        raise InputError(f"pqal_official_split.json fold {fold}: test PMIDs in the fold "
                         f"({len(leak)}) or train/dev overlap; the packaged split is damaged")
    return train, dev


def _label_text(use_chat: bool, label: str) -> str:
    return label if use_chat else " " + label


def _record(prompt: str, label: str, use_chat: bool) -> dict[str, Any]:
    if use_chat:
        return {"prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": label}]}
    return {"prompt": prompt, "completion": _label_text(False, label)}


def fit_item(item: PubMedQAItem, setting: str, tok: Any, max_length: int, use_chat: bool
             ) -> tuple[PubMedQAItem, bool]:
    """``item`` with its contexts cut (the longest first) so that its prompt and the longest
    label fit ``max_length`` tokens as trained; and whether any was cut. An item whose question
    alone does not fit is an :class:`InputError` (no item is dropped)."""
    from kailin.dataset.train import record_tokens
    from kailin.evaluate.pubmedqa_model import build_prompt
    from kailin.train.fit import fit_contexts

    if setting == "question_only":
        return item, False

    def length_of(ctx: list[str]) -> int:
        prompt = build_prompt(dataclasses.replace(item, contexts=tuple(ctx)), setting)
        return record_tokens(tok, _record(prompt, "maybe", use_chat))

    res = fit_contexts(list(item.contexts), length_of, tok, max_length)
    if res.contexts is None:
        raise InputError(f"PubMedQA PMID {item.pmid}: {res.reason}; raise --max-length")
    return dataclasses.replace(item, contexts=tuple(res.contexts)), res.truncated


def _fit_all(items: list[PubMedQAItem], cfg: PubMedQAFinetuneConfig, tok: Any, use_chat: bool
             ) -> tuple[list[PubMedQAItem], int]:
    out, cut = [], 0
    for it in items:
        fitted, was_cut = fit_item(it, cfg.setting, tok, cfg.max_length, use_chat)
        out.append(fitted)
        cut += was_cut
    return out, cut


def _score(answerer: Any, items: list[PubMedQAItem], setting: str, progress: bool
           ) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    from kailin.evaluate.pubmedqa_model import build_prompt

    scores = answerer.loglik([build_prompt(it, setting) for it in items], progress=progress)
    preds = {it.pmid: max(LABELS, key=lambda lab: sc[lab]) for it, sc in zip(items, scores,
                                                                              strict=True)}
    return preds, {it.pmid: {lab: round(sc[lab], 4) for lab in LABELS}
                   for it, sc in zip(items, scores, strict=True)}


def finetune_and_evaluate(model: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                          settings: PubMedQAFinetuneConfig | None = None, progress: bool = True,
                          callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on a PQA-L CV fold and evaluate it on the official test items.

    ``out_dir`` receives the fine-tuned model (``model/``, ``adapter/``, ``checkpoints/``,
    ``kailin_train.json``; a finished run with the same settings is reused),
    ``pred_{setting}.json`` (official format) and ``pubmedqa_finetuned.json``, the report:
    ``accuracy``, ``macro_f1``, ``n`` (test), ``test`` (the full score with per-label F1 and
    breakdowns), ``dev``, ``train`` (steps, loss, ``truncated``, ``dropped``), ``fit`` (items
    whose contexts were cut, per split) and ``items`` (``{pmid: {"label", "prediction",
    "logprobs": {yes, no, maybe}}}``) for paired comparisons."""
    from kailin.dataset.train import DownstreamTrainConfig, _train
    from kailin.evaluate.pubmedqa_model import LMAnswerer
    from kailin.train.common import load_model, load_tokenizer, require_training

    require_training()
    cfg = settings or PubMedQAFinetuneConfig()
    out = Path(out_dir)
    t0 = time.perf_counter()
    pqal = load_pqal()
    train_ids, dev_ids = fold_split(cfg.fold)
    tok = load_tokenizer(model)
    has_template = bool(getattr(tok, "chat_template", None))
    if cfg.chat == "always" and not has_template:
        raise InputError(f"{model}: chat 'always' but the tokenizer has no chat template")
    use_chat = cfg.chat == "always" or (cfg.chat == "auto" and has_template)
    from kailin.evaluate.pubmedqa_model import build_prompt

    train_items, train_cut = _fit_all([pqal[p] for p in train_ids], cfg, tok, use_chat)
    records = [_record(build_prompt(it, cfg.setting), it.label, use_chat) for it in train_items]
    ts = DownstreamTrainConfig(
        model=str(model), lora=cfg.lora, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        learning_rate=cfg.learning_rate, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum, max_length=cfg.max_length, packing=False, warmup=cfg.warmup,
        seed=cfg.seed, fit="error")  # the records are fitted above: none may be left over
    meta = _train("pubmedqa_finetune", records, out, ts,
                  f"PQA-L fold {cfg.fold} train ({cfg.setting})", callbacks,
                  {"truncated": train_cut, "dropped": 0, "dropped_records": []}, tok)

    import torch

    device = "cuda" if torch.cuda.is_available() else None
    answerer = LMAnswerer(load_model(out, device=device),
                          load_tokenizer(out, padding_side="left"),
                          batch_size=cfg.eval_batch_size, max_length=cfg.max_length + 8,
                          chat="always" if use_chat else "never")
    dev_items, dev_cut = _fit_all([pqal[p] for p in dev_ids], cfg, tok, use_chat)
    dev_pred, _ = _score(answerer, dev_items, cfg.setting, progress)
    dev = score_predictions(dev_pred, {it.pmid: it.label for it in dev_items}, "dev",
                            with_breakdowns=False)
    tests, test_cut = _fit_all(test_items(cfg.limit), cfg, tok, use_chat)
    preds, logprobs = _score(answerer, tests, cfg.setting, progress)
    test = score_predictions(preds, {it.pmid: it.label for it in tests}, f"{model} test")
    pred_file = out / f"pred_{cfg.setting}.json"
    write_json_atomic(pred_file, preds)
    report = {
        "model": str(model), "protocol": PROTOCOL, "fold": cfg.fold, "setting": cfg.setting,
        "settings": cfg.model_dump(mode="json"), "chat_template": use_chat,
        "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "n": test["n"],
        "limit": cfg.limit, "test": test,
        "dev": {k: dev[k] for k in ("accuracy", "macro_f1", "n", "per_label_f1")},
        "train": {"n_examples": len(records), "truncated": train_cut, "dropped": 0,
                  "global_step": meta.get("global_step"), "train_loss": meta.get("train_loss"),
                  "skipped": bool(meta.get("skipped")), "seconds": meta.get("seconds")},
        "fit": {"max_length": cfg.max_length, "train_truncated": train_cut,
                "dev_truncated": dev_cut, "test_truncated": test_cut, "dropped": 0},
        "n_train": len(records), "n_dev": len(dev_items), "n_test": len(tests),
        "predictions_file": str(pred_file),
        "items": {it.pmid: {"label": it.label, "prediction": preds[it.pmid],
                            "logprobs": logprobs[it.pmid]} for it in tests},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / REPORT, report)
    log.info("fine-tuned PubMedQA %s: accuracy %.4f macro-F1 %.4f (n=%d; dev %.4f)", model,
             report["accuracy"], report["macro_f1"], report["n"], dev["accuracy"])
    return report


class PubMedQAFinetuneStageConfig(PubMedQAFinetuneConfig):
    """The pipeline's ``pubmedqa_finetune`` step: :func:`finetune_and_evaluate` of every model
    of ``downstream.finetune_models`` on every arm and seed, all with these settings."""

    enabled: bool = Field(False, description="run the pubmedqa_finetune step")
