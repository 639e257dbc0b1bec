"""Qdrant backend (the authors' choice): dense vectors in a Qdrant collection.

By default the collection lives in Qdrant's embedded local mode inside the index directory
(``INDEX_DIR/qdrant``; no server needed). With ``qdrant_url`` the vectors go to a Qdrant server
instead; its API key is read from the environment variable ``QDRANT_API_KEY`` (never stored or
logged). Point id = docstore row; payload = ``pmid``, ``year``, ``mesh_uis``. Year filters are
Qdrant payload filters; the rest of the interface (hits from the docstore, leaving the source out)
is shared with the other kinds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from kailin.errors import InputError, require
from kailin.retrieval.base import Index
from kailin.retrieval.dense import Encoder, resolve_model

QDRANT_DIR = "qdrant"
DEFAULT_COLLECTION = "kailin"


def _client(root: Path, params: dict[str, Any]) -> Any:
    require("qdrant_client", "retrieval")
    from qdrant_client import QdrantClient

    url = params.get("url")
    if url:
        return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None)
    return QdrantClient(path=str(root / QDRANT_DIR))


def _year_filter(years: tuple[int | None, int | None] | None) -> Any:
    from qdrant_client import models

    if years is None or (years[0] is None and years[1] is None):
        return None
    return models.Filter(
        must=[models.FieldCondition(key="year", range=models.Range(gte=years[0], lte=years[1]))]
    )


def _reusable_vectors(opts: dict[str, Any], num_docs: int) -> tuple[Any, dict] | None:
    """(FAISS index, its dense params) of ``opts["reuse_dense"]``: a flat or HNSW dense index
    built from the same corpus, whose vectors are uploaded instead of encoding again."""
    src = opts.get("reuse_dense")
    if not src:
        return None
    import faiss

    from kailin.retrieval.base import read_meta
    from kailin.retrieval.dense import FAISS_FILE

    src = Path(src)
    meta = read_meta(src)
    if meta.get("kind") not in ("dense", "hybrid"):
        raise InputError(f"{src}: reuse needs a dense or hybrid index, not {meta.get('kind')}")
    if (
        meta.get("corpus", {}).get("manifest_hash") != opts.get("_corpus_hash")
        or meta.get("counts", {}).get("documents") != num_docs
    ):
        raise InputError(f"{src}: was built from another version of the corpus; cannot reuse it")
    params = meta["params"]["dense"]
    if params.get("faiss_index") not in ("flat", "hnsw"):
        raise InputError(f"{src}: vectors can be reused from flat or hnsw indexes only")
    return faiss.read_index(str(src / FAISS_FILE)), params


class QdrantIndex(Index):
    """Dense index stored in Qdrant (embedded local mode or a server)."""

    kind: ClassVar[str] = "qdrant"

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        super().__init__(root, meta)
        self.params = meta["params"]["qdrant"]
        self.client = _client(self.root, self.params)
        self.collection = self.params["collection"]
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            model = self.params.get("query_model") or self.params["model"]
            if self.params.get("model_spec") == "default" and not Path(model).exists():
                model = None
            self._encoder = Encoder(
                model,
                batch_size=int(self.params.get("batch_size", 32)),
                max_seq_length=self.params.get("max_seq_length"),
                prefix=self.params.get("query_prefix", ""),
            )
        return self._encoder

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
            self.client = None

    @classmethod
    def _build_backend(
        cls,
        batches: Iterator[tuple[pa.Table, list[str]]],
        num_docs: int,
        tmp_dir: Path,
        opts: dict[str, Any],
    ) -> dict[str, Any]:
        require("qdrant_client", "retrieval")
        from qdrant_client import models

        reuse = _reusable_vectors(opts, num_docs)
        model = reuse[1]["model"] if reuse else resolve_model(opts.get("model"))
        batch_size = int(opts.get("encode_batch_size") or 32)
        if reuse:  # the reused index's encoder settings, so that queries match its vectors
            for key in ("max_seq_length", "query_model", "document_prefix", "query_prefix"):
                opts[key] = reuse[1].get(key)
        enc = Encoder(
            model,
            batch_size=batch_size,
            max_seq_length=opts.get("max_seq_length"),
            prefix=opts.get("document_prefix") or "",
        )
        url = opts.get("qdrant_url")
        collection = opts.get("collection") or DEFAULT_COLLECTION
        params: dict[str, Any] = {"url": url, "collection": collection}
        client = _client(tmp_dir, params)
        try:
            if client.collection_exists(collection):
                if not url:
                    raise InputError(f"{tmp_dir}: fresh Qdrant folder already has {collection}")
                client.delete_collection(collection)  # a rebuild replaces the server collection
            client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=enc.dim, distance=models.Distance.COSINE),
            )
            if url:  # payload indexes only matter on a server
                client.create_payload_index(collection, "year", models.PayloadSchemaType.INTEGER)
            row = 0
            for table, texts in batches:
                vecs = reuse[0].reconstruct_n(row, len(texts)) if reuse else enc.encode(texts)
                pmids = table.column("pmid").to_pylist()
                years = table.column("year").to_pylist()
                meshes = table.column("mesh_uis").to_pylist()
                payloads = []
                for p, y, m in zip(pmids, years, meshes, strict=True):
                    pl: dict[str, Any] = {"pmid": int(p), "mesh_uis": list(m or [])}
                    if y is not None:
                        pl["year"] = int(y)
                    payloads.append(pl)
                ids = list(range(row, row + len(texts)))
                client.upsert(
                    collection,
                    points=models.Batch(ids=ids, vectors=vecs.tolist(), payloads=payloads),
                    wait=True,
                )
                row += len(texts)
            count = client.count(collection, exact=True).count
        finally:
            client.close()
        query_model = opts.get("query_model")
        if reuse:
            params["reused_from"] = opts["reuse_dense"]
        params.update(
            model=model,
            model_spec=reuse[1].get("model_spec", "default")
            if reuse
            else str(opts.get("model") or "default"),
            query_model=resolve_model(query_model) if query_model else None,
            max_seq_length=int(enc.model.max_seq_length),
            batch_size=batch_size,
            document_prefix=opts.get("document_prefix") or "",
            query_prefix=opts.get("query_prefix") or "",
            dim=enc.dim,
            count=int(count),
        )
        return {"qdrant": params}

    def _search_rows(
        self,
        queries: list[str],
        n: int,
        mask: np.ndarray | None,
        years: tuple[int | None, int | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        if self.client is None:
            raise InputError(f"{self.root}: this Qdrant index was closed; load it again")
        qvecs = self.encoder.encode(queries)
        flt = _year_filter(years)
        requests = [
            models.QueryRequest(query=v.tolist(), limit=n, filter=flt, with_payload=False)
            for v in qvecs
        ]
        rows = np.full((len(queries), n), -1, dtype=np.int64)
        scores = np.zeros((len(queries), n), dtype=np.float32)
        for i, resp in enumerate(self.client.query_batch_points(self.collection, requests)):
            for j, p in enumerate(resp.points[:n]):
                rows[i, j] = int(p.id)
                scores[i, j] = float(p.score)
        return rows, scores
