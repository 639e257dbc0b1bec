"""Attach texts to scored questions: the source paper and the retrieved contexts.

The scores table (``kailin.align.score``) holds ``pmid``, ``question``, ``context_pmids`` and
``score`` but not the abstracts. :func:`attach_texts` looks the source and context PMIDs up in a
corpus directory (one DuckDB query per batch, reading only the needed columns) and adds

* ``title``, ``abstract``, ``mesh_uis``, ``mesh_names``, ``year`` of the source paper;
* ``contexts`` (list<string>): the abstracts of the first ``n_contexts`` context PMIDs, in
  retrieval order (a context without a corpus record is skipped and counted).

Columns already present in the input are kept as they are, so a table that carries its own
``contexts`` (e.g. from another retriever) needs no corpus.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.errors import InputError

log = logging.getLogger(__name__)

SOURCE_COLUMNS = ("title", "abstract", "mesh_uis", "mesh_names", "year")


def _corpus_glob(corpus_dir: str | os.PathLike[str]) -> str:
    from kailin.corpus.reader import open_corpus

    c = open_corpus(corpus_dir)
    if not c.files():
        raise InputError(f"{corpus_dir}: corpus has no shards under data/")
    return str(c.data_dir / "**" / "*.parquet")


def fetch_documents(corpus_dir: str | os.PathLike[str], pmids: list[int]) -> dict[int, dict]:
    """``{pmid: {title, abstract, mesh_uis, mesh_names, year}}`` for the PMIDs found."""
    from kailin.io import connect_duckdb

    want = sorted({int(p) for p in pmids if p is not None})
    if not want:
        return {}
    con = connect_duckdb()
    try:
        con.register("want", pa.table({"pmid": pa.array(want, pa.int64())}))
        rows = con.execute(
            f"""SELECT c.pmid, c.title, c.abstract, c.mesh_uis,
                       c.mesh, c.year
                FROM read_parquet('{_corpus_glob(corpus_dir)}', union_by_name=true) c
                JOIN want USING (pmid)"""
        ).fetchall()
    finally:
        con.close()
    return {
        int(r[0]): {"title": r[1] or "", "abstract": r[2] or "", "mesh_uis": list(r[3] or []),
                    "mesh_names": [m["name"] for m in (r[4] or []) if m and m.get("name")],
                    "year": r[5]}
        for r in rows
    }


def attach_texts(
    table: pa.Table,
    corpus_dir: str | os.PathLike[str] | None,
    n_contexts: int = 4,
    source: bool = True,
) -> pa.Table:
    """Add the source paper's text/MeSH (unless ``source=False``) and the context abstracts (see
    module docstring)."""
    for col in ("pmid", "question"):
        if col not in table.column_names:
            raise InputError(f"input table lacks the column {col!r} (columns: "
                             f"{', '.join(table.column_names)})")
    need_source = [c for c in SOURCE_COLUMNS if source and c not in table.column_names]
    need_contexts = "contexts" not in table.column_names
    if need_contexts and "context_pmids" not in table.column_names:
        raise InputError("input table has neither 'contexts' nor 'context_pmids'; give the "
                         "scores table written by `kailin score` (or the answers table of `kailin dataset answers`)")
    if not need_source and not need_contexts:
        return table
    if corpus_dir is None:
        missing = need_source + (["contexts"] if need_contexts else [])
        raise InputError(f"the input lacks {', '.join(missing)}: give --corpus so they can be "
                         "looked up by PMID")
    pmids = table.column("pmid").to_pylist()
    ctx_lists: list[list[Any]] = (
        [list(x or [])[:n_contexts] for x in table.column("context_pmids").to_pylist()]
        if need_contexts else [[] for _ in pmids]
    )
    docs = fetch_documents(corpus_dir, [*pmids, *(p for c in ctx_lists for p in c)])
    out = table
    for col in need_source:
        vals = [docs.get(int(p), {}).get(col) for p in pmids]
        if col in ("mesh_uis", "mesh_names"):
            arr = pa.array([v or [] for v in vals], pa.list_(pa.string()))
        elif col == "year":
            arr = pa.array(vals, pa.int32())
        else:
            arr = pa.array([v or "" for v in vals], pa.string())
        out = out.append_column(col, arr)
    if need_contexts:
        missing = 0
        ctx_text = []
        for c in ctx_lists:
            texts = []
            for p in c:
                d = docs.get(int(p))
                if d is None:
                    missing += 1
                    continue
                texts.append(d["abstract"])
            ctx_text.append(texts)
        if missing:
            log.warning("%d context PMID(s) not in the corpus %s were skipped", missing,
                        Path(corpus_dir))
        out = out.append_column("contexts", pa.array(ctx_text, pa.list_(pa.string())))
    absent = sum(1 for p in pmids if int(p) not in docs) if need_source else 0
    if absent:
        log.warning("%d source PMID(s) not found in the corpus %s", absent, corpus_dir)
    return out
