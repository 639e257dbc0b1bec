"""``docs/config.md``, generated from the config schema (:class:`kailin.pipeline.config.RunConfig`).

    python -m kailin.pipeline.config_doc > docs/config.md

A test checks that the file in the repository is what this prints, so the reference cannot drift
from the schema.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel

from kailin.pipeline.config import RunConfig


def _type(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [a for a in typing.get_args(ann) if a is not type(None)]
        inner = " \\| ".join(_type(a) for a in parts)
        return f"{inner} \\| null" if len(parts) < len(typing.get_args(ann)) else inner
    if origin in (list, tuple):
        args = typing.get_args(ann)
        return f"{origin.__name__}[{', '.join(_type(a) for a in args if a is not Ellipsis)}]"
    return getattr(ann, "__name__", str(ann))


def _default(f: Any) -> str:
    if f.default_factory is not None:
        v = f.default_factory()
        if isinstance(v, BaseModel):
            return "(section)"
        if isinstance(v, list) and v and isinstance(v[0], BaseModel):
            v = [x.model_dump(mode="json", exclude_defaults=True) for x in v]
        return f"`{json.dumps(v)}`"
    if f.is_required():
        return "required"
    return f"`{json.dumps(f.default, default=str)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, subs = [], []
    renamed = getattr(model, "renamed", {})
    for field_name, f in model.model_fields.items():
        name = renamed.get(field_name, field_name)  # the key as the YAML section spells it
        ann = f.annotation
        sub = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type)
               and issubclass(a, BaseModel)]
        if sub:
            key = f"{prefix}{name}" + (".N" if typing.get_origin(ann) is list else "")
            subs.append((sub[0], f"{key}."))
            if typing.get_origin(ann) is list:
                rows.append(f"| `{prefix}{name}` | list of `{sub[0].__name__}` | "
                            f"{_default(f)} | {(f.description or '').strip()} |")
            continue
        desc = (f.description or "").replace("\n", " ").replace("|", "\\|").strip()
        rows.append(f"| `{prefix}{name}` | {_type(ann)} | {_default(f)} | {desc} |")
    if rows:
        title = prefix.rstrip(".") or "top level"
        out += [f"## `{title}`", ""]
        doc = (model.__doc__ or "").strip()
        if doc and model is not RunConfig:
            out += [" ".join(doc.split()), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for m, p in subs:
        _section(m, p, out)


def config_reference() -> str:
    out = ["# `kailin run` configuration reference", "",
           "Generated from `kailin.pipeline.config.RunConfig` by "
           "`python -m kailin.pipeline.config_doc > docs/config.md`; do not edit by hand. "
           "Unknown keys are errors; paths are relative to the config file. See "
           "[pipeline.md](pipeline.md) for what each stage does and which keys re-run it.", ""]
    _section(RunConfig, "", out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
