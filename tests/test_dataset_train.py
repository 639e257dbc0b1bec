"""Downstream training: a 3-step CPT run and a 1-step answers SFT run with SmolLM2 + LoRA."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from kailin.dataset.export import cpt_text, sft_messages
from kailin.dataset.train import DownstreamTrainConfig, train_answers, train_cpt
from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pqa


def _items(n: int) -> list[pqa.PubMedQAItem]:
    test = set(pqa.test_pmids())
    return [it for p, it in pqa.load_pqal().items() if p not in test][:n]


def _settings(**kw) -> DownstreamTrainConfig:
    base = dict(model="smollm2", max_steps=3, batch_size=1, grad_accum=1, max_length=64,
                save_steps=2, logging_steps=1, learning_rate=1e-4, lora_r=4, lora_alpha=8)
    base.update(kw)
    return DownstreamTrainConfig(**base)


@pytest.mark.slow
def test_cpt_three_steps_and_resume(tmp_path) -> None:
    data = tmp_path / "cpt.jsonl"
    with data.open("w") as f:
        for it in _items(6):
            f.write(json.dumps({"pmid": int(it.pmid), "text": cpt_text(
                it.question, it.long_answer, list(it.contexts), it.question)}) + "\n")
    out = tmp_path / "run"
    meta = train_cpt(data, out, _settings(keep_checkpoints=True))
    assert meta["global_step"] == 3 and meta["train_loss"] > 0
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-2").is_dir()  # kept on request
    assert train_cpt(data, out, _settings())["skipped"]
    # more steps: resumes from the last (kept) checkpoint instead of starting over
    meta = train_cpt(data, out, _settings(max_steps=4))
    assert meta["global_step"] == 4 and meta["resumed_from"].endswith("checkpoint-3")


@pytest.mark.slow
def test_answers_sft_one_step(tmp_path) -> None:
    data = tmp_path / "sft.jsonl"
    with data.open("w") as f:
        for it in _items(4):
            f.write(json.dumps({"pmid": int(it.pmid), "messages": sft_messages(
                it.question, [c[:150] for c in it.contexts[:2]], it.long_answer[:150],
                it.label)}) + "\n")
    meta = train_answers(data, tmp_path / "run", _settings(max_steps=1, max_length=256))
    assert meta["global_step"] == 1
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"pmid": 1, "text": "x"}) + "\n")
    with pytest.raises(InputError, match="messages"):
        train_answers(bad, tmp_path / "run2", _settings())
