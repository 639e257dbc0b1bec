"""``--mode auto``: pick raw or chat prompting per generator, and say why.

Rules, first match wins:

1. a model written by kailin's SFT or DPO trainer (``kailin_train.json`` with ``kind`` ``sft`` /
   ``dpo`` in the model folder or the folder above it, the layout of
   :func:`kailin.train.common.save_final_model`) was trained on the raw KAILIN prompt -> ``raw``;
2. an OpenAI-compatible server -> ``chat`` (the server applies the model's chat template; serve a
   KAILIN-tuned generator? pass ``--mode raw``);
3. a local or hub model whose tokenizer carries a chat template -> ``chat``;
4. otherwise -> ``raw`` (a base model completes plain text).

The packaged ``smollm2`` is SmolLM2-135M-*Instruct*: it has a chat template and only answers in
chat mode, so ``auto`` picks ``chat`` for it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kailin.llm.spec import PACKAGED, GeneratorSpec

log = logging.getLogger(__name__)

TRAINED_ON_RAW = frozenset({"sft", "dpo"})
TRAIN_META = "kailin_train.json"  # kailin.train.common.TRAIN_META (not imported: torch-free)


def trained_on_raw_prompt(model: str | Path) -> Path | None:
    """The ``kailin_train.json`` that marks ``model`` as SFT/DPO-tuned on the raw prompt."""
    p = Path(model).expanduser()
    if not p.is_dir():
        return None
    for meta in (p / TRAIN_META, p.parent / TRAIN_META):
        if meta.is_file():
            try:
                kind = json.loads(meta.read_text()).get("kind")
            except (OSError, ValueError, AttributeError):
                continue
            if kind in TRAINED_ON_RAW:
                return meta
    return None


def has_chat_template(model: str | Path) -> bool | None:
    """Whether the tokenizer of a local folder or hub id has a chat template (``None``: could
    not tell without loading)."""
    p = Path(model).expanduser()
    if p.is_dir():
        if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
            return True
        cfg = p / "tokenizer_config.json"
        if cfg.is_file():
            try:
                return bool(json.loads(cfg.read_text()).get("chat_template"))
            except (OSError, ValueError):
                return None
        return None
    # a hub id: its tokenizer_config.json, from the local HF cache, else downloaded (one small
    # file; skipped when HF_HUB_OFFLINE is set)
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(str(model), "tokenizer_config.json")
        if not isinstance(cached, str):
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
                return None
            cached = hf_hub_download(str(model), "tokenizer_config.json", etag_timeout=5)
        return bool(json.loads(Path(cached).read_text()).get("chat_template"))
    except Exception:  # any failure (offline, no such repo) means "unknown"
        return None


def resolve_mode(g: GeneratorSpec) -> tuple[str, str]:
    """``(mode, reason)`` for a generator under ``--mode auto``."""
    if g.backend == "openai":
        return "chat", ("an OpenAI-compatible server applies the model's chat template (pass "
                        "--mode raw for a server serving a KAILIN-tuned generator)")
    model = g.model
    if model in PACKAGED and model == "smollm2":
        return "chat", (f"the packaged {model} is an instruct model with a chat template and "
                        "was not fine-tuned on the raw KAILIN prompt")
    meta = trained_on_raw_prompt(model)
    if meta is not None:
        return "raw", f"fine-tuned by kailin on the raw KAILIN prompt ({meta})"
    chat = has_chat_template(model)
    if chat:
        return "chat", "its tokenizer has a chat template and no kailin SFT/DPO marker"
    if chat is None:
        return "raw", "no chat template found (could not read the tokenizer)"
    return "raw", "its tokenizer has no chat template (a base model completes plain text)"
