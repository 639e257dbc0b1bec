"""PubMedQA model evaluation: prompts, parsing, and the batched log-likelihood scorer (SmolLM2)."""

from __future__ import annotations

import pytest

from kailin.evaluate import pubmedqa as pqa
from kailin.evaluate.pubmedqa_model import (
    LMAnswerer,
    build_prompt,
    evaluate_model,
    parse_answer,
)


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


@pytest.mark.slow
def test_evaluate_model_both_settings(answerer, tmp_path) -> None:
    res = evaluate_model("smollm2", limit=5, answerer=answerer, predictions_dir=tmp_path,
                         progress=False)
    assert res["n"] == 5 and set(res["settings"]) == {"reasoning_required", "question_only"}
    for s, r in res["settings"].items():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and r["n"] == 5
        assert "by_year" in r and "by_mesh" in r
        # the written official-format file scores to the same numbers
        again = pqa.score_prediction_file(
            tmp_path / f"pred_{s}.json", _gt_file(tmp_path, [it.pmid for it in pqa.test_items(5)]))
        assert again["accuracy"] == r["accuracy"] and again["macro_f1"] == r["macro_f1"]
    answerer.max_new_tokens = 6
    gen = evaluate_model("smollm2", limit=2, answerer=answerer, method="generate",
                         settings=["question_only"], progress=False)
    r = gen["settings"]["question_only"]
    assert r["n"] == 2 and 0 <= r["unparsed"] <= 2


def _gt_file(tmp_path, pmids):
    import json

    gt = pqa.load_ground_truth()
    f = tmp_path / "gt_subset.json"
    f.write_text(json.dumps({p: gt[p] for p in pmids}))
    return f
