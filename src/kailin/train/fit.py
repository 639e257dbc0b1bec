"""Fit a record to a token limit by shortening its contexts, never its question or answer.

trl's ``SFTTrainer`` truncates a prompt-completion record to ``max_length`` from the end, so a
prompt with long contexts loses its question and answer (the completion-only loss is then empty)
or, for a prompt longer than ``max_length``, the record disappears: at ``max_length`` 512 every
record of the export's SFT config (4 full contexts: 740-1,900 tokens) did, and training ended in
``num_samples ... 0``. :func:`fit_contexts` cuts the contexts instead: the longest first (every
context is cut to a common cap, the largest that fits: water-filling), keeping the template,
the question and the answer whole. A record whose question and answer alone exceed the limit
cannot be fitted; it is dropped with its reason, or (``fit="error"``) an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FIT_MODES: tuple[str, ...] = ("truncate", "error")


@dataclass
class Fitted:
    """The outcome for one record: the contexts to use (None: it cannot fit), whether any was
    cut, its token length after fitting, and why it was dropped."""

    contexts: list[str] | None
    truncated: bool
    tokens: int
    reason: str | None = None


def _cap(lengths: Sequence[int], room: int) -> int:
    """The largest cap c with sum(min(n, c)) <= room (the longest contexts are cut first)."""
    lo, hi = 0, max(lengths, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_contexts(contexts: Sequence[str], length_of: Callable[[list[str]], int], tokenizer: Any,
                 max_length: int) -> Fitted:
    """Contexts cut so that the rendered record (``length_of(contexts)``: its token count) fits
    ``max_length``.

    Contexts are cut at token boundaries to a common cap (the longest first); contexts cut to
    nothing are left out. Token merges across the template's joins are absorbed by re-measuring
    and shrinking until the record fits."""
    ctx = [str(c) for c in contexts]
    full = length_of(ctx)
    if full <= max_length:
        return Fitted(ctx, False, full)
    bare = length_of([])
    if bare > max_length:
        return Fitted(None, False, bare, f"question and answer alone take {bare} tokens "
                      f"(max_length {max_length})")
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in ctx]
    room = max_length - bare - 2 * len(ctx)
    for _ in range(16):
        cap = _cap([len(x) for x in ids], max(0, room))
        cut = [tokenizer.decode(x[:cap], skip_special_tokens=True).strip() if len(x) > cap else c
               for x, c in zip(ids, ctx, strict=True)]
        cut = [c for c in cut if c]
        n = length_of(cut)
        if n <= max_length:
            return Fitted(cut, True, n)
        if cap == 0:
            break
        room -= n - max_length + 1
    return Fitted([], True, bare)
