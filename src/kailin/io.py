"""Small I/O helpers shared by every stage: atomic writes and Parquet directories.

Every file kailin writes goes through :func:`atomic_path`: the data lands in a temporary file
beside the target and is renamed into place only when complete, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_text_strict(path: str | os.PathLike[str], what: str) -> str:
    """The text of the file ``path`` (a ``what``: "PMID exclusion list", "prompt template"...),
    decoded as UTF-8 (a leading byte-order mark dropped).

    Raises :class:`~kailin.errors.InputError` when the file cannot be read, or when it is not
    UTF-8 (typically Latin-1 or cp1252 text): the message names the file, the line and byte offset
    of the first byte that is not UTF-8, and asks to save it as UTF-8. Every text file kailin
    reads from a user goes through here, so none of them ends in a UnicodeDecodeError traceback.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        line = data.count(b"\n", 0, at) + 1
        col = at - (data.rfind(b"\n", 0, at) + 1) + 1
        raise InputError(
            f"{p}: the {what} is not UTF-8: line {line}, column {col} (byte {at}) is "
            f"0x{data[at:skip + exc.end].hex()}, which looks like Latin-1/cp1252 text; save it "
            "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) and run again"
        ) from None


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet_atomic(table: pa.Table, target: str | os.PathLike[str], **kwargs: Any) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, **kwargs)


def write_batches_atomic(batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                         target: str | os.PathLike[str]) -> int:
    """Write a stream of record batches (cast to ``schema``) as one Parquet file, atomically,
    holding one batch at a time; returns the row count."""
    n = 0
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for b in batches:
            if b.num_rows:
                w.write_table(pa.Table.from_batches([b]).cast(schema))
                n += b.num_rows
    return n


def register_parquet(con: Any, name: str, path: str | os.PathLike[str]) -> list[str]:
    """Register the Parquet file/folder ``path`` as the view ``name`` of a DuckDB connection,
    read by DuckDB itself (:func:`parquet_scan`: its files' columns united by name, NaN-safe):
    SQL over it holds what the query keeps, within the connection's memory bound, not the
    files. Returns the column names."""
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: holds no Parquet files")
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM {parquet_scan(files)}')
    return [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]


def parquet_scan(files: Iterable[str | os.PathLike[str]]) -> str:
    """The SQL of a DuckDB scan of Parquet ``files``, for every query kailin runs over Parquet.

    ``can_have_nan``: pyarrow writes the min/max of a float column without its NaNs (as the
    Parquet format says), and DuckDB (2.0.1) otherwise takes those bounds to mean "no NaN" and
    folds ``isnan(score)`` to false, in a WHERE clause (row groups pruned) and in an aggregate's
    FILTER alike: NaN scores would pass as numbers (duckdb/duckdb#25521). With it, every
    question of a pyarrow-written scores file is judged by its value. ``union_by_name``: files
    written at different times may differ in their columns."""
    lst = ", ".join(sql_string(Path(f).as_posix()) for f in files)
    return f"read_parquet([{lst}], union_by_name=true, can_have_nan=true)"


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def parquet_files(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of ``path``: the file itself, or every ``*.parquet`` below a directory
    (sorted, hidden temporaries skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such Parquet file or directory")
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))


def read_parquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or a directory of Parquet files into one table."""
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: holds no Parquet files")
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def iter_parquet_batches(
    path: str | os.PathLike[str], columns: list[str] | None = None, batch_size: int = 8192
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from a Parquet file or directory with bounded memory."""
    for f in parquet_files(path):
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def weights_fingerprint(path: str | os.PathLike[str]) -> str:
    """Names, sizes and mtimes of a model folder's weight and config files: changes when a
    checkpoint is overwritten (cheap: no file is read)."""
    import hashlib

    parts = []
    for f in sorted(Path(path).glob("*")):
        if f.suffix in {".safetensors", ".bin", ".gguf", ".json"} and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike[str], bufsize: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


_CONTENT_MEMO: dict[tuple, str] = {}


def content_fingerprint(path: str | os.PathLike[str]) -> str:
    """The content digest of a file, or of a model folder's weight and config files (their
    names and bytes): the same for a copy anywhere, different when a checkpoint is overwritten.
    Memoised in the process by (path, size, mtime)."""
    import hashlib

    p = Path(path)
    files = [p] if p.is_file() else sorted(
        f for f in p.glob("*") if f.is_file()
        and f.suffix in {".safetensors", ".bin", ".gguf", ".json", ".model", ".txt"})
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _CONTENT_MEMO:
            _CONTENT_MEMO[memo] = sha256_file(f)
        h.update(f"{f.name}:{_CONTENT_MEMO[memo]}\n".encode())
    return h.hexdigest()[:16]


def user_cache_dir() -> Path:
    """Where kailin keeps derived artefacts (model checkpoints, caches): ``$KAILIN_CACHE`` or
    ``~/.cache/kailin``."""
    root = os.environ.get("KAILIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kailin"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


#: bytes of DuckDB memory per thread in :func:`bound_duckdb_memory` (at least 1 GiB in all)
DUCKDB_MEMORY_PER_THREAD = 512 * 2**20


def duckdb_memory_limit(threads: int) -> str:
    """The memory limit of kailin's corpus-sized DuckDB queries: ``$KAILIN_DUCKDB_MEMORY`` (a
    DuckDB size such as ``4GB``), else 512 MiB per thread and at least 1 GiB."""
    env = os.environ.get("KAILIN_DUCKDB_MEMORY", "").strip()
    if env:
        return env
    return f"{max(2**30, DUCKDB_MEMORY_PER_THREAD * max(1, threads)) // 2**20}MB"


def connect_duckdb(temp_dir: str | os.PathLike[str] | None = None) -> Any:
    """A DuckDB connection for kailin's queries over Parquet: in memory, its memory bounded by
    :func:`bound_duckdb_memory` (spilling to ``temp_dir``). Every DuckDB connection kailin
    opens comes from here, so no query over a corpus or a scores folder of any size runs under
    DuckDB's default limit of 80% of the machine's memory."""
    import duckdb

    con = duckdb.connect()
    bound_duckdb_memory(con, temp_dir)
    # Parquet prefetching reads whole column chunks ahead, for remote storage; over local
    # shards it held them outside the bound, and more of them the more shards there were (the
    # corpus stats' scan at 3M records: 383 -> 160 MiB of peak RSS without it, at the same CPU)
    con.execute("SET disable_parquet_prefetching=true")
    # every Parquet scan on this connection, parquet_scan's or not, judges NaN by its value
    # (see parquet_scan)
    con.execute("SET parquet_can_have_nan=true")
    return con


@contextlib.contextmanager
def duckdb_in_file_order(con: Any) -> Iterator[Any]:
    """Within the block, ``con``'s scans return rows in the order of their files and of the
    rows in them (``preserve_insertion_order``, one thread); the settings are restored after.
    One thread also decodes one row group at a time: a second one read the next ~60 MB row
    group of records ahead and the order buffer held it, for no CPU saved (the work set of
    3M records: 489 -> 312 MiB of peak RSS, 13.4 -> 12.6 CPU s)."""
    def setting(name: str) -> Any:
        return con.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]

    threads, order = setting("threads"), setting("preserve_insertion_order")
    con.execute("SET preserve_insertion_order=true")
    con.execute("SET threads=1")
    try:
        yield con
    finally:
        con.execute(f"SET threads={int(threads)}")
        con.execute(f"SET preserve_insertion_order={'true' if order else 'false'}")


def bound_duckdb_memory(con: Any, temp_dir: str | os.PathLike[str] | None = None) -> str:
    """Bound the memory of a DuckDB connection that sorts or aggregates a whole corpus, so that
    DuckDB spills to ``temp_dir`` (default: a folder per process under the system's temporary
    directory) instead of holding every row: its default limit is 80% of the machine's memory,
    so an ``ORDER BY`` over the corpus (the work set, the merge of an ingest) grew with the
    corpus (~2.4 KB per record). Returns the limit set."""
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    limit = duckdb_memory_limit(threads)
    if temp_dir is None:
        temp_dir = Path(tempfile.gettempdir()) / f"kailin-duckdb-{os.getpid()}"
    con.execute(f"SET memory_limit='{limit}'")
    con.execute(f"SET temp_directory='{Path(temp_dir).as_posix()}'")
    return limit


def duckdb_reader(rel: Any, batch_size: int = 65536) -> pa.RecordBatchReader:
    """A DuckDB relation or result as an Arrow batch reader (DuckDB 1.x and 2.x name this
    differently)."""
    for name in ("to_arrow_reader", "fetch_arrow_reader", "record_batch", "fetch_record_batch"):
        fn = getattr(rel, name, None)
        if fn is not None:
            return fn(batch_size)
    raise AttributeError("this DuckDB version offers no Arrow reader")  # pragma: no cover


def duckdb_table(rel: Any) -> pa.Table:
    """A DuckDB relation or result as one Arrow table, across DuckDB versions."""
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(rel, name, None)
        if fn is not None:
            out = fn()
            return out.read_all() if isinstance(out, pa.RecordBatchReader) else out
    raise AttributeError("this DuckDB version offers no Arrow table")  # pragma: no cover
