"""The dataset card (README.md with a Hugging Face YAML header) and its plots.

Sections: what the dataset is, its configurations with the column schema of every table, how to
load it (``datasets.load_dataset`` on the export folder, relative paths), counts, decontamination,
the truncated-answer share, score distributions, grounding, MeSH coverage, licences (of the source
data: PubMed/MEDLINE and MeSH under NLM's terms, PubMedQA MIT; of the generated text: the
generator and teacher models' licences), limitations and provenance. The card names no absolute
local path: a path inside the export folder or the run folder around it is written relative to
the export folder, any other path as its last component (:func:`portable_paths`).

Statistics: counts per split, distinct source/context PMIDs, yes/no questions and decisions, MeSH
coverage (records per top-level MeSH branch and per first-level category such as ``C04``, via
the MeSH tree numbers; the most frequent headings by name), the MeSH-score and grounding-score
distributions, grounding rates, decontamination counts, and provenance (config, models, package
versions, date). Plots (matplotlib, PNG): ``plots/score_hist.png`` and
``plots/category_coverage.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kailin.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

#: the 16 top-level MeSH branches
MESH_BRANCHES = {
    "A": "Anatomy", "B": "Organisms", "C": "Diseases", "D": "Chemicals and Drugs",
    "E": "Analytical, Diagnostic and Therapeutic Techniques, and Equipment",
    "F": "Psychiatry and Psychology", "G": "Phenomena and Processes",
    "H": "Disciplines and Occupations",
    "I": "Anthropology, Education, Sociology, and Social Phenomena",
    "J": "Technology, Industry, and Agriculture", "K": "Humanities", "L": "Information Science",
    "M": "Named Groups", "N": "Health Care", "V": "Publication Characteristics",
    "Z": "Geographicals",
}


#: what each exported column holds, for the card's schema tables
COLUMN_DOCS = {
    "pmid": "PubMed ID of the source abstract",
    "text": "continued-pretraining text (the configured template over title, abstract, contexts "
            "and question)",
    "messages": "chat record: system, user (numbered contexts + question), assistant (the "
                "teacher's answer, then `Decision: yes/no/maybe` for yes/no questions)",
    "question": "the generated question",
    "contexts": "texts of the retrieved context abstracts, in rank order",
    "context_pmids": "PubMed IDs of the contexts",
    "answer": "the teacher's long answer (its decision line removed)",
    "decision": "yes / no / maybe (yes/no questions whose answer gave one), else null",
    "is_yes_no": "the question starts with an auxiliary verb (answerable with yes/no)",
    "grounded": "grounding verdict of the answer against its contexts (null: not judged)",
    "grounding_score": "grounding score (higher: better supported)",
    "score": "MeSH knowledge-hierarchy score of the question's contexts",
    "finish_reason": "`stop`: the teacher finished its answer; `length`: cut at its token "
                     "limit; null: unknown",
}

#: licences of models kailin ships or names, matched (lower case) in a model spec
MODEL_LICENCES: tuple[tuple[str, str, str], ...] = (
    ("smollm2", "SmolLM2 (HuggingFaceTB/SmolLM2-135M-Instruct)", "Apache-2.0"),
    ("gemma", "Gemma", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
    ("minilm", "all-MiniLM-L6-v2 (sentence-transformers)", "Apache-2.0"),
    ("llama", "Llama", "the Llama community licence of its version"),
)

_ABS_PATH_RE = re.compile(r"(?<![\w/.~])(?:/(?!/)|~/)[^\s'\"`,;()\[\]{}<>|*]+")


def portable_paths(text: str, out: str | os.PathLike[str]) -> str:
    """``text`` with every absolute local path replaced: one inside the export folder ``out``
    or the folder around it (the run folder) by its path relative to ``out``, any other by its
    last component (URLs are left alone)."""
    pairs: list[tuple[str, str]] = []  # (a folder a path may lie in, the folder ``out`` is)
    for o in dict.fromkeys((os.path.abspath(out), str(Path(out).resolve()))):
        pairs += [(o, o), (os.path.dirname(o), o)]

    def repl(m: re.Match[str]) -> str:
        p = os.path.expanduser(m.group(0))
        trail = ""
        while len(p) > 1 and p[-1] in ".:":  # sentence punctuation after a path
            trail, p = p[-1] + trail, p[:-1]
        for base, o in pairs:
            if p == base or p.startswith(base.rstrip("/") + "/"):
                return os.path.relpath(p, o) + trail
        return (Path(p).name or "/") + trail

    return _ABS_PATH_RE.sub(repl, text)


def model_licences(stats: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(role, model, licence) of the question generators and the teacher: from the export's
    provenance (the pipeline's config), else the records' ``model`` / ``teacher`` columns; a
    generator known by its name only is listed with its model unrecorded."""
    found: list[tuple[str, str | None]] = []
    cfg = (stats.get("provenance") or {}).get("config") or {}
    named = {str(g.get("name")): str(g["model"]) for g in cfg.get("generators") or []
             if isinstance(g, dict) and g.get("model")}
    named = {**(stats.get("generator_models") or {}), **named}
    for name in dict.fromkeys([*named, *(stats.get("generators") or {})]):
        found.append((f"question generator {name}", named.get(name)))
    answers = cfg.get("answers") or {}
    teachers = list(stats.get("teachers") or {})
    if isinstance(answers, dict) and answers.get("teacher") and answers.get("enabled", True):
        teachers = list(dict.fromkeys([str(answers["teacher"]), *teachers]))
    found += [("teacher (answers)", str(t)) for t in teachers]
    out = []
    for role, model in found:
        if model is None:
            out.append((role, "not recorded", "see the licence of the model it names"))
            continue
        low = model.lower()
        lic = next((f"{what}: {licence}" for key, what, licence in MODEL_LICENCES
                    if key in low), "not known to kailin: see the model's own licence")
        out.append((role, model, lic))
    return out


def distribution(values: list[Any]) -> dict[str, Any]:
    """Summary statistics and a 20-bin histogram of the finite values."""
    arr = np.array([v for v in values if v is not None and not (isinstance(v, float)
                                                                   and math.isnan(v))], float)
    out: dict[str, Any] = {"n": int(arr.size), "missing": len(values) - int(arr.size)}
    if arr.size:
        q = np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95])
        out.update({"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()),
                    "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]),
                    "p75": float(q[3]), "p95": float(q[4]), "max": float(arr.max())})
        counts, edges = np.histogram(arr, bins=20)
        out["histogram"] = {"counts": counts.tolist(), "edges": [float(e) for e in edges]}
    return out


def _tree_numbers(mesh: Any, ui: str) -> list[str]:
    try:
        return list(mesh.tree_numbers(ui) or [])
    except (KeyError, AttributeError, IndexError):
        return []


def category_coverage(mesh_uis: list[list[str]], mesh: Any) -> dict[str, Any]:
    """Records per MeSH branch (A, B, C...) and per first-level category (C04...)."""
    branch: Counter[str] = Counter()
    cat: Counter[str] = Counter()
    cache: dict[str, tuple[set[str], set[str]]] = {}
    for uis in mesh_uis:
        b_rec: set[str] = set()
        c_rec: set[str] = set()
        for ui in uis or []:
            if ui not in cache:
                tns = _tree_numbers(mesh, ui)
                cache[ui] = ({t[0] for t in tns}, {t.split(".")[0] for t in tns})
            b_rec |= cache[ui][0]
            c_rec |= cache[ui][1]
        branch.update(b_rec)
        cat.update(c_rec)
    n = len(mesh_uis)
    return {
        "records": n,
        "branches": {b: {"name": MESH_BRANCHES.get(b, b), "records": int(branch[b]),
                         "fraction": branch[b] / n if n else 0.0}
                     for b in sorted(branch)},
        "categories": dict(sorted(cat.items(), key=lambda x: (-x[1], x[0]))),
        "categories_covered": len(cat),
    }


def dataset_card_stats(table: pa.Table, mesh: Any = None) -> dict[str, Any]:
    """The statistics the card reports, from the assembled (decontaminated, selected) records."""
    cols = table.column_names
    stats: dict[str, Any] = {
        "distinct_source_pmids": len(set(table.column("pmid").to_pylist())),
    }
    if "context_pmids" in cols:
        stats["distinct_context_pmids"] = len({int(x) for c in table.column("context_pmids")
                                               .to_pylist() for x in (c or [])})
    if "generator" in cols:
        stats["generators"] = dict(Counter(table.column("generator").to_pylist()))
        if "model" in cols:  # the questions table's model spec of each generator
            stats["generator_models"] = {
                str(g): str(m) for g, m in zip(table.column("generator").to_pylist(),
                                               table.column("model").to_pylist(), strict=True)
                if g is not None and m}
    if "teacher" in cols:
        stats["teachers"] = dict(Counter(table.column("teacher").to_pylist()))
    if "is_yes_no" in cols:
        stats["yes_no_questions"] = int(sum(bool(v) for v in table.column("is_yes_no")
                                            .to_pylist()))
    if "decision" in cols:
        stats["decisions"] = dict(Counter(v for v in table.column("decision").to_pylist() if v))
    stats["score_distribution"] = (distribution(table.column("score").to_pylist())
                                   if "score" in cols else None)
    stats["grounding_score_distribution"] = (
        distribution(table.column("grounding_score").to_pylist())
        if "grounding_score" in cols else None)
    if "mesh_names" in cols:
        c = Counter(m for ms in table.column("mesh_names").to_pylist() for m in set(ms or []))
        stats["top_mesh_headings"] = dict(sorted(c.items(), key=lambda x: (-x[1], x[0]))[:20])
    if mesh is None:
        try:
            from kailin.mesh import load_mesh

            mesh = load_mesh()
        except Exception as exc:
            log.warning("MeSH not available for category coverage: %s", exc)
    if mesh is not None and "mesh_uis" in cols:
        stats["mesh_coverage"] = category_coverage(table.column("mesh_uis").to_pylist(), mesh)
    else:
        stats["mesh_coverage"] = None
    return stats


def _plots(out: Path, stats: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no plots (pip install 'kailin[plots]')")
        return []
    made = []
    sd = stats.get("score_distribution") or {}
    if sd.get("histogram"):
        h = sd["histogram"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        edges = np.array(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", edgecolor="black")
        ax.set_xlabel("MeSH knowledge-hierarchy score")
        ax.set_ylabel("records")
        ax.set_title(f"Score distribution (n={sd['n']})")
        fig.tight_layout()
        with atomic_path(out / "plots" / "score_hist.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        made.append("plots/score_hist.png")
    cov = stats.get("mesh_coverage")
    if cov and cov.get("categories"):
        items = list(cov["categories"].items())[:30]
        fig, ax = plt.subplots(figsize=(7, max(3, 0.22 * len(items) + 1)))
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
        ax.set_xlabel("records with a heading in the category")
        ax.set_title(f"MeSH category coverage ({cov['categories_covered']} categories)")
        fig.tight_layout()
        with atomic_path(out / "plots" / "category_coverage.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        made.append("plots/category_coverage.png")
    elif stats.get("top_mesh_headings"):
        items = list(stats["top_mesh_headings"].items())
        fig, ax = plt.subplots(figsize=(7, max(3, 0.25 * len(items) + 1)))
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
        ax.set_xlabel("records")
        ax.set_title("Most frequent MeSH headings (no MeSH tree available for categories)")
        fig.tight_layout()
        with atomic_path(out / "plots" / "category_coverage.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        made.append("plots/category_coverage.png")
    return made


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_card(out: Path, stats: dict[str, Any], cfg: Any, plots: bool = True) -> None:
    """Write ``README.md`` (and the plots) into the export directory."""
    made = _plots(out, stats) if plots else []
    stats["plots"] = made
    splits = stats.get("splits", {})
    yaml = ["---", "license: other", "language:", "- en", "tags:", "- biomedical", "- pubmed",
            "- mesh", "- kailin", "configs:"]
    for name in splits:
        yaml += [f"- config_name: {name}", "  data_files:", "  - split: train",
                 f"    path: {name}/train.parquet"]
    yaml.append("---")
    L = [*yaml, "", "# KAILIN AI-ready biomedical dataset", "",
         "Distilled from PubMed with the `kailin` package following KAILIN "
         "(arXiv 2501.15108) / m-KAILIN (arXiv 2504.19565): questions generated from source "
         "abstracts, contexts retrieved from the corpus, scored with the MeSH knowledge "
         "hierarchy" + (", answered by a teacher LLM" if "sft" in splits else "") + ".", "",
         "## Configurations", "", "| config | rows | content |", "|---|---|---|"]
    desc = {"cpt": "`text`: continued-pretraining text in the authors' format",
            "sft": "`messages`: chat records (system, user: contexts + question, assistant: "
                   "answer)",
            "triples": "`question`, `contexts`, `answer`, `decision`, grounding verdict"}
    for name, s in splits.items():
        L.append(f"| {name} | {s['rows']} | {desc.get(name, '')} |")
    L += ["", "Every config has a `pmid` column (the source paper).", "", "## Schema", ""]
    for name, sp in splits.items():
        cols = sp.get("columns") or []
        if not cols:
            continue
        L += [f"`{name}` (" + ", ".join(f"`{f}`" for f in sp.get("files", [])) + "):", "",
              "| column | type | content |", "|---|---|---|"]
        L += [f"| {c['name']} | `{c['type']}` | {COLUMN_DOCS.get(c['name'], '')} |" for c in cols]
        L.append("")
    L += ["## Load", "",
          "From the folder holding this card (Parquet; each config's `train.jsonl` holds the "
          "same rows):",
          "", "```python", "from datasets import load_dataset", ""]
    for name in splits:
        L.append(f'{name} = load_dataset("parquet", data_files={{"train": '
                 f'"{name}/train.parquet"}}, split="train")')
    if splits:
        first = next(iter(splits))
        L += ["# or the JSON Lines copy", f'{first}_jsonl = load_dataset("json", data_files='
              f'{{"train": "{first}/train.jsonl"}}, split="train")',
              '# or by config name, from the folder: load_dataset(".", "' + first + '")']
    L += ["```", "", "## Counts", ""]
    for k in ("input_rows", "records", "distinct_source_pmids", "distinct_context_pmids",
              "yes_no_questions", "dropped_empty_question", "dropped_by_score",
              "dropped_ungrounded", "dropped_not_best"):
        if k in stats:
            L.append(f"- {k.replace('_', ' ')}: {stats[k]}")
    for k in ("generators", "teachers", "decisions"):
        if stats.get(k):
            L.append(f"- {k}: " + ", ".join(f"{a}: {b}" for a, b in stats[k].items()))
    dec = stats.get("decontamination", {})
    L += ["", "## Decontamination", ""]
    if dec.get("enabled"):
        L.append(f"PubMedQA PQA-L test PMIDs (500) never enter this dataset. Excluded rows: "
                 f"{dec['rows_excluded_source_pmid']} with a test PMID as source "
                 f"({dec['distinct_source_pmids_excluded']} distinct PMIDs), "
                 f"{dec['rows_excluded_context_pmid']} with a test PMID among the contexts.")
    else:
        L.append("**Disabled** for this export: PubMedQA test PMIDs may be present.")
    tr = stats.get("truncated_answers")
    if tr and tr.get("answers"):
        L += ["", "## Truncated answers", "",
              f"{tr['truncated']} of {tr['answers']} teacher answers "
              f"({tr['truncated_share']:.1%}) stopped at the teacher's token limit "
              f"(finish reason `length`); {tr['finished']} finished, {tr['unknown']} without a "
              "finish reason. "
              + ("They are kept in the `sft` config (keep_truncated_answers)." if tr["kept_in_sft"]
                 else f"They are left out of the `sft` config ({tr['dropped_from_sft']} rows), "
                 "so every SFT target is a complete answer; `triples` keeps them with their "
                 "`finish_reason`.")]
    for title, key in (("MeSH score distribution", "score_distribution"),
                       ("Grounding score distribution", "grounding_score_distribution")):
        d = stats.get(key)
        if d and d.get("n"):
            L += ["", f"## {title}", "", "| n | missing | mean | std | min | p25 | median | p75 "
                  "| max |", "|---|---|---|---|---|---|---|---|---|",
                  "| " + " | ".join(_fmt(d.get(k)) for k in ("n", "missing", "mean", "std", "min",
                                                            "p25", "median", "p75", "max"))
                  + " |"]
    if "plots/score_hist.png" in made:
        L += ["", "![score histogram](plots/score_hist.png)"]
    g = stats.get("grounding") or {}
    if g:
        L += ["", "## Grounding check", "",
              f"Method: `{g.get('method')}`. Judged {g['judged']} of {g['n']} answers: "
              f"{g['grounded']} grounded, {g['ungrounded']} not grounded"
              + (f" (grounded rate {g['grounded_rate']:.3f})." if g.get("grounded_rate")
                 is not None else ".")]
        if getattr(cfg, "require_grounded", False):
            L.append("Only answers judged grounded were exported.")
    cov = stats.get("mesh_coverage")
    L += ["", "## MeSH category coverage", ""]
    if cov:
        L += [f"{cov['categories_covered']} first-level MeSH categories covered.", "",
              "| branch | name | records | fraction |", "|---|---|---|---|"]
        for b, v in cov["branches"].items():
            L.append(f"| {b} | {v['name']} | {v['records']} | {v['fraction']:.3f} |")
    else:
        L.append("No MeSH tree was available, so categories were not computed.")
    if stats.get("top_mesh_headings"):
        L += ["", "Most frequent headings: " + ", ".join(
            f"{k} ({v})" for k, v in list(stats["top_mesh_headings"].items())[:10]) + "."]
    if "plots/category_coverage.png" in made:
        L += ["", "![category coverage](plots/category_coverage.png)"]
    L += _licence_section(stats)
    L += _limitations_section(stats, cfg)
    prov = stats.get("provenance", {})
    L += ["", "## Provenance", "", f"- created: {prov.get('date')}",
          f"- input: `{stats.get('input')}`", f"- corpus: `{prov.get('corpus')}`"
          + (f" (manifest hash {prov['corpus_manifest_hash']})"
             if prov.get("corpus_manifest_hash") else ""),
          "- versions: " + ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())]
    for k, v in prov.items():
        if k not in ("date", "corpus", "corpus_manifest_hash", "versions", "python"):
            L.append(f"- {k}: {v}")
    L += ["", "Export configuration:", "", "```json"]
    L += [json.dumps(stats.get("config", {}), indent=2), "```", ""]
    write_text_atomic(out / "README.md", portable_paths("\n".join(L), out))


def _licence_section(stats: dict[str, Any]) -> list[str]:
    L = ["", "## Licence", "",
         "This card's YAML says `license: other`: the dataset combines data under several "
         "terms, and whoever uses it must follow all of them.", "",
         "Source data:", "",
         "- PubMed/MEDLINE titles, abstracts and MeSH indexing: NLM data, free under NLM's "
         "[Terms and Conditions](https://www.nlm.nih.gov/databases/download/terms_and_conditions"
         ".html) (acknowledge NLM as the source, say that the data may not be current and that "
         "this dataset modified them; do not imply NLM endorsement). Abstracts may be under their "
         "publishers' or authors' copyright: NLM grants no rights to them.",
         "- MeSH (the knowledge hierarchy of the scores and coverage): NLM's Medical Subject "
         "Headings, under the same NLM terms (cite NLM/MeSH and its version).",
         "- PubMedQA (abstracts and questions from it, where the corpus or the generators' "
         "fine-tuning data came from it): MIT licence (Jin et al., 2019).", "",
         "Generated text (questions, answers) comes from these models; their licences govern "
         "its use:", ""]
    models = model_licences(stats)
    if models:
        L += ["| role | model | licence |", "|---|---|---|"]
        L += [f"| {r} | `{m}` | {lic} |" for r, m, lic in models]
    else:
        L.append("- no generator or teacher recorded in this export's provenance.")
    L += ["", "The `kailin` code that made the dataset is MIT-licensed."]
    return L


def _limitations_section(stats: dict[str, Any], cfg: Any) -> list[str]:
    L = ["", "## Limitations", "",
         "- Questions and answers are written by language models (small ones in the demo): they "
         "can be wrong, vague, or not answerable from the contexts. Nothing here is medical "
         "advice.",
         "- The MeSH knowledge-hierarchy score ranks questions by how related their retrieved "
         "contexts are to the source in the MeSH tree; it does not check that a question is "
         "correct or well formed.",
         "- Contexts come from the corpus this export was made from, by its retriever; other "
         "relevant literature is missing."]
    g = stats.get("grounding") or {}
    if g:
        L.append(f"- The grounding check (`{g.get('method')}`) is "
                 + ("an entailment model's verdict" if g.get("method") == "nli" else
                    "a proxy (word overlap or similarity, or an LLM's judgement), not a proof of "
                    "faithfulness") + "; ungrounded answers are "
                 + ("excluded." if getattr(cfg, "require_grounded", False) else "included."))
    tr = stats.get("truncated_answers")
    if tr and tr.get("answers") and tr.get("truncated"):
        L.append(f"- {tr['truncated_share']:.1%} of the teacher's answers hit its token limit"
                 + (" and are kept in `sft`." if tr["kept_in_sft"] else
                    "; they are not in `sft` but are in `triples`."))
    dec = stats.get("decontamination") or {}
    L.append("- Decontamination covers the PubMedQA PQA-L test set only"
             + ("" if dec.get("enabled") else " and was disabled for this export")
             + ": check other benchmarks before evaluating on them.")
    L.append("- English only; abstracts up to the corpus' date, not the full papers.")
    return L
