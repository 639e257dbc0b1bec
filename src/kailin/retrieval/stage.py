"""Retrieval as a pipeline stage: questions in, questions + their contexts out.

:func:`retrieve_contexts` adds, for each row of a table with ``pmid`` (the source document) and
``question``, the top-k contexts: ``context_pmids`` (list<int64>), ``context_mesh_uis``
(list<list<string>>: the MeSH UIs of each context, what the knowledge-hierarchy score compares)
and ``context_scores`` (list<float>); with ``with_text`` also ``context_titles`` and
``context_abstracts``. The source document is left out of its own contexts unless
``exclude_source=False`` (the authors' code kept it). :class:`RetrieveContextsStage` wraps it for
the executors (the index is loaded once per worker in ``setup``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from kailin.engine.stage import Stage
from kailin.errors import InputError
from kailin.retrieval.base import Hit, Index

CONTEXT_FIELDS = [
    pa.field("context_pmids", pa.list_(pa.int64())),
    pa.field("context_mesh_uis", pa.list_(pa.list_(pa.string()))),
    pa.field("context_scores", pa.list_(pa.float32())),
]
TEXT_FIELDS = [
    pa.field("context_titles", pa.list_(pa.string())),
    pa.field("context_abstracts", pa.list_(pa.string())),
]


def retrieve_contexts(
    index: Index,
    table: pa.Table,
    k: int = 4,
    *,
    exclude_source: bool = True,
    years: tuple[int | None, int | None] | None = None,
    query_column: str = "question",
    source_column: str = "pmid",
    with_text: bool = False,
    batch_size: int = 256,
) -> pa.Table:
    """``table`` with the context columns appended (see the module docstring)."""
    if query_column not in table.column_names:
        raise InputError(
            f"retrieval input has no '{query_column}' column (columns: {table.column_names})"
        )
    if exclude_source and source_column not in table.column_names:
        raise InputError(
            f"retrieval input has no '{source_column}' column to leave the source document out; "
            "add it or pass exclude_source=False"
        )
    questions = table.column(query_column).to_pylist()
    sources = table.column(source_column).to_pylist() if exclude_source else None
    todo = [i for i, q in enumerate(questions) if q and str(q).strip()]
    results: list[list[Hit]] = [[] for _ in questions]
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        hits = index.search(
            [str(questions[i]) for i in rows],
            k=k,
            exclude_pmids=[sources[i] for i in rows] if sources is not None else None,
            years=years,
        )
        for i, h in zip(rows, hits, strict=True):
            results[i] = h
    cols: dict[str, list[Any]] = {
        "context_pmids": [[h.pmid for h in hs] for hs in results],
        "context_mesh_uis": [[list(h.mesh_uis) for h in hs] for hs in results],
        "context_scores": [[h.score for h in hs] for hs in results],
    }
    fields = list(CONTEXT_FIELDS)
    if with_text:
        cols["context_titles"] = [[h.title for h in hs] for hs in results]
        cols["context_abstracts"] = [[h.abstract for h in hs] for hs in results]
        fields += TEXT_FIELDS
    out = table
    for f in fields:
        if f.name in out.column_names:
            out = out.drop_columns([f.name])
        out = out.append_column(f, pa.array(cols[f.name], type=f.type))
    return out


class RetrieveContextsStage(Stage):
    """Stage: append the top-k contexts of each question (see :func:`retrieve_contexts`)."""

    name: ClassVar[str] = "retrieve"
    stateful: ClassVar[bool] = True

    def __init__(
        self,
        index_dir: str | Path,
        k: int = 4,
        exclude_source: bool = True,
        years: tuple[int | None, int | None] | None = None,
        query_column: str = "question",
        with_text: bool = False,
    ) -> None:
        super().__init__()
        self.index_dir = str(index_dir)
        self.k = k
        self.exclude_source = exclude_source
        self.years = tuple(years) if years is not None else None
        self.query_column = query_column
        self.with_text = with_text
        self.index: Index | None = None

    def setup(self) -> None:
        from kailin.retrieval import load_index

        self.index = load_index(self.index_dir)

    def process(self, batch: pa.Table) -> pa.Table:
        assert self.index is not None
        return retrieve_contexts(
            self.index,
            batch,
            self.k,
            exclude_source=self.exclude_source,
            years=self.years,
            query_column=self.query_column,
            with_text=self.with_text,
        )

    def fingerprint_config(self) -> dict[str, Any]:
        from kailin.retrieval.base import read_meta

        meta = read_meta(self.index_dir)
        return {
            "index_kind": meta.get("kind"),
            "index_settings": meta.get("settings"),
            "corpus_hash": meta.get("corpus", {}).get("manifest_hash"),
            "k": self.k,
            "exclude_source": self.exclude_source,
            "years": self.years,
            "query_column": self.query_column,
            "with_text": self.with_text,
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["index"] = None  # reloaded by setup() in the worker
        state["_ready"] = False
        return state
