"""The ``pubmedqa_finetune`` step: fine-tuned PubMedQA (the LinkBERT / BioGPT protocol,
:mod:`kailin.evaluate.pubmedqa_finetune`) of every downstream model of
``downstream.finetune_models``, per arm and seed (the base model included), all with the same
seed, steps and hyper-parameters (the ``pubmedqa_finetune`` section). Each fine-tuning goes to
``models/pubmedqa_finetune/<name>`` (resumed, a finished one reused), its report with per-item
predictions and log-probabilities beside it; ``reports/pubmedqa_finetune.json`` sums up."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.io import write_json_atomic
from kailin.pipeline.stages.downstream import arm_runs

READS = ("pubmedqa_finetune", "downstream", "export.questions_from")


def finetune_runs(cfg: Any, run_dir: Any) -> list:
    """The downstream models this step fine-tunes: those of ``finetune_models``."""
    from kailin.dataset.train import model_tag

    tags = {model_tag(m) for m in cfg.downstream.finetune_list()}
    return [r for r in arm_runs(cfg, run_dir) if r.tag in tags]


def run(ctx: RunContext) -> dict:
    from kailin.evaluate.pubmedqa_finetune import PubMedQAFinetuneConfig, finetune_and_evaluate

    c = ctx.cfg.pubmedqa_finetune
    settings = PubMedQAFinetuneConfig(**{k: getattr(c, k)
                                         for k in PubMedQAFinetuneConfig.model_fields})
    report: dict[str, Any] = {"settings": settings.model_dump(mode="json"), "runs": {}}
    out: dict[str, Any] = {}
    for r in finetune_runs(ctx.cfg, ctx.run_dir):
        folder = ctx.path("models", "pubmedqa_finetune", r.name)
        res = finetune_and_evaluate(r.path, folder, settings, progress=ctx.progress)
        report["runs"][r.name] = {
            "model": r.model, "tag": r.tag, "arm": r.arm, "seed": r.seed, "path": r.path,
            "report": str(folder / "pubmedqa_finetuned.json"),
            **{k: res[k] for k in ("accuracy", "macro_f1", "n", "dev", "train", "fit",
                                   "seconds")}}
        out[f"{r.name}.macro_f1"] = round(res["macro_f1"], 4)
    write_json_atomic(ctx.path("reports", "pubmedqa_finetune.json"), report)
    return out


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("pubmedqa_finetune", run, reads=READS, inputs=["downstream"],
                      enabled=lambda c: c.downstream.enabled and c.pubmedqa_finetune.enabled,
                      outputs=["models/pubmedqa_finetune", "reports/pubmedqa_finetune.json"],
                      mode="resume", code="1")]
