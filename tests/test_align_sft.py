"""Question-generator SFT: converters on real PubMedQA data and a BioASQ-format fixture, then a
few LoRA / full fine-tuning steps of SmolLM2-135M with a crash and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kailin.align.sft import (
    KAILIN_PROMPT,
    SFTConfig,
    bioasq_examples,
    examples_to_records,
    load_examples,
    pubmedqa_json_examples,
    pubmedqa_jsonl_examples,
    pubmedqa_test_pmids,
    train_sft,
)
from kailin.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PQAA = REPO / "data" / "samples" / "pubmedqa_pqaa_sample" / "pqaa_test_500.jsonl"
BIOASQ = REPO / "tests" / "data" / "align" / "bioasq_tiny.json"


def test_prompt_is_the_authors_template() -> None:
    assert KAILIN_PROMPT.format(abstract="ABS") == (
        "user:Please analyze the information in the context in the field of bioinformatics:"
        "「ABS」 from bioinfo and generate a question for it. \n\nassistant:"
    )


def test_pqal_excludes_the_test_split() -> None:
    test = pubmedqa_test_pmids()
    assert len(test) == 500
    ex = list(pubmedqa_json_examples())
    assert len(ex) == 500 and not {e.pmid for e in ex} & test
    with_test = list(pubmedqa_json_examples(exclude_test=False))
    assert len(with_test) == 1000
    e = next(x for x in with_test if x.pmid == 21645374)
    assert e.question.startswith("Do mitochondria play a role in remodelling lace plant leaves")
    assert e.document.startswith("Programmed cell death (PCD) is the regulated death")
    assert e.question_type == "yesno" and e.source == "pubmedqa"


def test_pqaa_jsonl_sample() -> None:
    ex = list(pubmedqa_jsonl_examples(PQAA))
    assert len(ex) == 500  # none of the sample is a PQA-L test question
    first = ex[0]
    assert first.question.startswith("does catharanthus roseus flower extract have wound-healing")
    assert "Context (" not in first.document
    assert first.document.startswith("Catharanthus roseus L (C. roseus) has been used")


def test_bioasq_fixture() -> None:
    stats: dict[str, int] = {}
    ex = list(bioasq_examples(BIOASQ, stats))
    assert stats == {"no_snippets": 1}
    assert [e.question_type for e in ex] == ["yesno", "general", "general", "yesno"]
    assert ex[0].document.count("Telephone counseling") == 1  # duplicate snippet kept once
    assert ex[1].document.count(" ") > 20 and ex[1].pmid == 23831910
    assert ex[2].pmid is None  # two documents: no single source PMID
    # via load_examples: the PubMedQA test PMID is excluded, types can be filtered
    assert len(load_examples([BIOASQ])) == 3
    assert len(load_examples([BIOASQ], exclude_test=False)) == 4
    assert [e.question_type for e in load_examples([BIOASQ], "general")] == ["general"] * 2
    assert len(load_examples([BIOASQ, "pubmedqa"], "yesno")) == 501


def test_bad_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"questions": [{"type": "yesno"}]}))
    with pytest.raises(InputError, match=r"questions\[0\]"):
        list(bioasq_examples(bad))
    with pytest.raises(InputError, match="no such"):
        load_examples([tmp_path / "missing.json"])
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"question": "q?"}\n')
    with pytest.raises(InputError, match="line 1"):
        list(pubmedqa_jsonl_examples(jl))
    with pytest.raises(InputError, match="question type"):
        load_examples(["pubmedqa"], "other")


def test_records_fit_max_length() -> None:
    pytest.importorskip("transformers")
    from kailin.train.common import load_tokenizer

    tok = load_tokenizer("smollm2")
    ex = list(pubmedqa_json_examples())[:20]
    recs = examples_to_records(ex, tokenizer=tok, max_length=128)
    assert len(recs) == 20
    for r, e in zip(recs, ex, strict=True):
        n = len(tok(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"])
        assert n + 1 <= 128
        assert r["completion"] == " " + e.question
        assert r["prompt"].startswith("user:Please analyze") and r["prompt"].endswith(
            "assistant:")


@pytest.fixture()
def one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 threads on a shared 2-core machine
    yield
    torch.set_num_threads(n)


class CrashAfterSave:
    """Simulates a killed run: raises once the first checkpoint is on disk."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        class _CB(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                raise KeyboardInterrupt("simulated crash")

        self.cb = _CB()


@pytest.mark.slow
def test_lora_sft_checkpoint_and_resume(tmp_path: Path, one_thread) -> None:
    pytest.importorskip("trl")
    from safetensors.numpy import load_file

    from kailin.train.common import resolve_model_path

    out = tmp_path / "sft"
    s = SFTConfig(max_steps=2, batch_size=2, max_length=96, save_steps=1, logging_steps=1,
                    limit=8)
    with pytest.raises(KeyboardInterrupt):
        train_sft(["pubmedqa"], out, s, callbacks=[CrashAfterSave().cb])
    assert (out / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").is_file()
    assert not (out / "model").exists()
    meta = train_sft(["pubmedqa"], out, s)
    assert meta["resumed_from"].endswith("checkpoint-1") and meta["global_step"] == 2
    losses = [h["loss"] for h in meta["log_history"] if "loss" in h]
    assert losses and all(0 < v < 20 for v in losses)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    assert resolve_model_path(out) == str(out / "model")
    # the merged model differs from the base in the LoRA-targeted projections only
    base = load_file(str(Path(resolve_model_path("smollm2")) / "model.safetensors"))
    tuned = load_file(str(out / "model" / "model.safetensors"))
    key_q = next(k for k in tuned if k.endswith("layers.0.self_attn.q_proj.weight"))
    key_o = next(k for k in tuned if k.endswith("layers.0.self_attn.o_proj.weight"))
    assert abs(tuned[key_q] - base[key_q]).max() > 0
    assert abs(tuned[key_o] - base[key_o]).max() == 0
    # the checkpoints went once the final model was saved; a finished run is not redone
    assert not (out / "checkpoints").exists()
    assert train_sft(["pubmedqa"], out, s).get("skipped") is True


@pytest.mark.slow
def test_full_finetune_cli(tmp_path: Path, one_thread) -> None:
    pytest.importorskip("trl")
    from typer.testing import CliRunner

    from kailin.cli.main import app

    out = tmp_path / "full"
    res = CliRunner().invoke(app, ["train", "sft", str(BIOASQ), str(PQAA), "--out", str(out),
                                   "--full", "--max-steps", "1", "--batch-size", "1",
                                   "--max-length", "128", "--max-examples", "4"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "kailin_train.json").read_text())
    assert meta["settings"]["use_lora"] is False and meta["global_step"] == 1
    assert meta["settings"]["learning_rate"] is None and meta["settings"]["n_examples"] == 4
    assert not (out / "adapter").exists() and (out / "model" / "model.safetensors").is_file()
