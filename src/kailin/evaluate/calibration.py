"""Calibrated and continuous scoring of the yes/no/maybe log-likelihoods (``--method loglik``).

A small LM's label choice is dominated by its prior over the three answer words: SmolLM2-135M
answers "no" or "yes" to nearly everything, whatever the abstract says, so accuracy and
macro-F1 move only when that prior tips, and two models are compared through a few flipped
items. Two remedies, reported beside (never instead of) the official metric:

* **Calibration** removes the label prior before the argmax.

  - ``contextual`` (Zhao et al. 2021, "Calibrate Before Use", arXiv 2102.09690): the label
    distribution on *content-free* inputs (:data:`CONTENT_FREE`: ``N/A``, the empty string and
    ``[MASK]`` as question and contexts, in the same prompt) estimates the prior;
    ``p_cf`` = the mean of their label distributions (each normalised over the three labels),
    renormalised. The calibrated distribution is ``W p(label | x)`` with
    ``W = diag(p_cf)^-1`` (b = 0), renormalised, and the prediction is its argmax.
  - ``dcpmi`` (Holtzman et al. 2021, "Surface Form Competition", arXiv 2104.08315):
    domain-conditional PMI, ``score = log p(label | prompt) - log p(label | domain premise)``,
    the domain premise being the prompt's answer cue alone (:data:`DOMAIN_PREMISE`,
    ``Answer:``, in the chat template when the prompt uses it).

  Both are a per-label offset in log space, ``log p(label | x) - log r(label)``; here the
  calibrated scores are renormalised over the labels (softmax), which leaves the argmax and the
  margins unchanged and makes them a distribution again.

* **The gold margin** is a continuous per-item score: ``log p(gold) - max over the other labels
  of log p(label)``, from the label log-probabilities normalised over yes/no/maybe (the
  normalising constant cancels, so it equals the margin of the summed raw log-likelihoods).
  It is positive exactly when the item is answered right, and it moves whenever the model's
  belief moves, even when no prediction flips; its mean over items has a bootstrap CI and
  paired deltas between models (:func:`kailin.evaluate.stats.paired_delta`).

Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from kailin.errors import InputError
from kailin.evaluate.pubmedqa import LABELS

CALIBRATIONS: tuple[str, ...] = ("none", "contextual", "dcpmi")
#: Zhao et al.'s content-free inputs, used as both question and contexts
CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")
#: Holtzman et al.'s domain premise for PubMedQA prompts: the answer cue alone
DOMAIN_PREMISE = "Answer:"


def check_calibration(method: str) -> str:
    if method not in CALIBRATIONS:
        raise InputError(f"unknown calibration {method!r}; choose from {', '.join(CALIBRATIONS)}")
    return method


def log_normalize(scores: Mapping[str, float], labels: Sequence[str] = LABELS
                  ) -> dict[str, float]:
    """Log-softmax of the labels' scores: ``log p(label)`` normalised over ``labels``."""
    v = np.asarray([float(scores[lab]) for lab in labels])
    m = v.max()
    lse = m + math.log(float(np.exp(v - m).sum()))
    return {lab: float(x - lse) for lab, x in zip(labels, v, strict=True)}


def content_free_prior(cf_scores: Sequence[Mapping[str, float]],
                       labels: Sequence[str] = LABELS) -> dict[str, float]:
    """``log p_cf``: the mean of the content-free inputs' label distributions, renormalised."""
    if not cf_scores:
        raise InputError("contextual calibration needs at least one content-free input")
    p = np.mean([[math.exp(log_normalize(s, labels)[lab]) for lab in labels]
                 for s in cf_scores], axis=0)
    p = p / p.sum()
    return {lab: float(math.log(x)) for lab, x in zip(labels, p, strict=True)}


def reference_logprobs(method: str, reference_scores: Sequence[Mapping[str, float]],
                       labels: Sequence[str] = LABELS) -> dict[str, float] | None:
    """The per-label log offset of a calibration method: ``log p_cf`` (contextual, from the
    content-free inputs' scores) or ``log p(label | domain premise)`` normalised over the
    labels (dcpmi, from the one premise's scores); None for ``none``."""
    check_calibration(method)
    if method == "none":
        return None
    if method == "contextual":
        return content_free_prior(reference_scores, labels)
    if len(reference_scores) != 1:
        raise InputError("dcpmi takes the scores of exactly one domain premise")
    return log_normalize(reference_scores[0], labels)


def calibrate(scores: Mapping[str, float], reference: Mapping[str, float],
              labels: Sequence[str] = LABELS) -> dict[str, float]:
    """Calibrated label log-probabilities: ``log p(label | x) - reference[label]``,
    renormalised over the labels (``W = diag(exp(reference))^-1`` in probability space)."""
    lp = log_normalize(scores, labels)
    return log_normalize({lab: lp[lab] - reference[lab] for lab in labels}, labels)


def predict(logprobs: Mapping[str, float], labels: Sequence[str] = LABELS) -> str:
    """The argmax label (ties go to the earlier label of ``labels``, as ``max`` does)."""
    return max(labels, key=lambda lab: logprobs[lab])


def gold_margin(logprobs: Mapping[str, float], gold: str) -> float:
    """``log p(gold) - max over the other labels of log p(label)``."""
    if gold not in logprobs:
        raise InputError(f"gold label {gold!r} not among the scored labels {list(logprobs)}")
    return float(logprobs[gold] - max(v for lab, v in logprobs.items() if lab != gold))


def score_items(
    scores: Mapping[str, Mapping[str, float]],
    gold: Mapping[str, str],
    method: str = "none",
    reference: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Per-item records and the continuous / calibrated figures of one setting.

    ``scores``: {pmid: {label: summed log-likelihood}} (the loglik method); ``gold``: {pmid:
    label}, the same PMIDs. Returns ``(records, figures)``: each record holds ``pmid``,
    ``gold``, ``pred``, ``loglik`` (raw), ``logprobs`` (normalised over the labels),
    ``gold_margin`` and, with calibration, ``calibrated_pred``, ``calibrated_logprobs`` and
    ``calibrated_gold_margin``; ``figures`` = ``{"gold_margin": {"mean", "ci_low", "ci_high",
    "n"}, "calibrated": None | {"method", "accuracy", "macro_f1", "per_label_f1",
    "label_counts", "gold_margin", "prior", "n"}}``.
    """
    from kailin.evaluate.pubmedqa import label_counts, metrics, per_label_f1
    from kailin.evaluate.stats import bootstrap_mean

    check_calibration(method)
    if (method == "none") != (reference is None):
        raise InputError(f"calibration {method!r}: give a reference distribution exactly when "
                         "calibrating")
    missing = sorted(set(gold) - set(scores))
    if missing:
        raise InputError(f"no scores for {len(missing)} PMID(s): {', '.join(missing[:5])}")
    records: list[dict[str, object]] = []
    for pmid, g in gold.items():
        lp = log_normalize(scores[pmid])
        rec: dict[str, object] = {
            "pmid": pmid, "gold": g, "pred": predict(lp),
            "loglik": {lab: float(scores[pmid][lab]) for lab in LABELS},
            "logprobs": lp, "gold_margin": gold_margin(lp, g)}
        if reference is not None:
            cal = calibrate(scores[pmid], reference)
            rec.update({"calibrated_pred": predict(cal), "calibrated_logprobs": cal,
                        "calibrated_gold_margin": gold_margin(cal, g)})
        records.append(rec)
    figures: dict[str, object] = {
        "gold_margin": bootstrap_mean([float(r["gold_margin"]) for r in records],  # type: ignore[arg-type]
                                      n_boot=n_boot, seed=seed),
        "calibrated": None}
    if reference is not None:
        y_true = [str(r["gold"]) for r in records]
        y_cal = [str(r["calibrated_pred"]) for r in records]
        figures["calibrated"] = {
            "method": method, **metrics(y_true, y_cal),
            "per_label_f1": per_label_f1(y_true, y_cal),
            "label_counts": {"ground_truth": label_counts(y_true),
                             "predicted": label_counts(y_cal)},
            "gold_margin": bootstrap_mean(
                [float(r["calibrated_gold_margin"]) for r in records],  # type: ignore[arg-type]
                n_boot=n_boot, seed=seed),
            "prior": {lab: math.exp(v) for lab, v in reference.items()},
        }
    return records, figures
