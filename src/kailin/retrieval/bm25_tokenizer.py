"""The bm25s tokenizer kailin's BM25 indexes use (one index or the shards of one)."""

from __future__ import annotations

from typing import Any

from kailin.errors import require


def import_bm25s() -> Any:
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
    import_bm25s()
    from bm25s.tokenization import Tokenizer

    stem = None
    if stemmer:
        require("Stemmer", "retrieval")
        import Stemmer

        stem = Stemmer.Stemmer(stemmer)
    return Tokenizer(lower=True, stopwords=stopwords or None, stemmer=stem)
