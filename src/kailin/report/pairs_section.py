"""The preference-pairs section of the run report: the pair filters, and pairs whose contexts
show their MeSH names (looked up in the run's corpus) with the descriptors they share with the
source highlighted."""

from __future__ import annotations

import pyarrow as pa

from kailin.report.headline import (
    num,
    off_note,
)
from kailin.report.markup import _cut, _e, _fmt, _note, _read, _sample, _table
from kailin.report.run_folder import RunFolder
from kailin.report.svg import histogram_svg


def _funnel(stats: dict | None) -> str:
    if not stats:
        return _note("no preferences/prefer_stats.json: the prefer stage has not run")
    left = stats.get("pmids", 0)
    rows = [["PMIDs with questions", _fmt(left), _bar(left, left)]]
    for f, n in (stats.get("dropped") or {}).items():
        left -= n
        rows.append([f"after {_e(f)} (−{_fmt(n)})", _fmt(left), _bar(left, stats.get("pmids", 0))])
    rows.append(["<b>kept pairs</b>", f"<b>{_fmt(stats.get('kept', 0))}</b>", ""])
    return _table("funnel", ["step", "PMIDs", ""], rows)


def _bar(n: int, total: int, width: int = 300) -> str:
    w = 0 if not total else max(0, round(width * n / total))
    return (f'<svg width="{width}" height="12"><rect width="{w}" height="12" '
            'fill="#6a9ad4"/></svg>')


def _mesh_line(uis: list[str], names: dict[str, str], shared: set[str]) -> str:
    def one(u: str) -> str:
        text = f'<span title="{_e(u)}">{_e(names.get(u, u))}</span>'
        return f"<mark>{text}</mark>" if u in shared else text

    return "; ".join(one(u) for u in uis) or '<span class="note">none in the corpus</span>'


def _pairs(run: RunFolder, n: int, seed: int) -> str:
    prefs = run.table("preferences/data/train.parquet")
    if prefs is None or prefs.num_rows == 0:
        return _note("no preference pairs")
    pick = _sample(prefs, n, seed)
    pmids = {int(r["pmid"]) for r in pick}
    ctx: dict[tuple[int, str], dict] = {}
    scores = run.table("scores", ["pmid", "question", "context_pmids", "context_titles"])
    if scores is not None and "context_pmids" in scores.column_names:
        import pyarrow.compute as pc

        sub = scores.filter(pc.is_in(scores["pmid"].cast(pa.int64()),
                                     value_set=pa.array(sorted(pmids), pa.int64())))
        for s in sub.to_pylist():
            ctx[(int(s["pmid"]), s.get("question"))] = s
    cpmids = {int(p) for c in ctx.values() for p in c.get("context_pmids") or []}
    docs = run.records(pmids | cpmids, ["title", "abstract", "mesh_uis", "mesh"])
    names = run.mesh_names(sorted({u for d in docs.values() for u in d.get("mesh_uis") or []}),
                           docs.values())
    out = []
    for r in pick:
        src = docs.get(int(r["pmid"]), {})
        src_uis = list(src.get("mesh_uis") or [])
        src_mesh = set(src_uis)
        in_contexts = {u for role in ("chosen", "rejected")
                       for cp in ctx.get((int(r["pmid"]), r[role]), {}).get("context_pmids") or []
                       for u in (docs.get(int(cp)) or {}).get("mesh_uis") or []}
        sides = []
        for role in ("chosen", "rejected"):
            q = r[role]
            c = ctx.get((int(r["pmid"]), q), {})
            lines, n_shared = [], 0
            for cp, ct in zip(c.get("context_pmids") or [], c.get("context_titles") or [],
                              strict=False):
                cm = list((docs.get(int(cp)) or {}).get("mesh_uis") or [])
                sh = src_mesh.intersection(cm)
                n_shared += len(sh)
                lines.append(f'<div class="ctx">PMID {_e(cp)}: {_e(ct)}<br><span class="mesh">'
                             f"MeSH ({len(sh)} of {len(cm)} shared): "
                             f"{_mesh_line(cm, names, src_mesh)}</span></div>")
            sides.append(
                f'<div class="side {role}"><b>{role}</b> ({_e(r.get(role + "_generator"))}, '
                f"score {num(r.get(role + '_score'), 4)}; {n_shared} shared descriptors in its "
                f"contexts)<p>{_e(q)}</p>"
                + ("".join(lines) or '<div class="note">contexts not available</div>') + "</div>")
        out.append(f'<div class="pair"><div class="abs"><b>PMID {_e(r["pmid"])}</b> '
                   f"{_e(src.get('title'))}<br>{_e(_cut(src.get('abstract'), 1200))}<br>"
                   f'<span class="mesh">MeSH: {_mesh_line(src_uis, names, in_contexts)}</span>'
                   "</div>"
                   + "".join(sides) + "</div>")
    return (_read("each box is one abstract (top) with the two questions the preference stage "
                  "compared: the chosen one (green, higher document score) and the rejected "
                  "one (red). Under each question are the abstracts the retriever returned for "
                  "it, with their MeSH descriptors; the highlighted descriptors are the ones "
                  "they share with the source abstract (in the source's list: those found in "
                  "any context). The question whose contexts share more (and more specific) "
                  "descriptors with the source wins.")
            + f'<div id="pairs">{"".join(out)}</div>')


def _pairs_section(run: RunFolder, n: int, seed: int) -> str:
    if run.stage_off("prefer"):
        return _note(off_note(run, "prefer", "preferences/"))
    prefs = run.table("preferences/data/train.parquet", ["chosen_score", "rejected_score"])
    hist = _note("no preference pairs")
    if prefs is not None and {"chosen_score", "rejected_score"} <= set(prefs.column_names):
        hist = histogram_svg(prefs["chosen_score"].to_pylist(),
                             prefs["rejected_score"].to_pylist(),
                             xlabel="document score (MeSH similarity of a question's retrieved "
                                    "contexts to its source)", ylabel="pairs",
                             title="Scores of the chosen and rejected questions")
        hist += _read("green bars count the chosen questions by their document score, red bars "
                      "the rejected ones, on the same bins. The further the green mass lies "
                      "right of the red, the clearer the preference signal DPO learns from; "
                      "heavily overlapping distributions mean near-ties.")
    return ("<h3>Funnel</h3>" + _funnel(run.json("preferences/prefer_stats.json"))
            + _read("how many abstracts survive each filter of the preference stage (ties, "
                    "margins, bands) before becoming a chosen/rejected pair.")
            + "<h3>Scores</h3>" + hist
            + f"<h3>Random pairs ({min(n, prefs.num_rows if prefs is not None else 0)} of "
              f"{prefs.num_rows if prefs is not None else 0})</h3>"
            + _pairs(run, n, seed))
