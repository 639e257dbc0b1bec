"""Every trainer: a kailin bar over the steps and INFO lines on ``kailin.train`` instead of
transformers' log dicts on stdout; only the final model is kept after a successful finish,
while a killed run keeps its checkpoints and resumes from them.

Tiny real runs: SmolLM2-135M + LoRA, 2 CPT steps of 64 tokens, from the command line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

from typer.testing import CliRunner

from kailin.cli.main import app
from kailin.dataset.export import cpt_text
from kailin.dataset.train import DownstreamTrainConfig, train_cpt
from kailin.evaluate import pubmedqa as pqa

# what transformers printed for each log: "{'loss': 3.2, 'grad_norm': ...}" / train_runtime
RAW_DICT = re.compile(r"\{'(loss|train_runtime|train_loss|grad_norm|learning_rate)'")


@pytest.fixture(scope="module")
def cpt_data(tmp_path_factory) -> Path:
    test = set(pqa.test_pmids())
    items = [it for p, it in pqa.load_pqal().items() if p not in test][:6]
    path = tmp_path_factory.mktemp("data") / "cpt.jsonl"
    with path.open("w") as f:
        for it in items:
            f.write(json.dumps({"pmid": int(it.pmid), "text": cpt_text(
                it.question, it.long_answer, list(it.contexts), it.question)}) + "\n")
    return path


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_trainer_logs_through_kailin_and_keeps_only_the_final_model(
        cpt_data: Path, tmp_path: Path, one_thread) -> None:
    out = tmp_path / "cpt"
    res = CliRunner().invoke(app, ["train", "cpt", str(cpt_data), "--out", str(out),
                                   "--max-steps", "2", "--batch-size", "1", "--grad-accum", "1",
                                   "--max-length", "64", "--save-steps", "1", "--lr", "1e-4"])
    assert res.exit_code == 0, res.output + res.stderr
    assert not RAW_DICT.search(res.stdout), res.stdout  # no trainer dict on stdout
    assert res.stdout.strip().startswith("CPT -> ")  # only the command's summary
    # the loss lines go through kailin's logger (its handler writes to stderr)
    assert re.search(r"INFO kailin\.train: cpt step \d/2: .*loss=", res.stderr), res.stderr
    assert "0/2 [" in res.stderr  # the bar's total is max_steps
    assert (out / "model" / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists()  # removed after the successful finish

    quiet = CliRunner().invoke(app, ["-q", "train", "cpt", str(cpt_data), "--out",
                                     str(tmp_path / "q"), "--max-steps", "1", "--batch-size",
                                     "1", "--grad-accum", "1", "--max-length", "64", "--lr",
                                     "1e-4", "--keep-checkpoints"])
    assert quiet.exit_code == 0, quiet.output + quiet.stderr
    assert "kailin.train" not in quiet.stderr and "%|" not in quiet.stderr, quiet.stderr
    assert not RAW_DICT.search(quiet.stdout), quiet.stdout
    assert (tmp_path / "q" / "checkpoints" / "checkpoint-1").is_dir()  # kept on request


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoints_which_go_at_the_finish(
        cpt_data: Path, tmp_path: Path, one_thread) -> None:
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise KeyboardInterrupt("simulated kill")

    s = DownstreamTrainConfig(model="smollm2", max_steps=2, batch_size=1, grad_accum=1,
                              max_length=64, save_steps=1, logging_steps=1,
                              learning_rate=1e-4, lora_r=4, lora_alpha=8)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_cpt(cpt_data, out, s, callbacks=[Crash()])
    assert (out / "checkpoints" / "checkpoint-1").is_dir()  # a killed run keeps them
    meta = train_cpt(cpt_data, out, s)
    assert meta["resumed_from"].endswith("checkpoint-1") and meta["global_step"] == 2
    assert not (out / "checkpoints").exists()
    assert train_cpt(cpt_data, out, s)["skipped"]  # the finished run still counts
