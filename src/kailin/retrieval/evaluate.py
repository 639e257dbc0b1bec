"""Retrieval quality on labelled queries: recall@k and MRR.

Queries come from a PubMedQA-style JSON file (``{PMID: {"QUESTION": ...}}``: the question's
relevant document is its own abstract), a JSON list of ``{"question": ..., "pmid": ...}``
objects, or a TSV file of ``query<TAB>PMID[,PMID...]``. The source document is *not* left out:
finding it is the task.

recall@k = mean over queries of |relevant ∩ top-k| / |relevant| (with one relevant document per
query: the fraction of queries whose document is in the top k). MRR = mean of 1/rank of the first
relevant document within the top ``depth`` (100), 0 when it is not there. Both are over the
queries whose relevant document is in the index; the others are counted apart
(``not_in_corpus``): no retriever can find a document that was never indexed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kailin.errors import InputError
from kailin.io import read_text_strict
from kailin.retrieval.base import Index

DEFAULT_KS = (1, 4, 10)
DEFAULT_DEPTH = 100


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    relevant: frozenset[int]


def _pmids(value: Any, where: str) -> frozenset[int]:
    items = value if isinstance(value, list) else str(value).replace(";", ",").split(",")
    try:
        out = frozenset(int(str(x).strip()) for x in items if str(x).strip())
    except ValueError:
        raise InputError(f"{where}: relevant PMID(s) {value!r} are not integers") from None
    if not out:
        raise InputError(f"{where}: no relevant PMID given")
    return out


def load_queries(path: str | Path) -> list[LabelledQuery]:
    """Read labelled queries from a PubMedQA JSON, a JSON list, or a TSV file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: queries file not found")
    text = read_text_strict(path, "queries file")
    out: list[LabelledQuery] = []
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            for key, rec in data.items():
                where = f"{path}: record {key}"
                if not isinstance(rec, dict) or not (rec.get("QUESTION") or rec.get("question")):
                    raise InputError(f"{where}: no QUESTION field (expected PubMedQA format)")
                q = rec.get("QUESTION") or rec.get("question")
                out.append(LabelledQuery(str(q), _pmids(key, where)))
        elif isinstance(data, list):
            for i, rec in enumerate(data):
                where = f"{path}: item {i}"
                if not isinstance(rec, dict):
                    raise InputError(f"{where}: expected an object with question and pmid")
                q = rec.get("question") or rec.get("query") or rec.get("QUESTION")
                rel = rec.get("pmids", rec.get("pmid"))
                if not q or rel is None:
                    raise InputError(f"{where}: needs 'question' (or 'query') and 'pmid'")
                out.append(LabelledQuery(str(q), _pmids(rel, where)))
        else:
            raise InputError(f"{path}: expected a JSON object or list")
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            where = f"{path}: line {lineno}"
            if len(parts) < 2:
                raise InputError(f"{where}: expected 'query<TAB>PMID', found no tab")
            query, rel = parts[0].strip(), parts[1].strip()
            if lineno == 1 and not any(ch.isdigit() for ch in rel):
                continue  # a header line such as "query<TAB>pmid"
            if not query:
                raise InputError(f"{where}: empty query")
            out.append(LabelledQuery(query, _pmids(rel, where)))
    if not out:
        raise InputError(f"{path}: holds no queries")
    return out


def evaluate(
    index: Index,
    queries: Sequence[LabelledQuery],
    ks: Sequence[int] = DEFAULT_KS,
    depth: int = DEFAULT_DEPTH,
    batch_size: int = 256,
    years: tuple[int | None, int | None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """recall@k for each k in ``ks`` and MRR (cut at ``depth``) of ``index`` on ``queries``.

    A query none of whose relevant PMIDs is in the index cannot be answered by any retriever:
    it is counted in ``not_in_corpus`` and left out of the metrics, which are over the ``n``
    queries whose relevant document is indexed (their relevant sets cut to the indexed PMIDs).
    ``n_queries`` is every query given; with ``n`` = 0 the metrics are None."""
    from tqdm.auto import tqdm

    from kailin.progress import enabled as progress_enabled

    if not queries:
        raise InputError("no queries to evaluate")
    depth = max(depth, *ks)
    indexed = np.unique(index.docstore.pmids)
    answerable: list[LabelledQuery] = []
    for q in queries:
        rel = np.fromiter(q.relevant, dtype=np.int64, count=len(q.relevant))
        here = rel[np.isin(rel, indexed)]
        if len(here):
            answerable.append(LabelledQuery(q.query, frozenset(int(p) for p in here)))
    n = len(answerable)
    recalls = {k: np.zeros(n) for k in ks}
    rr = np.zeros(n)
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="evaluate", unit="q", disable=not progress_enabled(progress))
    for start in range(0, n, batch_size):
        chunk = answerable[start : start + batch_size]
        hits = index.search([q.query for q in chunk], k=depth, years=years)
        for j, (q, hs) in enumerate(zip(chunk, hits, strict=True)):
            ranked = [h.pmid for h in hs]
            for k in ks:
                recalls[k][start + j] = len(q.relevant.intersection(ranked[:k])) / len(q.relevant)
            for rank, pmid in enumerate(ranked, 1):
                if pmid in q.relevant:
                    rr[start + j] = 1.0 / rank
                    break
        bar.update(len(chunk))
    bar.close()
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {
        f"recall@{k}": float(recalls[k].mean()) if n else None for k in ks
    }
    result["mrr"] = float(rr.mean()) if n else None
    result["n"] = n
    result["not_in_corpus"] = len(queries) - n
    result["n_queries"] = len(queries)
    result["metrics_over"] = "queries whose relevant PMID is in the index (not_in_corpus left out)"
    result["kind"] = index.kind
    result["documents"] = len(index)
    result["mrr_depth"] = depth
    result["queries_per_s"] = n / elapsed if elapsed > 0 and n else None
    return result
