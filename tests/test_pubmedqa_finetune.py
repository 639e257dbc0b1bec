"""Fine-tuned PubMedQA (LinkBERT/BioGPT protocol): the official CV folds, item fitting, and a
tiny real run (SmolLM2 + LoRA, 2 steps, 6 test items) through the command line."""

from __future__ import annotations

import json

import pytest

from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pqa
from kailin.evaluate.pubmedqa_finetune import fold_split


def test_official_folds_exclude_test_and_have_the_protocol_sizes() -> None:
    test = set(pqa.test_pmids())
    labels = {p: it.label for p, it in pqa.load_pqal().items()}
    devs = []
    for k in range(10):
        train, dev = fold_split(k)
        assert len(train) == len(set(train)) == 450 and len(dev) == len(set(dev)) == 50
        assert not (set(train) | set(dev)) & test  # no test PMID in any fold
        assert not set(train) & set(dev)
        assert fold_split(k) == (train, dev)  # deterministic
        devs.append(set(dev))
    union = set().union(*devs)
    assert len(union) == 500 and union == set(labels) - test  # the 500 non-test items
    for k in range(10):  # train = the other nine dev folds (split_dataset.py's convention)
        assert set(fold_split(k)[0]) == union - devs[k]
    # stratified like the test set: fold 0's dev holds every label
    assert {labels[p] for p in fold_split(0)[1]} == {"yes", "no", "maybe"}
    with pytest.raises(InputError, match="fold must be 0..9"):
        fold_split(10)


def test_fit_item_cuts_contexts_never_the_question() -> None:
    pytest.importorskip("transformers")
    from kailin.dataset.train import record_tokens
    from kailin.evaluate.pubmedqa_finetune import _record, fit_item
    from kailin.evaluate.pubmedqa_model import build_prompt
    from kailin.train.common import load_tokenizer

    tok = load_tokenizer("smollm2")
    item = pqa.load_pqal()[fold_split(0)[0][0]]
    fitted, cut = fit_item(item, "reasoning_required", tok, 128, use_chat=True)
    assert cut and fitted.question == item.question and fitted.label == item.label
    prompt = build_prompt(fitted, "reasoning_required")
    assert record_tokens(tok, _record(prompt, "maybe", True)) <= 128
    assert prompt.endswith(f"Question: {item.question.strip()}\nAnswer the question with yes, "
                           "no, or maybe.\nAnswer:")
    same, cut = fit_item(item, "reasoning_required", tok, 4096, use_chat=True)
    assert same == item and not cut
    with pytest.raises(InputError, match=f"PMID {item.pmid}"):
        fit_item(item, "reasoning_required", tok, 8, use_chat=True)


@pytest.mark.slow
def test_finetuned_pubmedqa_tiny_real_run(tmp_path) -> None:
    pytest.importorskip("trl")
    from typer.testing import CliRunner

    from kailin.cli.main import app

    out, js = tmp_path / "ft", tmp_path / "report.json"
    res = CliRunner().invoke(app, [
        "evaluate", "pubmedqa-finetuned", "--model", "smollm2", "--out", str(out), "--json",
        str(js), "--steps", "2", "--batch-size", "2", "--max-length", "256", "--limit", "6",
        "--lora-r", "4", "--lora-alpha", "8", "--eval-batch-size", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads(js.read_text())
    for key in ("accuracy", "macro_f1", "n", "test", "dev", "train", "fit", "items",
                "predictions_file", "fold", "setting", "settings"):
        assert key in rep
    assert rep["setting"] == "reasoning_required" and rep["fold"] == 0
    assert rep["n"] == rep["n_test"] == 6 and 0 <= rep["accuracy"] <= 1
    assert rep["n_train"] == 450 and rep["n_dev"] == rep["dev"]["n"] == 50
    assert rep["train"]["global_step"] == 2 and rep["train"]["dropped"] == 0
    assert rep["fit"]["train_truncated"] > 0  # at 256 tokens many contexts are cut, none dropped
    gt = {it.pmid: it.label for it in pqa.test_items(6)}
    assert set(rep["items"]) == set(gt)
    for pmid, it in rep["items"].items():
        assert it["label"] == gt[pmid] and set(it["logprobs"]) == {"yes", "no", "maybe"}
        assert it["prediction"] == max(it["logprobs"], key=it["logprobs"].get)
    assert json.loads((out / "pred_reasoning_required.json").read_text()) == {
        p: it["prediction"] for p, it in rep["items"].items()}
    assert (out / "model" / "model.safetensors").is_file()
    meta = json.loads((out / "kailin_train.json").read_text())
    assert meta["n_examples"] == 450 and meta["truncated"] == rep["fit"]["train_truncated"]
