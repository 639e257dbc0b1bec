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


# -- issue 28.1: no silent loss in answers SFT --------------------------------------------------
def _export_sft(root, n: int = 16) -> list[dict]:
    """``n`` answers-SFT records as the export writes them (``build_tables``, the sft config):
    a non-test PQA-L question, its long answer and decision, and 4 full abstracts as contexts
    (740-1,900 tokens each record, as in a real export)."""
    import pyarrow as pa

    from kailin.dataset.export import ExportConfig, build_tables
    from kailin.io import write_parquet_atomic

    items = _items(5 * n)
    rows = []
    for k in range(n):
        src, ctx = items[k * 5], items[k * 5 + 1: k * 5 + 5]
        rows.append({"pmid": int(src.pmid), "title": src.question, "abstract": " ".join(
            src.contexts), "question": src.question, "contexts": [" ".join(c.contexts)
                                                                  for c in ctx],
            "answer": src.long_answer, "decision": src.label})
    sft = build_tables(pa.Table.from_pylist(rows), ExportConfig(formats=["sft"]))["sft"]
    write_parquet_atomic(sft, root / "sft" / "train.parquet")
    return sft.to_pylist()


def test_fit_chat_records_cuts_contexts_only(tmp_path) -> None:
    from kailin.dataset.train import (
        fit_chat_records,
        record_tokens,
        split_user_contexts,
    )
    from kailin.train.common import load_tokenizer

    rows = _export_sft(tmp_path)
    tok = load_tokenizer("smollm2")
    recs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    lengths = [record_tokens(tok, r) for r in recs]
    assert min(lengths) > 512  # every record would be lost to trl at 512
    for max_length in (512, 256):
        out, st = fit_chat_records(recs, tok, max_length, source="sft",
                                   pmids=[r["pmid"] for r in rows])
        assert len(out) == 16 and st["truncated"] == 16 and st["dropped"] == 0
        for before, after in zip(recs, out, strict=True):
            assert record_tokens(tok, after) <= max_length
            assert after["completion"] == before["completion"]  # the answer target intact
            assert after["prompt"][0] == before["prompt"][0]  # the system turn
            ctx0, rest0 = split_user_contexts(before["prompt"][1]["content"])
            ctx1, rest1 = split_user_contexts(after["prompt"][1]["content"])
            assert rest1 == rest0 and "Question: " in rest1  # question and instruction intact
            assert all(c0.startswith(c1[:20]) for c0, c1 in zip(ctx0, ctx1, strict=False))
            assert sum(map(len, ctx1)) < sum(map(len, ctx0))
    # too small for the bare question + answer: dropped with the reason, or an error
    out, st = fit_chat_records(recs, tok, 128, source="sft", pmids=[r["pmid"] for r in rows])
    assert st["dropped"] == len(st["dropped_records"]) == 16 - len(out) > 0
    assert "question and answer alone" in st["dropped_records"][0]["reason"]
    assert st["dropped_records"][0]["pmid"] == rows[st["dropped_records"][0]["record"]]["pmid"]
    with pytest.raises(InputError, match=r"record 0 \(pmid \d+\) takes \d+ tokens"):
        fit_chat_records(recs, tok, 512, fit="error", source="sft",
                         pmids=[r["pmid"] for r in rows])


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [512, 256])
def test_train_answers_cli_fits_long_export_records(tmp_path, max_length) -> None:
    """The real command line on export records longer than max_length: no crash, every record
    trained (n_examples is the length of trl's prepared dataset; one epoch of batch 8 is one
    step), the counts in kailin_train.json."""
    from typer.testing import CliRunner

    from kailin.cli.main import app

    _export_sft(tmp_path / "ds", n=8)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "answers", str(tmp_path / "ds"), "--out", str(out), "--max-length",
        str(max_length), "--max-steps", "-1", "--epochs", "1", "--batch-size", "8",
        "--grad-accum", "1", "--lora-r", "4", "--lora-alpha", "8", "--save-steps", "100"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "kailin_train.json").read_text())
    assert meta["n_examples"] == meta["settings"]["n_examples"] == 8
    assert meta["truncated"] == 8 and meta["dropped"] == 0 and meta["dropped_records"] == []
    assert meta["max_tokens_after"] <= max_length < meta["max_tokens_before"]
    assert meta["global_step"] == 1  # batch 8, one epoch over the 8 records
    assert "8 records (8 with contexts cut to fit, 0 dropped)" in res.output
    if max_length == 256:  # --fit error refuses instead, naming the record
        res = CliRunner().invoke(app, [
            "train", "answers", str(tmp_path / "ds"), "--out", str(tmp_path / "run2"),
            "--max-length", "256", "--fit", "error"])
        assert isinstance(res.exception, InputError) and "record 0 (pmid" in str(res.exception)
