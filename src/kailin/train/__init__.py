"""Shared training helpers (model loading, LoRA configs, checkpoint resume).

Heavy libraries (torch, transformers, peft, trl) are imported lazily inside the functions of
:mod:`kailin.train.common`, so importing this package costs nothing and the core install (no
``kailin[train]`` extra) can still import it.
"""

from kailin.train.common import (
    DEFAULT_LORA_TARGETS,
    LoraSettings,
    build_lora_config,
    final_dir_complete,
    last_checkpoint,
    load_model,
    load_tokenizer,
    require_training,
    resolve_model_path,
    save_final_model,
)

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LoraSettings",
    "build_lora_config",
    "final_dir_complete",
    "last_checkpoint",
    "load_model",
    "load_tokenizer",
    "require_training",
    "resolve_model_path",
    "save_final_model",
]
