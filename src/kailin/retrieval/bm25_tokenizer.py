"""The bm25s tokenizer kailin's BM25 indexes use (one index or the shards of one)."""

from __future__ import annotations

from typing import Any

from kailin.errors import require


def make_tokenizer(stemmer: str | None = "english", stopwords: str | None = "en") -> Any:
    require("bm25s", "retrieval")
    from bm25s.tokenization import Tokenizer

    stem = None
    if stemmer:
        require("Stemmer", "retrieval")
        import Stemmer

        stem = Stemmer.Stemmer(stemmer)
    return Tokenizer(lower=True, stopwords=stopwords or None, stemmer=stem)
