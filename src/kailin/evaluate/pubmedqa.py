"""PubMedQA (PQA-L) data, the official metric, and the breakdowns the authors report.

The metric is the official ``evaluation.py`` of github.com/pubmedqa/pubmedqa: scikit-learn's
``accuracy_score`` and ``f1_score(average="macro")``, reimplemented here with numpy so the core
package does not need scikit-learn (the test suite checks the two agree). As in the official
script, a prediction file must hold exactly the ground-truth PMIDs, each with one of
``yes``/``no``/``maybe``; anything else is an :class:`~kailin.errors.InputError` naming the
offending PMIDs.

Breakdowns (KAILIN ``group_by_year.py`` / ``group_by_mesh.py``; m-KAILIN Fig. 13 "PubMedQA-Chrono"):
accuracy and macro-F1 per publication-year bin (1989–2000, 2001–04, 2005–07, 2008–09, 2010–11,
2012–13, 2014–15, 2016–17, unknown) and per MeSH heading for the 10 headings most frequent among
the evaluated items (an item counts in every heading it carries, so groups overlap).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kailin.errors import InputError
from kailin.io import read_text_strict

LABELS: tuple[str, ...] = ("yes", "no", "maybe")

#: m-KAILIN "PubMedQA-Chrono" bins (inclusive year ranges)
YEAR_BINS: tuple[tuple[str, int, int], ...] = (
    ("1989-2000", 1989, 2000),
    ("2001-2004", 2001, 2004),
    ("2005-2007", 2005, 2007),
    ("2008-2009", 2008, 2009),
    ("2010-2011", 2010, 2011),
    ("2012-2013", 2012, 2013),
    ("2014-2015", 2014, 2015),
    ("2016-2017", 2016, 2017),
)
UNKNOWN_YEAR = "unknown"


def _data_file(name: str) -> Path:
    return Path(str(resources.files("kailin") / "data" / "pubmedqa" / name))


def ground_truth_path() -> Path:
    """The packaged official test labels (500 PMIDs)."""
    return _data_file("test_ground_truth.json")


def _load_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} file not found")
    try:
        return json.loads(read_text_strict(p, f"{what} file"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc}); expected {what}") from None


def load_label_file(path: str | Path, what: str = "predictions") -> dict[str, str]:
    """Read an official-format label file ``{"PMID": "yes|no|maybe", ...}``."""
    obj = _load_json(path, what)
    if not isinstance(obj, dict):
        raise InputError(
            f"{path}: expected a JSON object {{\"PMID\": \"yes|no|maybe\", ...}} ({what}), "
            f"got {type(obj).__name__}"
        )
    return {str(k): v for k, v in obj.items()}


def load_ground_truth(path: str | Path | None = None) -> dict[str, str]:
    """Ground-truth labels; ``None`` = the packaged PQA-L test labels."""
    gt = load_label_file(path or ground_truth_path(), "ground truth")
    bad = {k: v for k, v in gt.items() if v not in LABELS}
    if bad:
        raise InputError(f"{path or ground_truth_path()}: ground-truth labels not in "
                         f"{list(LABELS)}: {_preview(f'{k}={v!r}' for k, v in bad.items())}")
    return gt


@dataclass(frozen=True)
class PubMedQAItem:
    """One PQA-L instance."""

    pmid: str
    question: str
    contexts: tuple[str, ...]
    label: str
    year: int | None
    meshes: tuple[str, ...] = field(default_factory=tuple)
    long_answer: str = ""


def load_pqal(path: str | Path | None = None) -> dict[str, PubMedQAItem]:
    """All 1,000 PQA-L items (``ori_pqal.json``), keyed by PMID."""
    p = Path(path) if path else _data_file("ori_pqal.json")
    raw = _load_json(p, "PQA-L (ori_pqal.json)")
    items: dict[str, PubMedQAItem] = {}
    for pmid, r in raw.items():
        try:
            year = r.get("YEAR")
            items[str(pmid)] = PubMedQAItem(
                pmid=str(pmid),
                question=r["QUESTION"],
                contexts=tuple(r["CONTEXTS"]),
                label=r["final_decision"],
                year=int(year) if year not in (None, "") else None,
                meshes=tuple(r.get("MESHES") or ()),
                long_answer=r.get("LONG_ANSWER") or "",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{p}: record {pmid} is malformed ({exc!r})") from None
    return items


def official_split() -> dict[str, Any]:
    """The official PQA-L split: ``{"test": [500 PMIDs], "cv_folds": [...]}``."""
    return _load_json(_data_file("pqal_official_split.json"), "PQA-L split")


def test_pmids() -> list[str]:
    """The 500 official test PMIDs, in the split's order."""
    return [str(p) for p in official_split()["test"]]


def test_items(limit: int | None = None) -> list[PubMedQAItem]:
    """The official test items, labels from the ground truth.

    With ``limit`` N, N items evenly spaced over the split (indices ``floor(i * 500 / N)``). The
    split file lists the test PMIDs grouped by label (all "yes" first), so its first N would be
    one label only; the evenly spaced subset keeps the label proportions and is deterministic.
    """
    pqal = load_pqal()
    gt = load_ground_truth()
    pmids = test_pmids()
    if limit is not None:
        if limit <= 0:
            raise InputError(f"--limit must be positive, got {limit}")
        if limit < len(pmids):
            pmids = [pmids[(i * len(pmids)) // limit] for i in range(limit)]
    out = []
    for p in pmids:
        it = pqal[p]
        if it.label != gt[p]:  # never expected: the packaged files agree
            raise InputError(f"PMID {p}: ori_pqal.json label {it.label} != ground truth {gt[p]}")
        out.append(it)
    return out


# --- metric -----------------------------------------------------------------------------------


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """sklearn ``accuracy_score``: the fraction of exact matches."""
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def per_label_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """F1 per label over sklearn's label set (the sorted union of the labels present)."""
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    out: dict[str, float] = {}
    for lab in sorted(set(t.tolist()) | set(p.tolist())):
        tp = float(np.sum((t == lab) & (p == lab)))
        fp = float(np.sum((t != lab) & (p == lab)))
        fn = float(np.sum((t == lab) & (p != lab)))
        denom = 2 * tp + fp + fn  # > 0: the label occurs in y_true or y_pred
        out[lab] = 2 * tp / denom if denom else 0.0
    return out


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """sklearn ``f1_score(average="macro")``: unweighted mean of per-label F1."""
    if len(y_true) == 0:
        return float("nan")
    f1 = per_label_f1(y_true, y_pred)
    return float(np.mean(list(f1.values())))


def metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "n": len(y_true),
    }


# --- validation and breakdowns ----------------------------------------------------------------


def _preview(items: Any, k: int = 10) -> str:
    items = [str(x) for x in items]
    more = f" (+{len(items) - k} more)" if len(items) > k else ""
    return ", ".join(items[:k]) + more


def validate_predictions(
    predictions: Mapping[str, Any], ground_truth: Mapping[str, str], source: str = "predictions"
) -> None:
    """Raise :class:`InputError` naming missing PMIDs, extra PMIDs and non-label values."""
    pred_keys, gt_keys = set(predictions), set(ground_truth)
    problems = []
    missing = sorted(gt_keys - pred_keys)
    extra = sorted(pred_keys - gt_keys)
    if missing:
        problems.append(f"{len(missing)} ground-truth PMID(s) missing: {_preview(missing)}")
    if extra:
        problems.append(f"{len(extra)} PMID(s) not in the ground truth: {_preview(extra)}")
    bad = sorted((k, v) for k, v in predictions.items() if v not in LABELS)
    if bad:
        problems.append(
            f"{len(bad)} prediction(s) not one of {'/'.join(LABELS)}: "
            + _preview([f"{k}={v!r}" for k, v in bad])
        )
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems))


def year_bin(year: int | None) -> str:
    if year is None:
        return UNKNOWN_YEAR
    for name, lo, hi in YEAR_BINS:
        if lo <= year <= hi:
            return name
    return UNKNOWN_YEAR


def top_meshes(items: Sequence[PubMedQAItem], k: int = 10) -> list[str]:
    """The ``k`` most frequent MeSH headings among ``items`` (ties by name)."""
    c = Counter(m for it in items for m in set(it.meshes))
    return [m for m, _ in sorted(c.items(), key=lambda x: (-x[1], x[0]))[:k]]


def breakdowns(
    predictions: Mapping[str, str],
    ground_truth: Mapping[str, str],
    pqal: Mapping[str, PubMedQAItem] | None = None,
    n_mesh: int = 10,
) -> dict[str, Any]:
    """Accuracy / macro-F1 per year bin and per frequent MeSH heading.

    PMIDs absent from PQA-L (a custom ground truth) fall in the ``unknown`` year bin and no MeSH
    group.
    """
    pqal = load_pqal() if pqal is None else pqal
    pmids = list(ground_truth)
    items = [pqal[p] for p in pmids if p in pqal]
    by_year: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {name: [] for name, _, _ in YEAR_BINS}
    groups[UNKNOWN_YEAR] = []
    for p in pmids:
        groups[year_bin(pqal[p].year if p in pqal else None)].append(p)
    for name, ps in groups.items():
        if ps:
            by_year[name] = metrics([ground_truth[p] for p in ps], [predictions[p] for p in ps])
    by_mesh: dict[str, dict[str, Any]] = {}
    for m in top_meshes(items, n_mesh):
        ps = [it.pmid for it in items if m in it.meshes]
        by_mesh[m] = metrics([ground_truth[p] for p in ps], [predictions[p] for p in ps])
    return {"by_year": by_year, "by_mesh": by_mesh}


def label_counts(labels: Sequence[str]) -> dict[str, int]:
    c = Counter(labels)
    return {lab: int(c.get(lab, 0)) for lab in LABELS}


def score_predictions(
    predictions: Mapping[str, Any],
    ground_truth: Mapping[str, str] | None = None,
    source: str = "predictions",
    with_breakdowns: bool = True,
) -> dict[str, Any]:
    """Official PubMedQA metrics of a ``{pmid: label}`` mapping (plus breakdowns)."""
    gt = load_ground_truth() if ground_truth is None else dict(ground_truth)
    validate_predictions(predictions, gt, source)
    pmids = list(gt)
    y_true = [gt[p] for p in pmids]
    y_pred = [predictions[p] for p in pmids]
    res = metrics(y_true, y_pred)
    res["per_label_f1"] = per_label_f1(y_true, y_pred)
    res["label_counts"] = {"ground_truth": label_counts(y_true), "predicted": label_counts(y_pred)}
    if with_breakdowns:
        res.update(breakdowns(predictions, gt))
    return res


def score_prediction_file(
    predictions_path: str | Path, ground_truth_path_: str | Path | None = None
) -> dict[str, Any]:
    """Score an official-format prediction file (what ``kailin evaluate pubmedqa
    --predictions`` runs)."""
    pred = load_label_file(predictions_path, "predictions")
    gt = load_ground_truth(ground_truth_path_)
    res = score_predictions(pred, gt, source=str(predictions_path))
    res["predictions"] = str(predictions_path)
    res["ground_truth"] = str(ground_truth_path_ or ground_truth_path())
    return res


def format_table(result: Mapping[str, Any], title: str = "PubMedQA") -> str:
    """A plain-text table of one result (overall + breakdowns)."""
    lines = [f"{title}: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}"
             f"  n {result['n']}"]
    for key, head in (("by_year", "year"), ("by_mesh", "MeSH heading")):
        groups = result.get(key) or {}
        if not groups:
            continue
        w = max(len(head), *(len(g) for g in groups))
        lines.append(f"  {head:<{w}}  {'n':>4}  {'acc':>6}  {'macro-F1':>8}")
        for g, m in groups.items():
            lines.append(f"  {g:<{w}}  {m['n']:>4}  {m['accuracy']:>6.3f}  {m['macro_f1']:>8.3f}")
    return "\n".join(lines)


# --- confidence intervals ---------------------------------------------------------------------


def _boot_metrics(t: np.ndarray, p: np.ndarray, idx: np.ndarray, labels: list[str]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of every bootstrap resample (rows of ``idx``); macro-F1 over the
    labels present in each resample, as sklearn computes it."""
    tt, pp = t[idx], p[idx]
    acc = (tt == pp).mean(axis=1)
    f1s, present = [], []
    for lab in labels:
        tl, pl = tt == lab, pp == lab
        tp = (tl & pl).sum(axis=1)
        denom = tl.sum(axis=1) + pl.sum(axis=1)  # 2tp + fp + fn
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        present.append(denom > 0)
    f1, pres = np.stack(f1s), np.stack(present)
    return acc, (f1 * pres).sum(axis=0) / np.maximum(pres.sum(axis=0), 1)


def bootstrap_report(
    ground_truth: Mapping[str, str],
    predictions: Mapping[str, Mapping[str, str]],
    contrasts: Sequence[tuple[str, str]] = (),
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Accuracy and macro-F1 of each model's predictions with percentile bootstrap CIs, and
    paired bootstrap CIs of the differences ``a - b`` for each (a, b) in ``contrasts`` (the same
    resampled items for every model, so the item-to-item noise that both models share cancels).

    ``predictions``: {model tag: {pmid: label}}, each covering every PMID of ``ground_truth``.
    Returns ``{"models": {tag: {"accuracy": {"value", "ci_low", "ci_high"}, "macro_f1": ...}},
    "contrasts": {"a_vs_b": {"accuracy": {"delta", "ci_low", "ci_high", "significant"},
    "macro_f1": ...}}, "n", "n_boot", "confidence"}``.
    """
    pmids = list(ground_truth)
    t = np.asarray([ground_truth[x] for x in pmids], dtype=object)
    preds = {}
    for tag, pr in predictions.items():
        validate_predictions(pr, ground_truth, f"{tag} predictions")
        preds[tag] = np.asarray([pr[x] for x in pmids], dtype=object)
    labels = sorted(set(t.tolist()).union(*(set(v.tolist()) for v in preds.values())))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pmids), size=(n_boot, len(pmids)))
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    boots = {tag: _boot_metrics(t, p, idx, labels) for tag, p in preds.items()}
    names = ("accuracy", "macro_f1")
    out: dict[str, Any] = {"n": len(pmids), "n_boot": n_boot, "confidence": confidence,
                           "models": {}, "contrasts": {}}
    for tag, p in preds.items():
        point = (accuracy(t, p), macro_f1(t, p))
        out["models"][tag] = {
            name: {"value": point[i], "ci_low": float(np.quantile(boots[tag][i], lo_q)),
                   "ci_high": float(np.quantile(boots[tag][i], hi_q))}
            for i, name in enumerate(names)}
    for a, b in contrasts:
        if a not in preds or b not in preds:
            continue
        c: dict[str, Any] = {}
        for i, name in enumerate(names):
            d = boots[a][i] - boots[b][i]
            lo, hi = float(np.quantile(d, lo_q)), float(np.quantile(d, hi_q))
            c[name] = {"delta": out["models"][a][name]["value"] - out["models"][b][name]["value"],
                       "ci_low": lo, "ci_high": hi, "significant": bool(lo > 0 or hi < 0)}
        out["contrasts"][f"{a}_vs_{b}"] = c
    return out
