"""Answer PubMedQA with a causal LM: log-likelihood scoring of yes/no/maybe, or generation.

Two settings (MET §7.9, m-KAILIN "reasoning-required vs question-only"):

* ``reasoning_required``: the model sees the abstract's contexts (without its conclusion) and the
  question;
* ``question_only``: the model sees the question alone.

Two ways to answer, both zero-shot and greedy:

* ``loglik`` (default): the answer is the label whose continuation has the highest summed
  log-probability after the prompt. Every item gets a valid label, which makes the metric
  meaningful even for a 135M model that rarely follows an answer format. When each label is a
  single token (the usual case) one forward pass per prompt gives all three scores; otherwise each
  (prompt, label) pair is scored. Prompts are batched (left padding, explicit position ids, and
  only the needed logits are materialised).
* ``generate``: greedy generation; the first ``yes``/``no``/``maybe`` word in the output is the
  answer. Outputs without one count as ``maybe`` and are reported as ``unparsed``.

With loglik, every setting also gets the gold margin (a continuous per-item score) and, with
``calibration="contextual"`` or ``"dcpmi"``, calibrated figures beside the official ones (see
:mod:`kailin.evaluate.calibration`); the per-item log-likelihoods are saved for paired
comparisons (:func:`kailin.evaluate.stats.paired_delta`).

With ``chat="auto"`` the prompt is wrapped in the tokenizer's chat template when it has one (the
label is then the start of the assistant turn); ``chat="never"`` uses the plain prompt.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.evaluate.calibration import (
    CONTENT_FREE,
    DOMAIN_PREMISE,
    check_calibration,
    reference_logprobs,
    score_items,
)
from kailin.evaluate.pubmedqa import (
    LABELS,
    PubMedQAItem,
    load_ground_truth,
    score_predictions,
    test_items,
)
from kailin.io import atomic_path, write_json_atomic
from kailin.llm.answerer import LMAnswerer

log = logging.getLogger(__name__)

SETTINGS: tuple[str, ...] = ("reasoning_required", "question_only")
METHODS: tuple[str, ...] = ("loglik", "generate")
INSTRUCTION = "Answer the question with yes, no, or maybe."

_ANSWER_RE = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)


def build_prompt(item: PubMedQAItem, setting: str) -> str:
    """The zero-shot prompt of one item (the answer follows ``Answer:``)."""
    if setting not in SETTINGS:
        raise InputError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    parts = []
    if setting == "reasoning_required":
        parts.append("Context: " + " ".join(c.strip() for c in item.contexts))
    parts.append(f"Question: {item.question.strip()}")
    parts.append(INSTRUCTION)
    return "\n".join(parts) + "\nAnswer:"


def parse_answer(text: str) -> str | None:
    """The first yes/no/maybe word of a generated answer, or None."""
    m = _ANSWER_RE.search(text)
    return m.group(1).lower() if m else None


def load_answerer(
    model: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> LMAnswerer:
    """An :class:`LMAnswerer` for a model spec (local path, hub id, ``smollm2``, or a kailin
    training output), optionally with a LoRA adapter directory applied on top."""
    from kailin.train.common import load_model, load_tokenizer

    tok = load_tokenizer(model, padding_side="left")
    lm = load_model(model, device=device)
    if adapter is not None:
        ad = Path(adapter)
        if not (ad / "adapter_config.json").is_file():
            raise InputError(f"--adapter {ad}: not a PEFT adapter directory "
                             "(no adapter_config.json)")
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(ad)).merge_and_unload()
    return LMAnswerer(lm, tok, **kwargs)


def answer_items(
    answerer: LMAnswerer,
    items: Sequence[PubMedQAItem],
    setting: str,
    method: str = "loglik",
    progress: bool = True,
) -> dict[str, Any]:
    """Predictions (``{pmid: label}``) and per-item details for one setting."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    prompts = [build_prompt(it, setting) for it in items]
    preds: dict[str, str] = {}
    details: dict[str, Any] = {}
    unparsed = 0
    scores: dict[str, dict[str, float]] = {}
    if method == "loglik":
        for it, sc in zip(items, answerer.loglik(prompts, progress=progress), strict=True):
            preds[it.pmid] = max(LABELS, key=lambda lab: sc[lab])
            details[it.pmid] = {lab: round(v, 4) for lab, v in sc.items()}
            scores[it.pmid] = sc
    else:
        texts = answerer.generate(prompts, progress=progress)
        for it, text in zip(items, texts, strict=True):
            lab = parse_answer(text)
            if lab is None:
                unparsed += 1
                lab = "maybe"
            preds[it.pmid] = lab
            details[it.pmid] = text
    return {"predictions": preds, "details": details, "unparsed": unparsed, "scores": scores}


def reference_prompts(setting: str, calibration: str) -> list[str]:
    """The prompts whose label scores estimate the prior a calibration removes: the
    content-free inputs in the setting's prompt (contextual) or the domain premise (dcpmi)."""
    check_calibration(calibration)
    if calibration == "contextual":
        return [build_prompt(PubMedQAItem(pmid="content-free", question=cf, contexts=(cf,),
                                          label="yes", year=None), setting)
                for cf in CONTENT_FREE]
    if calibration == "dcpmi":
        return [DOMAIN_PREMISE]
    return []


def evaluate_model(
    model: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    settings: Sequence[str] = SETTINGS,
    method: str = "loglik",
    limit: int | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    chat: str = "auto",
    max_new_tokens: int = 32,
    device: str | None = None,
    predictions_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    answerer: LMAnswerer | None = None,
    calibration: str = "none",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a causal LM on the official PQA-L test split in each setting.

    Returns ``{"model", "adapter", "method", "calibration", "chat_template", "limit", "n",
    "settings": {setting: {"accuracy", "macro_f1", "n", "per_label_f1", "label_counts",
    "by_year", "by_mesh", "unparsed", "gold_margin", "calibrated"}}, "seconds"}``. The official
    figures are those of the uncalibrated argmax; ``gold_margin`` (``{"mean", "ci_low",
    "ci_high", "n"}``, bootstrap CI with ``n_boot`` resamples, seeded) and ``calibrated``
    (``--calibration`` contextual or dcpmi, else None: ``{"method", "accuracy", "macro_f1",
    "per_label_f1", "label_counts", "gold_margin", "prior", "n"}``) come from the loglik
    scores (None with ``method="generate"``); see :mod:`kailin.evaluate.calibration`. With
    ``predictions_dir`` the official-format predictions of each setting are written to
    ``pred_{setting}.json`` there, and with loglik the per-item log-probabilities to
    ``pred_{setting}.items.jsonl`` (for :func:`kailin.evaluate.stats.paired_delta`).
    """
    for s in settings:
        if s not in SETTINGS:
            raise InputError(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    check_calibration(calibration)
    if calibration != "none" and method != "loglik":
        raise InputError(f"--calibration {calibration} calibrates the label log-likelihoods: "
                         "use it with --method loglik")
    items = test_items(limit)
    gt_all = load_ground_truth()
    gt = {it.pmid: gt_all[it.pmid] for it in items}
    t0 = time.perf_counter()
    ans = answerer or load_answerer(
        model, adapter, device=device, batch_size=batch_size, max_length=max_length, chat=chat,
        max_new_tokens=max_new_tokens,
    )
    result: dict[str, Any] = {
        "model": str(model),
        "adapter": str(adapter) if adapter else None,
        "method": method,
        "calibration": calibration,
        "chat_template": ans.use_chat,
        "limit": limit,
        "n": len(items),
        "settings": {},
    }
    for s in settings:
        t1 = time.perf_counter()
        out = answer_items(ans, items, s, method, progress=progress)
        res = score_predictions(out["predictions"], gt, source=f"{s} predictions")
        res["unparsed"] = out["unparsed"]
        records: list[dict[str, Any]] = []
        res["gold_margin"], res["calibrated"] = None, None
        if method == "loglik":
            ref_prompts = reference_prompts(s, calibration)
            ref = (reference_logprobs(calibration, ans.loglik(ref_prompts, progress=False))
                   if ref_prompts else None)
            records, figures = score_items(out["scores"], gt, calibration, ref, n_boot=n_boot,
                                           seed=seed)
            res.update(figures)
        res["seconds"] = round(time.perf_counter() - t1, 2)
        if predictions_dir is not None:
            p = Path(predictions_dir) / f"pred_{s}.json"
            write_json_atomic(p, out["predictions"])
            res["predictions_file"] = str(p)
            if records:
                ip = Path(predictions_dir) / f"pred_{s}.items.jsonl"
                _write_jsonl(ip, records)
                res["items_file"] = str(ip)
        result["settings"][s] = res
        log.info("%s: accuracy %.4f macro-F1 %.4f (n=%d)", s, res["accuracy"], res["macro_f1"],
                 res["n"])
        if res["calibrated"]:
            c = res["calibrated"]
            log.info("%s: %s-calibrated accuracy %.4f macro-F1 %.4f; gold margin %.4f",
                     s, calibration, c["accuracy"], c["macro_f1"], res["gold_margin"]["mean"])
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import json

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


class PubMedQAConfig(StageConfig):
    added_fields: ClassVar[tuple[str, ...]] = ("calibration",)

    enabled: bool = True
    settings: list[Literal["reasoning_required", "question_only"]] = Field(
        default_factory=lambda: ["reasoning_required", "question_only"])
    limit: int | None = Field(None, ge=1, description="N test PMIDs evenly spaced over the split "
                                "(all 500 if unset)")
    method: Literal["loglik", "generate"] = "loglik"
    batch_size: int = Field(8, ge=1)
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples of the CIs")
    calibration: Literal["none", "contextual", "dcpmi"] = Field(
        "none", description="calibrated figures beside the official ones (loglik only): "
        "contextual (Zhao et al. 2021) or domain-conditional PMI (Holtzman et al. 2021); the "
        "gold-label margin is reported either way")

    @model_validator(mode="after")
    def _calibration(self) -> PubMedQAConfig:
        if self.calibration != "none" and self.method != "loglik":
            raise ValueError(f"calibration {self.calibration} needs method loglik")
        return self
