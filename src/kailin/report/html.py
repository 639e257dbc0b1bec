"""One self-contained, offline HTML report of a run directory (no CDN, no script, inline SVG).

The first screen is the headline (:mod:`kailin.report.headline`): what the run produced, how
much and where, whether the document score is informative on this corpus, whether steering
moved it, and PubMedQA before and after, each with its 95% CI. Then one section per part of the
run, each saying "not run in this config" when its stage is off or its file missing:

* the dataset (``export/export.json``, a sample of records: question, contexts, answer and its
  grounding);
* the answers and their grounding (``answers/``), with the grounding-score distribution;
* the questions, accepted and rejected by reason (``questions/``, ``policy/questions``);
* the preference pairs: the funnel (``preferences/prefer_stats.json``), chosen vs rejected
  scores, and ``n_pairs`` random pairs side by side with both questions and their retrieved
  contexts, each context's MeSH descriptors by name (looked up in the run's corpus and the
  MeSH vocabulary) and those it shares with the source abstract highlighted;
* the generator before vs after DPO (``reports/generator.json``) and the steering experiment
  (``reports/steering.json``);
* the signal self-check (``reports/signal_selfcheck.json``);
* PubMedQA (``reports/pubmedqa.json``: every model and setting with bootstrap CIs, the paired
  contrasts);
* the stage table (``manifest.json``), and at the end every report file flattened, folded.

Every plot has labelled axes and a sentence on how to read it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from kailin.report.headline import (
    DOWNSTREAM_ARMS,
    VERDICT_WORDS,
    Headline,
    ci_verdict,
    headline,
    num,
    off_note,
    pubmedqa_rows,
    with_ci,
)
from kailin.report.run_folder import RunFolder
from kailin.report.svg import histogram_svg, interval_svg

__all__ = ["REPORT_NAME", "build_report", "histogram_svg", "interval_svg"]

from kailin.report.markup import _cut, _e, _fmt, _note, _read, _sample, _table
from kailin.report.pairs_section import _pairs_section

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top;font-size:13px}th{background:#f3f3f3}
.headline{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:.7em}
.card{border:1px solid #ccc;border-left:6px solid #999;padding:.5em .7em;border-radius:4px}
.card.good{border-left-color:#2a9d2a}.card.bad{border-left-color:#c83232}
.card.neutral{border-left-color:#d0a020}.card.off{border-left-color:#bbb;color:#777}
.card .label{font-size:12px;text-transform:uppercase;color:#555}
.card .value{font-size:20px;font-weight:600;margin:.15em 0}.card .detail{font-size:12px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em;border:1px solid #ddd;padding:.8em;
margin:1em 0}.abs{grid-column:1/3;font-size:13px;color:#333}.chosen{background:#eef8ee}
.rejected{background:#fbeeee}.side{padding:.5em}mark{background:#ffe28a}.note{color:#888}
.ctx{font-size:12px;margin:.3em 0}.mesh{color:#444}.read{font-size:13px;color:#444;
max-width:900px}.record{border:1px solid #ddd;padding:.6em;margin:.8em 0;font-size:13px}
.ok{color:#2a9d2a;font-weight:600}.ko{color:#c83232;font-weight:600}
nav a{margin-right:1em;font-size:13px}details{margin:1em 0}summary{cursor:pointer}
"""


# --- headline ---------------------------------------------------------------------------------
def _headline_html(run: RunFolder, items: list[Headline]) -> str:
    m = run.manifest or {}
    status = m.get("status", "no manifest.json")
    when = m.get("finished") or m.get("started") or ""
    secs = f", {num(m.get('seconds'), 0)} s" if m.get("seconds") is not None else ""
    cards = "".join(
        f'<div class="card {_e(h.verdict)}" data-key="{_e(h.key)}"><div class="label">'
        f'{_e(h.label)}</div><div class="value">{_e(h.value)}</div><div class="detail">'
        f"{_e(h.detail)}</div></div>" for h in items)
    return (f'<p>Run <code>{_e(run.root)}</code>: <b>{_e(status)}</b> {_e(when)}{_e(secs)}.</p>'
            f'<div id="headline" class="headline">{cards}</div>'
            + _read("each card is one number the run measured, with its 95% confidence interval "
                    "in brackets. Green: the check passed or the interval lies above zero; red: "
                    "it failed or lies below zero; amber: measured, but the interval spans zero "
                    "(no detectable effect at this sample size); grey: not run in this config. "
                    "The sections below hold the detail behind each card."))


# --- dataset ----------------------------------------------------------------------------------
def _dataset(run: RunFolder, seed: int, card_href: str, n: int = 5) -> str:
    exp = run.json("export/export.json")
    if not exp or (run.manifest and run.stage_off("export")):
        return _note(off_note(run, "export", "export/export.json"))
    splits = exp.get("splits") or {}
    dec = exp.get("decontamination") or {}
    rows = [["records", _fmt(exp.get("records"))],
            ["input rows (scored questions or answers)", _fmt(exp.get("input_rows"))],
            ["source abstracts", _fmt(exp.get("distinct_source_pmids"))],
            ["context abstracts", _fmt(exp.get("distinct_context_pmids"))]]
    rows += [[f"{_e(k)} rows", f"{_fmt(v.get('rows'))} (<code>export/{_e(k)}/train.parquet"
              "</code>, <code>.jsonl</code>)"] for k, v in splits.items()]
    rows += [[_e(k.replace("_", " ")), _fmt(v)] for k, v in exp.items()
             if k.startswith("dropped_") and v]
    if dec.get("enabled"):
        rows.append(["PubMedQA test rows excluded (source / context PMID)",
                     f"{_fmt(dec.get('rows_excluded_source_pmid'))} / "
                     f"{_fmt(dec.get('rows_excluded_context_pmid'))}"])
    for k in ("generators", "teachers", "decisions"):
        if exp.get(k):
            rows.append([k, _e(", ".join(f"{a}: {b}" for a, b in exp[k].items()))])
    out = [f'<p>The dataset is in <code>{_e(run.root / "export")}</code>; its card: '
           f'<a href="{_e(card_href)}">export/README.md</a>.</p>',
           _table("dataset_counts", ["", ""], rows)]
    tri = run.table("export/triples")
    if tri is not None and tri.num_rows:
        pick = _sample(tri, n, seed)
        src = run.records([r["pmid"] for r in pick], ["title"])
        out.append(f"<h3>{len(pick)} random records of {tri.num_rows} (QA triples)</h3>")
        for r in pick:
            g = r.get("grounded")
            gv = ('<span class="ok">grounded</span>' if g else '<span class="ko">not grounded'
                  "</span>" if g is False else "not judged")
            ctxs = "".join(
                f'<div class="ctx">[{i + 1}] PMID {_e(p)}: {_e(_cut(c, 300))}</div>'
                for i, (c, p) in enumerate(zip(r.get("contexts") or [],
                                               r.get("context_pmids") or [], strict=False)))
            out.append(
                f'<div class="record"><b>PMID {_e(r["pmid"])}</b> '
                f"{_e((src.get(r['pmid']) or {}).get('title'))}<br><b>Question</b> (score "
                f"{num(r.get('score'), 3)}): {_e(r.get('question'))}<br><b>Contexts</b>{ctxs}"
                f"<b>Answer</b>: {_e(_cut(r.get('answer'), 1200))}"
                + (f" <i>(decision: {_e(r['decision'])})</i>" if r.get("decision") else "")
                + f"<br><b>Grounding</b>: {gv} (score {num(r.get('grounding_score'), 3)})</div>")
        return "".join(out)
    cpt = run.table("export/cpt")
    if cpt is not None and cpt.num_rows:
        pick = _sample(cpt, n, seed)
        out.append(f"<h3>{len(pick)} random records of {cpt.num_rows} (CPT text; no answers in "
                   "this config)</h3>")
        out += [f'<div class="record"><b>PMID {_e(r["pmid"])}</b><br>{_e(_cut(r["text"], 1500))}'
                "</div>" for r in pick]
    return "".join(out)


# --- answers ----------------------------------------------------------------------------------
def _answers(run: RunFolder) -> str:
    if run.stage_off("answers"):
        return _note(off_note(run, "answers", "answers/"))
    t = run.table("answers", ["pmid", "question", "answer", "grounded", "grounding_score",
                              "grounding_method", "decision", "is_yes_no", "teacher"])
    if t is None:
        return _note(off_note(run, "answers", "answers/"))
    from kailin.dataset.answers import DEFAULT_THRESHOLDS, grounding_rates

    g = grounding_rates(t)
    cols = t.column_names
    answered = sum(bool((a or "").strip()) for a in t["answer"].to_pylist()) if (
        "answer" in cols) else 0
    method = g.get("method") or "none"
    thr = (run.config.get("answers") or {}).get("grounding_threshold") or DEFAULT_THRESHOLDS.get(
        method)
    rows = [["answers", _fmt(t.num_rows)], ["with a non-empty answer", _fmt(answered)],
            ["grounding check", _e(method) + (f" (threshold {num(thr, 2)})" if thr else "")]]
    if g.get("judged"):
        rows.append(["grounded / judged", f"{g['grounded']} / {g['judged']} "
                     f"({num(100 * g['grounded_rate'], 0)}%)"])
    if "teacher" in cols:
        rows.append(["teacher", _e(", ".join(sorted({str(x) for x in t["teacher"].to_pylist()
                                                     if x})))])
    if "decision" in cols:
        d = Counter(x for x in t["decision"].to_pylist() if x)
        yn = sum(bool(x) for x in t["is_yes_no"].to_pylist()) if "is_yes_no" in cols else None
        rows.append(["yes/no questions; decisions", f"{_fmt(yn)}; " + _e(
            ", ".join(f"{k}: {v}" for k, v in d.most_common()) or "none")])
    out = [_table("answers_counts", ["", ""], rows)]
    gs = t["grounding_score"].to_pylist() if "grounding_score" in cols else []
    if any(v is not None for v in gs):
        out.append(histogram_svg(gs, None, labels=("answers", ""), xlabel=f"grounding score "
                                 f"({method})", ylabel="answers", elem_id="grounding_svg",
                                 title="Grounding scores of the teacher's answers",
                                 marker=thr, marker_label="threshold"))
        out.append(_read("each bar counts the answers whose grounding score falls in its range "
                         "(how much of the answer the contexts support, by the method named on "
                         "the x axis). Answers right of the dashed threshold count as grounded; "
                         "a heap near zero means the teacher answers from its own knowledge, "
                         "not from the retrieved contexts."))
        worst = sorted((r for r in t.to_pylist() if r.get("grounding_score") is not None),
                       key=lambda r: r["grounding_score"])[:2]
        if worst:
            out.append("<h3>The least grounded answers</h3>" + "".join(
                f'<div class="record"><b>PMID {_e(r["pmid"])}</b> (grounding '
                f"{num(r['grounding_score'], 3)}) <b>Q</b>: {_e(r.get('question'))}<br><b>A</b>: "
                f"{_e(_cut(r.get('answer'), 600))}</div>" for r in worst))
    return "".join(out)


# --- questions --------------------------------------------------------------------------------
def _question_tally(path: Path) -> list[tuple[str, str | None, int, int, str | None]] | None:
    """(generator, reject_reason, questions, the generator's questions, an example raw text of
    a rejected one) from a questions folder, tallied by DuckDB (bounded memory)."""
    from kailin.io import connect_duckdb, register_parquet

    con = connect_duckdb()
    try:
        cols = register_parquet(con, "q", path)
    except FileNotFoundError:
        return None
    if "reject_reason" not in cols:
        return None
    gen = "cast(generator as varchar)" if "generator" in cols else "'?'"
    raw = "raw" if "raw" in cols else "null"
    return con.sql(
        f"select g, reject_reason, n, sum(n) over (partition by g), example from ("
        f"select {gen} as g, reject_reason, count(*) as n, "
        f"min({raw}) filter (where reject_reason is not null and {raw} <> '') as example "
        "from q group by all) order by g, reject_reason is not null, n desc, "
        "reject_reason").fetchall()


def _questions(run: RunFolder) -> str:
    rows = []
    for rel in ("questions", "policy/questions"):
        for g, r, n, total, ex in _question_tally(run.root / rel) or []:
            rows.append([_e(g), "<b>accepted</b>" if r is None else _e(r), _fmt(n),
                         f"{num(100 * n / total, 0)}%" if total else "–",
                         "" if ex is None else _e(_cut(ex, 220))])
    if not rows:
        return _note(off_note(run, "questions", "questions/"))
    return (_table("questions_table", ["generator", "verdict", "questions", "share",
                                       "example of the model's raw text"], rows)
            + _read("one row per generator and extractor verdict: <i>accepted</i> questions go on "
                    "to retrieval and scoring; the others were rejected by the question "
                    "extractor for the reason given (<i>no_question</i>: no sentence ending in "
                    "'?', often cut off by max_new_tokens; <i>too_short</i> / <i>too_long</i>: "
                    "outside the word limits; <i>copies_prompt</i>: repeats the instruction). "
                    "A generator with a large rejected share wastes its samples."))


# --- preference pairs -------------------------------------------------------------------------


# --- generator / steering ---------------------------------------------------------------------
def _steering(run: RunFolder) -> str:
    out = []
    g = run.report("generator.json")
    if g:
        v = ci_verdict(g.get("ci_low"), g.get("ci_high"))
        out.append("<h3>Before vs after DPO (reports/generator.json)</h3>" + _table(
            "generator", ["held-out abstracts", "before mean", "after mean",
                          "after − before [95% CI]", "verdict"],
            [[_fmt(g.get("n")), num(g.get("before_mean"), 4), num(g.get("after_mean"), 4),
              with_ci(g.get("delta"), g.get("ci_low"), g.get("ci_high"), 4, sign=True),
              VERDICT_WORDS[v]]]))
    else:
        out.append("<h3>Before vs after DPO</h3>"
                   + _note(off_note(run, "generator_eval", "reports/generator.json")))
    st = run.report("steering.json")
    if not st:
        out.append("<h3>Steering experiment</h3>"
                   + _note(off_note(run, "steering", "reports/steering.json")))
        return "".join(out)
    out.append(f"<h3>Steering experiment (reports/steering.json): {_fmt(st.get('rounds'))} "
               f"round(s), {_fmt(st.get('heldout'))} held-out abstracts, {_fmt(st.get('pairs'))}"
               " pairs</h3>")
    arms = [[_e(a), num(v.get("mean"), 4), _fmt(v.get("n")), _fmt(v.get("nan")),
             num((v.get("quantiles") or [None] * 5)[2], 4)]
            for a, v in (st.get("arms") or {}).items()]
    out.append(_table("steering_arms", ["arm", "mean score", "n", "NaN", "median"], arms))
    for label, cs in (("run's scorer", st.get("contrasts") or {}),
                      ("second scorer", (st.get("second_scorer") or {}).get("contrasts") or {})):
        if not cs:
            continue
        out.append(_table("", [f"contrast ({label})", "delta [95% CI]", "n", "verdict"], [
            [_e(k.replace("_vs_", " − ")),
             with_ci(c.get("delta"), c.get("ci_low"), c.get("ci_high"), 4, sign=True),
             _fmt(c.get("n")), VERDICT_WORDS[ci_verdict(c.get("ci_low"), c.get("ci_high"))]]
            for k, c in cs.items()]))
        out.append(interval_svg(
            [(k.replace("_vs_", " − "), c.get("delta"), c.get("ci_low"), c.get("ci_high"))
             for k, c in cs.items()],
            xlabel=f"difference in mean held-out document score ({label})", reference=0.0,
            reference_label="no difference", title=f"Contrasts, {label}",
            elem_id="steering_svg" if label == "run's scorer" else "steering2_svg"))
    out.append(_read("each row is a paired difference between two generators' questions on the "
                     "same held-out abstracts: the dot is the mean difference, the bar its 95% "
                     "bootstrap CI. A bar entirely right of the dashed zero line means the first "
                     "arm's questions retrieve contexts closer to their source; the second "
                     "scorer (another retriever and measure, never used for labels) checks that "
                     "the gain is not an artefact of the labelling scorer."))
    return "".join(out)


# --- signal -----------------------------------------------------------------------------------
def _signal(run: RunFolder) -> str:
    s = run.report("signal_selfcheck.json")
    if not s:
        return _note(off_note(run, "signal", "reports/signal_selfcheck.json"))
    forms = [("this run's scoring", s)] + ([("the paper's scoring", s["paper_form"])]
                                           if s.get("paper_form") else [])
    rows, plot = [], []
    for label, f in forms:
        co, cg = f.get("auc_other_ci") or [None, None], f.get("auc_generic_ci") or [None, None]
        rows.append([_e(label), with_ci(f.get("auc_other"), co[0], co[1]),
                     with_ci(f.get("auc_generic"), cg[0], cg[1]), num(f.get("nan_share"), 3)])
        plot += [(f"vs other titles ({label})", f.get("auc_other"), co[0], co[1]),
                 (f"vs generic questions ({label})", f.get("auc_generic"), cg[0], cg[1])]
    return (f"<p>{_fmt(s.get('sample'))} records; verdict: <b>{_e(s.get('verdict'))}</b></p>"
            + _table("signal_table", ["scoring", "AUC own title vs another record's title",
                                      "AUC own title vs generic questions", "NaN share"], rows)
            + interval_svg(plot, xlabel="AUC (probability the record's own title scores "
                           "higher)", reference=0.5, reference_label="chance",
                           title="Signal self-check", elem_id="signal_svg")
            + _read("titles stand in for expert questions: for each sampled record, its own "
                    "title and a decoy (another record's title, or a generic question) are "
                    "scored against the record's MeSH descriptors. The AUC is how often the own "
                    "title wins; 0.5 (dashed) is chance. An interval well right of 0.5 (above "
                    "0.6) means the score can tell a relevant question from an irrelevant one on "
                    "this corpus, so preferences built from it carry information."))


# --- PubMedQA ---------------------------------------------------------------------------------
def _pubmedqa(run: RunFolder) -> str:
    rep = run.report("pubmedqa.json")
    if not rep:
        return _note(off_note(run, "pubmedqa", "reports/pubmedqa.json"))
    rows = pubmedqa_rows(rep)
    if not rows:
        return _note("reports/pubmedqa.json holds no settings")
    table = [[_e(r["setting"]), _e(r["model"]), _e(DOWNSTREAM_ARMS.get(r["model"], "")),
              with_ci(r["accuracy"], r["acc_lo"], r["acc_hi"]),
              with_ci(r["macro_f1"], r["f1_lo"], r["f1_hi"]), _fmt(r["n"]),
              _e(" / ".join(f"{k} {v}" for k, v in sorted(r["predicted"].items())))]
             for r in rows]
    out = [f"<p>Method: {_e(rep.get('method'))}; test items: {_fmt(rows[0]['n'])}.</p>",
           _table("pubmedqa_table", ["setting", "model", "what", "accuracy [95% CI]",
                                     "macro-F1 [95% CI]", "n", "predicted labels"], table)]
    contrasts = []
    for s, c in (rep.get("ci") or {}).items():
        for name, d in (c.get("contrasts") or {}).items():
            a, f = d.get("accuracy") or {}, d.get("macro_f1") or {}
            contrasts.append([_e(s), _e(name.replace("_vs_", " − ")),
                              with_ci(a.get("delta"), a.get("ci_low"), a.get("ci_high"),
                                      sign=True),
                              with_ci(f.get("delta"), f.get("ci_low"), f.get("ci_high"),
                                      sign=True),
                              VERDICT_WORDS[ci_verdict(a.get("ci_low"), a.get("ci_high"))]])
    if contrasts:
        out.append("<h3>Paired differences (bootstrap over the same test items)</h3>"
                   + _table("pubmedqa_contrasts", ["setting", "contrast", "accuracy delta",
                                                   "macro-F1 delta", "accuracy verdict"],
                            contrasts))
    out.append(interval_svg([(f"{r['setting']}: {r['model']}", r["accuracy"], r["acc_lo"],
                              r["acc_hi"]) for r in rows],
                            xlabel="accuracy on the PubMedQA test items", title="PubMedQA "
                            "accuracy by setting and model", elem_id="pubmedqa_svg"))
    out.append(_read("one row per model and setting: the dot is the accuracy, the bar its 95% "
                     "bootstrap CI over the test items. Compare <i>after</i> (CPT on the kailin "
                     "export) with <i>before</i> (the base model) and with the controls trained "
                     "on the same abstracts without questions; overlapping bars are settled by "
                     "the paired differences above, which cancel the item-to-item noise. Check "
                     "the predicted labels too: a model that answers 'yes' to everything scores "
                     "the share of 'yes' items (about 0.55) with a low macro-F1."))
    return "".join(out)


# --- stages and the raw dump ------------------------------------------------------------------
def _stage_table(manifest: dict | None) -> str:
    if not manifest or not manifest.get("stages"):
        return _note("no manifest.json with stages")
    rows = []
    for name, st in manifest["stages"].items():
        st = st or {}
        counts = st.get("counts") if isinstance(st.get("counts"), dict) else {
            k: v for k, v in st.items()
            if isinstance(v, int | float) and k not in ("seconds",) and not isinstance(v, bool)}
        cnt = ", ".join(f"{_e(k)}={_fmt(v)}" for k, v in list(counts.items())[:8])
        status = st.get("status", "")
        if st.get("skipped"):
            status = f"{status} (up to date)"
        rows.append([_e(name), _e(status), f"<code>{_e(str(st.get('key', ''))[:12])}</code>", cnt,
                     _fmt(st.get("seconds", ""))])
    return _table("stages", ["stage", "status", "key", "counts", "seconds"], rows)


def _json_block(obj: Any, elem_id: str, limit: int = 2000) -> str:
    """A nested dict as a two-column table of flattened keys (CIs appear as [lo, hi])."""
    flat: list[tuple[str, Any]] = []

    def walk(x: Any, prefix: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(x, list) and len(x) <= 4 and all(isinstance(v, int | float) for v in x):
            flat.append((prefix[:-1], "[" + ", ".join(_fmt(v) for v in x) + "]"))
        elif not isinstance(x, list):
            flat.append((prefix[:-1], _fmt(x)))

    walk(obj, "")
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in flat[:limit])
    more = f"<p class=note>{len(flat) - limit} more keys not shown</p>" if len(flat) > limit else ""
    return f'<table id="{elem_id}">{rows}</table>{more}'


def _raw_dump(run: RunFolder) -> str:
    files = sorted((run.root / "reports").glob("*.json")) if (run.root / "reports").is_dir() \
        else []
    files += [p for p in (run.root / "export" / "export.json",
                          run.root / "preferences" / "prefer_stats.json") if p.is_file()]
    parts = []
    for p in files:
        rel = p.relative_to(run.root).as_posix()
        if p.parent.name == "reports" and run.report(p.name) is None:
            parts.append(f"<h3>{_e(rel)}</h3>" + _note("left by a stage this run turned off; "
                                                        "not shown"))
            continue
        obj = run.json(rel)
        if obj is not None:
            elem = "raw-" + rel.replace("/", "-").removesuffix(".json")
            parts.append(f"<h3>{_e(rel)}</h3>{_json_block(obj, elem)}")
    body = "".join(parts) or _note("no report files")
    return (f'<details id="raw"><summary>Every report file, flattened ({len(files)} files; '
            f"click to open)</summary>{body}</details>")


# --- the page ---------------------------------------------------------------------------------
def build_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 n_pairs: int = 20, seed: int = 0, items: list[Headline] | None = None
                 ) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) and return its path; ``items``: the
    headline, when the caller computed it already."""
    from kailin.io import write_text_atomic

    run = RunFolder(Path(run_dir))
    items = items if items is not None else headline(run)
    path = Path(out) if out is not None else run.root / REPORT_NAME
    card = Path(os.path.relpath(run.root.resolve() / "export" / "README.md",
                                path.resolve().parent)).as_posix()
    sections = [
        ("dataset", "The dataset", _dataset(run, seed, card)),
        ("answers", "Answers and their grounding", _answers(run)),
        ("questions", "Questions: accepted and rejected", _questions(run)),
        ("preferences", "Preference pairs", _pairs_section(run, n_pairs, seed)),
        ("steering", "Did DPO / steering move the score?", _steering(run)),
        ("signal", "Is the document score informative? (signal self-check)", _signal(run)),
        ("pubmedqa", "Downstream: PubMedQA", _pubmedqa(run)),
        ("stage-table", "Stages", _stage_table(run.manifest)),
    ]
    nav = "".join(f'<a href="#sec-{k}">{_e(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="sec-{k}"><h2>{_e(t)}</h2>{s}</section>' for k, t, s in sections)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>kailin report: "
           f"{_e(run.root.name)}</title><style>{_CSS}</style></head><body><h1>kailin run "
           f"{_e(run.root.name)}: what it produced and whether it is any good</h1>"
           f"{_headline_html(run, items)}<nav>{nav}</nav>{body}"
           f"<h2>Raw report files</h2>{_raw_dump(run)}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, doc)
    return path
