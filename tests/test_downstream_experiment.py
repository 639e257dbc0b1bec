"""The downstream experiment of issue 25: the contrast computation (signs, pooling of seeds,
paired deltas) on a hand-worked example, the ``downstream`` settings, ``kailin results`` on a
downstream JSON, and the per-model layout with the perplexity and results steps in a tiny real
pipeline run (with a killed downstream step resumed without retraining a finished arm)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kailin.evaluate.downstream import contrast, model_report, pool_seeds

sys.path.insert(0, str(Path(__file__).parent))  # test_pipeline_run's tiny config


def test_contrasts_hand_worked_signs_and_seed_pooling() -> None:
    # held-out NLL per text: export (two seeds, pooled 2.1 / 2.9) is lower than raw (2.6 / 3.6):
    # delta = NLL(raw) - NLL(export) = mean(0.5, 0.7) = +0.6, positive = export better
    export_nll = [{"t1": {"nll": 2.0}, "t2": {"nll": 3.0}},
                  {"t1": {"nll": 2.2}, "t2": {"nll": 2.8}}]
    raw_nll = [{"t1": {"nll": 2.6}, "t2": {"nll": 3.6}}]
    pooled = pool_seeds("heldout_nll", export_nll)
    assert pooled == {"t1": {"nll": pytest.approx(2.1)}, "t2": {"nll": pytest.approx(2.9)}}
    c = contrast("heldout_nll", pooled, pool_seeds("heldout_nll", raw_nll), n_boot=500)
    assert c["delta"] == pytest.approx(0.6) and c["n"] == 2
    assert 0.5 - 1e-9 <= c["ci_low"] <= c["delta"] <= c["ci_high"] <= 0.7 + 1e-9
    assert c["ci_low"] > 0  # every resample keeps export ahead
    # the reverse order flips the sign
    assert contrast("heldout_nll", pool_seeds("heldout_nll", raw_nll), pooled,
                    n_boot=200)["delta"] == pytest.approx(-0.6)
    # gold margin: first - second; export 1.0 / 0.0 against base 0.5 / -0.5: +0.5
    m = contrast("gold_margin", {"a": {"gold_margin": 1.0}, "b": {"gold_margin": 0.0}},
                 {"a": {"gold_margin": 0.5}, "b": {"gold_margin": -0.5}}, n_boot=200)
    assert m["delta"] == pytest.approx(0.5) and m["ci_low"] == pytest.approx(0.5)
    # fine-tuned: the mean log-probabilities over seeds decide; item 1: seed 0 says yes
    # (-0.1), seed 1 no (-0.2): mean yes -1.55 < no -1.1, so the pooled prediction is "no"
    ft = pool_seeds("finetuned", [
        {"1": {"gold": "no", "logprobs": {"yes": -0.1, "no": -2.0, "maybe": -3.0}}},
        {"1": {"gold": "no", "logprobs": {"yes": -3.0, "no": -0.2, "maybe": -3.0}}}])
    assert ft["1"]["pred"] == "no" and ft["1"]["logprobs"]["yes"] == pytest.approx(-1.55)


def test_model_report_layout() -> None:
    items = {f"q{i}": {"gold": "yes" if i % 2 else "no",
                       "logprobs": {"yes": -1.0 if i % 2 else -2.0, "no": -1.5, "maybe": -4.0}}
             for i in range(10)}
    wrong = {k: {**v, "logprobs": {"yes": -1.0, "no": -2.0, "maybe": -3.0}}
             for k, v in items.items()}  # always "yes": half right
    nll = {f"t{i}": {"nll": 2.0 + 0.1 * i} for i in range(8)}
    per_arm = {
        "base": {"heldout_nll": [{k: {"nll": v["nll"] + 0.3} for k, v in nll.items()}],
                 "gold_margin": [{str(i): {"gold_margin": 0.0} for i in range(5)}]},
        "export": {"heldout_nll": [nll, nll], "finetuned": [items],
                   "gold_margin": [{str(i): {"gold_margin": 0.2 * i} for i in range(5)}]},
        "raw_abstracts": {"heldout_nll": [{k: {"nll": v["nll"] + 0.1} for k, v in nll.items()}],
                          "finetuned": [wrong]},
    }
    rep = model_report(per_arm, n_boot=300)
    assert set(rep["arms"]) == {"base", "export", "raw_abstracts"}
    assert rep["arms"]["export"]["heldout_nll"]["seeds"] == 2
    assert rep["arms"]["export"]["finetuned"]["accuracy"] == 1.0
    assert rep["arms"]["raw_abstracts"]["finetuned"]["accuracy"] == 0.5
    c = rep["contrasts"]
    assert set(c) == {"export_vs_raw", "raw_vs_base", "export_vs_base"}  # no pre_dpo, no peer
    assert c["export_vs_raw"]["heldout_nll"]["delta"] == pytest.approx(0.1)
    assert c["export_vs_raw"]["finetuned_macro_f1"]["delta"] > 0
    assert c["raw_vs_base"]["heldout_nll"]["delta"] == pytest.approx(0.2)
    assert c["export_vs_base"]["gold_margin"]["delta"] == pytest.approx(0.4)
    for v in c["export_vs_raw"].values():
        if isinstance(v, dict):
            assert {"delta", "ci_low", "ci_high", "n", "mde"} <= set(v)


def test_downstream_settings() -> None:
    from kailin.dataset.train import DownstreamConfig, model_tag
    from kailin.pipeline.config import RunConfig

    d = DownstreamConfig()
    assert not d.multi() and d.model_list() == ["smollm2"] and d.seeds == [0]
    assert "seeds" not in d.model_dump()  # added at their defaults: old run keys stay
    d = DownstreamConfig(models=["smollm2", "gemma3-270m"], finetune_models=["smollm2"],
                         seeds=[0, 1], equal_tokens=True, adaptllm=True)
    assert d.multi() and d.finetune_list() == ["smollm2"]
    assert model_tag("hf:org/Model-1B") == "hf-org-Model-1B"
    for bad in ({"finetune_models": ["x"]}, {"seeds": [1, 1]}, {"token_budget": 5},
                {"seeds": [0, 1], "sft_steps": 2}):
        with pytest.raises(ValueError):
            DownstreamConfig(**bad)
    with pytest.raises(ValueError, match="enable downstream"):
        RunConfig.model_validate({"downstream": {"enabled": False},
                                  "perplexity": {"enabled": True}})


def _report() -> dict:
    c = {"delta": 0.05, "ci_low": 0.01, "ci_high": 0.09, "n": 400, "mde": 0.04}
    null = {"delta": -0.01, "ci_low": -0.04, "ci_high": 0.02, "n": 500, "mde": 0.042}
    arm = {"heldout_nll": {"mean": 2.5, "ci_low": 2.4, "ci_high": 2.6, "n": 400, "seeds": 2},
           "tokens": 1000, "steps": 10, "seeds": [0, 1]}
    return {"models": {"smollm2": {
        "model": "smollm2",
        "arms": {"base": {"heldout_nll": arm["heldout_nll"]}, "export": arm},
        "contrasts": {"export_vs_raw": {"first": "export", "second": "raw_abstracts",
                                        "heldout_nll": c, "gold_margin": null}}}},
        "sign": "positive = the first-named arm is better", "pooling": "seeds pooled per item",
        "command": "kailin run configs/experiment-downstream.yaml",
        "machine": {"platform": "Linux", "cpus": 2},
        "cost_seconds": {"downstream": 7200.0, "perplexity": 1800.0}}


def test_results_renders_a_downstream_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kailin.cli.main import app

    src = tmp_path / "downstream.json"
    src.write_text(json.dumps(_report()))
    res = CliRunner().invoke(app, ["results", str(src)])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "downstream.md").read_text()  # next to its input
    assert "## smollm2" in page and "| export | 2.5000 [2.4000, 2.6000] |" in page
    assert ("| export_vs_raw | held-out NLL (nats/token) | +0.0500 [+0.0100, +0.0900] | 400 | "
            "0.0400 | CI above 0: the first arm is better |") in page
    assert "null: could have seen |delta| ≥ 0.042" in page
    assert "kailin run configs/experiment-downstream.yaml" in page
    assert "| downstream | 7200.0 | 2.00 |" in page and "| total | 9000.0 | 2.50 |" in page
    out = tmp_path / "x" / "page.md"
    (tmp_path / "x").mkdir()
    assert CliRunner().invoke(app, ["results", str(src), "--out", str(out)]).exit_code == 0
    assert out.read_text() == page


def _tiny_config(sections: dict):
    """The tiny pipeline of test_pipeline_run without answers, with these sections."""
    import yaml

    from kailin.pipeline.config import RunConfig
    from test_pipeline_run import TINY

    raw = yaml.safe_load(TINY)
    raw.update({"answers": {"enabled": False}, **sections})
    return RunConfig.model_validate(raw)


UPSTREAM = {"downstream": {"enabled": False}, "pubmedqa": {"enabled": False}}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run up to its export (questions, scores, DPO, the policy's questions), run once
    for the module: each test copies it and adds its downstream steps."""
    from kailin.pipeline.stages import run_config

    root = tmp_path_factory.mktemp("tiny_upstream")
    m = run_config(_tiny_config(UPSTREAM), root, run_dir=root / "run", progress=False)
    assert m["status"] == "done" and "export" in m["ran"]
    return root / "run"


def _downstream_run(upstream: Path, tmp_path: Path, sections: dict) -> tuple:
    """A copy of the upstream run in ``tmp_path`` run again with ``sections``: only the steps
    from the downstream training on run (the copy's upstream keys are unchanged)."""
    import shutil

    from kailin.pipeline.stages import run_config

    run = tmp_path / "run"
    shutil.copytree(upstream, run)
    cfg = _tiny_config(sections)
    m = run_config(cfg, tmp_path, run_dir=run, progress=False)
    assert m["status"] == "done"
    assert not {"corpus", "questions", "dpo", "policy_questions", "export"} & set(m["ran"])
    return cfg, run, m


@pytest.mark.slow
def test_per_model_layout_perplexity_and_results_in_a_tiny_run(upstream: Path,
                                                               tmp_path: Path) -> None:
    """The tiny pipeline of test_pipeline_run with every downstream option on (one model, one
    seed, a tiny token budget): arms trained on equal tokens, the perplexity step on held-out
    abstracts and PubMedQA contexts after the contamination check, downstream.json; then a
    killed downstream step re-runs training only the arm that had not finished."""
    import shutil

    from kailin.io import read_parquet
    from kailin.pipeline.stages import run_config

    cfg, run, m = _downstream_run(upstream, tmp_path, {
        "downstream": {"model": "smollm2", "batch_size": 1, "max_length": 64, "controls": True,
                       "adaptllm": True, "equal_tokens": True, "token_budget": 192},
        "perplexity": {"enabled": True, "max_length": 128, "heldout_limit": 3,
                       "pubmedqa_limit": 2, "n_boot": 200},
        "pubmedqa": {"limit": 3, "n_boot": 200, "settings": ["reasoning_required"]}})
    assert {"perplexity", "downstream_results"} <= set(m["ran"])
    tr = json.loads((run / "models" / "downstream" / "training.json").read_text())
    arms = tr["models"]["smollm2"]["arms"]
    assert set(arms) == {"export", "raw_abstracts", "pre_dpo", "adaptllm"}
    assert len({a["tokens"] for a in arms.values()}) <= 2  # the budget, within a cut token
    assert all(abs(a["tokens"] - 192) <= 5 and a["steps"] == 3 for a in arms.values())
    ada = read_parquet(run / "controls" / "adaptllm" / "cpt")
    assert ada.num_rows >= read_parquet(run / "export" / "cpt").num_rows
    ppl = json.loads((run / "reports" / "perplexity.json").read_text())
    assert ppl["texts"]["n"] == 3 + 2 and ppl["texts"]["scored"] + ppl["texts"]["dropped"] == 5
    assert set(ppl["runs"]) == {"smollm2.base", *(f"smollm2.{a}.s0" for a in arms)}
    rep = json.loads((run / "reports" / "downstream.json").read_text())
    sm = rep["models"]["smollm2"]
    assert set(sm["arms"]) == {"base", *arms}
    assert sm["arms"]["export"]["tokens"] == arms["export"]["tokens"]
    assert {"export_vs_raw", "export_vs_pre_dpo", "export_vs_peer", "raw_vs_base"} <= set(
        sm["contrasts"])
    for c in sm["contrasts"].values():
        assert {"heldout_nll", "gold_margin"} <= set(c)
        assert c["heldout_nll"]["n"] == ppl["texts"]["scored"] and c["gold_margin"]["n"] == 3
    assert rep["machine"]["cpus"] and "downstream" in rep["cost_seconds"]
    # kill after one arm: the step is "running" again, one arm's folder is gone; the re-run
    # trains that arm only (the others are reused: their kailin_train.json stays as it was)
    folders = run / "models" / "downstream" / "smollm2"
    stamps = {p.name: (p / "kailin_train.json").stat().st_mtime_ns for p in folders.iterdir()
              if p.is_dir()}
    shutil.rmtree(folders / "adaptllm-s0")
    st = run / "state" / "downstream.json"
    state = json.loads(st.read_text())
    st.write_text(json.dumps({**state, "status": "running"}))
    m2 = run_config(cfg, tmp_path, run_dir=run, progress=False)
    assert "downstream" in m2["ran"]
    after = {p.name: (p / "kailin_train.json").stat().st_mtime_ns for p in folders.iterdir()
             if p.is_dir()}
    assert after.keys() == stamps.keys()
    assert {k for k in stamps if stamps[k] != after[k]} == {"adaptllm-s0"}


@pytest.mark.slow
def test_pubmedqa_finetune_step_in_a_tiny_run(upstream: Path, tmp_path: Path) -> None:
    """The fine-tuned PubMedQA step on every arm of the tiny run (one step on PQA-L fold 0, two
    test items): every arm is fine-tuned with the same settings, none of the train items is
    dropped, and downstream.json gains finetuned_macro_f1 in every contrast, paired on the test
    items."""
    _, run, m = _downstream_run(upstream, tmp_path, {
        "downstream": {"model": "smollm2", "batch_size": 1, "max_length": 64, "controls": True,
                       "adaptllm": True, "equal_tokens": True, "token_budget": 128},
        "pubmedqa": {"limit": 2, "n_boot": 200, "settings": ["reasoning_required"]},
        "pubmedqa_finetune": {"enabled": True, "max_steps": 1, "batch_size": 2,
                              "max_length": 192, "limit": 2, "eval_batch_size": 16}})
    assert "pubmedqa_finetune" in m["ran"]
    ft = json.loads((run / "reports" / "pubmedqa_finetune.json").read_text())
    assert set(ft["runs"]) == {"smollm2.base", *(f"smollm2.{a}.s0" for a in
                                                 ("export", "raw_abstracts", "pre_dpo",
                                                  "adaptllm"))}
    for r in ft["runs"].values():
        assert r["n"] == 2 and r["train"]["dropped"] == 0 and r["train"]["n_examples"] == 450
        assert r["train"]["global_step"] == 1
    assert len({json.dumps(r["train"].get("truncated")) for r in ft["runs"].values()}) == 1
    rep = json.loads((run / "reports" / "downstream.json").read_text())
    for name, c in rep["models"]["smollm2"]["contrasts"].items():
        assert c["finetuned_macro_f1"]["n"] == 2, name
