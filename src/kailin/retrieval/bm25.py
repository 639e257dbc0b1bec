"""BM25 through bm25s: English stop words, PyStemmer's English (Porter2) stemmer, Lucene BM25.

Documents are tokenised batch by batch while the corpus streams past, so only integer token ids
(never the texts) are held in memory before bm25s builds its sparse score matrix. The matrix is
saved with bm25s's own format and memory-mapped on load.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from kailin.errors import require
from kailin.retrieval.base import Index

BM25_DIR = "bm25"


def _import_bm25s() -> Any:
    """``bm25s``, with its logger's level put back: bm25s sets it to DEBUG when imported, so its
    debug lines ("Building index from IDs") went to kailin's handler at every verbosity. It is
    left at WARNING, kailin's rule for chatty libraries (``kailin -v`` shows them)."""
    require("bm25s", "retrieval")
    import logging

    import bm25s

    lg = logging.getLogger("bm25s")
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    lg.setLevel(logging.NOTSET if verbose else logging.WARNING)
    return bm25s


def make_tokenizer(stemmer: str | None = "english", stopwords: str | None = "en") -> Any:
    _import_bm25s()
    from bm25s.tokenization import Tokenizer

    stem = None
    if stemmer:
        require("Stemmer", "retrieval")
        import Stemmer

        stem = Stemmer.Stemmer(stemmer)
    return Tokenizer(lower=True, stopwords=stopwords or None, stemmer=stem)


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
        bm25s = _import_bm25s()

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


class BM25Backend:
    """The BM25 half of a bm25 or hybrid index (files under ``root/bm25``)."""

    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        bm25s = _import_bm25s()

        d = root / BM25_DIR
        self.tokenizer = make_tokenizer(params.get("stemmer"), params.get("stopwords"))
        self.tokenizer.load_vocab(str(d))
        self.retriever = bm25s.BM25.load(str(d), mmap=True, load_vocab=True, show_progress=False)

    @staticmethod
    def build(texts_iter: Iterator[list[str]], out_root: Path, opts: dict[str, Any]) -> dict:
        builder = BM25Builder(opts)
        for texts in texts_iter:
            builder.add(texts)
        return builder.finish(out_root)

    def search(
        self, queries: list[str], n: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        q_ids = self.tokenizer.tokenize(
            queries, update_vocab=False, return_as="ids", show_progress=False
        )
        weight = None if mask is None else mask.astype(np.float32)
        docs, scores = self.retriever.retrieve(
            q_ids, k=n, show_progress=False, weight_mask=weight, n_threads=0
        )
        docs = np.asarray(docs, dtype=np.int64).reshape(len(queries), -1)
        scores = np.asarray(scores, dtype=np.float32).reshape(len(queries), -1)
        # no shared term (score 0) or filtered out by the mask: not a hit
        docs = np.where(scores > 0, docs, -1)
        return docs, scores


class BM25Index(Index):
    """Lexical index (bm25s)."""

    kind: ClassVar[str] = "bm25"

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        super().__init__(root, meta)
        self.bm25 = BM25Backend(self.root, meta["params"]["bm25"])

    @classmethod
    def _build_backend(
        cls,
        batches: Iterator[tuple[pa.Table, list[str]]],
        num_docs: int,
        tmp_dir: Path,
        opts: dict[str, Any],
    ) -> dict[str, Any]:
        params = BM25Backend.build((texts for _, texts in batches), tmp_dir, opts)
        return {"bm25": params}

    def _search_rows(
        self,
        queries: list[str],
        n: int,
        mask: np.ndarray | None,
        years: tuple[int | None, int | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.bm25.search(queries, n, mask)
