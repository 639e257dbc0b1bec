"""The downstream experiment's figures (issue 25): per model, each arm's held-out NLL, PubMedQA
gold-label margin and fine-tuned PubMedQA accuracy / macro-F1, and the paired contrasts between
arms (``reports/downstream.json``, rendered by ``kailin results``).

Per-item inputs, per arm, one mapping ``{item id: record}`` per seed:

* ``heldout_nll``: ``{"nll": per-text mean NLL}`` (the per-text file of
  :mod:`kailin.evaluate.perplexity`);
* ``gold_margin``: ``{"gold_margin": ...}`` (the ``items.jsonl`` of
  :func:`kailin.evaluate.pubmedqa_model.evaluate_model`);
* ``finetuned``: ``{"gold": label, "logprobs": {yes, no, maybe}}`` (the ``items`` of
  :func:`kailin.evaluate.pubmedqa_finetune.finetune_and_evaluate`).

**Seeds are pooled per item**: an item's value is the mean over the seeds of the arm (its NLL,
its margin; fine-tuned: the mean log-probability of each label, the prediction their argmax),
then the arms are compared item by item. **Signs**: every delta is positive when the first-named
arm is better: ``heldout_nll`` delta = NLL(second) - NLL(first) (lower NLL is better);
``gold_margin`` and ``finetuned_macro_f1`` delta = first - second. CIs are paired percentile
bootstraps over the items both arms were scored on (macro-F1: recomputed on each resample), and
``mde`` the minimum detectable effect (:mod:`kailin.evaluate.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kailin.evaluate.stats import bootstrap_mean, paired_delta

#: contrast name -> (first arm, second arm); positive delta = the first arm is better
CONTRASTS = {"export_vs_raw": ("export", "raw_abstracts"),
             "export_vs_pre_dpo": ("export", "pre_dpo"),
             "export_vs_peer": ("export", "adaptllm"),
             "raw_vs_base": ("raw_abstracts", "base"),
             "export_vs_base": ("export", "base")}
#: the per-item metrics and the input each is computed from
METRICS = {"heldout_nll": "heldout_nll", "gold_margin": "gold_margin",
           "finetuned_macro_f1": "finetuned"}
SIGN = ("positive = the first-named arm is better: heldout_nll delta = NLL(second) - "
        "NLL(first); gold_margin and finetuned_macro_f1 delta = first - second")
POOLING = ("seeds pooled per item: each item's value is its mean over the arm's seeds "
           "(fine-tuned PubMedQA: the mean log-probability of each label, predicted by argmax), "
           "then arms are compared item by item")
LABELS = ("yes", "no", "maybe")


def pool_seeds(kind: str, per_seed: Sequence[Mapping[str, Mapping[str, Any]]]
               ) -> dict[str, dict[str, Any]]:
    """One record per item from the records of each seed (items scored under every seed): see
    the module docstring. ``kind``: ``heldout_nll``, ``gold_margin`` or ``finetuned``."""
    if not per_seed:
        return {}
    ids = set(per_seed[0])
    for s in per_seed[1:]:
        ids &= set(s)
    out: dict[str, dict[str, Any]] = {}
    for i in sorted(ids):
        recs = [s[i] for s in per_seed]
        if kind == "finetuned":
            lp = {lab: sum(float(r["logprobs"][lab]) for r in recs) / len(recs) for lab in LABELS}
            out[i] = {"gold": recs[0]["gold"], "pred": max(LABELS, key=lambda x: lp[x]),
                      "logprobs": lp}
        else:
            field = "nll" if kind == "heldout_nll" else "gold_margin"
            out[i] = {field: sum(float(r[field]) for r in recs) / len(recs)}
    return out


def arm_figures(kind: str, items: Mapping[str, Mapping[str, Any]], n_boot: int = 2000,
                seed: int = 0) -> dict[str, Any]:
    """An arm's figure on its pooled items: the mean (NLL, margin) with its bootstrap CI, or
    the fine-tuned accuracy and macro-F1."""
    if not items:
        return {"n": 0}
    if kind == "finetuned":
        from kailin.evaluate.pubmedqa import accuracy, macro_f1

        gold = [r["gold"] for r in items.values()]
        pred = [r["pred"] for r in items.values()]
        return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred),
                "n": len(gold)}
    field = "nll" if kind == "heldout_nll" else "gold_margin"
    return bootstrap_mean([float(r[field]) for r in items.values()], n_boot=n_boot, seed=seed)


def contrast(metric: str, first: Mapping[str, Mapping[str, Any]],
             second: Mapping[str, Mapping[str, Any]], n_boot: int = 2000, seed: int = 0
             ) -> dict[str, Any] | None:
    """The paired delta of ``metric`` (a key of :data:`METRICS`) between two arms' pooled
    items, signed so that positive = ``first`` is better; None when they share no item."""
    ids = sorted(set(first) & set(second))
    if not ids:
        return None
    a = {i: first[i] for i in ids}
    b = {i: second[i] for i in ids}
    if metric == "heldout_nll":
        r = paired_delta(b, a, "nll", n_boot=n_boot, seed=seed)  # NLL(second) - NLL(first)
    elif metric == "gold_margin":
        r = paired_delta(a, b, "gold_margin", n_boot=n_boot, seed=seed)
    elif metric == "finetuned_macro_f1":
        r = paired_delta(a, b, "macro_f1", n_boot=n_boot, seed=seed)
    else:
        raise ValueError(f"unknown downstream metric {metric!r}")
    return {k: r[k] for k in ("delta", "ci_low", "ci_high", "n", "mde", "se", "significant")}


def model_report(per_arm: Mapping[str, Mapping[str, Sequence[Mapping[str, Mapping[str, Any]]]]],
                 n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``{"arms": {arm: {metric: figures, "seeds": n}}, "contrasts": {name: {metric: delta}}}``
    of one model. ``per_arm``: ``{arm: {kind: [items of seed 1, ...]}}`` (kinds as in
    :data:`METRICS`' values; a kind an arm lacks is left out)."""
    pooled = {arm: {kind: pool_seeds(kind, seeds) for kind, seeds in kinds.items() if seeds}
              for arm, kinds in per_arm.items()}
    arms: dict[str, Any] = {}
    for arm, kinds in pooled.items():
        fig: dict[str, Any] = {}
        for metric, kind in METRICS.items():
            if kind in kinds:
                f = arm_figures(kind, kinds[kind], n_boot, seed)
                f["seeds"] = len(per_arm[arm][kind])
                fig["finetuned" if kind == "finetuned" else metric] = f
        arms[arm] = fig
    contrasts: dict[str, Any] = {}
    for name, (x, y) in CONTRASTS.items():
        if x not in pooled or y not in pooled:
            continue
        c = {}
        for metric, kind in METRICS.items():
            if kind in pooled[x] and kind in pooled[y]:
                r = contrast(metric, pooled[x][kind], pooled[y][kind], n_boot, seed)
                if r is not None:
                    c[metric] = r
        if c:
            contrasts[name] = {"first": x, "second": y, **c}
    return {"arms": arms, "contrasts": contrasts}
