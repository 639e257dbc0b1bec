"""Index kinds by name.

The registry names each index class by its module and attribute and imports it on first use, so
that ``retrieval.base`` (which loads a saved index through this registry) and the index modules
(which build on ``retrieval.base``) do not import each other.
"""

from __future__ import annotations

import importlib

from kailin.errors import InputError

#: kind -> "module:Class"
INDEX_CLASSES = {
    "bm25": "kailin.retrieval.bm25:BM25Index",
    "dense": "kailin.retrieval.dense:DenseIndex",
    "hybrid": "kailin.retrieval.hybrid:HybridIndex",
    "qdrant": "kailin.retrieval.qdrant:QdrantIndex",
}
KINDS = tuple(INDEX_CLASSES)


def index_class(kind: str) -> type:
    target = INDEX_CLASSES.get(kind)
    if target is None:
        raise InputError(f"unknown index kind {kind!r}: choose one of {', '.join(KINDS)}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
