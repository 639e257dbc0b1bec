"""Hybrid retrieval: reciprocal rank fusion (RRF) of BM25 and dense rankings.

RRF (Cormack, Clarke & Büttcher, SIGIR 2009): ``score(d) = Σ_r w_r / (k + rank_r(d))`` over the
rankings r that hold d (rank from 1), with ``k = 60`` by default. Each ranking contributes its
top ``depth`` documents (default 100). Both halves are built in one pass over the corpus.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from kailin.errors import InputError
from kailin.retrieval.base import Index, read_meta
from kailin.retrieval.bm25 import BM25Backend, BM25Builder
from kailin.retrieval.dense import FAISS_FILE, DenseBackend, DenseBuilder

DEFAULT_RRF_K = 60
DEFAULT_DEPTH = 100


def reciprocal_rank_fusion(
    rankings: list[np.ndarray],
    n: int,
    rrf_k: float = DEFAULT_RRF_K,
    weights: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ``rankings`` (each ``[Q, depth]`` row ids best first, -1 = none) into the top ``n``
    rows per query and their RRF scores (``[Q, n]``, -1 padded)."""
    if not rankings:
        raise ValueError("nothing to fuse")
    weights = weights or [1.0] * len(rankings)
    nq = rankings[0].shape[0]
    out_rows = np.full((nq, n), -1, dtype=np.int64)
    out_scores = np.zeros((nq, n), dtype=np.float32)
    for q in range(nq):
        ids_parts, score_parts = [], []
        for ranking, w in zip(rankings, weights, strict=True):
            r = ranking[q]
            valid = r >= 0
            ranks = np.arange(1, len(r) + 1, dtype=np.float64)[valid]
            ids_parts.append(r[valid])
            score_parts.append(w / (rrf_k + ranks))
        ids = np.concatenate(ids_parts)
        if len(ids) == 0:
            continue
        uniq, inv = np.unique(ids, return_inverse=True)
        fused = np.zeros(len(uniq))
        np.add.at(fused, inv, np.concatenate(score_parts))
        # best first; ties broken by smaller row id (deterministic)
        order = np.lexsort((uniq, -fused))[:n]
        out_rows[q, : len(order)] = uniq[order]
        out_scores[q, : len(order)] = fused[order]
    return out_rows, out_scores


def _reuse_dense(src: Path, tmp_dir: Path, corpus_hash: str | None, num_docs: int) -> dict:
    """Copy the FAISS half of an existing dense/hybrid index built from the same corpus."""
    meta = read_meta(src)
    if meta.get("kind") not in ("dense", "hybrid"):
        raise InputError(
            f"{src}: --reuse-dense needs a dense or hybrid index, not {meta.get('kind')}"
        )
    if meta.get("corpus", {}).get("manifest_hash") != corpus_hash:
        raise InputError(
            f"{src}: was built from another version of the corpus "
            f"({meta.get('corpus', {}).get('manifest_hash')} vs {corpus_hash}); it cannot be reused"
        )
    if meta.get("counts", {}).get("documents") != num_docs:
        raise InputError(f"{src}: indexes a different number of documents; cannot be reused")
    shutil.copyfile(src / FAISS_FILE, tmp_dir / FAISS_FILE)
    return dict(meta["params"]["dense"], reused_from=str(src.resolve()))


class HybridIndex(Index):
    """BM25 + dense, fused by reciprocal rank."""

    kind: ClassVar[str] = "hybrid"

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        super().__init__(root, meta)
        params = meta["params"]
        self.bm25 = BM25Backend(self.root, params["bm25"])
        self.dense = DenseBackend(self.root, params["dense"])
        self.rrf_k = float(params["fusion"]["rrf_k"])
        self.depth = int(params["fusion"]["depth"])
        self.weights = [float(w) for w in params["fusion"]["weights"]]

    @classmethod
    def _build_backend(
        cls,
        batches: Iterator[tuple[pa.Table, list[str]]],
        num_docs: int,
        tmp_dir: Path,
        opts: dict[str, Any],
    ) -> dict[str, Any]:
        bm25 = BM25Builder(opts)
        reuse = opts.get("reuse_dense")
        dense = None if reuse else DenseBuilder(num_docs, opts)
        for _, texts in batches:
            bm25.add(texts)
            if dense is not None:
                dense.add(texts)
        if reuse:
            dense_params = _reuse_dense(Path(reuse), tmp_dir, opts.get("_corpus_hash"), num_docs)
        else:
            assert dense is not None
            dense_params = dense.finish(tmp_dir)
        return {
            "bm25": bm25.finish(tmp_dir),
            "dense": dense_params,
            "fusion": {
                "method": "rrf",
                "rrf_k": float(opts.get("rrf_k") or DEFAULT_RRF_K),
                "depth": int(opts.get("rrf_depth") or DEFAULT_DEPTH),
                "weights": [
                    float(opts.get("bm25_weight") or 1.0),
                    float(opts.get("dense_weight") or 1.0),
                ],
            },
        }

    def _search_rows(
        self,
        queries: list[str],
        n: int,
        mask: np.ndarray | None,
        years: tuple[int | None, int | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        depth = min(max(self.depth, n), len(self))
        lex, _ = self.bm25.search(queries, depth, mask)
        sem, _ = self.dense.search(queries, depth, mask)
        return reciprocal_rank_fusion([lex, sem], n, self.rrf_k, self.weights)
