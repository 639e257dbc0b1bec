"""What a step may read of the run's config: the settings it declares, nothing else.

A step declares setting paths (``corpus.limit``, ``mesh``, ``generators.dom.sft``); its key
hashes exactly those values (:func:`settings_view`) and its code gets a :class:`ConfigView` that
hands out those values and raises :class:`UndeclaredSetting` for any other. So the key cannot
drift from the code: a setting the code reads is in the key, or the code fails the first time it
runs (tests run every step).

Paths are dotted attribute names. After a list of named items (objects with a ``name``, such as
the run's generators) a segment picks the item of that name: ``generators.dom`` is the generator
called ``dom``, ``generators.dom.sft`` its ``sft`` section. A list read through a view holds only
the declared items (every item's ``name`` can be read).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kailin.errors import KailinError


class UndeclaredSetting(KailinError, AttributeError):
    """A step read a setting it does not declare (a bug in the step, not in the config)."""


def dump(value: Any) -> Any:
    """A settings value as plain JSON data (settings classes dumped, lists item by item)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    return value


def _named(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(
        hasattr(v, "name") for v in value)


def resolve(cfg: Any, path: str) -> Any:
    """The value at ``path`` (None where an item or attribute is missing)."""
    cur = cfg
    for seg in path.split("."):
        if _named(cur):
            cur = next((v for v in cur if v.name == seg), None)
        elif isinstance(cur, dict):
            cur = cur.get(seg)
        else:
            cur = getattr(cur, seg, None)
        if cur is None:
            return None
    return cur


def settings_view(cfg: Any, reads: Iterable[str]) -> dict[str, Any]:
    """``{path: value}`` of the declared settings, as JSON-able values: what a step's key holds
    of the config."""
    return {p: dump(resolve(cfg, p)) for p in sorted(set(reads))}


class ConfigView:
    """Read access to the declared settings of ``cfg`` (see the module doc)."""

    __slots__ = ("_obj", "_paths", "_step", "_where")

    def __init__(self, obj: Any, paths: Iterable[str], step: str = "", where: str = "") -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_paths", tuple(paths))
        object.__setattr__(self, "_step", step)
        object.__setattr__(self, "_where", where)

    def _sub(self, name: str) -> tuple[bool, list[str]]:
        """Whether ``name`` is declared whole, and the declared paths below it."""
        whole = any(p == name for p in self._paths)
        below = [p[len(name) + 1:] for p in self._paths if p.startswith(name + ".")]
        return whole, below

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self._where}{name}"
        whole, below = self._sub(name)
        value = getattr(self._obj, name)
        if whole:
            return value
        if not below:
            raise UndeclaredSetting(
                f"step {self._step or '?'} reads setting {full}, which it does not declare; "
                "add it to the step's reads (its key must hold every setting it reads)")
        if _named(value):
            items = []
            for item in value:
                sub = [p[len(item.name) + 1:] if p.startswith(item.name + ".") else ""
                       for p in below if p == item.name or p.startswith(item.name + ".")]
                if "" in sub:
                    items.append(item)
                elif sub:
                    items.append(ConfigView(item, ["name", *sub], self._step,
                                            f"{full}.{item.name}."))
            return items
        return ConfigView(value, below, self._step, f"{full}.")

    def __setattr__(self, name: str, value: Any) -> None:
        raise UndeclaredSetting(f"step {self._step or '?'}: the config is read-only")

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        """The declared settings below this view, nested as in the config."""
        out: dict[str, Any] = {}
        for path in self._paths:
            node, segs = out, path.split(".")
            for seg in segs[:-1]:
                node = node.setdefault(seg, {})
            node[segs[-1]] = dump(resolve(self._obj, path))
        return out

    def model_copy(self, update: dict[str, Any] | None = None) -> Any:
        """A copy of the whole section with ``update`` applied: only for a section the step
        declares whole (otherwise it would carry undeclared settings on)."""
        raise UndeclaredSetting(
            f"step {self._step or '?'} copies {self._where.rstrip('.') or 'the config'}, of "
            "which it declares only part; declare the section whole")

    def __repr__(self) -> str:
        return f"ConfigView({self._where.rstrip('.') or 'config'}: {', '.join(self._paths)})"
