"""Bootstrap statistics shared by the evaluations: CIs of a mean or a ratio of sums, and paired
deltas between two models scored on the same items (PubMedQA test items, held-out texts).

Pairing: both models are resampled on the *same* items in every bootstrap replicate, so the
item-to-item variation both share (hard items, long texts) cancels and only the difference that
the models make remains. The minimum detectable effect (``mde``) is ``2.8 × SE`` of the paired
delta, SE being the standard deviation of the bootstrap deltas: with a two-sided test at
α = 0.05 (z = 1.96) and 80 % power (z = 0.84), a true effect of 1.96 + 0.84 ≈ 2.8 standard
errors is detected four times in five. A difference smaller than the MDE that comes out "not
significant" is no evidence of no effect: the comparison had too few items to see it.

Numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kailin.errors import InputError

#: z(0.975) + z(0.80): the multiple of the standard error a true effect must have to be found
#: significant at α = 0.05 (two-sided) with 80 % power
MDE_Z = 2.8
#: classification metrics of :func:`paired_delta` (``calibrated_`` prefixed: on the calibrated
#: predictions); ``mean_nll`` is the token-weighted NLL (sum of ``nll_sum`` / sum of ``tokens``)
CLASS_METRICS = ("accuracy", "macro_f1")


def _quantiles(x: np.ndarray, confidence: float) -> tuple[float, float]:
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    return float(np.quantile(x, lo_q)), float(np.quantile(x, hi_q))


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    if n_boot < 1:
        raise InputError(f"n_boot must be positive, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean", "ci_low", "ci_high", "n"}``: the mean and its percentile bootstrap CI."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    boot = v[_indices(v.size, n_boot, seed)].mean(axis=1)
    lo, hi = _quantiles(boot, confidence)
    return {"mean": float(v.mean()), "ci_low": lo, "ci_high": hi, "n": int(v.size)}


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], n_boot: int = 1000,
                    seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high", "n"}`` of ``sum(num) / sum(den)``, resampling the items
    (e.g. the token-weighted mean NLL: per-text NLL sums over per-text token counts)."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size == 0 or b.sum() <= 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": int(a.size)}
    idx = _indices(a.size, n_boot, seed)
    boot = a[idx].sum(axis=1) / np.maximum(b[idx].sum(axis=1), 1e-12)
    lo, hi = _quantiles(boot, confidence)
    return {"value": float(a.sum() / b.sum()), "ci_low": lo, "ci_high": hi, "n": int(a.size)}


def _item_id(rec: Mapping[str, Any], i: int, source: str) -> str:
    for key in ("pmid", "id"):
        if rec.get(key) is not None:
            return str(rec[key])
    raise InputError(f"{source}: record {i} has neither 'pmid' nor 'id'; per-item records "
                     "need one to be paired")


def _keyed(items: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
           source: str) -> dict[str, Mapping[str, Any]]:
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    out: dict[str, Mapping[str, Any]] = {}
    for i, rec in enumerate(items):
        k = _item_id(rec, i, source)
        if k in out:
            raise InputError(f"{source}: item {k} occurs twice; pairing needs one record per item")
        out[k] = rec
    return out


def load_items(path: str | Path) -> list[dict[str, Any]]:
    """Per-item records written by the evaluations: JSON lines (``pred_{setting}.items.jsonl`` of
    ``kailin evaluate pubmedqa``), a JSON list, or Parquet (``*.per_text.parquet`` of ``kailin
    evaluate perplexity``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: per-item file not found")
    if p.suffix == ".parquet" or p.is_dir():
        from kailin.io import read_parquet

        return read_parquet(p).to_pylist()
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            obj = json.loads(text)
            if not isinstance(obj, list):
                raise InputError(f"{p}: expected a JSON list of per-item records")
            return obj
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc}); expected per-item records") from None


def paired_delta(
    a_items: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    b_items: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    metric: str,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The paired difference ``metric(a) - metric(b)`` over the items both were scored on.

    ``a_items``/``b_items``: per-item records (a list with ``pmid`` or ``id`` in each, or a
    mapping id -> record) covering the same items. ``metric``:

    * ``accuracy`` / ``macro_f1`` (PubMedQA, official definitions): from each record's ``gold``
      and ``pred``; ``calibrated_accuracy`` / ``calibrated_macro_f1`` from ``calibrated_pred``;
    * ``mean_nll``: the token-weighted mean NLL, ``sum(nll_sum) / sum(tokens)`` (perplexity);
    * any other name: the mean of that numeric field (``gold_margin``,
      ``calibrated_gold_margin``, ``nll`` = per-text mean NLL, ...).

    Returns ``{"metric", "delta", "ci_low", "ci_high", "se", "mde", "significant",
    "n", "n_boot", "confidence"}`` (percentile CI of the bootstrap deltas; ``mde`` = 2.8 × se).
    """
    a, b = _keyed(a_items, "a"), _keyed(b_items, "b")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        from kailin.evaluate.pubmedqa import _preview

        raise InputError(
            f"paired_delta: the two models were scored on different items ({len(only_a)} only "
            f"in a: {_preview(only_a, 5)}; {len(only_b)} only in b: {_preview(only_b, 5)}); "
            "score both on the same items (same --limit / same texts)")
    ids = sorted(a)
    if not ids:
        raise InputError("paired_delta: no items")
    idx = _indices(len(ids), n_boot, seed)

    def column(recs: dict[str, Mapping[str, Any]], field: str, side: str) -> np.ndarray:
        try:
            vals = [recs[k][field] for k in ids]
        except KeyError:
            raise InputError(f"paired_delta: {side} records lack the field {field!r} that "
                             f"metric {metric!r} needs") from None
        if any(v is None for v in vals):
            raise InputError(f"paired_delta: {side} has items without {field!r}")
        return np.asarray(vals, dtype=object if field in ("gold", "pred", "calibrated_pred")
                          else float)

    base = metric.removeprefix("calibrated_")
    if base in CLASS_METRICS:
        from kailin.evaluate.pubmedqa import _boot_metrics, accuracy, macro_f1

        pred = "calibrated_pred" if metric.startswith("calibrated_") else "pred"
        gold = column(a, "gold", "a")
        if list(gold) != list(column(b, "gold", "b")):
            raise InputError("paired_delta: a and b disagree on the gold labels")
        pa_, pb_ = column(a, pred, "a"), column(b, pred, "b")
        labels = sorted(set(gold.tolist()) | set(pa_.tolist()) | set(pb_.tolist()))
        i = CLASS_METRICS.index(base)
        fn = (accuracy, macro_f1)[i]
        point = fn(list(gold), list(pa_)) - fn(list(gold), list(pb_))
        boot = _boot_metrics(gold, pa_, idx, labels)[i] - _boot_metrics(gold, pb_, idx, labels)[i]
    elif metric == "mean_nll":
        na, ta = column(a, "nll_sum", "a"), column(a, "tokens", "a")
        nb, tb = column(b, "nll_sum", "b"), column(b, "tokens", "b")
        point = na.sum() / ta.sum() - nb.sum() / tb.sum()
        boot = (na[idx].sum(1) / np.maximum(ta[idx].sum(1), 1e-12)
                - nb[idx].sum(1) / np.maximum(tb[idx].sum(1), 1e-12))
    else:
        d = column(a, metric, "a") - column(b, metric, "b")
        point, boot = d.mean(), d[idx].mean(axis=1)
    lo, hi = _quantiles(boot, confidence)
    se = float(boot.std(ddof=1)) if n_boot > 1 else math.nan
    return {"metric": metric, "delta": float(point), "ci_low": lo, "ci_high": hi, "se": se,
            "mde": MDE_Z * se, "significant": bool(lo > 0 or hi < 0), "n": len(ids),
            "n_boot": n_boot, "confidence": confidence}
