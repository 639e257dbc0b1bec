"""The ``steering`` step: base vs dpo vs dpo_shuffled on the held-out abstracts, round after
round (the pieces: :mod:`kailin.align.steering`, the statistics:
:mod:`kailin.align.steering_report`); writes ``steering/`` and ``reports/steering.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kailin.engine.keys import digest
from kailin.engine.run import RunContext, StageSpec
from kailin.errors import KailinError
from kailin.io import read_parquet, write_json_atomic
from kailin.pipeline.stages.common import (
    QUESTION_READS,
    SCORE_READS,
    WORK_COLUMNS,
    corpus_dir,
    dpo_generator,
    drop_other_dirs,
    generator_model,
    mesh_files,
    policy_models,
    policy_reads,
    question_stage,
    scorer,
)


def second_scorer(ctx: RunContext, index_dir: Path):
    """The independent check: another retriever (``steering.second_index``) and another
    measure (``steering.second_measure``), never used for labels."""
    from kailin.align.score import ScoreStage
    from kailin.mesh.score import DEFAULT_SCORE_K, PAPER_SCORE_K

    st = ctx.cfg.steering
    k = PAPER_SCORE_K if st.second_faithful else DEFAULT_SCORE_K
    return ScoreStage(index_dir, corpus_dir=corpus_dir(ctx), mesh_dir=ctx.resolve(ctx.cfg.mesh.dir),
                      k=k, measure=st.second_measure, faithful=st.second_faithful,
                      exclude_source=ctx.cfg.index.leave_source_out,
                      max_passed_over=ctx.cfg.mesh.max_passed_over)


def run(ctx: RunContext) -> dict:
    """base vs dpo vs dpo_shuffled on the held-out abstracts, round after round (see
    :mod:`kailin.align.steering`); writes ``reports/steering.json``."""
    import time

    from kailin.align.dpo import train_dpo
    from kailin.align.prefer import PREFERENCES_FILE, prefer
    from kailin.align.steering import (
        dpo_curve,
        hacking_metrics,
        label_agreement,
        per_pmid_scores,
        question_features,
        shuffle_pairs,
        tie_share,
    )
    from kailin.align.steering_report import heldout_report
    from kailin.mesh import load_mesh
    from kailin.retrieval import build_index

    t0 = time.monotonic()
    cfg, st = ctx.cfg, ctx.cfg.steering
    gen = dpo_generator(cfg)
    base_model = generator_model(ctx, gen)
    work = ctx.path("corpus", "work.parquet")  # streamed by the executor (WORK_COLUMNS)
    held = read_parquet(ctx.path("corpus", "heldout.parquet"),
                        columns=["pmid", "title", "abstract", "mesh_uis"])
    root = ctx.path("steering")
    # later rounds relabel the policy's samples with the primary (MeSH) scorer, sharing out
    # validity pairs when asked (several samples: an abstract rarely has one valid question)
    prefer_settings = cfg.preferences.model_copy(update={
        "labeller": "mesh",
        **({"validity_share": st.validity_share} if st.validity_share is not None else {})})
    budget = st.max_new_tokens  # None: generation.max_new_tokens
    key = ctx.key

    def run(stage, src, out: Path, tag: str) -> None:
        streamed = isinstance(src, Path) and src == work  # the work set: its WORK_COLUMNS
        ctx.executor().run(stage, src, out, key=digest({"stage": key, "tag": tag}),
                           columns=WORK_COLUMNS if streamed else None)

    # the second retriever, over the same corpus (rebuilt when its options or the corpus change)
    ix2, ix2_key = root / "index2", ctx.sub_key({"second_index": st.second_index}, ["corpus"])
    stamp = ix2 / "_kailin_ok"
    if not stamp.exists() or stamp.read_text() != ix2_key:
        opts = dict(st.second_index)
        build_index(corpus_dir(ctx), ix2, kind=opts.pop("kind", "bm25"), overwrite=True,
                    progress=ctx.progress, **opts)
        stamp.write_text(ix2_key)
    primary, second = scorer(ctx), second_scorer(ctx, ix2)

    def round_dpo(r: int) -> Any:  # rounds >= 2 may train longer (steering.later_epochs)
        if r >= 2 and st.later_epochs is not None:
            return cfg.dpo.model_copy(update={"epochs": st.later_epochs})
        return cfg.dpo

    trainings: dict[str, dict] = {}
    on_policy = st.first_round == "on_policy"
    dpo_meta_path = ctx.path("models", f"{gen}-dpo", "kailin_train.json")
    # round 1 is the dpo stage's (pairs across the generators), or, on policy, the SFT
    # generator's own samples, best against worst, like every later round
    models: dict[str, list[str]] = {"dpo": [] if on_policy else policy_models(ctx)[:1],
                                    "dpo_shuffled": []}
    rounds_info: list[dict] = []
    if on_policy:
        pairs1 = pairs = None
    else:
        pairs1 = pairs = read_parquet(ctx.path("preferences", PREFERENCES_FILE))
        # the labels' reliability: round 1's questions under the second scorer (a folder an
        # on-policy round 1 of an earlier config wrote sample folders into)
        drop_other_dirs(root / "round1" / "scores2", {"_done"})  # (the executor's markers)
        run(second, ctx.path("questions"), root / "round1" / "scores2", "round1/score2")
        rounds_info.append({"round": 1, "pairs": pairs1.num_rows,
                            "ties": tie_share(read_parquet(ctx.path("scores"))),
                            "label_agreement": label_agreement(
                                pairs1, read_parquet(root / "round1" / "scores2"))})
    for r in range(1, st.rounds + 1):
        if r >= 2 or on_policy:  # sample questions per abstract from the round r-1 policy
            rdir = root / f"round{r}"  # (the SFT generator before round 1), relabel: the
            sampler = models["dpo"][-1] if models["dpo"] else base_model  # pair is the best
            labels = [f"round{r}_sample{i}" for i in range(st.samples)]  # against the worst
            for sub in ("questions", "scores", "scores2"):
                # fewer samples than an earlier config: its extra samples must not label;
                # round 1 of the pairs mode wrote its scores2 parts at the top
                drop_other_dirs(rdir / sub, set(labels))
                for f in (rdir / sub).glob("*"):
                    if f.is_file():
                        f.unlink()
            for i, label in enumerate(labels):
                stage = question_stage(ctx, gen, sampler, label=label,
                                        temperature=st.sample_temperature,
                                        seed=st.seed + 1000 * r + i, max_new_tokens=budget)
                run(stage, work, rdir / "questions" / label, label)
                run(primary, rdir / "questions" / label, rdir / "scores" / label,
                    f"{label}/score")
                run(second, rdir / "questions" / label, rdir / "scores2" / label,
                    f"{label}/score2")
            stats = prefer(rdir / "scores", rdir / "preferences", prefer_settings)
            pairs = read_parquet(rdir / "preferences" / PREFERENCES_FILE)
            rounds_info.append({"round": r, "pairs": pairs.num_rows,
                                "ties": tie_share(read_parquet(rdir / "scores")),
                                "label_agreement": label_agreement(
                                    pairs, read_parquet(rdir / "scores2")),
                                "dropped": stats.get("dropped"),
                                "validity_pairs": stats.get("validity_pairs")})
            if pairs.num_rows == 0:
                raise KailinError(f"steering round {r}: no preference pairs left; the policy's "
                                  "samples tie (raise steering.sample_temperature)")
            if pairs1 is None:
                pairs1 = pairs
            meta = train_dpo(pairs, rdir / "dpo", round_dpo(r), model=sampler,
                             replace_stale=True, extend=False)
            models["dpo"].append(str(rdir / "dpo" / "model"))
            trainings[f"dpo.round{r}"] = {"pairs": pairs.num_rows, "epochs": round_dpo(r).epochs,
                                          "curve": dpo_curve(meta.get("log_history", []))}
        elif dpo_meta_path.exists():
            meta = json.loads(dpo_meta_path.read_text())
            trainings["dpo.round1"] = {"pairs": pairs.num_rows,
                                       "curve": dpo_curve(meta.get("log_history", []))}
        if st.shuffled_control:
            shuffled, flipped = shuffle_pairs(pairs, seed=st.seed + r)
            sdir = root / f"round{r}" / "dpo_shuffled"
            start = models["dpo_shuffled"][-1] if models["dpo_shuffled"] else base_model
            meta = train_dpo(shuffled, sdir, round_dpo(r), model=start, replace_stale=True,
                             extend=False)
            models["dpo_shuffled"].append(str(sdir / "model"))
            trainings[f"dpo_shuffled.round{r}"] = {
                "pairs": shuffled.num_rows, "swapped": flipped, "epochs": round_dpo(r).epochs,
                "curve": dpo_curve(meta.get("log_history", []))}

    # held-out: every arm after every round, under both scorers
    mesh = load_mesh(ctx.resolve(cfg.mesh.dir))
    titles = dict(zip(held["pmid"].to_pylist(), held["title"].to_pylist(), strict=True))
    names = {p_: [mesh.name(u) for u in (uis or []) if u in mesh.vocab.id_of]
             for p_, uis in zip(held["pmid"].to_pylist(), held["mesh_uis"].to_pylist(),
                                strict=True)}
    pmids = sorted(titles)
    arms_models = {"base": [base_model], **{k: v for k, v in models.items() if v}}
    evals: dict[str, dict] = {}
    for arm, ms in arms_models.items():
        for r, model in enumerate(ms, start=1):
            tag = arm if arm == "base" else f"{arm}.round{r}"
            qdir = root / "heldout" / tag
            # the generator_eval stage already wrote and scored base and dpo round 1 on the
            # same held-out abstracts with the same scorer (at generation.max_new_tokens)
            src = None
            if (budget is None or budget == cfg.generation.max_new_tokens) and not on_policy:
                src = {"base": ctx.path("generator_eval", "before"),
                       "dpo.round1": ctx.path("generator_eval", "after")}.get(tag)
            if src is None:
                src = qdir
                run(question_stage(ctx, gen, model, label=tag, max_new_tokens=budget), held,
                    qdir / "questions", f"heldout/{tag}")
                run(primary, qdir / "questions", qdir / "scores", f"heldout/{tag}/score")
            run(second, src / "questions", qdir / "scores2", f"heldout/{tag}/score2")
            evals[tag] = {
                "model": model,
                "scores": per_pmid_scores(read_parquet(src / "scores")),
                "scores2": per_pmid_scores(read_parquet(qdir / "scores2")),
                "hacking": hacking_metrics(qs := read_parquet(src / "questions"), titles, names),
                "features": question_features(qs, titles, names),
            }
    assert pairs1 is not None  # rounds >= 1
    held_rep = heldout_report(evals, arms_models, pmids, n_boot=st.n_boot, seed=st.seed)
    report: dict[str, Any] = {
        "heldout": len(pmids),
        "pairs": pairs1.num_rows,
        "pairs_per_round": [x["pairs"] for x in rounds_info],
        "rounds": st.rounds,
        "generator": gen,
        "final": held_rep["final"],
        "arms": held_rep["arms"],
        "contrasts": held_rep["contrasts"],
        "second_scorer": {
            "index": dict(st.second_index), "measure": st.second_measure,
            "faithful": st.second_faithful, "arms": held_rep["second_arms"],
            "contrasts": held_rep["second_contrasts"]},
        "hacking": held_rep["hacking"],
        "robustness": held_rep["robustness"],
        "per_round": held_rep["per_round"],
        "rounds_info": rounds_info,
        "round_contrasts": held_rep["round_contrasts"],
        "training": trainings,
        "scorer": {"labels_and_primary": {**primary.scoring, "k": primary.k},
                   "second": {**second.scoring, "k": second.k}},
        "seconds": round(time.monotonic() - t0, 1),
        "seeds": {"steering": st.seed, "generation": cfg.generation.seed},
        "max_new_tokens": budget or cfg.generation.max_new_tokens,
        "first_round": st.first_round,
        # the two generators' questions (the questions stage): ties the score cannot break;
        # on policy this is not round 1's pairs, so rounds_info does not carry it
        "generator_ties": {"generators": [g.name for g in cfg.generators],
                           **tie_share(read_parquet(ctx.path("scores")))},
    }
    report["downstream"] = downstream_summary(ctx)
    report["run"] = run_info(ctx)
    write_json_atomic(ctx.path("reports", "steering.json"), report)
    c = report["contrasts"].get("dpo_vs_base", {})
    return {"heldout": len(pmids), "pairs": pairs1.num_rows, "rounds": st.rounds,
            "dpo_vs_base.delta": c.get("delta"), "dpo_vs_base.ci_low": c.get("ci_low"),
            "dpo_vs_base.ci_high": c.get("ci_high")}




def run_info(ctx: RunContext) -> dict:
    import os
    import platform
    import shlex
    import sys
    from datetime import datetime, timezone

    import kailin

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
                      f"Python {platform.python_version()}",
           "kailin": kailin.__version__, "run_dir": str(ctx.run_dir),
           "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if sys.argv and Path(sys.argv[0]).name == "kailin":  # the command line, --set included
        out["command"] = shlex.join(["kailin", *sys.argv[1:]])
    return out


def downstream_summary(ctx: RunContext) -> dict:
    """What the pubmedqa stage measured, when it has run and its models do not come from this
    stage: with ``export.questions_from: policy`` the downstream models train on the policy's
    export, so an existing ``pubmedqa.json`` is of an earlier policy's; the pubmedqa stage, which
    runs after, fills it in; a ``pubmedqa.json`` that holds trained models was left by an earlier
    policy's downstream run: only a base-model-only result is carried. (Whether downstream is on
    in this config does not matter, so toggling it never re-runs the experiment.)"""
    cfg = ctx.cfg
    p = ctx.path("reports", "pubmedqa.json")
    rep = json.loads(p.read_text()) if p.exists() else {}
    if cfg.export.questions_from == "policy" and set(rep.get("models") or {}) - {"before"}:
        return {}
    return rep



def steps(cfg: Any) -> list[StageSpec]:
    g = dpo_generator(cfg)
    return [StageSpec("steering", run,
                      reads=("steering", "dpo", "preferences", "export.questions_from",
                             *QUESTION_READS, *SCORE_READS,
                             *policy_reads(cfg)),
                      inputs=["dpo", "prefer", "score", "generator_eval", f"sft:{g}", "index",
                              "corpus", "workset"],
                      enabled=lambda c: c.steering.enabled,
                      outputs=["steering", "reports/steering.json"], mode="self",
                      files=mesh_files, code="1")]
