"""Context retrieval: BM25, dense, hybrid and Qdrant indexes over a corpus.

>>> from kailin.retrieval import build_index, load_index
>>> index = build_index("corpus/", "index/", kind="bm25")          # doctest: +SKIP
>>> hits = index.search(["Do statins reduce mortality?"], k=4)    # doctest: +SKIP
>>> hits[0][0].pmid, hits[0][0].mesh_uis                          # doctest: +SKIP

See ``docs/retrieval.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.retrieval.base import Hit, Index, StaleIndexError, check_fresh, read_meta
from kailin.retrieval.registry import KINDS, index_class

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "Hit",
    "Index",
    "IndexBuildConfig",
    "IndexConfig",
    "StaleIndexError",
    "build_index",
    "load_index",
]


def build_index(
    corpus_dir: str | Path,
    out_dir: str | Path,
    kind: str = "bm25",
    *,
    overwrite: bool = False,
    batch_size: int = 1024,
    progress: bool = True,
    **opts: Any,
) -> Index:
    """Build an index of ``kind`` (bm25, dense, hybrid, qdrant) over the corpus at
    ``corpus_dir`` into ``out_dir``; return it loaded.

    Options (``opts``): BM25 ``k1``, ``b``, ``method``, ``stemmer``, ``stopwords``, ``shards``
    (1; N builds N bm25s indexes in parallel, scored with corpus-wide statistics so that search
    returns what one index would: :mod:`kailin.retrieval.bm25_sharded`); dense/qdrant
    ``model`` (local path or hub id; default: the packaged all-MiniLM-L6-v2), ``query_model``,
    ``document_prefix``, ``query_prefix``, ``max_seq_length``, ``encode_batch_size``; FAISS
    ``faiss_index`` (auto|flat|ivf|hnsw), ``exact_threshold``, ``nlist``, ``nprobe``, ``hnsw_m``,
    ``ef_construction``, ``ef_search``; hybrid ``rrf_k`` (60), ``rrf_depth`` (100),
    ``bm25_weight``, ``dense_weight``; qdrant ``qdrant_url``, ``collection``.
    """
    from kailin.retrieval.base import build
    from kailin.retrieval.bm25 import shard_count

    cls = index_class(kind)
    if shard_count(opts.get("shards")) > 1 and kind != "bm25":
        raise InputError(f"shards={opts['shards']}: only a bm25 index can be sharded, not {kind}")
    return build(
        cls,
        corpus_dir,
        out_dir,
        opts,
        overwrite=overwrite,
        batch_size=batch_size,
        progress=progress,
    )


def load_index(
    index_dir: str | Path,
    corpus: str | Path | None = None,
    on_stale: str = "error",
) -> Index:
    """Load the index at ``index_dir``.

    With ``corpus``, the index is checked against that corpus directory and a
    :class:`StaleIndexError` raised (``on_stale="error"``) or a warning logged (``"warn"``) when
    the corpus changed since the build. Without it, the corpus recorded at build time is checked
    when it still exists, and staleness is only warned about.
    """
    root = Path(index_dir)
    meta = read_meta(root)
    if corpus is not None:
        check_fresh(root, meta, corpus, on_stale)
    else:
        recorded = meta.get("corpus", {}).get("path")
        if recorded and (Path(recorded) / "data").is_dir():
            check_fresh(root, meta, recorded, "warn")
    return index_class(meta.get("kind", ""))(root, meta)


class IndexConfig(StageConfig):
    """The run's index: its kind, encoder, shards, and how many contexts a question keeps."""

    added_fields: ClassVar[tuple[str, ...]] = ("shards",)

    kind: Literal["bm25", "dense", "hybrid"] = "bm25"
    model: str | None = None
    k: int = Field(4, ge=1)
    leave_source_out: bool = True
    shards: int = Field(1, ge=1, description="BM25: build the index as N shards in parallel, "
                        "scored with corpus-wide statistics (the same hits and scores as one "
                        "index; build memory bounded by a shard)")

    @model_validator(mode="after")
    def _shards(self) -> IndexConfig:
        if self.shards > 1 and self.kind != "bm25":
            raise ValueError(f"shards {self.shards}: only a bm25 index is built in shards")
        return self


class IndexBuildConfig(IndexConfig):
    """Every setting of ``kailin index build``: the run's :class:`IndexConfig` (kind, encoder,
    shards) and the vector store's (``k`` and ``leave_source_out`` are the retrieval's, not the
    build's). :meth:`build_options` turns it into :func:`build_index`'s ``kind`` and ``opts``."""

    kind: Literal["bm25", "dense", "hybrid", "qdrant"] = Field(  # type: ignore[assignment]
        "bm25", description="bm25, dense, hybrid or qdrant")
    backend: Literal["faiss", "qdrant"] = Field(
        "faiss", description="vector store for dense: faiss, or qdrant (= --kind qdrant)")
    model: str | None = Field(None, description="embedding model: local path or hub id "
                              "(default: packaged MiniLM)")
    query_model: str | None = Field(None, description="separate query encoder (e.g. "
                                    "MedCPT-Query-Encoder)")
    faiss_index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="auto (flat below --exact-threshold, else hnsw), flat, ivf or hnsw")
    exact_threshold: int | None = Field(None, description="largest corpus searched exactly with "
                                        "auto (100000)")
    nlist: int | None = Field(None, description="IVF lists (default 4*sqrt(N))")
    nprobe: int | None = Field(None, description="IVF lists searched per query")
    ef_search: int | None = Field(None, description="HNSW efSearch (128)")
    max_seq_length: int | None = Field(None, description="encoder token limit per document")
    rrf_k: float | None = Field(None, description="hybrid: RRF constant (60)")
    reuse_dense: str | None = Field(None, description="hybrid/qdrant: reuse the vectors of this "
                                    "dense index (same corpus) instead of encoding again")
    qdrant_url: str | None = Field(None, description="Qdrant server (API key from "
                                   "$QDRANT_API_KEY); default: embedded local storage in the "
                                   "index directory")
    collection: str | None = Field(None, description="Qdrant collection name")
    batch_size: int = Field(1024, ge=1, description="corpus rows read per batch")

    @model_validator(mode="after")
    def _shards(self) -> IndexBuildConfig:  # the build's kinds and backends
        if self.backend == "qdrant" and self.kind not in ("dense", "qdrant"):
            raise ValueError("--backend qdrant stores dense vectors: use it with --kind dense")
        if self.shards != 1 and self.kind != "bm25":
            raise ValueError(f"--shards applies to --kind bm25 only, not {self.store}")
        return self

    @property
    def store(self) -> str:
        """The kind built: ``qdrant`` for a dense index with ``backend`` qdrant."""
        return "qdrant" if self.backend == "qdrant" else self.kind

    def build_options(self) -> tuple[str, dict[str, Any]]:
        """``(kind, opts)`` for :func:`build_index`: each kind's own settings only."""
        kind = self.store
        if kind == "bm25":
            return kind, {"shards": self.shards}
        opts: dict[str, Any] = {"model": self.model, "query_model": self.query_model,
                                "max_seq_length": self.max_seq_length}
        if kind in ("dense", "hybrid"):
            opts.update(faiss_index=self.faiss_index, exact_threshold=self.exact_threshold,
                        nlist=self.nlist, nprobe=self.nprobe, ef_search=self.ef_search)
        if kind == "hybrid":
            opts.update(rrf_k=self.rrf_k, reuse_dense=self.reuse_dense)
        if kind == "qdrant":
            opts.update(qdrant_url=self.qdrant_url, collection=self.collection,
                        reuse_dense=self.reuse_dense)
        return kind, opts
