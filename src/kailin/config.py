"""The base of every stage's settings class: one pydantic model per stage, kept in the library
module that uses it (``kailin.align.prefer.PreferConfig`` beside ``prefer``, in the style of trl's
``DPOConfig`` beside ``DPOTrainer``). The library function takes the object, the CLI command
builds it from its options (:func:`from_options`), and the ``kailin run`` YAML section *is* the
class (``kailin.pipeline.config.RunConfig``), so the three call the same function with the same
object. Pure pydantic: loading a config imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from kailin.errors import InputError

C = TypeVar("C", bound=BaseModel)


class StageConfig(BaseModel):
    """Settings of one stage: unknown keys are errors (a typo must not fall back to a default).

    ``added_fields`` names the fields a section gained after runs had been keyed on its dump
    (``kailin run`` hashes ``model_dump`` of the sections it reads): they are left out of the
    dump while they hold their default, so that a run made before they existed keeps its keys,
    and they change the dump, hence the keys, as soon as they are set to something else.

    ``renamed`` maps a field to the key it has in the YAML section and in dumps, where the two
    differ (the pipeline's ``downstream.cpt_steps`` is the training's ``max_steps``); either name
    is accepted on input."""

    model_config = ConfigDict(extra="forbid")
    added_fields: ClassVar[tuple[str, ...]] = ()
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _accept_section_names(cls, data: Any) -> Any:
        if cls.renamed and isinstance(data, dict):
            data = dict(data)
            for field, key in cls.renamed.items():
                if key in data:
                    if field in data:
                        raise ValueError(f"{key} and {field} name one setting: give one")
                    data[field] = data.pop(key)
        return data

    @model_serializer(mode="wrap")
    def _leave_out_added_defaults(self, handler: Any) -> Any:
        out = handler(self)
        if self.renamed and isinstance(out, dict):
            out = {self.renamed.get(k, k): v for k, v in out.items()}
        if self.added_fields and isinstance(out, dict):
            fields = type(self).model_fields
            for name in self.added_fields:
                key = self.renamed.get(name, name)
                if key in out and getattr(self, name) == fields[name].get_default(
                        call_default_factory=True):
                    del out[key]
        return out


#: fields whose command-line option is not ``--`` + the field name with dashes (every kailin
#: command that trains spells the learning rate ``--lr``)
OPTION_NAMES: dict[str, str] = {"learning_rate": "--lr"}


def from_options(cls: type[C], **options: Any) -> C:
    """``cls(**options)`` for a CLI command: a value the schema rejects is an :class:`InputError`
    naming the option (``--min-margin``, or :data:`OPTION_NAMES`' spelling), not a traceback."""
    try:
        return cls(**options)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, int))
            opt = f"{OPTION_NAMES.get(loc) or '--' + loc.replace('_', '-')}: " if loc else ""
            lines.append(f"{opt}{err['msg'].removeprefix('Value error, ')}")
        raise InputError("; ".join(lines)) from None


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that holds a mapping (a run config, a settings file), read with the safe
    loader; an :class:`InputError` naming the file for a missing file, a bad encoding, bad YAML
    or another shape."""
    import yaml

    from kailin.io import read_text_strict

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    try:
        raw = yaml.safe_load(read_text_strict(path, what)) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the {what} must be a mapping of keys to values")
    return raw
