"""The corpus folder's layout and the commit protocol's shared pieces: the staging and
tombstone schemas, the manifest format, shard size, and the named checkpoints of a commit (tests
patch :func:`checkpoint` to simulate a crash at one)."""

from __future__ import annotations

import datetime as _dt

import pyarrow as pa

from kailin.corpus.schema import CORPUS_SCHEMA
from kailin.io import sha256_file  # noqa: F401  (the corpus layout's file digest)

STAGE_SCHEMA = CORPUS_SCHEMA.append(pa.field("_seq", pa.int64()))
TOMB_SCHEMA = pa.schema(
    [("pmid", pa.int64()), ("version", pa.int32()), ("source_file", pa.string())]
)
MANIFEST_FORMAT = "kailin-corpus/1"
ROWS_PER_SHARD = 500_000
BATCH = 2000


def checkpoint(name: str) -> None:
    """A named point of the commit protocol (tests patch this to simulate a crash there)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
