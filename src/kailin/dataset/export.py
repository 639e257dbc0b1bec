"""Export the AI-ready dataset: CPT text, SFT chat records and QA triples, as Hugging Face
datasets (Parquet and JSONL), with a dataset card and plots.

Input: the scores table (``kailin score``) or the answers table (``kailin dataset
answers``, a superset with the teacher's answers), plus a corpus directory for the texts
(see :mod:`kailin.dataset.records`).

Output directory::

    OUT/cpt/train.parquet, OUT/cpt/train.jsonl          pmid, text
    OUT/sft/train.parquet, OUT/sft/train.jsonl          pmid, messages (finished answers only)
    OUT/triples/train.parquet, OUT/triples/train.jsonl  pmid, question, contexts, answer, ...
    OUT/README.md                                       the dataset card (HF YAML header)
    OUT/plots/score_hist.png, OUT/plots/category_coverage.png
    OUT/export.json                                     counts and provenance (written last)

CPT text is the authors' format (``CPT/Data_prepare.py``, verbatim): ``After reading the paper
```{title}:{abstract}```, I searched for related materials ```{contexts}``` and pondered the
following scientific question ```{question}```.`` where ``contexts`` is Python ``str()`` of the
list of the first 4 contexts and every newline is replaced by a space (in each context before
``str()``, and in the result). The
template is configurable (placeholders ``{title}``, ``{abstract}``, ``{contexts}``,
``{question}``, ``{answer}``, ``{decision}``; ``{contexts_text}`` gives the contexts as plain
text joined by blank lines, and newlines are then kept: :data:`RAW_TEMPLATE`, the downstream
control's "same abstracts, no question").

Complete training targets: an answer the teacher did not finish (``finish_reason`` ``length``:
cut at its ``max_new_tokens``) is left out of the SFT records unless ``keep_truncated_answers``;
``export.json`` and the card report the share of such answers (``truncated_answers``).

Decontamination (default on): rows whose source PMID is a PubMedQA PQA-L test PMID are dropped,
and so are rows with a test PMID among their contexts (the abstract would otherwise enter the
text). The counts are in ``export.json`` and the card.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from kailin.config import StageConfig
from kailin.dataset.answers import grounding_rates, is_yes_no_question
from kailin.dataset.records import attach_texts
from kailin.errors import InputError
from kailin.io import atomic_path, read_parquet, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

CPT_TEMPLATE = (
    "After reading the paper ```{title}:{abstract}```, I searched for related materials "
    "```{contexts}``` and pondered the following scientific question ```{question}```."
)
#: the downstream control "same abstracts, no questions": the source and its contexts as plain
#: text (``{contexts_text}``: the contexts joined by blank lines)
RAW_TEMPLATE = "{title}\n{abstract}\n\n{contexts_text}"
#: m-KAILIN variant (MET §7.8, inferred): the KAILIN text followed by the teacher's answer
CPT_ANSWER_SUFFIX = " The answer is: {answer}"
SFT_SYSTEM = ("You are a biomedical expert. Answer the question from the given contexts.")
FORMATS = ("cpt", "sft", "triples")


class ExportConfig(StageConfig):
    """Export settings: the ``export`` section of ``kailin run`` and the options of ``kailin
    dataset export`` (all recorded in the card and ``export.json``)."""

    added_fields: ClassVar[tuple[str, ...]] = (
        "n_contexts", "cpt_with_answer", "select", "min_score", "max_score", "require_grounded",
        "formats", "extra_exclude_pmids", "keep_truncated_answers")

    template: str | None = Field(None, description="CPT template (default: the authors' "
                                 "format); placeholders {title}, {abstract}, {contexts}, "
                                 "{contexts_text}, {question}, {answer}, {decision}")
    exclude_pubmedqa_test: bool = Field(True, description="drop rows whose source or contexts "
                                        "hold a PubMedQA test PMID (decontamination)")
    n_contexts: int | None = Field(None, ge=1, description="contexts per record (default: 4, "
                                   "the authors'; kailin run: index.k)")
    cpt_with_answer: bool = Field(False, description="append ' The answer is: {answer}' to the "
                                  "CPT text (m-KAILIN; needs answers)")
    select: Literal["best", "all"] = Field("best", description="best: the highest-scoring "
                                           "question per PMID; all: every row")
    min_score: float | None = Field(None, description="drop questions scored below this")
    max_score: float | None = Field(None, description="drop questions scored above this")
    require_grounded: bool = Field(False, description="keep only answers judged grounded "
                                   "(kailin run: also on with answers.filter_ungrounded)")
    formats: list[Literal["cpt", "sft", "triples"]] = Field(
        default_factory=lambda: list(FORMATS), description="what to write: cpt text, sft chat "
        "records, QA triples (the last two need answers)")
    extra_exclude_pmids: list[int] = Field(default_factory=list, description="more PMIDs to "
                                           "exclude, as sources and as contexts")
    keep_truncated_answers: bool = Field(False, description="keep in the SFT records the "
                                         "answers the teacher did not finish (finish_reason "
                                         "'length': cut at its max_new_tokens); by default "
                                         "they are left out and counted")

    def contexts(self) -> int:
        return self.n_contexts or 4

    def cpt_template(self) -> str:
        return self.template or CPT_TEMPLATE

    def to_dict(self) -> dict[str, Any]:
        """The record in ``export.json`` and the card (the PMID list as its count)."""
        return {"n_contexts": self.contexts(), "template": self.cpt_template(),
                "cpt_with_answer": self.cpt_with_answer, "select": self.select,
                "min_score": self.min_score, "max_score": self.max_score,
                "require_grounded": self.require_grounded,
                "decontaminate": self.exclude_pubmedqa_test, "formats": list(self.formats),
                "extra_exclude_pmids": len(self.extra_exclude_pmids),
                "keep_truncated_answers": self.keep_truncated_answers}


def cpt_text(title: str, abstract: str, contexts: list[str], question: str,
             template: str = CPT_TEMPLATE, n_contexts: int = 4, answer: str | None = None,
             decision: str | None = None) -> str:
    """One CPT record in the authors' format.

    Newlines are replaced by spaces in each context before ``str()`` of the list (else they
    would appear as literal ``\\n`` escapes) and in the final text."""
    try:
        ctx = [c.replace("\n", " ") for c in list(contexts)[:n_contexts]]
        text = template.format(title=title, abstract=abstract, contexts=str(ctx),
                               contexts_text="\n\n".join(ctx), question=question,
                               answer=answer or "", decision=decision or "")
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"CPT template: bad placeholder {exc} (use {{title}}, {{abstract}}, "
                         "{contexts}, {contexts_text}, {question}, {answer}, {decision})") from None
    return text if "{contexts_text}" in template else text.replace("\n", " ")


def sft_messages(question: str, contexts: list[str], answer: str,
                 decision: str | None) -> list[dict[str, str]]:
    """A chat record: system, user (contexts + question), assistant (answer [+ decision])."""
    ctx = "\n".join(f"[{i + 1}] {' '.join(c.split())}" for i, c in enumerate(contexts))
    user = f"Contexts:\n{ctx}\n\nQuestion: {question.strip()}"
    reply = answer.strip()
    if decision:
        user += "\nAnswer with a long answer, then yes, no, or maybe."
        reply += f"\nDecision: {decision}"
    return [{"role": "system", "content": SFT_SYSTEM}, {"role": "user", "content": user},
            {"role": "assistant", "content": reply}]


def pubmedqa_test_pmids() -> set[int]:
    """The 500 PubMedQA PQA-L test PMIDs (the packaged ground truth's keys)."""
    from kailin.corpus.sources import default_exclusions

    return set(default_exclusions())


def _select(table: pa.Table, cfg: ExportConfig, stats: dict[str, Any]) -> pa.Table:
    n0 = table.num_rows
    q = pc.utf8_trim_whitespace(pc.fill_null(table.column("question"), ""))
    table = table.filter(pc.greater(pc.utf8_length(q), 0))
    stats["dropped_empty_question"] = n0 - table.num_rows
    if "score" in table.column_names:
        sc = table.column("score")
        keep = pc.is_valid(sc)
        if cfg.min_score is not None:
            keep = pc.and_(keep, pc.greater_equal(sc, cfg.min_score))
        if cfg.max_score is not None:
            keep = pc.and_(keep, pc.less_equal(sc, cfg.max_score))
        if cfg.min_score is not None or cfg.max_score is not None:
            n1 = table.num_rows
            table = table.filter(pc.fill_null(keep, False))
            stats["dropped_by_score"] = n1 - table.num_rows
    if cfg.require_grounded:
        if "grounded" not in table.column_names:
            raise InputError("--require-grounded needs the answers table (a 'grounded' column); "
                             "run `kailin dataset answers` first")
        n1 = table.num_rows
        table = table.filter(pc.fill_null(table.column("grounded"), False))
        stats["dropped_ungrounded"] = n1 - table.num_rows
    if cfg.select == "best" and table.num_rows:
        scores = (table.column("score").to_pylist() if "score" in table.column_names
                  else [None] * table.num_rows)
        best: dict[int, tuple[float, int]] = {}
        for i, (p, s) in enumerate(zip(table.column("pmid").to_pylist(), scores, strict=True)):
            v = -math.inf if s is None or (isinstance(s, float) and math.isnan(s)) else float(s)
            if p not in best or v > best[p][0]:
                best[p] = (v, i)
        idx = sorted(i for _, i in best.values())
        n1 = table.num_rows
        table = table.take(pa.array(idx, pa.int64()))
        stats["dropped_not_best"] = n1 - table.num_rows
    elif cfg.select not in ("best", "all"):
        raise InputError(f"select must be 'best' or 'all', got {cfg.select!r}")
    return table


def _decontaminate(table: pa.Table, cfg: ExportConfig, stats: dict[str, Any]) -> pa.Table:
    if not cfg.exclude_pubmedqa_test:
        stats["decontamination"] = {"enabled": False}
        return table
    banned = pubmedqa_test_pmids() | {int(p) for p in cfg.extra_exclude_pmids}
    pmids = table.column("pmid").to_pylist()
    ctx = (table.column("context_pmids").to_pylist() if "context_pmids" in table.column_names
           else [[] for _ in pmids])
    keep, n_src, n_ctx, excluded = [], 0, 0, set()
    for p, c in zip(pmids, ctx, strict=True):
        if int(p) in banned:
            n_src += 1
            excluded.add(int(p))
            keep.append(False)
        elif any(int(x) in banned for x in (c or [])[: cfg.contexts()]):
            n_ctx += 1
            keep.append(False)
        else:
            keep.append(True)
    stats["decontamination"] = {
        "enabled": True,
        "benchmark": "PubMedQA PQA-L test (500 PMIDs)",
        "extra_excluded_pmids": len(cfg.extra_exclude_pmids),
        "rows_excluded_source_pmid": n_src,
        "rows_excluded_context_pmid": n_ctx,
        "distinct_source_pmids_excluded": len(excluded),
    }
    return table.filter(pa.array(keep, pa.bool_()))


def _write_jsonl(table: pa.Table, target: Path) -> None:
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _write_split(table: pa.Table, out: Path, name: str) -> dict[str, Any]:
    write_parquet_atomic(table, out / name / "train.parquet")
    _write_jsonl(table, out / name / "train.jsonl")
    return {"rows": table.num_rows, "files": [f"{name}/train.parquet", f"{name}/train.jsonl"],
            "columns": [{"name": f.name, "type": type_name(f.type)} for f in table.schema]}


def type_name(t: pa.DataType) -> str:
    """An Arrow type as the card shows it: ``list<string>``, ``struct<role: string, ...>`` (no
    list item names, which differ between writers)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in t) + ">"
    return str(t)


def build_tables(records: pa.Table, cfg: ExportConfig) -> dict[str, pa.Table]:
    """The export tables (cpt, sft, triples) from assembled records."""
    rows = records.to_pylist()
    has_answer = "answer" in records.column_names
    out: dict[str, pa.Table] = {}
    if "cpt" in cfg.formats:
        template = cfg.cpt_template() + (CPT_ANSWER_SUFFIX if cfg.cpt_with_answer else "")
        if cfg.cpt_with_answer and not has_answer:
            raise InputError("--cpt-with-answer needs the answers table (an 'answer' column)")
        texts = [cpt_text(r["title"] or "", r["abstract"] or "", r["contexts"] or [],
                          r["question"], template, cfg.contexts(), r.get("answer"),
                          r.get("decision")) for r in rows]
        out["cpt"] = pa.table({"pmid": pa.array([r["pmid"] for r in rows], pa.int64()),
                               "text": pa.array(texts, pa.string())})
    answered = [r for r in rows if has_answer and (r.get("answer") or "").strip()]
    targets = [r for r in answered
               if cfg.keep_truncated_answers or r.get("finish_reason") != "length"]
    if "sft" in cfg.formats and targets:
        msgs = [sft_messages(r["question"], (r["contexts"] or [])[: cfg.contexts()], r["answer"],
                             r.get("decision")) for r in targets]
        out["sft"] = pa.table({
            "pmid": pa.array([r["pmid"] for r in targets], pa.int64()),
            "messages": pa.array(msgs, pa.list_(pa.struct([("role", pa.string()),
                                                           ("content", pa.string())]))),
        })
    if "triples" in cfg.formats and answered:
        def col(name: str, typ: pa.DataType) -> pa.Array:
            return pa.array([r.get(name) for r in answered], typ)

        out["triples"] = pa.table({
            "pmid": col("pmid", pa.int64()),
            "question": col("question", pa.string()),
            "contexts": pa.array([(r["contexts"] or [])[: cfg.contexts()] for r in answered],
                                 pa.list_(pa.string())),
            "context_pmids": pa.array([[int(x) for x in (r.get("context_pmids") or [])
                                        [: cfg.contexts()]] for r in answered],
                                      pa.list_(pa.int64())),
            "answer": col("answer", pa.string()),
            "decision": col("decision", pa.string()),
            "is_yes_no": pa.array([r.get("is_yes_no", is_yes_no_question(r["question"]))
                                   for r in answered], pa.bool_()),
            "grounded": col("grounded", pa.bool_()),
            "grounding_score": col("grounding_score", pa.float64()),
            "score": col("score", pa.float64()),
            "finish_reason": col("finish_reason", pa.string()),
        })
    return out


def truncation_stats(table: pa.Table, cfg: ExportConfig) -> dict[str, Any] | None:
    """How many of the answered records the teacher cut at its token limit (``finish_reason``
    ``length``), finished (``stop``), or gave no finish reason for (``unknown``: an older answers
    table or a teacher callable that returns plain strings); None without answers."""
    if "answer" not in table.column_names:
        return None
    answers = table.column("answer").to_pylist()
    reasons = (table.column("finish_reason").to_pylist() if "finish_reason" in table.column_names
               else [None] * len(answers))
    n = truncated = finished = 0
    for a, f in zip(answers, reasons, strict=True):
        if (a or "").strip():
            n += 1
            truncated += f == "length"
            finished += f is not None and f != "length"
    return {"answers": n, "finished": finished, "truncated": truncated,
            "unknown": n - finished - truncated,
            "truncated_share": truncated / n if n else None,
            "kept_in_sft": cfg.keep_truncated_answers,
            "dropped_from_sft": 0 if cfg.keep_truncated_answers else truncated}


def export_dataset(
    records_path: str | os.PathLike[str] | pa.Table,
    out_dir: str | os.PathLike[str],
    corpus_dir: str | os.PathLike[str] | None = None,
    config: ExportConfig | None = None,
    mesh: Any = None,
    provenance: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Export the dataset (see module docstring); returns the contents of ``export.json``."""
    cfg = config or ExportConfig()
    for f in cfg.formats:
        if f not in FORMATS:
            raise InputError(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    if isinstance(records_path, pa.Table):
        table, source = records_path, "<table>"
    else:
        try:
            table, source = read_parquet(records_path), str(records_path)
        except FileNotFoundError as exc:
            raise InputError(f"{records_path}: {exc}") from None
    stats: dict[str, Any] = {"input": source, "input_rows": table.num_rows}
    for col in ("pmid", "question"):
        if col not in table.column_names:
            raise InputError(f"{source}: lacks the column {col!r} (columns: "
                             f"{', '.join(table.column_names)})")
    table = _decontaminate(table, cfg, stats)
    table = _select(table, cfg, stats)
    table = attach_texts(table, corpus_dir, cfg.contexts())
    stats["records"] = table.num_rows
    out = Path(out_dir)
    tables = build_tables(table, cfg)
    stats["splits"] = {name: _write_split(t, out, name) for name, t in tables.items()}
    stats["grounding"] = grounding_rates(table)
    stats["truncated_answers"] = truncation_stats(table, cfg)
    stats["config"] = cfg.to_dict()
    from kailin.dataset.card import dataset_card_stats, write_card

    stats.update(dataset_card_stats(table, mesh))
    stats["provenance"] = _provenance(provenance, corpus_dir)
    write_card(out, stats, cfg, plots=plots)
    write_json_atomic(out / "export.json", stats)
    return stats


def _provenance(extra: dict[str, Any] | None, corpus_dir: Any) -> dict[str, Any]:
    import datetime
    import importlib.metadata
    import platform

    versions = {}
    for dist in ("kailin", "pyarrow", "numpy", "torch", "transformers", "trl", "peft",
                 "sentence-transformers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    prov = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "versions": versions,
            "corpus": str(corpus_dir) if corpus_dir else None}
    if corpus_dir:
        try:
            from kailin.corpus.reader import open_corpus

            prov["corpus_manifest_hash"] = open_corpus(corpus_dir).manifest_hash()
        except Exception:
            pass
    prov.update(extra or {})
    return prov


class ExportStageConfig(ExportConfig):
    """The ``export`` stage: the settings of ``kailin dataset export``
    (``kailin.dataset.export.ExportConfig``) and where its questions come from."""

    questions_from: Literal["generators", "policy"] = Field(
        "generators", description="generators: per abstract the better-scoring question of the "
        "generators (before DPO); policy: questions regenerated by the aligned generator (the "
        "final steering round, else the dpo stage's model)")
    policy_round: int | None = Field(None, ge=1, description="with questions_from policy and "
                                     "steering on: which round's policy (default: the last)")
