"""Index kinds by name."""

from __future__ import annotations

from kailin.errors import InputError

KINDS = ("bm25", "dense", "hybrid", "qdrant")


def index_class(kind: str) -> type:
    if kind == "bm25":
        from kailin.retrieval.bm25 import BM25Index

        return BM25Index
    if kind == "dense":
        from kailin.retrieval.dense import DenseIndex

        return DenseIndex
    if kind == "hybrid":
        from kailin.retrieval.hybrid import HybridIndex

        return HybridIndex
    if kind == "qdrant":
        from kailin.retrieval.qdrant import QdrantIndex

        return QdrantIndex
    raise InputError(f"unknown index kind {kind!r}: choose one of {', '.join(KINDS)}")
