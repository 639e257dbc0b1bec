"""BM25 through bm25s: English stop words, PyStemmer's English (Porter2) stemmer, Lucene BM25.

Documents are tokenised batch by batch while the corpus streams past, so only integer token ids
(never the texts) are held in memory before bm25s builds its sparse score matrix. The matrix is
saved with bm25s's own format and memory-mapped on load. With ``shards=N`` the index is N such
matrices scored with corpus-wide statistics (:mod:`kailin.retrieval.bm25_sharded`); a search
scores each and merges their top hits. Hits with equal scores come in row order (whatever the
sharding), and a query that shares no term with the corpus has no hits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from kailin.errors import InputError, KailinError
from kailin.retrieval.base import Index
from kailin.retrieval.bm25_sharded import build_sharded, read_shards
from kailin.retrieval.bm25_tokenizer import import_bm25s, make_tokenizer

__all__ = ["BM25Backend", "BM25Builder", "BM25Index", "make_tokenizer", "shard_count"]

BM25_DIR = "bm25"


def shard_count(value: Any) -> int:
    """The ``shards`` option as a positive int (None: 1)."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"BM25 shards must be a whole number >= 1, got {value!r}")
    return value


class BM25Builder:
    """Tokenise documents batch by batch; build and save the bm25s index at the end."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.stemmer = opts.get("stemmer", "english")
        self.stopwords = opts.get("stopwords", "en")
        self.k1 = float(opts.get("k1", 1.5))
        self.b = float(opts.get("b", 0.75))
        self.method = opts.get("method", "lucene")
        self.tokenizer = make_tokenizer(self.stemmer, self.stopwords)
        self.ids: list[list[int]] = []

    def add(self, texts: list[str]) -> None:
        self.ids.extend(
            self.tokenizer.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
        )

    def finish(self, out_root: Path) -> dict[str, Any]:
        bm25s = import_bm25s()

        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index((self.ids, self.tokenizer.get_vocab_dict()), show_progress=False)
        d = out_root / BM25_DIR
        d.mkdir(parents=True, exist_ok=True)
        retriever.save(str(d), show_progress=False)
        self.tokenizer.save_vocab(str(d))
        lengths = [len(x) for x in self.ids]
        self.ids = []
        return {
            "stemmer": self.stemmer,
            "stopwords": self.stopwords,
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "vocabulary": len(self.tokenizer.get_vocab_dict()),
            "avg_doc_tokens": float(np.mean(lengths)) if lengths else 0.0,
        }


def top_rows(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best rows of ``scores`` with a positive score, best first; equal scores in
    row order (so that the same documents come out whatever the index's sharding)."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > n:
        kth = np.partition(scores[positive], len(positive) - n)[len(positive) - n]
        above = positive[scores[positive] > kth]
        ties = positive[scores[positive] == kth][: n - len(above)]
        positive = np.concatenate([above, ties])
    order = np.lexsort((positive, -scores[positive]))
    rows = positive[order]
    return rows, scores[rows]


class _Shard:
    """One bm25s index (its tokenizer vocabulary and memory-mapped score matrix) holding the
    docstore rows ``[start, start + rows)``."""

    def __init__(self, d: Path, params: dict[str, Any], start: int) -> None:
        import bm25s

        self.start = start
        self.tokenizer = make_tokenizer(params.get("stemmer"), params.get("stopwords"))
        self.tokenizer.load_vocab(str(d))
        self.retriever = bm25s.BM25.load(str(d), mmap=True, load_vocab=False, show_progress=False)
        self.rows = int(self.retriever.scores["num_docs"])
        # the tokenizer maps a query with no known term to the empty token; such a query has no
        # hits (in one index it would score the documents with no text)
        self.empty_id = self.tokenizer.get_vocab_dict().get("")

    def search(
        self, queries: list[str], n: int, mask: np.ndarray | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        q_ids = self.tokenizer.tokenize(
            queries, update_vocab=False, return_as="ids", show_progress=False
        )
        weight = None
        if mask is not None:
            weight = mask[self.start : self.start + self.rows].astype(np.float32)
        out = []
        for ids in q_ids:
            ids = [i for i in ids if i != self.empty_id]
            if not ids:
                out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)))
                continue
            scores = self.retriever.get_scores_from_ids(ids, weight_mask=weight)
            rows, top = top_rows(scores, n)
            out.append((rows.astype(np.int64) + self.start, top.astype(np.float32)))
        return out


class BM25Backend:
    """The BM25 half of a bm25 or hybrid index (files under ``root/bm25``): one bm25s index, or
    several scored with corpus-wide statistics (:mod:`kailin.retrieval.bm25_sharded`) whose top
    hits are merged."""

    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        import_bm25s()  # (its logger put back before any index is read)

        d = root / BM25_DIR
        shards = read_shards(d)
        if shards is None:
            self.shards = [_Shard(d, params, 0)]
        else:
            self.shards = [_Shard(d / s["dir"], params, int(s["start"])) for s in shards]
        self.num_docs = sum(s.rows for s in self.shards)

    @staticmethod
    def build(texts_iter: Iterator[list[str]], out_root: Path, opts: dict[str, Any]) -> dict:
        builder = BM25Builder(opts)
        for texts in texts_iter:
            builder.add(texts)
        return builder.finish(out_root)

    def search(
        self, queries: list[str], n: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``n`` rows per query (-1 padded) and their scores; documents sharing no term with
        the query, or outside ``mask``, are not hits."""
        docs = np.full((len(queries), n), -1, dtype=np.int64)
        scores = np.zeros((len(queries), n), dtype=np.float32)
        per_shard = [s.search(queries, n, mask) for s in self.shards]
        for q in range(len(queries)):
            rows = np.concatenate([hits[q][0] for hits in per_shard])
            vals = np.concatenate([hits[q][1] for hits in per_shard])
            order = np.lexsort((rows, -vals))[:n]
            docs[q, : len(order)] = rows[order]
            scores[q, : len(order)] = vals[order]
        return docs, scores


class BM25Index(Index):
    """Lexical index (bm25s)."""

    kind: ClassVar[str] = "bm25"

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        super().__init__(root, meta)
        self.bm25 = BM25Backend(self.root, meta["params"]["bm25"])
        if self.bm25.num_docs != len(self.docstore):
            raise InputError(
                f"{self.root}: the BM25 matrices hold {self.bm25.num_docs} documents but the "
                f"docstore {len(self.docstore)}; rebuild the index (kailin index build --overwrite)"
            )

    @classmethod
    def _build_backend(
        cls,
        batches: Iterator[tuple[pa.Table, list[str]]],
        num_docs: int,
        tmp_dir: Path,
        opts: dict[str, Any],
    ) -> dict[str, Any]:
        shards = shard_count(opts.get("shards"))
        if shards == 1:
            params = BM25Backend.build((texts for _, texts in batches), tmp_dir, opts)
            return {"bm25": params}
        files, batch_size = opts.get("_corpus_files"), opts.get("_batch_size")
        if files is None or batch_size is None:
            raise KailinError("a sharded BM25 build needs the corpus files (build it with "
                              "kailin.retrieval.build_index)")
        params = build_sharded(
            files,
            num_docs,
            tmp_dir / BM25_DIR,
            opts,
            shards,
            batch_size=batch_size,
            while_tokenizing=batches,
        )
        return {"bm25": params}

    def _search_rows(
        self,
        queries: list[str],
        n: int,
        mask: np.ndarray | None,
        years: tuple[int | None, int | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.bm25.search(queries, n, mask)
