"""The dataset card (README.md with a Hugging Face YAML header) and its plots.

Statistics: counts per split, distinct source/context PMIDs, yes/no questions and decisions, MeSH
coverage (records per top-level MeSH branch and per first-level category such as ``C04``, via
the MeSH tree numbers; the most frequent headings by name), the MeSH-score and grounding-score
distributions, grounding rates, decontamination counts, and provenance (config, models, package
versions, date). Plots (matplotlib, PNG): ``plots/score_hist.png`` and
``plots/category_coverage.png``.
"""

from __future__ import annotations

import logging
import math
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
    L += ["", "Every config has a `pmid` column (the source paper).", "", "## Counts", ""]
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
    import json

    L += [json.dumps(stats.get("config", {}), indent=2), "```", ""]
    write_text_atomic(out / "README.md", "\n".join(L))
