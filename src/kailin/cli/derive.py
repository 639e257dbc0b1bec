"""Command-line options derived from a settings class, as trl's ``TrlParser`` derives them from
``DPOConfig``: each field of the class becomes an option (``--field-name``; its type, default and
description give the option's type, default and help), and ``--config FILE`` reads the same
settings from YAML. A setting added to a class is an option of every command built on it: one
file changes.

    @app.command("dpo")
    @settings_command(DPOConfig, param="settings", defaults=DPOConfig.authors())
    def dpo(pairs: Path = typer.Argument(...), out: Path = typer.Option(..., "--out"),
            settings: DPOConfig = None) -> None:
        train_dpo(pairs, out, settings)

Precedence: the command's defaults, then ``--config FILE``, then the options given on the line.
Options whose names must stay as they were keep them through :data:`OPTION_NAMES` (and a
command's ``names``); a field a command spells differently or parses itself goes in ``custom``
(the command's own parameter, passed through ``to_field``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from pydantic import BaseModel

from kailin.config import OPTION_NAMES, from_options

log = logging.getLogger("kailin.cli")

#: fields no command line sets (a mapping has no one-option form: give it with --config)
NO_OPTION_TYPES = (dict,)


def option_name(field: str, names: dict[str, str] | None = None) -> str:
    """``--field-name``, or the spelling an alias table gives (``learning_rate``: ``--lr``)."""
    return (names or {}).get(field) or OPTION_NAMES.get(field) or "--" + field.replace("_", "-")


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return ann, False


def _option_type(ann: Any) -> tuple[Any, click.ParamType | None] | None:
    """The annotation typer gets for a field, and a click type where typer needs one (a
    Literal becomes a choice); None for a field no option can set."""
    inner, _ = _unwrap_optional(ann)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        return ann, None
    if inner in NO_OPTION_TYPES or origin in NO_OPTION_TYPES:
        return None
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return None
    if origin is list and any(typing.get_origin(a) is typing.Literal
                              for a in typing.get_args(inner)):
        return list[str], None  # typer reads no list of choices: the settings class checks them
    if origin in (list, tuple) or inner in (int, float, str, bool, Path):
        return ann, None
    if origin in (typing.Union, types.UnionType):  # e.g. int | str: read as text
        return str, None
    return None


def derived_fields(cls: type[BaseModel], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` that get an option: ``{field: FieldInfo}``."""
    return {name: f for name, f in cls.model_fields.items()
            if name not in skip and _option_type(f.annotation) is not None}


def _help(f: Any, default: Any) -> str:
    text = (f.description or "").strip()
    if default is None or default == [] or "default" in text:
        return text
    return f"{text}{'; ' if text else ''}default {default}"


def settings_command(cls: type[BaseModel], *, param: str = "settings",
                     defaults: BaseModel | None = None, names: dict[str, str] | None = None,
                     short: dict[str, str] | None = None, skip: tuple[str, ...] = (),
                     aliases: dict[str, tuple[str, ...]] | None = None,
                     custom: dict[str, tuple[str, Callable[[Any], Any]]] | None = None,
                     adjust: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None
                     = None, section: str | None = None,
                     section_renamed: dict[str, str] | None = None
                     ) -> Callable[[Callable], Callable]:
    """Give the decorated command an option per field of ``cls`` and ``--config FILE``; it
    receives the validated settings object as ``param``.

    ``defaults``: the command's defaults (an instance of ``cls``; default: the class's own).
    ``names``: option spellings that differ from the field's. ``short``: short flags.
    ``aliases``: more spellings of a field's option (``--cpt-steps`` for ``--max-steps``).
    ``skip``: fields the command sets itself. ``custom``: fields set through one of the
    command's own parameters, with its own spelling or parsing: ``{field: (parameter,
    to_field)}`` (``lora``: ``("full", ...)`` for ``--full``), called when the parameter was
    given (not None): its result is the field's value. ``adjust(values, given)``: a last say over the
    values, knowing which options were given (``--max-steps`` given replaces the default
    epochs). ``section``: in a ``kailin run`` YAML given to --config, the section to read (the
    file may also be the section alone); ``section_renamed``: keys that section spells
    otherwise (``cpt_steps`` for ``max_steps``)."""
    custom = custom or {}

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn)
        sig = inspect.signature(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in sig.parameters.values() if p.name != param]
        taken = {p.name for p in own}
        base = defaults if defaults is not None else None
        fields = derived_fields(cls, skip=(*skip, *custom))
        derived = []
        for name, f in fields.items():
            if name in taken:
                raise TypeError(f"{fn.__name__}: parameter {name} is also a field of "
                                f"{cls.__name__}; list it in custom")
            ann, _ = _option_type(f.annotation)  # type: ignore[misc]
            default = getattr(base, name) if base is not None else f.get_default(
                call_default_factory=True)
            decls = [option_name(name, names)]
            if short and name in short:
                decls.append(short[name])
            decls += list((aliases or {}).get(name, ()))
            inner, _ = _unwrap_optional(f.annotation)
            if inner is bool:
                decls = [f"{decls[0]}/--no-{decls[0][2:]}", *decls[1:]]
            opt = typer.Option(None, *decls, help=_help(f, default), show_default=False)
            ann = ann if typing.get_origin(ann) in (typing.Union, types.UnionType) else (
                ann | None)
            derived.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                             default=opt, annotation=ann))
        where = f"; or a kailin run config, whose {section} section is read" if section else ""
        config_opt = inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", help=f"YAML with these settings "
                                 f"({cls.__name__}{where}); options given on the line win",
                                 exists=True, dir_okay=False))
        positional = [p for p in own if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        rest = [p.replace(kind=p.KEYWORD_ONLY) for p in own if p not in positional]
        new_params = [*[p.replace(kind=p.KEYWORD_ONLY) for p in positional], *rest, *derived,
                      config_opt]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in fields}
            cfg_file = kwargs.pop("config_file", None)
            values: dict[str, Any] = {}
            if base is not None:
                values.update(base.model_dump(exclude_unset=False))
            if cfg_file is not None:
                values.update(read_settings_file(cfg_file, cls, section, section_renamed))
            explicit = {k: v for k, v in given.items() if v is not None}
            for name, (own_param, conv) in custom.items():
                if kwargs.get(own_param) is not None:  # given on the line
                    explicit[name] = conv(kwargs[own_param])
            values.update(explicit)
            if adjust is not None:
                values = adjust(values, explicit)
            settings = from_options(cls, **values)
            return fn(**kwargs, **{param: settings})

        wrapper.__signature__ = sig.replace(parameters=new_params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new_params}
        wrapper.settings_class = cls  # type: ignore[attr-defined]
        #: the command's parameter that sets each field (for the coverage test and --help)
        wrapper.settings_params = {  # type: ignore[attr-defined]
            **{name: name for name in fields},
            **{name: own_param for name, (own_param, _) in custom.items()}}
        wrapper.settings_skipped = tuple(skip)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def read_settings_file(path: Path, cls: type[BaseModel], section: str | None,
                       renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings in a YAML file (safe loader): the file itself, or its ``section`` (whose
    keys ``renamed`` translates)."""
    from kailin.config import read_yaml_mapping
    from kailin.errors import InputError

    raw = read_yaml_mapping(path, "settings file")
    known = set(cls.model_fields) | set(getattr(cls, "renamed", {}).values())
    if section and isinstance(raw.get(section), dict) and section not in cls.model_fields:
        # a kailin run config: its section may hold keys of the run alone (enabled, generator)
        sec = {(renamed or {}).get(k, k): v for k, v in raw[section].items()}
        dropped = sorted(set(sec) - known)
        if dropped:
            log.info("%s: %s section: %s are run settings, not %s's; left out", path, section,
                     ", ".join(dropped), cls.__name__)
        return {k: v for k, v in sec.items() if k in known}
    bad = sorted(set(raw) - known)
    if bad:
        raise InputError(f"{path}: {', '.join(bad)}: not settings of {cls.__name__} "
                         f"(known: {', '.join(sorted(cls.model_fields))})")
    return raw
