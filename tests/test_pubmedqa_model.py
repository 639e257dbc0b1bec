"""PubMedQA model evaluation: prompts, parsing, and the batched log-likelihood scorer (SmolLM2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pqa
from kailin.evaluate.calibration import calibrate, content_free_prior, log_normalize
from kailin.evaluate.pubmedqa_model import (
    LMAnswerer,
    build_prompt,
    evaluate_model,
    parse_answer,
    reference_prompts,
)
from kailin.evaluate.stats import load_items


def test_prompts_and_parsing() -> None:
    it = pqa.test_items(1)[0]
    rr = build_prompt(it, "reasoning_required")
    qo = build_prompt(it, "question_only")
    assert it.question in rr and it.contexts[0][:50] in rr and rr.endswith("Answer:")
    assert it.contexts[0][:50] not in qo and it.question in qo
    assert parse_answer("Maybe. The data are unclear") == "maybe"
    assert parse_answer("The answer is: No, because ...") == "no"
    assert parse_answer("noted") is None


def test_limit_is_stratified() -> None:
    items = pqa.test_items(50)
    labels = [it.label for it in items]
    assert len(items) == 50 and len(set(it.pmid for it in items)) == 50
    assert set(labels) == {"yes", "no", "maybe"}


@pytest.fixture(scope="module")
def answerer() -> LMAnswerer:
    pytest.importorskip("transformers")
    from kailin.train.common import load_model, load_tokenizer

    return LMAnswerer(load_model("smollm2"), load_tokenizer("smollm2", padding_side="left"),
                      batch_size=5, max_length=256)


@pytest.mark.slow
def test_loglik_batched_equals_unbatched(answerer) -> None:
    import torch

    items = pqa.test_items(5)
    prompts = [build_prompt(it, "reasoning_required") for it in items]
    batched = answerer.loglik(prompts, progress=False)
    answerer.batch_size = 1
    single = answerer.loglik(prompts, progress=False)
    answerer.batch_size = 5
    for b, s in zip(batched, single, strict=True):
        assert set(b) == {"yes", "no", "maybe"}
        for lab in b:
            assert b[lab] == pytest.approx(s[lab], abs=2e-3)
            assert b[lab] < 0
    # multi-token labels take the per-(prompt, label) path; check it by hand for one prompt
    labs = ("yes indeed", "no")
    short = [build_prompt(it, "question_only") for it in items[:2]]  # not truncated
    multi = answerer.loglik(short, labels=labs, progress=False)
    tok, model = answerer.tok, answerer.model
    p_ids = answerer._prompt_ids(short[0])
    assert len(p_ids) < answerer.max_length - 4
    for lab in labs:
        c = tok(lab, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c])
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        want = sum(float(lp[len(p_ids) - 1 + j, t]) for j, t in enumerate(c))
        assert multi[0][lab] == pytest.approx(want, abs=2e-3)


def test_calibration_needs_loglik() -> None:
    with pytest.raises(InputError, match="--method loglik"):
        evaluate_model("smollm2", method="generate", calibration="contextual")
    with pytest.raises(InputError, match="unknown calibration"):
        evaluate_model("smollm2", calibration="uniform")
    cf = reference_prompts("reasoning_required", "contextual")
    assert len(cf) == 3 and cf[0].startswith("Context: N/A\nQuestion: N/A") and "[MASK]" in cf[2]
    assert reference_prompts("question_only", "dcpmi") == ["Answer:"]
    assert reference_prompts("question_only", "none") == []


@pytest.mark.slow
def test_evaluate_model_both_settings(answerer, tmp_path) -> None:
    res = evaluate_model("smollm2", limit=5, answerer=answerer, predictions_dir=tmp_path,
                         progress=False, calibration="contextual", n_boot=200)
    assert res["n"] == 5 and set(res["settings"]) == {"reasoning_required", "question_only"}
    assert res["calibration"] == "contextual"
    gt = pqa.load_ground_truth()
    for s, r in res["settings"].items():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and r["n"] == 5
        assert "by_year" in r and "by_mesh" in r
        # the per-item records: raw predictions as in the official file, margins, calibration
        items = load_items(r["items_file"])
        pred = json.loads(Path(r["predictions_file"]).read_text())
        assert [it["pmid"] for it in items] == list(pred)
        assert all(it["pred"] == pred[it["pmid"]] and it["gold"] == gt[it["pmid"]]
                   for it in items)
        assert all((it["gold_margin"] > 0) == (it["pred"] == it["gold"]) for it in items)
        gm = r["gold_margin"]
        assert gm["n"] == 5 and gm["ci_low"] <= gm["mean"] <= gm["ci_high"]
        assert gm["mean"] == pytest.approx(sum(it["gold_margin"] for it in items) / 5)
        c = r["calibrated"]
        assert c["method"] == "contextual" and sum(c["prior"].values()) == pytest.approx(1.0)
        prior = {k: math.log(v) for k, v in c["prior"].items()}
        for it in items:  # the calibrated figures follow from the saved log-likelihoods
            assert it["calibrated_logprobs"] == pytest.approx(calibrate(it["loglik"], prior))
        assert c["accuracy"] == pytest.approx(
            sum(it["calibrated_pred"] == it["gold"] for it in items) / 5)
        assert sum(c["label_counts"]["predicted"].values()) == 5
        # the content-free prior is what the model gives the content-free prompts
        cf = answerer.loglik(reference_prompts(s, "contextual"), progress=False)
        assert c["prior"] == pytest.approx(
            {k: math.exp(v) for k, v in content_free_prior(cf).items()}, rel=1e-3)
        # the written official-format file scores to the same numbers
        again = pqa.score_prediction_file(
            tmp_path / f"pred_{s}.json", _gt_file(tmp_path, [it.pmid for it in pqa.test_items(5)]))
        assert again["accuracy"] == r["accuracy"] and again["macro_f1"] == r["macro_f1"]
    dc = evaluate_model("smollm2", limit=5, answerer=answerer, progress=False,
                        settings=["question_only"], calibration="dcpmi", n_boot=200)
    r = dc["settings"]["question_only"]
    assert r["calibrated"]["method"] == "dcpmi" and "items_file" not in r
    dom = answerer.loglik(["Answer:"], progress=False)[0]
    assert r["calibrated"]["prior"] == pytest.approx(
        {k: math.exp(v) for k, v in log_normalize(dom).items()}, rel=1e-3)
    # the raw figures do not depend on the calibration
    assert r["accuracy"] == res["settings"]["question_only"]["accuracy"]
    assert r["gold_margin"]["mean"] == pytest.approx(
        res["settings"]["question_only"]["gold_margin"]["mean"], abs=1e-4)
    answerer.max_new_tokens = 6
    gen = evaluate_model("smollm2", limit=2, answerer=answerer, method="generate",
                         settings=["question_only"], progress=False)
    r = gen["settings"]["question_only"]
    assert r["n"] == 2 and 0 <= r["unparsed"] <= 2
    assert r["gold_margin"] is None and r["calibrated"] is None


def _gt_file(tmp_path, pmids):
    import json

    gt = pqa.load_ground_truth()
    f = tmp_path / "gt_subset.json"
    f.write_text(json.dumps({p: gt[p] for p in pmids}))
    return f
