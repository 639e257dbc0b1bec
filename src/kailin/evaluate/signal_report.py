"""The document-signal report as Markdown and JSON files (:func:`kailin.evaluate.signal.
evaluate_signal`'s result)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(x: float, nd: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_markdown(report: dict[str, Any], limit: int | None = None) -> str:
    """The configurations table (best first) as Markdown."""
    q = report["questions"]
    lines = [
        f"Signal over {report['items']} questions ({q.get('file', '')}, split {q.get('split')}),"
        f" corpus {report['corpus']}, index {report['index_kind']}; negatives: another item's "
        f"question, {len(report['negatives']['generic'])} generic questions. Contexts: top "
        f"k with MeSH (passed over {report['passed_over_mean']:.2f} MeSH-less hits per query on "
        f"average, bound {report['max_passed_over']}). AUC: paired, 95% bootstrap CI.",
        "",
        "| configuration | AUC vs other [95% CI] | AUC vs generic [95% CI] | pooled AUC o/g | "
        "NaN | std | ties | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = report["configs"] if limit is None else report["configs"][:limit]
    for r in rows:
        lo, hi = r["auc_other_ci"]
        glo, ghi = r["auc_generic_ci"]
        lines.append(
            f"| {r['name']} | {_f(r['auc_other'])} [{_f(lo)}, {_f(hi)}] | "
            f"{_f(r['auc_generic'])} [{_f(glo)}, {_f(ghi)}] | "
            f"{_f(r['pooled_auc_other'])} / {_f(r['pooled_auc_generic'])} | "
            f"{100 * r['nan_share']:.1f}% | {_f(r['std'])} | {100 * r['tie_share']:.1f}% | "
            f"{r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``signal.json`` and ``signal.md`` under ``out_dir`` (atomic writes)."""
    from kailin.io import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "signal.json", out / "signal.md"
    write_json_atomic(jp, _json_safe(report))
    write_text_atomic(mp, "# MeSH document signal\n\n" + format_markdown(report))
    return jp, mp


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x
