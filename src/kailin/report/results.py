"""``kailin results STEERING_JSON``: the steering experiment's results page, generated.

Reads ``reports/steering.json`` (what the pipeline's ``steering`` stage writes) and writes a
Markdown page with its tables (arms, contrasts with their 95% CIs under both scorers, rounds,
reward-hacking metrics, DPO reward margins and accuracies, PubMedQA) and two small SVG plots
beside it (held-out score quantiles per arm; reward margins over the DPO steps). Nothing on the
page is written by hand: regenerate it after every run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kailin.errors import InputError
from kailin.io import write_text_atomic

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _f(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _verdict(c: dict) -> str:
    lo, hi = c.get("ci_low"), c.get("ci_high")
    if lo is None or hi is None:
        return "not measured"
    if lo > 0:
        return "**above 0** (CI excludes 0)"
    if hi < 0:
        return "**below 0** (CI excludes 0)"
    return "not significant (CI spans 0)"


def _svg_quantiles(arms: dict[str, dict], title: str) -> str:
    """One horizontal box per arm: 10-90% whiskers, 25-75% box, median tick."""
    rows = [(a, v.get("quantiles") or []) for a, v in arms.items()]
    rows = [(a, q) for a, q in rows if len(q) == 5]
    w, h, left, top = 560, 40 + 34 * max(len(rows), 1), 130, 30
    lo = min((q[0] for _, q in rows), default=0.0)
    hi = max((q[4] for _, q in rows), default=1.0)
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return left + (v - lo) / span * (w - left - 20)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="16" text-anchor="middle">{title}</text>']
    for i, (arm, q) in enumerate(rows):
        y = top + 34 * i + 12
        c = COLORS[i % len(COLORS)]
        out += [f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{arm}</text>',
                f'<line x1="{x(q[0]):.1f}" x2="{x(q[4]):.1f}" y1="{y}" y2="{y}" stroke="{c}"/>',
                f'<rect x="{x(q[1]):.1f}" y="{y - 9}" width="{max(x(q[3]) - x(q[1]), 1):.1f}" '
                f'height="18" fill="{c}" fill-opacity="0.35" stroke="{c}"/>',
                f'<line x1="{x(q[2]):.1f}" x2="{x(q[2]):.1f}" y1="{y - 9}" y2="{y + 9}" '
                f'stroke="{c}" stroke-width="2"/>']
    yb = h - 8
    out += [f'<text x="{left}" y="{yb}">{lo:.3f}</text>',
            f'<text x="{w - 20}" y="{yb}" text-anchor="end">{hi:.3f}</text>', "</svg>"]
    return "\n".join(out)


def _svg_curves(training: dict[str, dict], key: str, title: str) -> str:
    series = [(name, [(p.get("step"), p.get(key)) for p in t.get("curve", [])
                      if p.get(key) is not None and p.get("step") is not None])
              for name, t in training.items()]
    series = [(n, s) for n, s in series if s]
    w, h, left, top, bottom = 560, 260, 50, 30, 40
    xs = [p[0] for _, s in series for p in s] or [0, 1]
    ys = [p[1] for _, s in series for p in s] or [0, 1]
    x0, x1, y0, y1 = min(xs), max(xs), min([*ys, 0.0]), max([*ys, 0.0])
    xspan, yspan = (x1 - x0) or 1, (y1 - y0) or 1

    def px(v: float) -> float:
        return left + (v - x0) / xspan * (w - left - 140)

    def py(v: float) -> float:
        return h - bottom - (v - y0) / yspan * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="16" text-anchor="middle">{title}</text>',
           f'<line x1="{left}" x2="{w - 140}" y1="{py(0):.1f}" y2="{py(0):.1f}" stroke="#999" '
           'stroke-dasharray="3,3"/>',
           f'<text x="{left - 4}" y="{py(y1) + 4:.1f}" text-anchor="end">{y1:.2f}</text>',
           f'<text x="{left - 4}" y="{py(y0) + 4:.1f}" text-anchor="end">{y0:.2f}</text>',
           f'<text x="{(left + w - 140) / 2}" y="{h - 8}" text-anchor="middle">step</text>']
    for i, (name, s) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in s)
        out += [f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>',
                f'<text x="{w - 132}" y="{top + 16 * i + 10}" fill="{c}">{name}</text>']
    out.append("</svg>")
    return "\n".join(out)


#: what each downstream model is, for the page
DOWNSTREAM_ARMS = {"before": "base model, no CPT", "after": "CPT on the kailin export",
                   "raw_abstracts": "CPT on the same abstracts and contexts, no questions",
                   "pre_dpo": "CPT on an export of the pre-DPO questions"}


def _ci_cell(v: dict[str, Any] | None, nd: int = 3) -> str:
    if not v:
        return "–"
    point = v.get("value", v.get("delta"))
    return f"{_f(point, nd)} [{_f(v.get('ci_low'), nd)}, {_f(v.get('ci_high'), nd)}]"


def _robustness_lines(rb: dict[str, Any]) -> list[str]:
    """Could the final policy's gain over base be something else (the report's
    ``robustness``)?"""
    if not rb:
        return []
    lines = ["## Could the gain be something else?", "",
             "The final dpo arm against base (and the shuffled control), paired over held-out "
             "abstracts.", "",
             "| check | abstracts | contrast | run's scorer: delta [95% CI] | second scorer: "
             "delta [95% CI] |", "|---|---|---|---|---|"]
    la = (rb.get("length_adjusted") or {}).get("dpo_vs_base") or {}
    if la:
        s1 = la.get("scores") or {}
        lines.append(f"| adjusted for question length (slope {_f(s1.get('slope_per_word'), 5)} "
                     f"per word, corr {_f(s1.get('corr_words_score'), 3)}) | {s1.get('n')} | "
                     f"dpo_vs_base | {_ci_cell(s1, 4)} | {_ci_cell(la.get('scores2'), 4)} |")
    for label, part in (("no title copy, no MeSH stuffing in the policy's question",
                         rb.get("without_hacking")),
                        ("first half of the held-out abstracts (by PMID)",
                         (rb.get("halves") or {}).get("first")),
                        ("second half", (rb.get("halves") or {}).get("second"))):
        if not part:
            continue
        for name in (part.get("scores") or {}):
            lines.append(f"| {label} | {part.get('abstracts')} | {name} | "
                         f"{_ci_cell(part['scores'].get(name), 4)} | "
                         f"{_ci_cell((part.get('scores2') or {}).get(name), 4)} |")
    v = (rb.get("validity") or {}).get("dpo_vs_base")
    if v:
        lines += ["", f"Validity (share of accepted questions), dpo - base: {_ci_cell(v, 4)}."]
    return [*lines, ""]


def _downstream_lines(ds: dict[str, Any]) -> list[str]:
    models = ds.get("models") or {}
    cis = ds.get("ci") or {}
    lines = ["| model | what | setting | accuracy [95% CI] | macro-F1 [95% CI] | n |",
             "|---|---|---|---|---|---|"]
    for tag in models:
        for s, v in ((ds.get(tag) or {}).get("settings") or {}).items():
            c = ((cis.get(s) or {}).get("models") or {}).get(tag) or {}
            acc = _ci_cell(c.get("accuracy")) if c else _f(v.get("accuracy"), 3)
            f1 = _ci_cell(c.get("macro_f1")) if c else _f(v.get("macro_f1"), 3)
            lines.append(f"| {tag} | {DOWNSTREAM_ARMS.get(tag, models[tag])} | {s} | {acc} | "
                         f"{f1} | {v.get('n')} |")
    lines.append("")
    if any((c or {}).get("contrasts") for c in cis.values()):
        lines += ["Paired bootstrap over the same test items (a difference is significant when "
                  "its 95% CI excludes 0):", "",
                  "| contrast | setting | accuracy delta [95% CI] | macro-F1 delta [95% CI] | "
                  "significant |", "|---|---|---|---|---|"]
        for s, c in cis.items():
            for name, d in (c.get("contrasts") or {}).items():
                sig = [k for k in ("accuracy", "macro_f1") if (d.get(k) or {}).get("significant")]
                lines.append(f"| {name.replace('_vs_', ' - ')} | {s} | "
                             f"{_ci_cell(d.get('accuracy'))} | {_ci_cell(d.get('macro_f1'))} | "
                             f"{', '.join(sig) or 'no'} |")
        lines.append("")
    return lines


def render_results(rep: dict[str, Any], assets: str = "results") -> tuple[str, dict[str, str]]:
    """The Markdown page and its SVG files (name -> text) for one steering.json."""
    for k in ("heldout", "pairs", "rounds", "arms", "contrasts"):
        if k not in rep:
            raise InputError(f"steering.json: missing {k!r} (is this a steering report?)")
    run = rep.get("run", {})
    lines = ["# Results: does MeSH-guided DPO steer the generator?", "",
             "_Generated by `kailin results` from `docs/results/steering.json`; do not edit by "
             "hand._", ""]
    if run:
        lines += ["| run | |", "|---|---|"]
        for k in ("command", "config", "machine", "started", "kailin"):
            if k in run:
                lines.append(f"| {k} | `{run[k]}` |")
        lines.append(f"| runtime of the steering stage | {_f(rep.get('seconds'), 0)} s |")
        if run.get("total_seconds") is not None:
            lines.append(f"| runtime of the whole run | {_f(run['total_seconds'], 0)} s |")
        lines.append(f"| seeds | `{json.dumps(rep.get('seeds', {}))}` |")
        lines.append("")
    first = {"on_policy": "the best against the worst of the SFT generator's own samples",
             "pairs": "one question per generator, the preferences stage's pairs"}
    if rep.get("first_round") in first:
        lines += [f"Round 1's pairs: {first[rep['first_round']]}; later rounds: the best "
                  "against the worst of the previous round's policy's samples.", ""]
    lines += [f"Held-out abstracts: **{rep['heldout']}**; preference pairs (round 1, after the "
              f"filters): **{rep['pairs']}**; per round: {rep.get('pairs_per_round')}; rounds: "
              f"**{rep['rounds']}**.", ""]
    validity = [(r.get("round"), r["validity_pairs"]) for r in rep.get("rounds_info", [])
                if r.get("validity_pairs") is not None]
    if validity:
        lines += ["Validity pairs (a valid question chosen over an invalid output): " + ", ".join(
            f"round {i}: {n}" for i, n in validity), ""]
    if rep.get("max_new_tokens"):
        lines += [f"Token budget of every compared question: {rep['max_new_tokens']}.", ""]
    ties = [r.get("ties", {}) for r in rep.get("rounds_info", [])]
    if ties:
        lines += ["Ties (the best and worst question of an abstract score within 1e-9): " +
                  ", ".join(f"round {i + 1}: {_f(t.get('tie_share'), 3)} of {t.get('pmids')}"
                            for i, t in enumerate(ties)), ""]
    gt = rep.get("generator_ties")
    if gt:
        lines += [f"Ties between the generators' questions ({', '.join(gt.get('generators', []))}"
                  f"): {_f(gt.get('tie_share'), 3)} of {gt.get('pmids')} abstracts.", ""]
    agree = [(i + 1, r["label_agreement"]) for i, r in enumerate(rep.get("rounds_info", []))
             if r.get("label_agreement")]
    if agree:
        lines += ["Label reliability (share of the pairs that the second, independent scorer "
                  "orders as the label does; 0.5 = noise): " + ", ".join(
                      f"round {i}: {_f(a.get('agreement'), 3)} of {a.get('compared')}"
                      for i, a in agree), ""]

    def arms_table(arms: dict, title: str) -> list[str]:
        out = [f"### {title}", "", "| arm | mean | n | NaN | std | median |", "|---|---|---|---|---|---|"]
        for a, v in arms.items():
            q = v.get("quantiles") or [None] * 5
            out.append(f"| {a} | {_f(v.get('mean'))} | {v.get('n')} | {v.get('nan')} | "
                       f"{_f(v.get('std'))} | {_f(q[2])} |")
        return [*out, ""]

    def contrast_table(cs: dict, title: str) -> list[str]:
        out = [f"### {title}", "", "| contrast | delta | 95% CI | n | verdict |",
               "|---|---|---|---|---|"]
        for name, c in cs.items():
            out.append(f"| {name} | {_f(c.get('delta'))} | [{_f(c.get('ci_low'))}, "
                       f"{_f(c.get('ci_high'))}] | {c.get('n')} | {_verdict(c)} |")
        return [*out, ""]

    lines += ["## Held-out document score", ""]
    lines += arms_table(rep["arms"], "The run's scorer (the one that labelled the pairs)")
    lines += contrast_table(rep["contrasts"], "Contrasts (paired bootstrap over held-out "
                            "abstracts)")
    sec = rep.get("second_scorer") or {}
    if sec:
        lines += [f"Independent check: retriever `{json.dumps(sec.get('index'))}`, measure "
                  f"`{sec.get('measure')}` (faithful: {sec.get('faithful')}).", ""]
        lines += arms_table(sec.get("arms", {}), "Second scorer")
        lines += contrast_table(sec.get("contrasts", {}), "Contrasts, second scorer")
    lines += ["![held-out score quantiles](results/steering_scores.svg)", ""]
    pr = rep.get("per_round") or {}
    if pr:
        lines += ["### Every arm after every round", "", "| arm | mean (run's scorer) | mean "
                  "(second scorer) |", "|---|---|---|"]
        lines += [f"| {k} | {_f(v.get('mean'))} | {_f(v.get('mean_second'))} |"
                  for k, v in pr.items()]
        lines.append("")
    rc = rep.get("round_contrasts") or {}
    if rc:
        lines += ["### Round over round (each round against the one before, paired)", "",
                  "| contrast | run's scorer: delta [95% CI] | second scorer: delta [95% CI] |",
                  "|---|---|---|"]
        lines += [f"| {k.replace('_vs_', ' - ')} | {_ci_cell(v.get('scores'), 4)} | "
                  f"{_ci_cell(v.get('scores2'), 4)} |" for k, v in rc.items()]
        lines.append("")
    hk = rep.get("hacking") or {}
    if hk:
        lines += ["## Reward hacking checks (held-out questions)", "",
                  "| arm | valid | words | copies title | distinct-2 | MeSH stuffing |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {_f(v.get('valid'), 3)} | {_f(v.get('words'), 1)} | "
                  f"{_f(v.get('copies_title'), 3)} | {_f(v.get('distinct_2'), 3)} | "
                  f"{_f(v.get('mesh_stuffing'), 3)} |" for k, v in hk.items()]
        lines.append("")
    lines += _robustness_lines(rep.get("robustness") or {})
    tr = rep.get("training") or {}
    if tr:
        ep = any(v.get("epochs") is not None for v in tr.values())  # (older reports: none)
        lines += ["## DPO: trl's reward margins and accuracies", "",
                  "| training | pairs | " + ("epochs | " if ep else "") + "steps logged | margin "
                  "first → last | accuracy first → last | loss first → last |",
                  "|---|---|---|---|---|---|" + ("---|" if ep else "")]
        for k, v in tr.items():
            c = v.get("curve") or [{}]
            e = f"{_f(v.get('epochs'), 1)} | " if ep else ""
            lines.append(f"| {k} | {v.get('pairs')} | {e}{len(v.get('curve') or [])} | "
                         f"{_f(c[0].get('margin'), 3)} → {_f(c[-1].get('margin'), 3)} | "
                         f"{_f(c[0].get('accuracy'), 2)} → {_f(c[-1].get('accuracy'), 2)} | "
                         f"{_f(c[0].get('loss'), 3)} → {_f(c[-1].get('loss'), 3)} |")
        lines += ["", "![reward margins](results/steering_margins.svg)", ""]
    ds = rep.get("downstream") or {}
    lines += ["## Downstream: PubMedQA", ""]
    if ds.get("before"):
        lines += _downstream_lines(ds)
    else:
        lines += ["Not measured in this run (the pubmedqa stage had not run when the steering "
                  "stage wrote its report).", ""]
    notes = rep.get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    assets_files = {
        "steering_scores.svg": _svg_quantiles(
            {**rep["arms"], **{f"{a} (2nd)": v for a, v in
                               (sec.get("arms") or {}).items()}},
            "held-out score: 10/25/50/75/90% quantiles"),
        "steering_margins.svg": _svg_curves(tr, "margin", "DPO reward margin (chosen - rejected)"),
    }
    return "\n".join(lines), assets_files


def write_results(steering_json: str | Path, out: str | Path) -> Path:
    p = Path(steering_json)
    if not p.exists():
        raise InputError(f"{p}: no such file (give RUN_DIR/reports/steering.json)")
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not JSON: {exc}") from None
    from kailin.report.downstream import is_downstream_report, render_downstream

    if is_downstream_report(rep):  # reports/downstream.json: the downstream page, no plots
        out = Path(out)
        write_text_atomic(out, render_downstream(rep))
        return out
    text, assets = render_results(rep)
    out = Path(out)
    adir = out.parent / "results"
    adir.mkdir(parents=True, exist_ok=True)
    for name, svg in assets.items():
        write_text_atomic(adir / name, svg)
    write_text_atomic(out, text)
    return out
