"""One self-contained, offline HTML report of a run directory (no CDN, no script, inline SVG).

Sections, each skipped with a note when its inputs are absent: the stage table
(``manifest.json``), the preference funnel (``preferences/prefer_stats.json``), chosen vs rejected
score distributions (``preferences/data/train.parquet``), the signal self-check
(``reports/signal_selfcheck.json``), ``n_pairs`` random pairs side by side (abstract, both
questions, their retrieved contexts with the MeSH descriptors they share with the source
highlighted, scores), and the PubMedQA and generator reports with their confidence intervals.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
from pathlib import Path
from typing import Any

from kailin.report import stage_is_off

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top;font-size:13px}th{background:#f3f3f3}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em;border:1px solid #ddd;padding:.8em;
margin:1em 0}.abs{grid-column:1/3;font-size:13px;color:#333}.chosen{background:#eef8ee}
.rejected{background:#fbeeee}.side{padding:.5em}mark{background:#ffe28a}.note{color:#888}
.ctx{font-size:12px;margin:.2em 0}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return _e(v)


def _stage_table(manifest: dict | None) -> str:
    if not manifest or not manifest.get("stages"):
        return '<p class="note">no manifest.json with stages</p>'
    rows = []
    for name, st in manifest["stages"].items():
        st = st or {}
        counts = st.get("counts") if isinstance(st.get("counts"), dict) else {
            k: v for k, v in st.items()
            if isinstance(v, (int, float)) and k not in ("seconds",) and not isinstance(v, bool)}
        cnt = ", ".join(f"{_e(k)}={_fmt(v)}" for k, v in list(counts.items())[:8])
        status = st.get("status", "")
        if st.get("skipped"):
            status = f"{status} (up to date)"
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(status)}</td>"
                    f"<td><code>{_e(str(st.get('key', ''))[:12])}</code></td><td>{cnt}</td>"
                    f"<td>{_fmt(st.get('seconds', ''))}</td></tr>")
    return ('<table id="stages"><tr><th>stage</th><th>status</th><th>key</th><th>counts</th>'
            "<th>seconds</th></tr>" + "".join(rows) + "</table>")


def _funnel(stats: dict | None) -> str:
    if not stats:
        return '<p class="note">no preferences/prefer_stats.json</p>'
    left = stats.get("pmids", 0)
    rows = [f"<tr><td>PMIDs with questions</td><td>{left}</td><td>{_bar(left, left)}</td></tr>"]
    for f, n in (stats.get("dropped") or {}).items():
        left -= n
        rows.append(f"<tr><td>after {_e(f)} (-{n})</td><td>{left}</td>"
                    f"<td>{_bar(left, stats.get('pmids', 0))}</td></tr>")
    rows.append(f"<tr><th>kept pairs</th><th>{stats.get('kept', 0)}</th><td></td></tr>")
    return '<table id="funnel"><tr><th>step</th><th>PMIDs</th><th></th></tr>' + "".join(
        rows) + "</table>"


def _bar(n: int, total: int, width: int = 300) -> str:
    w = 0 if not total else max(0, round(width * n / total))
    return (f'<svg width="{width}" height="12"><rect width="{w}" height="12" '
            'fill="#6a9ad4"/></svg>')


def histogram_svg(a: list[float], b: list[float], labels: tuple[str, str] = ("chosen",
                  "rejected"), bins: int = 20, width: int = 520, height: int = 180) -> str:
    """Two overlaid histograms as an inline SVG (shared bins)."""
    vals = [v for v in a + b if v is not None and not math.isnan(v)]
    if not vals:
        return '<p class="note">no scores</p>'
    lo, hi = min(vals), max(vals)
    if hi == lo:
        hi = lo + 1e-9
    step = (hi - lo) / bins

    def counts(xs: list[float]) -> list[int]:
        c = [0] * bins
        for v in xs:
            if v is not None and not math.isnan(v):
                c[min(bins - 1, int((v - lo) / step))] += 1
        return c

    ca, cb = counts(a), counts(b)
    top = max(ca + cb) or 1
    bw = (width - 40) / bins
    parts = [f'<svg id="scores_svg" width="{width}" height="{height + 40}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for c, color in ((ca, "#3a3"), (cb, "#c33")):
        for i, n in enumerate(c):
            h = height * n / top
            parts.append(f'<rect x="{30 + i * bw:.1f}" y="{height - h + 10:.1f}" '
                         f'width="{bw - 1:.1f}" height="{h:.1f}" fill="{color}" '
                         'fill-opacity="0.5"/>')
    parts.append(f'<text x="30" y="{height + 28}" font-size="11">{lo:.3g}</text>')
    parts.append(f'<text x="{width - 50}" y="{height + 28}" font-size="11">{hi:.3g}</text>')
    parts.append(f'<text x="{width / 2 - 60}" y="{height + 28}" font-size="11" fill="#3a3">'
                 f'{_e(labels[0])} (n={len(a)})</text>')
    parts.append(f'<text x="{width / 2 + 40}" y="{height + 28}" font-size="11" fill="#c33">'
                 f'{_e(labels[1])} (n={len(b)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _json_block(obj: Any, elem_id: str) -> str:
    """A nested dict as a two-column table of flattened keys (CIs appear as [lo, hi])."""
    flat: list[tuple[str, Any]] = []

    def walk(x: Any, prefix: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(x, list) and len(x) <= 4 and all(isinstance(v, (int, float)) for v in x):
            flat.append((prefix[:-1], "[" + ", ".join(_fmt(v) for v in x) + "]"))
        elif not isinstance(x, list):
            flat.append((prefix[:-1], _fmt(x)))

    walk(obj, "")
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in flat[:200])
    return f'<table id="{elem_id}">{rows}</table>'


def _read(path: Path, columns: list[str] | None = None) -> Any:
    if not path.exists():
        return None
    from kailin.io import read_parquet

    try:
        return read_parquet(path, columns=columns)
    except Exception:  # a missing column or an unreadable file: the section says so
        return None


def _pairs(run: Path, n: int, seed: int) -> str:
    prefs = _read(run / "preferences" / "data" / "train.parquet")
    if prefs is None or prefs.num_rows == 0:
        return '<p class="note">no preference pairs</p>'
    rows = prefs.to_pylist()
    pick = random.Random(seed).sample(rows, min(n, len(rows)))
    pmids = {r["pmid"] for r in pick}
    corpus = None
    for cand in (run / "corpus" / "work.parquet", run / "corpus" / "selected", run / "corpus" /
                 "full"):
        corpus = _read(cand, ["pmid", "title", "abstract", "mesh_uis"])
        if corpus is not None:
            break
    docs: dict[int, dict] = {}
    if corpus is not None:
        docs = {d["pmid"]: d for d in corpus.to_pylist()}
    scores = _read(run / "scores", ["pmid", "question", "context_pmids", "context_titles"])
    ctx: dict[tuple[int, str], dict] = {}
    if scores is not None and "context_pmids" in scores.column_names:
        for s in scores.select([c for c in ("pmid", "question", "context_pmids",
                                            "context_titles") if c in scores.column_names]
                               ).to_pylist():
            if s["pmid"] in pmids:
                ctx[(s["pmid"], s.get("question"))] = s
    out = []
    for r in pick:
        src = docs.get(r["pmid"], {})
        src_mesh = set(src.get("mesh_uis") or [])
        sides = []
        for role in ("chosen", "rejected"):
            q = r[role]
            c = ctx.get((r["pmid"], q), {})
            lines = []
            for cp, ct in zip(c.get("context_pmids") or [], c.get("context_titles") or [],
                              strict=False):
                cm = (docs.get(cp) or {}).get("mesh_uis") or []
                mesh = " ".join(f"<mark>{_e(u)}</mark>" if u in src_mesh else _e(u) for u in cm)
                lines.append(f'<div class="ctx">PMID {cp}: {_e(ct)}<br>MeSH: {mesh}</div>')
            sides.append(
                f'<div class="side {role}"><b>{role}</b> ({_e(r.get(role + "_generator"))}, '
                f"score {_fmt(r.get(role + '_score'))})<p>{_e(q)}</p>"
                + ("".join(lines) or '<div class="note">contexts not available</div>') + "</div>")
        out.append(f'<div class="pair"><div class="abs"><b>PMID {r["pmid"]}</b> '
                   f"{_e(src.get('title'))}<br>{_e((src.get('abstract') or '')[:1200])}<br>"
                   "MeSH: " + " ".join(_e(u) for u in sorted(src_mesh)) + "</div>"
                   + "".join(sides) + "</div>")
    return f'<div id="pairs">{"".join(out)}</div>'


def build_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 n_pairs: int = 20, seed: int = 0) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) and return its path."""
    from kailin.io import write_text_atomic

    run = Path(run_dir)
    manifest = _json(run / "manifest.json")
    pstats = _json(run / "preferences" / "prefer_stats.json")
    prefs = _read(run / "preferences" / "data" / "train.parquet",
                  ["chosen_score", "rejected_score"])
    hist = ('<p class="note">no preference pairs</p>' if prefs is None else histogram_svg(
        prefs.column("chosen_score").to_pylist(), prefs.column("rejected_score").to_pylist()))
    sections = [
        ("Stages", _stage_table(manifest)),
        ("Preference funnel", _funnel(pstats)),
        ("Scores: chosen vs rejected", hist),
    ]
    for title, rel, elem, stage in (
            ("Signal self-check", "reports/signal_selfcheck.json", "signal", "signal"),
            ("PubMedQA", "reports/pubmedqa.json", "pubmedqa", "pubmedqa"),
            ("Generator before vs after", "reports/generator.json", "generator",
             "generator_eval")):
        obj = _json(run / rel)
        if stage_is_off(manifest, stage):
            sections.append((title, f'<p class="note">the {_e(stage)} stage is off in this '
                             "run</p>"))
            continue
        sections.append((title, _json_block(obj, elem) if obj is not None
                         else f'<p class="note">{_e(rel)} not present</p>'))
    sections.append((f"{n_pairs} random pairs", _pairs(run, n_pairs, seed)))
    body = "".join(f"<h2>{_e(t)}</h2>{s}" for t, s in sections)
    status = (manifest or {}).get("status", "unknown")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>kailin report: "
           f"{_e(run.name)}</title><style>{_CSS}</style></head><body><h1>kailin run "
           f"{_e(run)}</h1><p>status: {_e(status)}</p>{body}</body></html>")
    path = Path(out) if out is not None else run / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, doc)
    return path
