"""The report's headline: what a run produced, how much, where, and whether it is any good, as
a few numbers with their confidence intervals, each read from the run's report files.

The HTML report shows it first; ``kailin report`` prints the same lines to the terminal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kailin.report.run_folder import RunFolder

#: what each downstream model is
DOWNSTREAM_ARMS = {"before": "base model, no CPT", "after": "CPT on the kailin export",
                   "raw_abstracts": "CPT on the same abstracts and contexts, no questions",
                   "pre_dpo": "CPT on an export of the pre-DPO questions"}


@dataclass(frozen=True)
class Headline:
    """One headline number: ``verdict`` is good, bad, neutral (measured, nothing to conclude)
    or off (not run in this config)."""

    key: str
    label: str
    value: str
    detail: str
    verdict: str = "neutral"


def num(x: Any, nd: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def with_ci(value: Any, lo: Any, hi: Any, nd: int = 3, sign: bool = False) -> str:
    """``0.448 [0.404, 0.494]`` (the value and its 95% CI, as the JSON holds them, rounded)."""
    if lo is None or hi is None:
        return num(value, nd, sign)
    return f"{num(value, nd, sign)} [{num(lo, nd, sign)}, {num(hi, nd, sign)}]"


def ci_verdict(lo: Any, hi: Any) -> str:
    """good when the CI lies above 0, bad below, neutral when it spans 0 or is unknown."""
    if not isinstance(lo, int | float) or not isinstance(hi, int | float):
        return "neutral"
    return "good" if lo > 0 else "bad" if hi < 0 else "neutral"


VERDICT_WORDS = {"good": "CI above 0", "bad": "CI below 0", "neutral": "CI spans 0"}


def off_note(run: RunFolder, stage: str, rel: str) -> str:
    """Why a part of the report is empty: the stage is off, the run has not got there yet, or
    its file is missing."""
    if run.stage_off(stage):
        return f"not run in this config (the {stage} stage is off)"
    if (run.manifest or {}).get("status") == "running" and run.stage_status(stage) != "done":
        return f"not run yet: the run is still going (no {rel} so far)"
    return f"not run in this config (no {rel} in the run folder)"


def _dataset(run: RunFolder) -> list[Headline]:
    exp = None if run.stage_off("export") and run.manifest else run.json("export/export.json")
    if not exp:
        return [Headline("dataset", "Dataset", "none", off_note(run, "export",
                                                                "export/export.json"), "off")]
    splits = exp.get("splits") or {}
    rows = ", ".join(f"{k} {v.get('rows')}" for k, v in splits.items())
    n = exp.get("records") or 0
    return [Headline("dataset", "Dataset", f"{n} records",
                     f"from {exp.get('distinct_source_pmids', '–')} source abstracts ({rows} "
                     f"rows), Parquet + JSONL + dataset card in {run.root / 'export'}",
                     "neutral" if n else "bad")]


def _answers(run: RunFolder) -> list[Headline]:
    exp = run.json("export/export.json") or {}
    g = exp.get("grounding") or {}
    if not g:
        ans = None if run.stage_off("answers") else run.table(
            "answers", ["grounded", "grounding_method"])
        if ans is None:
            return [Headline("answers", "Answers", "none",
                             off_note(run, "answers", "answers/"), "off")]
        from kailin.dataset.answers import grounding_rates

        g = grounding_rates(ans)
    if not g or not g.get("judged"):
        return [Headline("answers", "Answers", f"{g.get('n', 0)} answers",
                         "no grounding check in this config (answers.grounding: none)")]
    rate = g.get("grounded_rate")
    return [Headline("answers", "Grounded answers", f"{g['grounded']} of {g['judged']}",
                     f"{num(100 * rate, 0)}% judged grounded in their contexts "
                     f"({g.get('method')})", "good" if rate and rate >= 0.5 else "bad")]


def _pairs(run: RunFolder) -> list[Headline]:
    st = run.json("preferences/prefer_stats.json")
    if not st or run.stage_off("prefer"):
        return [Headline("pairs", "Preference pairs", "none",
                         off_note(run, "prefer", "preferences/prefer_stats.json"), "off")]
    kept = st.get("kept") or 0
    return [Headline("pairs", "Preference pairs", f"{kept} pair{'' if kept == 1 else 's'}",
                     f"chosen vs rejected question for {kept} of {st.get('pmids', '–')} "
                     f"abstracts with questions, in {run.root / 'preferences'}",
                     "neutral" if kept else "bad")]


def _signal(run: RunFolder) -> list[Headline]:
    s = run.report("signal_selfcheck.json")
    if not s:
        return [Headline("signal", "Signal self-check", "none",
                         off_note(run, "signal", "reports/signal_selfcheck.json"), "off")]
    ci = s.get("auc_other_ci") or [None, None]
    if s.get("auc_other") is None:
        return [Headline("signal", "Signal self-check", "not measured",
                         str(s.get("verdict", "")), "bad")]
    gci = s.get("auc_generic_ci") or [None, None]
    return [Headline("signal", "Signal self-check",
                     f"AUC {with_ci(s['auc_other'], ci[0], ci[1], 2)}",
                     f"a record's own title against another record's title, scored by its MeSH "
                     f"(0.5 = chance); against generic questions "
                     f"{with_ci(s.get('auc_generic'), gci[0], gci[1], 2)}; "
                     f"{s.get('verdict', '')}",
                     "good" if isinstance(ci[0], int | float) and ci[0] > 0.6 else "bad")]


def _steering(run: RunFolder) -> list[Headline]:
    out = []
    g = run.report("generator.json")
    if g and g.get("delta") is not None:
        v = ci_verdict(g.get("ci_low"), g.get("ci_high"))
        out.append(Headline(
            "generator", "DPO: held-out score",
            with_ci(g["delta"], g.get("ci_low"), g.get("ci_high"), 4, sign=True),
            f"after − before DPO, mean document score of {g.get('n')} held-out abstracts' "
            f"questions ({num(g.get('before_mean'), 4)} → {num(g.get('after_mean'), 4)}); "
            f"{VERDICT_WORDS[v]}", v))
    st = run.report("steering.json")
    if st and st.get("contrasts"):
        name = "dpo_vs_base" if "dpo_vs_base" in st["contrasts"] else next(iter(st["contrasts"]))
        c = st["contrasts"][name]
        c2 = ((st.get("second_scorer") or {}).get("contrasts") or {}).get(name) or {}
        v = ci_verdict(c.get("ci_low"), c.get("ci_high"))
        second = ("; second scorer " + with_ci(c2.get("delta"), c2.get("ci_low"),
                                               c2.get("ci_high"), 4, sign=True)) if c2 else ""
        out.append(Headline(
            "steering", "Steering",
            with_ci(c.get("delta"), c.get("ci_low"), c.get("ci_high"), 4, sign=True),
            f"{name.replace('_vs_', ' − ')} after {st.get('rounds')} round(s), held-out "
            f"document score, n {c.get('n')}{second}; {VERDICT_WORDS[v]}", v))
    if not out:
        note = (off_note(run, "steering", "reports/steering.json")
                if run.stage_off("generator_eval") or not run.manifest
                else off_note(run, "generator_eval", "reports/generator.json"))
        out.append(Headline("steering", "Steering", "none", note, "off"))
    return out


def pubmedqa_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (setting, model): accuracy and macro-F1 with their CIs (None where the report has
    no ``ci``), n and the predicted label counts."""
    models = list(rep.get("models") or [t for t in ("before", "after") if rep.get(t)])
    cis = rep.get("ci") or {}
    settings = list(dict.fromkeys(s for tag in models
                                  for s in ((rep.get(tag) or {}).get("settings") or {})))
    rows = []
    for s in settings:  # grouped by setting, the models in the report's order
        for tag in models:
            v = ((rep.get(tag) or {}).get("settings") or {}).get(s)
            if v is None:
                continue
            c = ((cis.get(s) or {}).get("models") or {}).get(tag) or {}
            acc, f1 = c.get("accuracy") or {}, c.get("macro_f1") or {}
            rows.append({"setting": s, "model": tag, "n": v.get("n"),
                         "accuracy": v.get("accuracy"), "acc_lo": acc.get("ci_low"),
                         "acc_hi": acc.get("ci_high"), "macro_f1": v.get("macro_f1"),
                         "f1_lo": f1.get("ci_low"), "f1_hi": f1.get("ci_high"),
                         "predicted": ((v.get("label_counts") or {}).get("predicted") or {})})
    return rows


def _pubmedqa(run: RunFolder) -> list[Headline]:
    rep = run.report("pubmedqa.json")
    if not rep:
        return [Headline("pubmedqa", "PubMedQA", "none",
                         off_note(run, "pubmedqa", "reports/pubmedqa.json"), "off")]
    rows = pubmedqa_rows(rep)
    out = []
    for s in dict.fromkeys(r["setting"] for r in rows):
        by = {r["model"]: r for r in rows if r["setting"] == s}
        b, a = by.get("before"), by.get("after")
        if b is None:
            continue

        def acc(r: dict[str, Any]) -> str:
            return with_ci(r["accuracy"], r["acc_lo"], r["acc_hi"])

        if a is None:
            out.append(Headline(f"pubmedqa:{s}", f"PubMedQA {s}", acc(b),
                                f"accuracy of the base model on {b['n']} test items "
                                "(no downstream model in this config)"))
            continue
        d = ((((rep.get("ci") or {}).get(s) or {}).get("contrasts") or {}).get(
            "after_vs_before") or {}).get("accuracy") or {}
        v = ci_verdict(d.get("ci_low"), d.get("ci_high"))
        diff = (f"; after − before "
                f"{with_ci(d.get('delta'), d.get('ci_low'), d.get('ci_high'), sign=True)}, "
                f"{VERDICT_WORDS[v]}") if d else "; no CI in this report"
        out.append(Headline(f"pubmedqa:{s}", f"PubMedQA {s}", f"{acc(b)} → {acc(a)}",
                            f"accuracy before → after CPT on the export, {a['n']} test "
                            f"items{diff}", v if d else "neutral"))
    return out or [Headline("pubmedqa", "PubMedQA", "none", "the report holds no settings",
                            "off")]


def headline(run: RunFolder) -> list[Headline]:
    """The headline numbers of a run, in reading order."""
    return [*_dataset(run), *_answers(run), *_pairs(run), *_signal(run), *_steering(run),
            *_pubmedqa(run)]


def headline_text(run: RunFolder, items: list[Headline] | None = None) -> str:
    """The headline as terminal lines (``label: value; detail``)."""
    m = run.manifest or {}
    lines = [f"kailin run {run.root}: {m.get('status', 'no manifest.json')}"
             + (f" ({num(m.get('seconds'), 0)} s)" if m.get("seconds") is not None else "")]
    for h in items if items is not None else headline(run):
        lines.append(f"  {h.label}: {h.value}" + (f"; {h.detail}" if h.detail else ""))
    return "\n".join(lines)
