"""Read a corpus directory (see :mod:`kailin.corpus.schema`) with bounded memory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.errors import InputError
from kailin.io import parquet_files


@dataclass(frozen=True)
class Corpus:
    """A corpus directory: ``data/*.parquet`` (live records) and ``manifest.json``."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def files(self) -> list[Path]:
        return parquet_files(self.data_dir) if self.data_dir.exists() else []

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def manifest_hash(self) -> str:
        """A content hash of the live shards (names, sizes, row counts): changes whenever the
        corpus changes, so indexes and caches built from it can detect staleness."""
        h = hashlib.sha256()
        for f in self.files():
            md = pq.ParquetFile(f).metadata
            h.update(f"{f.relative_to(self.root)}:{f.stat().st_size}:{md.num_rows}\n".encode())
        return h.hexdigest()[:16]

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files())

    def iter_batches(
        self, columns: list[str] | None = None, batch_size: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        for f in self.files():
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        files = self.files()
        if not files:
            raise InputError(f"{self.root}: corpus has no shards under data/ (run `kailin ingest`)")
        return pa.concat_tables(
            [pq.read_table(f, columns=columns) for f in files], promote_options="default"
        )


def open_corpus(path: str | Path) -> Corpus:
    """Open ``path`` as a corpus; a clear error when it is not one."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: not a corpus directory (create one with `kailin ingest`)")
    c = Corpus(root)
    if not c.data_dir.is_dir():
        raise InputError(
            f"{root}: not a corpus directory: no data/ folder inside (create one with `kailin ingest`)"
        )
    return c


def corpus_identity(corpus_dir: str | Path) -> str | None:
    """What a corpus folder holds (its live shards' names, sizes and row counts), not where it
    is: for cache keys."""
    return Corpus(Path(corpus_dir)).manifest_hash() if Path(corpus_dir).is_dir() else None
