"""PubMed corpus: streaming XML parser, pre-parsed readers, Parquet store, selection."""

from kailin.corpus.reader import Corpus, open_corpus
from kailin.corpus.schema import CORPUS_SCHEMA

__all__ = ["CORPUS_SCHEMA", "Corpus", "open_corpus"]
