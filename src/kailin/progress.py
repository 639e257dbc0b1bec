"""Progress bars, one switch for all of them.

``kailin -q`` and ``kailin --no-progress`` turn :func:`set_enabled` off for the whole command, so
every bar made with :func:`bar` stays hidden whatever the command's own options or a library
call's ``progress=True`` say (tqdm's ``disable=False`` would otherwise override the
``TQDM_DISABLE`` environment variable). Bars go to stderr, leave no line behind by default, and
show a total and an ETA when the total is known.
"""

from __future__ import annotations

from typing import Any

_enabled = True


def set_enabled(on: bool) -> None:
    """Allow (True) or forbid (False) every kailin progress bar in this process."""
    global _enabled
    _enabled = bool(on)


def enabled(local: bool = True) -> bool:
    """Whether a bar that its caller wants (``local``) may show."""
    return bool(local) and _enabled


def bar(total: int | None = None, desc: str = "", unit: str = "it", enabled_: bool = True,
        **kwargs: Any) -> Any:
    """A ``tqdm`` bar, disabled unless both the caller (``enabled_``) and the command allow it."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(enabled_), **kwargs)
