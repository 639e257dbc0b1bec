"""The ``downstream_results`` step: ``reports/downstream.json``, the downstream experiment's
figures (issue 25): per model, each arm's held-out NLL, PubMedQA gold-label margin and
fine-tuned PubMedQA accuracy / macro-F1 (what ran), tokens, steps and seeds, and the paired
contrasts export_vs_raw, export_vs_pre_dpo, export_vs_peer, raw_vs_base (export_vs_base too),
signed so that positive = the first-named arm is better, seeds pooled per item
(:mod:`kailin.evaluate.downstream`); plus the command, the machine and each step's wall seconds.
``kailin results reports/downstream.json`` renders it."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import write_json_atomic
from kailin.pipeline.stages.downstream import arm_runs

READS = ("downstream", "perplexity", "pubmedqa", "pubmedqa_finetune", "export.questions_from",
         "steering.seed")
#: the steps whose wall seconds the report shows
COST_STEPS = ("downstream", "perplexity", "pubmedqa", "pubmedqa_finetune")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pubmedqa_tag(cfg: Any, r: Any) -> str:
    """The tag of an arm's model in ``reports/pubmedqa.json`` (single-model layout: before,
    after, the control arms)."""
    if cfg.downstream.multi():
        return r.name
    return {"base": "before", "export": "after"}.get(r.arm, r.arm)


def machine() -> dict[str, Any]:
    out: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                           "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - the downstream step needs torch
        pass
    return out


def collect(ctx: RunContext) -> dict[str, dict[str, dict[str, list]]]:
    """``{model tag: {arm: {kind: [per-item records of each seed]}}}`` from what the evaluation
    steps wrote (kinds: heldout_nll, gold_margin, finetuned)."""
    from kailin.evaluate.stats import load_items

    cfg = ctx.cfg
    ppl = _json(ctx.path("reports", "perplexity.json")) if cfg.perplexity.enabled else None
    pqa = _json(ctx.path("reports", "pubmedqa.json")) if cfg.pubmedqa.enabled else None
    ft = (_json(ctx.path("reports", "pubmedqa_finetune.json"))
          if cfg.pubmedqa_finetune.enabled else None)
    setting = ("reasoning_required" if "reasoning_required" in cfg.pubmedqa.settings
               else cfg.pubmedqa.settings[0])
    out: dict[str, dict[str, dict[str, list]]] = {}
    for r in arm_runs(cfg, ctx.run_dir):
        kinds = out.setdefault(r.tag, {}).setdefault(r.arm, {})
        if ppl and r.name in ppl["runs"]:
            rows = load_items(ppl["runs"][r.name]["per_text_file"])
            kinds.setdefault("heldout_nll", []).append({x["id"]: x for x in rows})
        tag = pubmedqa_tag(cfg, r)
        items_file = (((pqa or {}).get(tag) or {}).get("settings", {}).get(setting) or {}).get(
            "items_file")
        if items_file:
            kinds.setdefault("gold_margin", []).append(
                {str(x["pmid"]): x for x in load_items(items_file)})
        if ft and r.name in ft["runs"]:
            rep = _json(Path(ft["runs"][r.name]["report"])) or {}
            kinds.setdefault("finetuned", []).append(
                {p: {"gold": v["label"], "logprobs": v["logprobs"]}
                 for p, v in rep.get("items", {}).items()})
    return out


def run(ctx: RunContext) -> dict:
    from kailin.evaluate.downstream import POOLING, SIGN, model_report

    cfg = ctx.cfg
    n_boot, seed = cfg.pubmedqa.n_boot, cfg.steering.seed
    training = _json(ctx.path("models", "downstream", "training.json")) or {"models": {}}
    specs = {r.tag: r.model for r in arm_runs(cfg, ctx.run_dir)}
    models: dict[str, Any] = {}
    for tag, per_arm in collect(ctx).items():
        rep = model_report(per_arm, n_boot=n_boot, seed=seed)
        tr = (training["models"].get(tag) or {}).get("arms", {})
        for arm, fig in rep["arms"].items():
            t = tr.get(arm) or {}
            fig.update({"tokens": t.get("tokens"), "steps": t.get("steps"),
                        "seeds": sorted(int(s) for s in (t.get("seeds") or {}))
                        if arm != "base" else [],
                        "description": arm})
            if "finetuned" in fig:
                fig["finetuned_accuracy"] = fig["finetuned"]["accuracy"]
                fig["finetuned_macro_f1"] = fig["finetuned"]["macro_f1"]
            if t:
                fig["training"] = t
        models[tag] = {"model": specs.get(tag, tag), **rep}
    cost = {}
    for name in COST_STEPS:
        st = _json(ctx.path("state", f"{name}.json")) or {}
        if st.get("status") == "done":
            cost[name] = st.get("seconds")
    report = {"experiment": "downstream (issue 25)", "models": models,
              "pooling": POOLING, "sign": SIGN, "n_boot": n_boot,
              "pubmedqa_setting": ("reasoning_required"
                                   if "reasoning_required" in cfg.pubmedqa.settings
                                   else cfg.pubmedqa.settings[0]),
              "command": " ".join(["kailin", *sys.argv[1:]]) if sys.argv else None,
              "config": ctx.cfg.model_dump(mode="json"), "machine": machine(),
              "cost_seconds": cost, "run_dir": str(ctx.run_dir)}
    write_json_atomic(ctx.path("reports", "downstream.json"), report)
    return {f"{tag}.{c}.{m}": round(v["delta"], 4) for tag, mr in models.items()
            for c, ms in mr["contrasts"].items() for m, v in ms.items() if isinstance(v, dict)}


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("downstream_results", run, reads=READS,
                      inputs=["downstream", "perplexity", "pubmedqa", "pubmedqa_finetune"],
                      enabled=lambda c: c.downstream.enabled and (
                          c.downstream.multi() or c.perplexity.enabled
                          or c.pubmedqa_finetune.enabled),
                      outputs=["reports/downstream.json"], code="1")]
