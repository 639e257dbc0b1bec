"""The ``pubmedqa`` step: the PQA-L test set, before and after downstream training, with
paired bootstrap CIs of every contrast (``reports/pubmedqa.json``). In the per-model downstream
layout (:meth:`DownstreamConfig.multi`) every model of :func:`arm_runs` is evaluated, tagged
``<model-tag>.<arm>.s<seed>`` (``<model-tag>.base``), with per-item gold margins for
``reports/downstream.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import write_json_atomic
from kailin.pipeline.stages.downstream import (
    DOWNSTREAM_CONTROLS,
    arm_runs,
    control_arms,
    downstream_model,
)

#: the PubMedQA comparisons (a, b) reported as a - b with paired bootstrap CIs
PUBMEDQA_CONTRASTS = (("after", "before"), ("after", "raw_abstracts"), ("after", "pre_dpo"),
                      ("raw_abstracts", "before"), ("pre_dpo", "before"))



def run(ctx: RunContext) -> dict:
    from kailin.evaluate.pubmedqa import bootstrap_report, load_ground_truth, test_items
    from kailin.evaluate.pubmedqa_model import evaluate_model

    p, d = ctx.cfg.pubmedqa, ctx.cfg.downstream
    multi = d.enabled and _multi(ctx.cfg)
    contrasts: list[tuple[str, str]] = list(PUBMEDQA_CONTRASTS)
    if multi:
        runs = arm_runs(ctx.cfg, ctx.run_dir)
        models = {r.name: r.path for r in runs}
        contrasts = _multi_contrasts(runs)
    else:
        models = {"before": d.model}
    if d.enabled and not multi:
        models["after"] = downstream_model(ctx)
        for arm in control_arms(ctx.cfg):
            models[arm] = str(ctx.path("models", f"downstream-{arm}", "model"))
    report: dict[str, Any] = {"models": models, "limit": p.limit, "method": p.method}
    if multi:
        report["arms"] = {r.name: {"model": r.model, "tag": r.tag, "arm": r.arm,
                                   "seed": r.seed} for r in runs}
    for tag, model in models.items():
        report[tag] = evaluate_model(model, settings=list(p.settings), method=p.method,
                                     limit=p.limit, batch_size=p.batch_size,
                                     predictions_dir=ctx.path("reports", f"pubmedqa_{tag}"),
                                     progress=ctx.progress, calibration=p.calibration,
                                     n_boot=p.n_boot, seed=ctx.cfg.steering.seed)
    # bootstrap CIs of every model and paired CIs of the differences, per setting
    gt_all = load_ground_truth()
    gt = {it.pmid: gt_all[it.pmid] for it in test_items(p.limit)}
    report["ci"] = {}
    for s in p.settings:
        preds = {tag: json.loads(Path(report[tag]["settings"][s]["predictions_file"]).read_text())
                 for tag in models}
        report["ci"][s] = bootstrap_report(gt, preds, contrasts, n_boot=p.n_boot,
                                           seed=ctx.cfg.steering.seed)
    if p.method == "loglik":  # the continuous score, paired per item: gold-label margin
        report["margin_ci"] = _margin_contrasts(report, models, list(p.settings), p.n_boot,
                                                ctx.cfg.steering.seed, contrasts)
    # headline keys as `kailin evaluate pubmedqa --json` writes them: the final model in the
    # first setting (per-model layout: the first model's export arm, first seed)
    final = report.get("after") or report.get("before")
    if multi:
        final = report[next((r.name for r in runs if r.arm == "export"), runs[0].name)]
    first = final["settings"][p.settings[0]]
    report.update({"setting": p.settings[0], "accuracy": first["accuracy"],
                   "macro_f1": first["macro_f1"], "n": first["n"]})
    write_json_atomic(ctx.path("reports", "pubmedqa.json"), report)
    steering = ctx.path("reports", "steering.json")
    if steering.exists():  # the steering report carries the downstream result it could not see
        rep = json.loads(steering.read_text())
        rep["downstream"] = report
        write_json_atomic(steering, rep)
    return {f"{tag}.{s}.accuracy": round(report[tag]["settings"][s]["accuracy"], 4)
            for tag in models for s in p.settings}



def _multi(cfg: Any) -> bool:
    """Whether the per-model layout is on (its steps declare ``downstream`` whole; the
    single-model layout's only part of it)."""
    from kailin.engine.view import UndeclaredSetting

    try:
        return bool(cfg.downstream.multi())
    except UndeclaredSetting:
        return False


def _multi_contrasts(runs: list) -> list[tuple[str, str]]:
    """The contrasts of :data:`kailin.evaluate.downstream.CONTRASTS` per model, first seed."""
    from kailin.evaluate.downstream import CONTRASTS

    first: dict[tuple[str, str], str] = {}
    for r in runs:
        first.setdefault((r.tag, r.arm), r.name)
    return [(first[(t, a)], first[(t, b)]) for t in dict.fromkeys(r.tag for r in runs)
            for a, b in CONTRASTS.values() if (t, a) in first and (t, b) in first]


def _margin_contrasts(report: dict, models: dict[str, str], settings: list[str], n_boot: int,
                      seed: int, contrasts: Any = PUBMEDQA_CONTRASTS) -> dict[str, dict]:
    """Per setting, the paired difference of the mean gold-label margin for every contrast of
    :data:`PUBMEDQA_CONTRASTS` whose two models ran (delta, CI, n, minimum detectable effect)."""
    from kailin.evaluate.stats import load_items, paired_delta

    out: dict[str, dict] = {}
    for s in settings:
        items = {tag: load_items(report[tag]["settings"][s]["items_file"]) for tag in models}
        out[s] = {f"{a}_vs_{b}": paired_delta(items[a], items[b], "gold_margin", n_boot=n_boot,
                                              seed=seed)
                  for a, b in contrasts if a in items and b in items}
    return out


def steps(cfg: Any) -> list[StageSpec]:
    reads = ("pubmedqa", "downstream.enabled", "downstream.model", "downstream.sft_steps",
             "downstream.controls", "export.questions_from", "steering.seed")
    names: list[str] = []
    if cfg.downstream.multi():  # the per-model layout reads the models, arms and seeds
        reads = (*reads, "downstream")
        names = [r.name for r in arm_runs(cfg, Path("."))]
    return [StageSpec("pubmedqa", run, reads=reads,
                      inputs=["downstream"], enabled=lambda c: c.pubmedqa.enabled,
                      outputs=["reports/pubmedqa_before", "reports/pubmedqa_after",
                               *[f"reports/pubmedqa_{a}" for a in DOWNSTREAM_CONTROLS],
                               *[f"reports/pubmedqa_{n}" for n in names]],
                      mode="resume", code="1")]
