"""kailin.train.common: model specs, LoRA configs, checkpoint detection, the finished marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kailin.errors import InputError
from kailin.train.common import (
    TRAIN_META,
    LoraSettings,
    build_lora_config,
    final_dir_complete,
    last_checkpoint,
    resolve_model_path,
)


def test_resolve_model_path(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    packaged = Path(resolve_model_path("smollm2"))
    assert (packaged / "config.json").is_file() and (packaged / "model.safetensors").is_file()
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    assert resolve_model_path(out) == str(out / "model")
    assert resolve_model_path(out / "model") == str(out / "model")
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(InputError, match="no such directory"):
        resolve_model_path("./missing-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither config.json"):
        resolve_model_path(tmp_path / "empty")
    (tmp_path / "f.bin").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        resolve_model_path(tmp_path / "f.bin")


def test_last_checkpoint_and_finished_marker(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    assert last_checkpoint(tmp_path / "nothing") is None
    ck = tmp_path / "checkpoints"
    for n in (2, 10, 9):
        (ck / f"checkpoint-{n}").mkdir(parents=True)
    (ck / "checkpoint-x").mkdir()
    assert last_checkpoint(ck) == str(ck / "checkpoint-10")  # numeric, not lexical order
    assert final_dir_complete(tmp_path) is None
    (tmp_path / TRAIN_META).write_text(json.dumps({"kind": "sft"}))
    assert final_dir_complete(tmp_path) is None  # no model yet
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert final_dir_complete(tmp_path) == {"kind": "sft"}


def test_lora_config_defaults_are_the_authors() -> None:
    pytest.importorskip("peft")
    cfg = build_lora_config()
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj"}
    cfg = build_lora_config(LoraSettings(r=4, alpha=8, target_modules=("o_proj",)))
    assert cfg.r == 4 and set(cfg.target_modules) == {"o_proj"}
    assert LoraSettings().to_dict()["target_modules"] == ["q_proj", "k_proj", "v_proj"]


def test_stale_checkpoints_are_refused_or_replaced(tmp_path: Path) -> None:
    """Checkpoints of other settings: refused for a user's --out folder, removed for a stage
    that owns its folder (the steering rounds retrain after their pairs changed)."""
    from kailin.errors import InputError
    from kailin.train.common import prepare_checkpoints

    ckpt = prepare_checkpoints(tmp_path, {"lr": 1, "data_digest": "a"}, ignore=())
    (ckpt / "checkpoint-5").mkdir()
    (ckpt / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="different settings"):
        prepare_checkpoints(tmp_path, {"lr": 1, "data_digest": "b"}, ignore=())
    ckpt = prepare_checkpoints(tmp_path, {"lr": 1, "data_digest": "b"}, ignore=(),
                               replace_stale=True)
    assert not (ckpt / "checkpoint-5").exists()
    assert json.loads((ckpt / "kailin_settings.json").read_text())["data_digest"] == "b"
    # the same settings resume: the checkpoints stay
    (ckpt / "checkpoint-7").mkdir()
    prepare_checkpoints(tmp_path, {"lr": 1, "data_digest": "b"}, ignore=(), replace_stale=True)
    assert (ckpt / "checkpoint-7").is_dir()
