"""Small HTML pieces the run report is made of (escaping, numbers, notes, tables, samples)."""

from __future__ import annotations

import html
import math
import random
from typing import Any

import pyarrow as pa


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return _e(v)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _read(text: str) -> str:
    return f'<p class="read"><b>How to read:</b> {text}</p>'


def _cut(text: Any, n: int) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _table(elem_id: str, head: list[str], rows: list[list[str]]) -> str:
    """``rows`` are cells of HTML already escaped."""
    ident = f' id="{elem_id}"' if elem_id else ""
    header = ("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>") if any(head) else ""
    return (f"<table{ident}>{header}"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")


def _sample(t: pa.Table, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random rows of ``t`` (seeded), in table order; only they become Python objects."""
    idx = sorted(random.Random(seed).sample(range(t.num_rows), min(n, t.num_rows)))
    return t.take(pa.array(idx, pa.int64())).to_pylist()
