"""DPO of the question generator: the authors' defaults reach TRL, a few LoRA steps of
SmolLM2-135M on pairs built by `kailin prefer` from real PubMedQA questions, crash and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from kailin.align.dpo import DPOConfig, _resolved, load_pairs, train_dpo
from kailin.align.prefer import prefer
from kailin.align.sft import format_prompt, pubmedqa_json_examples
from kailin.errors import InputError


def test_cli_defaults_are_the_authors_run() -> None:
    s = _resolved(DPOConfig.authors(), "smollm2", n_pairs=6400)
    assert (s["beta"], s["learning_rate"], s["lr_scheduler"], s["warmup_steps"],
            s["weight_decay"]) == (0.1, 5e-4, "cosine", 100, 0.05)
    assert (s["lora"]["r"], s["lora"]["alpha"], s["lora"]["dropout"]) == (8, 16, 0.05)
    assert s["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert (s["batch_size"], s["grad_accum"], s["max_length"], s["save_steps"], s["seed"]) == (
        16, 4, 1024, 50, 0)
    assert s["max_steps"] == 300  # 3 epochs of 6400 pairs at 16 x 4 per step
    # `kailin train dpo` with no options builds exactly DPOConfig.authors()
    import kailin.align.dpo as dpo_mod
    from kailin.cli.main import app

    seen: dict = {}

    def fake(pairs, out, settings, **kw):
        seen["settings"] = settings
        return {"skipped": True}

    import pytest
    from typer.testing import CliRunner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpo_mod, "train_dpo", fake)
        res = CliRunner().invoke(app, ["train", "dpo", "pairs", "--out", "o"])
    assert res.exit_code == 0, res.output
    assert seen["settings"] == DPOConfig.authors()


def test_pipeline_defaults_and_the_steps_rule() -> None:
    c = DPOConfig()
    s = _resolved(c, "m", n_pairs=100)
    assert (s["max_steps"], s["warmup_steps"], s["save_steps"], s["logging_steps"],
            s["grad_accum"], s["lora"]["alpha"]) == (10, 1, 10, 1, 1, 16)
    s = _resolved(DPOConfig(epochs=2, batch_size=4, lora_r=4), "m", n_pairs=9)
    assert (s["max_steps"], s["warmup_steps"], s["lora"]["alpha"]) == (5, 0, 8)
    with pytest.raises(Exception, match="extra"):
        DPOConfig(lora_dropout=0.1)


def test_a_warmup_longer_than_the_run_is_cut_with_a_warning(caplog) -> None:
    from types import SimpleNamespace

    from kailin.train.common import training_args

    assert _resolved(DPOConfig.authors(max_steps=2, epochs=None), "m", 10)["warmup_steps"] == 0
    assert _resolved(DPOConfig.authors(max_steps=40, epochs=None), "m", 10)["warmup_steps"] == 4
    assert _resolved(DPOConfig.authors(max_steps=150, epochs=None), "m", 10)["warmup_steps"] == 100
    s = SimpleNamespace(epochs=1.0, max_steps=30, batch_size=1, grad_accum=1,
                        lr_scheduler="cosine", weight_decay=0.0, max_length=64, save_steps=10,
                        save_total_limit=1, logging_steps=1, seed=0)
    with caplog.at_level("WARNING", logger="kailin.train.common"):
        assert training_args(s, "ck", 1e-4, 100)["warmup_steps"] == 3
    assert "warm-up of 100 steps is not shorter than the run (30 steps): using 3" in caplog.text
    caplog.clear()
    assert training_args(s, "ck", 1e-4, 0.03)["warmup_steps"] == 0.03  # a ratio: as given
    assert training_args(s, "ck", 1e-4, 29)["warmup_steps"] == 29
    assert training_args(SimpleNamespace(**{**vars(s), "max_steps": -1}), "ck", 1e-4,
                         100)["warmup_steps"] == 100  # epochs: the length is the trainer's
    assert caplog.text == ""


def test_load_pairs_checks_columns(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(InputError, match="rejected"):
        load_pairs(p)
    p.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    assert load_pairs(p).num_rows == 1


@pytest.fixture()
def prefs(tmp_path: Path) -> Path:
    """`kailin prefer` output over real PubMedQA abstracts: the abstract's own question scored
    above the question of another abstract."""
    ex = list(pubmedqa_json_examples())[:10]
    rows = []
    for i, e in enumerate(ex):
        rows.append({"pmid": e.pmid, "generator": "real", "prompt": format_prompt(e.document),
                     "question": e.question, "score": 0.40})
        rows.append({"pmid": e.pmid, "generator": "other", "prompt": format_prompt(e.document),
                     "question": ex[(i + 3) % len(ex)].question, "score": 0.15})
    stats = prefer("scores", tmp_path / "prefs", scores=pa.Table.from_pylist(rows))
    assert stats["kept"] == 10
    return tmp_path / "prefs"


@pytest.fixture()
def one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_dpo_steps_checkpoint_resume_cli(prefs: Path, tmp_path: Path, one_thread) -> None:
    pytest.importorskip("trl")
    import torch
    from transformers import TrainerCallback
    from typer.testing import CliRunner

    from kailin.cli.main import app

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise KeyboardInterrupt("simulated crash")

    out = tmp_path / "dpo"
    s = DPOConfig(max_steps=2, batch_size=2, grad_accum=1, max_length=128, save_steps=1,
                  logging_steps=1, warmup_steps=100, lora_alpha=16)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(prefs, out, s, callbacks=[Crash()])
    ck = out / "checkpoints" / "checkpoint-1"
    assert (ck / "adapter_model.safetensors").is_file()
    args = torch.load(ck / "training_args.bin", weights_only=False)
    # the 100 warm-up steps asked for would outlast the 2-step run: cut to a tenth of it
    assert (args.beta, args.learning_rate, args.weight_decay, args.warmup_steps) == (
        0.1, 5e-4, 0.05, 0)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    adapter_cfg = json.loads((ck / "adapter_config.json").read_text())
    assert (adapter_cfg["r"], adapter_cfg["lora_alpha"]) == (8, 16)
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj"}

    # resume through the command line with the same settings
    res = CliRunner().invoke(app, ["train", "dpo", str(prefs), "--out", str(out),
                                   "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
                                   "--max-length", "128", "--save-steps", "1"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output and "checkpoint-1" in res.output
    # issue 28: `--max-steps 2` kept the authors' 100 warm-up steps (loss 0.6931, rewards 0)
    assert "warm-up of 100 steps is not shorter than the run (2 steps): using 0" in res.output
    meta = json.loads((out / "kailin_train.json").read_text())
    assert meta["settings"]["warmup_steps"] == 0
    assert meta["global_step"] == 2 and meta["n_records"] == 10
    logged = [h for h in meta["log_history"] if "rewards/chosen" in h]
    assert logged, meta["log_history"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_new_step_budget_extends_in_the_library_and_starts_afresh_in_a_pipeline(
        prefs: Path, tmp_path: Path, one_thread) -> None:
    """A finished run that kept its checkpoints (``keep_checkpoints``), given more steps,
    resumes from them (the library's 'train longer'); its cosine schedule is then not a fresh run's, so a pipeline stage
    (``extend=False``) trains afresh and its model depends on the config alone."""
    pytest.importorskip("trl")
    s2 = DPOConfig(max_steps=2, batch_size=2, grad_accum=1, max_length=128, save_steps=1,
                   logging_steps=1, lora_alpha=16, keep_checkpoints=True)
    s3 = s2.model_copy(update={"max_steps": 3})
    lib, stage = tmp_path / "lib", tmp_path / "stage"
    for out in (lib, stage):
        assert train_dpo(prefs, out, s2)["global_step"] == 2
    meta = train_dpo(prefs, lib, s3)
    assert meta["resumed_from"].endswith("checkpoint-2") and meta["global_step"] == 3
    with pytest.raises(InputError, match="max_steps"):  # refused unless the caller owns it
        train_dpo(prefs, stage, s3, extend=False)
    meta = train_dpo(prefs, stage, s3, extend=False, replace_stale=True)
    assert meta["resumed_from"] is None and meta["global_step"] == 3
