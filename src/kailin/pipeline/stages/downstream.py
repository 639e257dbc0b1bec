"""The ``downstream`` step: continued pretraining of a downstream LM on the export (and on the
control arms' data with the same steps), then optionally SFT on the answered records.

Two layouts. The single-model one (the default: ``models/downstream``, ``models/downstream-sft``,
``models/downstream-<arm>``, ``controls/<arm>``) trains ``downstream.model`` once per arm. The
per-model one (:meth:`DownstreamConfig.multi`: any of ``adaptllm``, ``equal_tokens``, ``models``,
``seeds``) trains every model of ``models`` on every arm once per seed into
``models/downstream/<model-tag>/<arm>-s<seed>`` (with ``equal_tokens`` on data cut to one token
budget per model: ``controls/budget/<model-tag>/<arm>``); :func:`arm_runs` lists them for the
evaluation steps. A finished arm is reused when the step runs again (``train_cpt`` keeps a
finished training with the same settings and data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet
from kailin.pipeline.stages import export as export_step
from kailin.pipeline.stages.common import (
    best_questions,
    corpus_dir,
    export_scores,
    generator_model,
    mesh_files,
)
from kailin.pipeline.stages.export import write_export

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig


#: the downstream control arms: tag -> (model folder, what it is trained on)
DOWNSTREAM_CONTROLS = {"raw_abstracts": "the export's abstracts and contexts, no questions",
                       "pre_dpo": "an export of the generators' (pre-DPO) questions"}
#: every arm of the per-model layout, in report order
ARMS = {"base": "the model as it is (no CPT)",
        "raw_abstracts": DOWNSTREAM_CONTROLS["raw_abstracts"],
        "export": "CPT on the kailin export (the aligned policy's questions)",
        "pre_dpo": DOWNSTREAM_CONTROLS["pre_dpo"],
        "adaptllm": "CPT on AdaptLLM reading-comprehension texts of the same abstracts (peer)"}


def control_arms(cfg: RunConfig) -> list[str]:
    """The downstream control arms this config trains."""
    if not cfg.downstream.controls:
        return []
    return [a for a in DOWNSTREAM_CONTROLS
            if a != "pre_dpo" or cfg.export.questions_from == "policy"]


def trained_arms(cfg: RunConfig) -> list[str]:
    """The CPT arms of this config: export, the controls, adaptllm (per-model layout)."""
    return ["export", *control_arms(cfg), *(["adaptllm"] if cfg.downstream.adaptllm else [])]


@dataclass(frozen=True)
class ArmRun:
    """One downstream model to evaluate: ``model`` (the base spec) trained on ``arm`` with seed
    entry ``seed`` into ``out`` (None: the base model, untrained); ``data``: its CPT data."""

    model: str
    tag: str
    arm: str
    seed: int
    out: Path | None
    data: Path | None

    @property
    def name(self) -> str:
        """A file-safe name: ``<tag>.<arm>.s<seed>`` (``<tag>.base`` for the base model)."""
        return f"{self.tag}.base" if self.out is None else f"{self.tag}.{self.arm}.s{self.seed}"

    @property
    def path(self) -> str:
        """What to load: the trained model folder, or the base model's spec."""
        return self.model if self.out is None else str(self.out / "model")


def arm_data(cfg: RunConfig, run_dir: Path, tag: str, arm: str) -> Path:
    """The folder (with ``cpt/``) an arm of model ``tag`` trains on."""
    if cfg.downstream.multi() and cfg.downstream.equal_tokens:
        return run_dir / "controls" / "budget" / tag / arm
    return run_dir / ("export" if arm == "export" else f"controls/{arm}")


def arm_runs(cfg: RunConfig, run_dir: Path) -> list[ArmRun]:
    """Every downstream model of this config: per model, the base model, then each trained arm
    once per seed (the single-model layout: seed 0, its folders)."""
    from kailin.dataset.train import model_tag

    d = cfg.downstream
    out: list[ArmRun] = []
    if not d.multi():
        tag = model_tag(d.model)
        out.append(ArmRun(d.model, tag, "base", 0, None, None))
        sub = "downstream-sft" if d.sft_steps else "downstream"
        out.append(ArmRun(d.model, tag, "export", 0, run_dir / "models" / sub,
                          arm_data(cfg, run_dir, tag, "export")))
        out += [ArmRun(d.model, tag, a, 0, run_dir / "models" / f"downstream-{a}",
                       arm_data(cfg, run_dir, tag, a)) for a in control_arms(cfg)]
        return out
    for model in d.model_list():
        tag = model_tag(model)
        out.append(ArmRun(model, tag, "base", 0, None, None))
        out += [ArmRun(model, tag, a, s, run_dir / "models" / "downstream" / tag / f"{a}-s{s}",
                       arm_data(cfg, run_dir, tag, a))
                for a in trained_arms(cfg) for s in d.seeds]
    return out


def control_data(ctx: RunContext, arm: str) -> Path:
    """Write the CPT data of a control arm (an export of the same rows, see
    :data:`DOWNSTREAM_CONTROLS`; adaptllm: AdaptLLM texts of the same abstracts and contexts);
    return its folder."""
    import pyarrow.compute as pc

    from kailin.dataset.export import RAW_TEMPLATE

    out = ctx.path("controls", arm)
    # the export's source abstracts, no more (answers.limit or filters may have cut some)
    keep = pa.array(sorted(set(read_parquet(ctx.path("export", "cpt"),
                                            columns=["pmid"])["pmid"].to_pylist())), pa.int64())

    def rows(scores: Path) -> pa.Table:
        best = best_questions(scores)
        return best.filter(pc.is_in(best["pmid"].cast(pa.int64()), value_set=keep))

    if arm == "raw_abstracts":
        write_export(ctx, rows(export_scores(ctx)), out, template=RAW_TEMPLATE,
                      questions={"from": "none (raw abstracts: downstream control)"})
    elif arm == "adaptllm":
        from kailin.dataset.adaptllm import source_documents, write_adaptllm

        src = rows(export_scores(ctx))
        docs = source_documents(src, corpus_dir(ctx),
                                with_contexts="context_pmids" in src.column_names)
        write_adaptllm(docs, out, provenance={"source": "the export's abstracts and contexts"})
    else:
        write_export(ctx, rows(ctx.path("scores")), out,
                      questions={"from": "generators (pre-DPO: downstream control)", "models": {
                          g.name: generator_model(ctx, g.name) for g in ctx.cfg.generators},
                          "round": 0})
    return out


def token_count(model: str, texts: list[str]) -> int:
    from kailin.train.common import load_tokenizer

    tok = load_tokenizer(model)
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def run(ctx: RunContext) -> dict:
    from kailin.dataset.train import train_cpt

    d = ctx.cfg.downstream
    if d.multi():
        return _run_multi(ctx)
    meta = train_cpt(ctx.path("export", "cpt"), ctx.path("models", "downstream"), d)
    out = {"train_loss": meta.get("train_loss"), "steps": meta.get("global_step"),
           "records": (meta.get("settings") or {}).get("n_examples")}
    arms = control_arms(ctx.cfg)
    if arms:  # the same steps and settings on the control data: the same tokens are seen
        texts = read_parquet(ctx.path("export", "cpt"), columns=["text"])["text"].to_pylist()
        out["tokens"] = token_count(d.model, texts)
        for arm in arms:
            data = control_data(ctx, arm)
            m = train_cpt(data / "cpt", ctx.path("models", f"downstream-{arm}"), d)
            ctexts = read_parquet(data / "cpt", columns=["text"])["text"].to_pylist()
            out.update({f"{arm}.train_loss": m.get("train_loss"),
                        f"{arm}.steps": m.get("global_step"), f"{arm}.records": len(ctexts),
                        f"{arm}.tokens": token_count(d.model, ctexts)})
    if d.sft_steps:  # then SFT on the answered records (the export's sft config)
        from kailin.dataset.train import train_answers

        s2 = d.sft_settings(str(ctx.path("models", "downstream", "model")))
        m2 = train_answers(ctx.path("export"), ctx.path("models", "downstream-sft"), s2)
        out.update({"sft.train_loss": m2.get("train_loss"), "sft.steps": m2.get("global_step"),
                    "sft.records": (m2.get("settings") or {}).get("n_examples")})
    return out


def _run_multi(ctx: RunContext) -> dict:
    """The per-model layout: every model on every arm once per seed; ``models/downstream/
    training.json`` records each arm's records, tokens, budget figures, steps and losses."""
    from kailin.dataset.budget import BudgetPlan, count_tokens, write_budgeted
    from kailin.dataset.train import DownstreamTrainConfig, model_tag, train_cpt
    from kailin.io import write_json_atomic
    from kailin.train.common import load_tokenizer

    d = ctx.cfg.downstream
    sources = {a: (ctx.path("export") if a == "export" else control_data(ctx, a))
               for a in trained_arms(ctx.cfg)}
    report: dict[str, Any] = {"layout": "models/downstream/<model-tag>/<arm>-s<seed>",
                              "equal_tokens": d.equal_tokens, "seeds": list(d.seeds),
                              "models": {}}
    out: dict[str, Any] = {}
    base = {k: getattr(d, k) for k in DownstreamTrainConfig.model_fields}
    for model in d.model_list():
        tag = model_tag(model)
        tok = load_tokenizer(model)
        arms: dict[str, dict[str, Any]] = {}
        if d.equal_tokens:
            plan = write_budgeted(sources, tok, ctx.path("controls", "budget", tag),
                                  block_size=d.max_length, budget_tokens=d.token_budget)
            steps = BudgetPlan(plan["budget_tokens"], plan["block_size"], plan["blocks"]
                               ).max_steps(d.batch_size, d.grad_accum)
            for a, b in plan["arms"].items():
                arms[a] = {"records": b["records"], "tokens_available": b["tokens"],
                           "records_kept": b["records_kept"], "tokens": b["tokens_kept"],
                           "last_cut": b["last_cut"], "blocks": b["blocks"]}
        else:
            steps = d.max_steps
            for a, src in sources.items():
                texts = read_parquet(src / "cpt", columns=["text"])["text"].to_pylist()
                n = sum(count_tokens(tok, texts))
                arms[a] = {"records": len(texts), "tokens_available": n, "tokens": n}
        for a in arms:
            runs = {}
            for s in d.seeds:
                settings = DownstreamTrainConfig(**{**base, "model": model, "max_steps": steps,
                                                    "seed": d.seed + s})
                m = train_cpt(arm_data(ctx.cfg, ctx.run_dir, tag, a),
                              ctx.path("models", "downstream", tag, f"{a}-s{s}"), settings)
                runs[str(s)] = {"seed": d.seed + s, "steps": m.get("global_step"),
                                "train_loss": m.get("train_loss"), "seconds": m.get("seconds")}
                out[f"{tag}.{a}.s{s}.train_loss"] = m.get("train_loss")
            arms[a].update({"steps": steps, "seeds": runs,
                            "tokens_seen": steps * d.batch_size * d.grad_accum * d.max_length})
            out[f"{tag}.{a}.tokens"] = arms[a]["tokens"]
        out[f"{tag}.steps"] = steps
        report["models"][tag] = {"model": model, "steps": steps,
                                 "budget_tokens": plan["budget_tokens"] if d.equal_tokens
                                 else None, "arms": arms}
    write_json_atomic(ctx.path("models", "downstream", "training.json"), report)
    return out


def downstream_model(ctx: RunContext) -> str:
    """The downstream model after training: CPT, then SFT when ``downstream.sft_steps``."""
    sub = "downstream-sft" if ctx.cfg.downstream.sft_steps else "downstream"
    return str(ctx.path("models", sub, "model"))


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("downstream", run, reads=("downstream", *export_step.READS),
                      inputs=["export", "score", "policy_questions", "corpus"],
                      enabled=lambda c: c.downstream.enabled,
                      outputs=["models/downstream", "models/downstream-sft", "controls",
                               *[f"models/downstream-{a}" for a in DOWNSTREAM_CONTROLS]],
                      mode="resume", files=mesh_files, code="1")]
