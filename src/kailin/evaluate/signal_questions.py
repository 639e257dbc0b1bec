"""The question sets the document-signal evaluation reads (PubMedQA-style JSON / JSONL with
the source abstract and, for expert questions, their passages), as :class:`QuestionSet`."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kailin.errors import InputError
from kailin.io import read_text_strict

log = logging.getLogger("kailin.evaluate.signal")


@dataclass
class QuestionSet:
    pmids: list[int]
    questions: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    #: MeSH names from the question file (PubMedQA's MESHES), used when the corpus has none
    file_mesh: dict[int, list[str]] = field(default_factory=dict)


def _pqal_split(split: str) -> set[str] | None:
    if split == "all":
        return None
    p = resources.files("kailin") / "data" / "pubmedqa" / "pqal_official_split.json"
    test = set(json.loads(p.read_text(encoding="utf-8"))["test"])
    return test


_LABEL = re.compile(r"(?:^|(?<=[.\s]))[A-Z][A-Z0-9 ,&/()-]{2,40}:\s")


_CONTEXT = re.compile(r"Context \(\d+\):\s*")


def _text_key(text: str, n: int = 64) -> str:
    """A matching key for an abstract: its first ``n`` letters and digits, lower case, with
    structured-abstract labels (BACKGROUND:) and PubMedQA's "Context (1):" removed."""
    text = _CONTEXT.sub(" ", _LABEL.sub(" ", text or ""))
    return re.sub(r"[^a-z0-9]", "", text.lower())[:n]


def load_questions(path: str | Path, *, split: str = "all",
                   corpus_dir: str | Path | None = None) -> QuestionSet:
    """Trusted (pmid, question) pairs from ``path`` (see module doc). ``split`` (PubMedQA
    PQA-L only): ``dev`` (outside the official test split), ``test`` or ``all``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such questions file")
    if split not in ("all", "dev", "test"):
        raise InputError(f"unknown split {split!r}; choose all, dev or test")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".parquet" or path.is_dir():
        import pyarrow.parquet as pq

        tab = pq.read_table(path)
        missing = [c for c in ("pmid", "question") if c not in tab.column_names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; give pmid and question")
        rows = tab.select(["pmid", "question"]).to_pylist()
    elif suffix == ".json":
        try:
            data = json.loads(read_text_strict(path, "questions file"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            test = _pqal_split(split)
            rows = []
            file_mesh: dict[int, list[str]] = {}
            for key, item in data.items():
                if not isinstance(item, dict) or "QUESTION" not in item:
                    raise InputError(f"{path}: entry {key!r} has no QUESTION; expected "
                                     "PubMedQA's format (PMID -> {QUESTION, ...})")
                if test is not None and ((key in test) != (split == "test")):
                    continue
                rows.append({"pmid": key, "question": item["QUESTION"]})
                if item.get("MESHES"):
                    file_mesh[int(key)] = list(item["MESHES"])
            qs = _to_set(rows, path)
            qs.file_mesh = file_mesh
            qs.info["format"] = "pubmedqa"
            return qs
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of {{pmid, question}} or PubMedQA JSON")
        rows = data
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(read_text_strict(path, "questions file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid JSON ({exc})") from None
    else:
        raise InputError(f"{path}: unknown question file type; give .json, .jsonl or .parquet")
    if rows and "pmid" not in rows[0] and "passage" in rows[0]:
        return _match_passages(rows, path, corpus_dir)
    return _to_set(rows, path)


def _to_set(rows: list[dict[str, Any]], path: Path) -> QuestionSet:
    pmids, questions = [], []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or "question" not in r or "pmid" not in r:
            raise InputError(f"{path}: record {n} needs 'pmid' and 'question'")
        try:
            pmid = int(r["pmid"])
        except (TypeError, ValueError):
            raise InputError(f"{path}: record {n}: pmid {r['pmid']!r} is not a number") from None
        q = str(r["question"] or "").strip()
        if q:
            pmids.append(pmid)
            questions.append(q)
    return QuestionSet(pmids, questions, {"file": str(path), "items_in_file": len(rows)})


def _match_passages(rows: list[dict[str, Any]], path: Path,
                    corpus_dir: str | Path | None) -> QuestionSet:
    """PQA-A style rows (question + passage, no PMID): find each passage's record in the
    corpus by the start of its abstract."""
    if corpus_dir is None:
        raise InputError(f"{path}: rows have no pmid; give the corpus to match passages")
    from kailin.corpus.reader import open_corpus

    want: dict[str, int] = {}
    for i, r in enumerate(rows):
        key = _text_key(str(r.get("passage", "")))
        if len(key) >= 32:
            want.setdefault(key, i)
    found: dict[int, int] = {}
    for batch in open_corpus(corpus_dir).iter_batches(columns=["pmid", "abstract"]):
        for pmid, ab in zip(batch.column("pmid").to_pylist(), batch.column("abstract").to_pylist(),
                            strict=True):
            i = want.get(_text_key(ab or ""))
            if i is not None:
                found.setdefault(i, int(pmid))
    matched = [{"pmid": found[i], "question": rows[i]["question"]} for i in sorted(found)]
    qs = _to_set(matched, path)
    qs.info.update(items_in_file=len(rows), matched_to_corpus=len(matched),
                   unmatched=len(rows) - len(matched), format="passages")
    log.info("%s: %d of %d passages matched to corpus records", path, len(matched), len(rows))
    return qs
