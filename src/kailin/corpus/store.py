"""Ingestion into a corpus directory: staged per file, committed atomically, resumable, incremental.

Layout of ``CORPUS_DIR``::

    manifest.json          per source file: path, sha256, counts, status; live record count;
                           generation, shard policy, the last commit's statistics
    data/part-*.parquet    exactly the live records (one row per (pmid, version)), CORPUS_SCHEMA,
                           each shard sorted by (pmid, version); every key in exactly one shard
    tombstones.parquet     (pmid, version) deleted by DeleteCitation (pmid, version, source_file)
    staging/<sha>.parquet  a parsed source file waiting to be committed (+ <sha>.json when complete)
    .next/                 the next generation while a commit is being written (+ COMMIT marker)

The key is NLM's (PMID, Version): a ``<PMID Version="2">`` citation is a different article from
Version 1 (both stay live); a later record with the same (PMID, Version) replaces it; a
``DeleteCitation`` removes the (PMID, Version) it names.

Protocol (every step is atomic or idempotent, so a kill at any point resumes cleanly):

1. each new source file (by SHA-256; one already in the manifest is skipped) is parsed into
   ``staging/<sha>.parquet`` and then ``staging/<sha>.json`` (written last: its presence means the
   file is fully staged, and a resumed run re-uses it);
2. the next generation is written into ``.next/data`` (files ordered by name, so
   ``pubmed24n0001`` < ``pubmed24n1220`` and updates win over the baseline; a deletion removes
   the key unless a later file brings it back; excluded PMIDs are dropped). Incremental commit:
   shards holding no key that the new files replace, delete or exclude are hard-linked (same
   inode, not rewritten), the others are rewritten with DuckDB, new keys go to new shards, then
   small shards are compacted (:class:`ShardPolicy`). Full commit: all live shards and staged
   files merged and rewritten. Then ``.next/COMMIT`` is written;
3. roll forward: ``data`` is swapped for ``.next/data``, the tombstones and manifest replaced, the
   committed staging files removed. A run that finds ``.next/COMMIT`` finishes these steps first;
   a ``.next`` without ``COMMIT`` is discarded (the staged files are still there). Readers list
   ``data/*.parquet``, which is the old or the new generation, never a mix.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue as _queue
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.corpus.pubmed_xml import MeshResolver, ParseStats
from kailin.corpus.schema import CORPUS_SCHEMA
from kailin.corpus.sources import (
    AutoMesh,
    default_exclusions,
    detect_format,
    expand_inputs,
    iter_source,
    load_pmid_list,
)
from kailin.errors import InputError, KailinError
from kailin.io import bound_duckdb_memory, duckdb_reader, duckdb_table, write_json_atomic

log = logging.getLogger(__name__)

STAGE_SCHEMA = CORPUS_SCHEMA.append(pa.field("_seq", pa.int64()))
TOMB_SCHEMA = pa.schema(
    [("pmid", pa.int64()), ("version", pa.int32()), ("source_file", pa.string())]
)
MANIFEST_FORMAT = "kailin-corpus/1"
ROWS_PER_SHARD = 500_000
_BATCH = 2000


def _checkpoint(name: str) -> None:
    """A named point of the commit protocol (tests patch this to simulate a crash there)."""


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- staging (workers)
_PROGRESS: Any = None  # a multiprocessing queue in pool workers


def _pool_init(progress_q: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress_q


@dataclass
class _Task:
    path: str
    staging: str
    committed: frozenset[str]
    exclusions: frozenset[int]
    resolver: Any


def _report(n: int, local_cb: Any) -> None:
    if local_cb is not None:
        local_cb(n)
    elif _PROGRESS is not None:
        _PROGRESS.put(n)


def _stage_file(task: _Task, local_cb: Any = None) -> dict:
    """Parse one source file into ``staging/<sha>.parquet`` + ``<sha>.json``; returns the meta."""
    path = Path(task.path)
    staging = Path(task.staging)
    sha = sha256_file(path)
    base = {
        "path": str(path.resolve()),
        "name": path.name,
        "sha256": sha,
        "size": path.stat().st_size,
        "format": detect_format(path),
    }
    if sha in task.committed:
        return {**base, "status": "unchanged"}
    meta_path = staging / f"{sha}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["reused_staging"] = True
        _report(meta.get("records", 0), local_cb)
        return meta
    staging.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = ParseStats()
    deletes: list[int] = []
    excluded = 0
    tmp = staging / f".{sha}.parquet.{os.getpid()}.tmp"
    writer: pq.ParquetWriter | None = None
    rows: list[dict] = []
    seq = 0
    pending_report = 0

    def flush() -> None:
        nonlocal writer, rows
        if not rows:
            return
        if writer is None:
            writer = pq.ParquetWriter(tmp, STAGE_SCHEMA, compression="zstd")
        writer.write_table(pa.Table.from_pylist(rows, schema=STAGE_SCHEMA))
        rows = []

    try:
        for kind, item in iter_source(path, task.resolver, stats):
            if kind == "record":
                seq += 1
                if item["pmid"] in task.exclusions:
                    excluded += 1
                    continue
                item.pop("_line", None)
                item["_seq"] = seq
                rows.append(item)
                pending_report += 1
                if len(rows) >= _BATCH:
                    flush()
                    _report(pending_report, local_cb)
                    pending_report = 0
            elif kind == "delete":  # (pmid, version)
                seq += 1
                deletes.append(list(item) if isinstance(item, tuple) else [int(item), 1])
            elif kind == "restart":  # ill-formed XML: start over in salvage mode
                if writer is not None:
                    writer.close()
                    writer = None
                tmp.unlink(missing_ok=True)
                rows, deletes, excluded, seq = [], [], 0, 0
        flush()
        if writer is None:
            writer = pq.ParquetWriter(tmp, STAGE_SCHEMA, compression="zstd")
        writer.close()
        writer = None
        _report(pending_report, local_cb)
        os.replace(tmp, staging / f"{sha}.parquet")
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    meta = {
        **base,
        "status": "staged",
        "records": stats.records,
        "kept": stats.records - excluded,
        "deleted": stats.deleted,
        "malformed": stats.malformed,
        "malformed_positions": stats.malformed_positions,
        "excluded": excluded,
        "unresolved_mesh": stats.unresolved_mesh,
        "unresolved_mesh_top": dict(
            sorted(stats.unresolved_names.items(), key=lambda kv: -kv[1])[:20]
        ),
        "books_skipped": stats.books_skipped,
        "deletes": deletes,
        "parse_seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(meta_path, meta)
    return meta


def _stage_file_safe(task: _Task, local_cb: Any = None) -> dict:
    try:
        return _stage_file(task, local_cb)
    except KailinError as exc:
        return {
            "path": str(Path(task.path).resolve()),
            "name": Path(task.path).name,
            "status": "failed",
            "error": str(exc),
        }


# --------------------------------------------------------------------------- commit protocol
@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / ".lock", "a+")  # noqa: SIM115
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        except OSError as exc:
            raise KailinError(f"{root}: another ingestion is running on this corpus") from exc
        yield
    finally:
        fh.close()


def recover(root: Path) -> None:
    """Finish a commit whose ``.next/COMMIT`` marker exists; discard an unfinished ``.next``."""
    nxt = root / ".next"
    old = root / ".old"
    if not nxt.exists():
        if old.exists():
            shutil.rmtree(old)
        return
    marker = nxt / "COMMIT"
    if not marker.exists():
        shutil.rmtree(nxt)
        if old.exists():
            shutil.rmtree(old)
        return
    info = json.loads(marker.read_text(encoding="utf-8"))
    if (nxt / "data").exists():
        if (root / "data").exists():
            old.mkdir(exist_ok=True)
            if (old / "data").exists():
                shutil.rmtree(old / "data")
            os.rename(root / "data", old / "data")
        _checkpoint("swap")
        os.rename(nxt / "data", root / "data")
    _checkpoint("after-swap")
    for name in ("tombstones.parquet", "manifest.json"):
        if (nxt / name).exists():
            os.replace(nxt / name, root / name)
    _checkpoint("after-manifest")
    staging = root / "staging"
    for sha in info.get("staged", []):
        for suffix in (".parquet", ".json"):
            (staging / f"{sha}{suffix}").unlink(missing_ok=True)
    if old.exists():
        shutil.rmtree(old)
    shutil.rmtree(nxt)


@dataclass(frozen=True)
class ShardPolicy:
    """Shard sizes and the compaction rule.

    A shard holding fewer than ``small_fraction * rows_per_shard`` rows is *small*; when a commit
    leaves more than ``max_small`` small shards, they are all merged (sorted by (pmid, version))
    into shards of ``rows_per_shard`` rows. Daily updates each add one small shard of new
    records, so with the defaults about every ninth update also compacts."""

    rows_per_shard: int = ROWS_PER_SHARD
    small_fraction: float = 0.25
    max_small: int = 8


def _exclusions_sha(exclusions: frozenset[int]) -> str:
    return hashlib.sha256(",".join(map(str, sorted(exclusions))).encode()).hexdigest()[:16]


def _norm_deletes(dels: list) -> list[tuple[int, int]]:
    """Staged deletions as (pmid, version); a bare PMID (staged by an older kailin) is Version 1."""
    return [(int(d), 1) if isinstance(d, int) else (int(d[0]), int(d[1])) for d in dels]


def _read_tombstones(path: Path) -> pa.Table:
    t = pq.read_table(path)
    if "version" not in t.column_names:  # written before the (pmid, version) key
        t = t.append_column("version", pa.array([1] * t.num_rows, pa.int32()))
    return t.select(TOMB_SCHEMA.names).cast(TOMB_SCHEMA)


def _pmid_range(f: Path) -> tuple[float, float]:
    """(min, max) PMID of a shard from its Parquet footer ((-inf, inf) without statistics)."""
    md = pq.ParquetFile(f).metadata
    lo, hi = float("inf"), float("-inf")
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(0).statistics
        if st is None or not st.has_min_max:
            return float("-inf"), float("inf")
        lo, hi = min(lo, st.min), max(hi, st.max)
    return lo, hi


class _ShardWriter:
    """Writes query results into ``part-<generation>-<k>.parquet`` shards of at most
    ``rows_per_shard`` rows (names are unique across generations: a rewritten shard never
    keeps the name of the one it replaces, so the content hash of the corpus changes)."""

    def __init__(self, out: Path, generation: int, rows_per_shard: int) -> None:
        self.out, self.gen, self.rps = out, generation, max(1, int(rows_per_shard))
        self.k = 0
        self.written: list[Path] = []

    def write(self, con: Any, sql: str) -> list[Path]:
        made: list[Path] = []
        writer: pq.ParquetWriter | None = None
        in_shard = 0
        for batch in duckdb_reader(con.sql(sql)):
            start = 0
            while start < batch.num_rows:
                if writer is None:
                    path = self.out / f"part-{self.gen:06d}-{self.k:05d}.parquet"
                    self.k += 1
                    writer = pq.ParquetWriter(path, CORPUS_SCHEMA, compression="zstd")
                    made.append(path)
                take = min(batch.num_rows - start, self.rps - in_shard)
                tbl = pa.Table.from_batches([batch.slice(start, take)]).cast(CORPUS_SCHEMA)
                writer.write_table(tbl)
                in_shard += take
                start += take
                if in_shard >= self.rps:
                    writer.close()
                    writer, in_shard = None, 0
        if writer is not None:
            writer.close()
        self.written += made
        return made


def _count(con: Any, where: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {where}").fetchall()[0][0])


def _num_rows(f: Path) -> int:
    return pq.ParquetFile(f).metadata.num_rows


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link an unchanged shard into the next generation (same inode: nothing rewritten);
    copy it where the file system has no hard links. True when linked."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def _merge(
    root: Path,
    manifest: dict,
    new_entries: list[dict],
    exclusions: frozenset[int],
    policy: ShardPolicy | None = None,
    incremental: bool = True,
) -> int:
    """Write the next generation (data, tombstones, manifest, COMMIT) into ``root/.next``.

    ``incremental`` (and a corpus with shards): unchanged shards are hard-linked into the next
    generation, only the shards holding a (pmid, version) that this commit replaces, deletes or
    excludes are rewritten, and records with new keys go into new shards; then small shards are
    compacted (:class:`ShardPolicy`). Otherwise every live record is rewritten (full merge)."""
    import duckdb
    import numpy as np

    policy = policy or ShardPolicy()
    nxt = root / ".next"
    if nxt.exists():
        shutil.rmtree(nxt)
    (nxt / "data").mkdir(parents=True)
    staging = root / "staging"
    generation = int(manifest.get("generation", 0)) + 1
    excl_sha = _exclusions_sha(exclusions)

    all_entries = [e for e in manifest.get("files", []) if e.get("status") == "committed"]
    all_entries += new_entries
    # global order: by file name (NLM numbering), then by ingestion sequence
    order = sorted(
        range(len(all_entries)), key=lambda i: (all_entries[i]["name"], all_entries[i]["seq"])
    )
    rank_of_entry = {i: r for r, i in enumerate(order)}
    name_rank: dict[str, int] = {}
    for i, e in enumerate(all_entries):
        name_rank[e["name"]] = max(name_rank.get(e["name"], -1), rank_of_entry[i])
    n_old = len(all_entries) - len(new_entries)

    con = duckdb.connect()
    tmpdir = root / ".duckdb_tmp"
    bound_duckdb_memory(con, tmpdir)  # the merge sorts every staged row: spill, don't grow
    con.execute("SET preserve_insertion_order=false")
    ranks = pa.table({"name": list(name_rank), "rank": list(name_rank.values())})
    con.register("ranks_t", ranks)
    con.execute("CREATE TEMP TABLE ranks AS SELECT name, rank::INTEGER AS rank FROM ranks_t")

    # tombstones, keyed (pmid, version): previous ones + this run's deletions
    tomb_parts = []
    if (root / "tombstones.parquet").exists():
        tomb_parts.append(_read_tombstones(root / "tombstones.parquet"))
    new_dels = [(e["name"], d) for e in new_entries for d in _norm_deletes(e.get("deletes", []))]
    new_tomb = pa.table(
        {
            "pmid": pa.array([d[0] for _, d in new_dels], pa.int64()),
            "version": pa.array([d[1] for _, d in new_dels], pa.int32()),
            "source_file": pa.array([n for n, _ in new_dels], pa.string()),
        }
    )
    tomb_parts.append(new_tomb)
    tombs = pa.concat_tables(tomb_parts).cast(TOMB_SCHEMA)
    con.register("tombs_t", tombs)
    con.register("ntombs_t", new_tomb)
    con.execute(
        "CREATE TEMP TABLE tomb AS SELECT t.pmid, t.version, max(coalesce(r.rank, -1)) AS rank "
        "FROM tombs_t t LEFT JOIN ranks r ON r.name = t.source_file GROUP BY t.pmid, t.version"
    )
    con.register("excl_t", pa.table({"pmid": pa.array(sorted(exclusions), pa.int64())}))
    con.execute("CREATE TEMP TABLE excl AS SELECT pmid FROM excl_t")

    cols = ", ".join(f'"{c}"' for c in CORPUS_SCHEMA.names)
    ccols = ", ".join(f'c."{c}"' for c in CORPUS_SCHEMA.names)
    live = sorted((root / "data").glob("*.parquet")) if (root / "data").exists() else []
    inc_parts = [
        f"SELECT {cols}, {rank_of_entry[n_old + k]}::INTEGER AS _rank, _seq "
        f"FROM read_parquet('{(staging / (e['sha256'] + '.parquet')).as_posix()}')"
        for k, e in enumerate(new_entries)
    ]
    shards = _ShardWriter(nxt / "data", generation, policy.rows_per_shard)
    stats: dict[str, Any] = {"mode": "incremental" if incremental and live else "full"}
    kept: list[Path] = []
    copied = 0
    if stats["mode"] == "full":
        parts = []
        if live:
            files = ", ".join(f"'{f.as_posix()}'" for f in live)
            parts.append(
                f"SELECT {cols}, coalesce(r.rank, -1) AS _rank, 0::BIGINT AS _seq "
                f"FROM read_parquet([{files}]) l LEFT JOIN ranks r ON r.name = l.source_file"
            )
        parts += inc_parts
        if parts:
            union = " UNION ALL ".join(parts)
            shards.write(
                con,
                f"WITH c AS ({union}) SELECT {cols} FROM c "
                "WHERE NOT EXISTS (SELECT 1 FROM tomb t WHERE t.pmid = c.pmid "
                "AND t.version = c.version AND t.rank >= c._rank) "
                "AND c.pmid NOT IN (SELECT pmid FROM excl) "
                "QUALIFY row_number() OVER (PARTITION BY c.pmid, c.version "
                "ORDER BY c._rank DESC, c._seq DESC) = 1 "
                "ORDER BY c.pmid, c.version",
            )
        stats.update(shards_rewritten=len(live), shards_kept=0)
    else:
        # the incoming records: the last one per (pmid, version) over this run's files
        if inc_parts:
            con.execute(
                f"CREATE TEMP TABLE inc AS SELECT * FROM ({' UNION ALL '.join(inc_parts)}) "
                "QUALIFY row_number() OVER (PARTITION BY pmid, version "
                "ORDER BY _rank DESC, _seq DESC) = 1"
            )
        else:  # pragma: no cover - a commit always has new files
            con.register("inc_t", pa.Table.from_pylist([], schema=STAGE_SCHEMA))
            con.execute(f"CREATE TEMP TABLE inc AS SELECT {cols}, 0 AS _rank, _seq FROM inc_t")
        excl_changed = manifest.get("exclusions_sha") != excl_sha and len(exclusions) > 0
        con.execute(
            "CREATE TEMP TABLE tk AS SELECT DISTINCT pmid, version FROM "
            "(SELECT pmid, version FROM inc UNION ALL SELECT pmid, version FROM ntombs_t)"
        )
        touched_sql = "SELECT pmid FROM tk" + (
            " UNION SELECT pmid FROM excl" if excl_changed else ""
        )
        touched = np.sort(
            np.asarray(con.sql(f"SELECT DISTINCT pmid FROM ({touched_sql})").fetchnumpy()["pmid"])
        )
        # shards whose PMID range holds a touched PMID (footer statistics), then their keys
        cands = []
        for f in live:
            lo, hi = _pmid_range(f)
            a = np.searchsorted(touched, lo, "left") if np.isfinite(lo) else 0
            b = np.searchsorted(touched, hi, "right") if np.isfinite(hi) else len(touched)
            if b > a:
                cands.append(f)
        excl_cond = " OR l.pmid IN (SELECT pmid FROM excl)" if excl_changed else ""
        if cands:
            files = ", ".join(f"'{f.as_posix()}'" for f in cands)
            con.execute(
                "CREATE TEMP TABLE lk AS SELECT l.pmid, l.version, l.filename AS file, "
                "coalesce(r.rank, -1) AS lrank "
                f"FROM read_parquet([{files}], filename=true) l "
                "LEFT JOIN ranks r ON r.name = l.source_file "
                "WHERE EXISTS (SELECT 1 FROM tk WHERE tk.pmid = l.pmid AND tk.version = l.version)"
                f"{excl_cond}"
            )
        else:
            con.execute(
                "CREATE TEMP TABLE lk (pmid BIGINT, version INTEGER, file VARCHAR, lrank INTEGER)"
            )
        # per live key touched: does an incoming record win, is the winner deleted/excluded?
        con.execute(
            "CREATE TEMP TABLE dec AS SELECT d.*, (EXISTS (SELECT 1 FROM tomb t WHERE "
            "t.pmid = d.pmid AND t.version = d.version AND t.rank >= d.frank) "
            "OR d.pmid IN (SELECT pmid FROM excl)) AS dropped FROM ("
            "SELECT lk.pmid, lk.version, lk.file, "
            "coalesce(i._rank >= lk.lrank, false) AS inc_wins, "
            "CASE WHEN i._rank >= lk.lrank THEN i._rank ELSE lk.lrank END AS frank "
            "FROM lk LEFT JOIN inc i ON i.pmid = lk.pmid AND i.version = lk.version) d"
        )
        con.execute("CREATE TEMP TABLE chg AS SELECT * FROM dec WHERE inc_wins OR dropped")
        affected = {r[0] for r in con.execute("SELECT DISTINCT file FROM chg").fetchall()}
        for f in live:
            fp = f.as_posix()
            if fp not in affected:
                kept.append(f)
                if not _link_or_copy(f, nxt / "data" / f.name):
                    copied += f.stat().st_size
                continue
            q = fp.replace("'", "''")
            shards.write(
                con,
                f"SELECT {cols} FROM read_parquet('{q}') c WHERE NOT EXISTS (SELECT 1 FROM chg "
                f"WHERE chg.file = '{q}' AND chg.pmid = c.pmid AND chg.version = c.version) "
                f"UNION ALL SELECT {ccols} FROM inc c JOIN chg ON chg.pmid = c.pmid "
                f"AND chg.version = c.version WHERE chg.file = '{q}' AND chg.inc_wins "
                "AND NOT chg.dropped ORDER BY pmid, version",
            )
        n_rewritten_out = len(shards.written)
        _checkpoint("rewritten")
        # records with keys no shard holds: new shards
        shards.write(
            con,
            f"SELECT {ccols} FROM inc c WHERE NOT EXISTS (SELECT 1 FROM lk WHERE lk.pmid = c.pmid "
            "AND lk.version = c.version) AND NOT EXISTS (SELECT 1 FROM tomb t WHERE "
            "t.pmid = c.pmid AND t.version = c.version AND t.rank >= c._rank) "
            "AND c.pmid NOT IN (SELECT pmid FROM excl) ORDER BY c.pmid, c.version",
        )
        stats.update(
            shards_rewritten=len(affected),
            shards_kept=len(kept),
            shards_new=len(shards.written) - n_rewritten_out,
            keys_replaced=_count(con, "chg WHERE inc_wins AND NOT dropped"),
            keys_removed=_count(con, "chg WHERE dropped"),
        )
    # compaction: too many small shards -> merge them all
    present = sorted((nxt / "data").glob("*.parquet"))
    small = [f for f in present if _num_rows(f) < policy.small_fraction * policy.rows_per_shard]
    stats["shards_compacted"] = 0
    if len(small) > policy.max_small:
        files = ", ".join(f"'{f.as_posix()}'" for f in small)
        shards.write(con, f"SELECT {cols} FROM read_parquet([{files}]) ORDER BY pmid, version")
        for f in small:
            f.unlink()
        small_set = set(small)
        kept = [f for f in kept if nxt / "data" / f.name not in small_set]
        stats["shards_compacted"] = len(small)
        _checkpoint("compacted")
    out_files = sorted((nxt / "data").glob("*.parquet"))
    n_live = sum(_num_rows(f) for f in out_files)
    written = [f for f in out_files if f not in {nxt / "data" / k.name for k in kept}]
    stats.update(
        shards=len(out_files),
        bytes_written=sum(f.stat().st_size for f in written) + copied,
        bytes_total=sum(f.stat().st_size for f in out_files),
        rows_written=sum(_num_rows(f) for f in written),
    )

    # tombstones: per (pmid, version) the one of the last file that deleted it
    live_tomb = duckdb_table(
        con.sql(
            "SELECT DISTINCT t.pmid, t.version, t.source_file FROM tombs_t t JOIN tomb m "
            "ON m.pmid = t.pmid AND m.version = t.version "
            "JOIN ranks r ON r.name = t.source_file AND r.rank = m.rank ORDER BY t.pmid, t.version"
        )
    )
    pq.write_table(live_tomb.cast(TOMB_SCHEMA), nxt / "tombstones.parquet")
    stats["tombstone_bytes"] = (nxt / "tombstones.parquet").stat().st_size
    con.close()
    shutil.rmtree(tmpdir, ignore_errors=True)
    _checkpoint("merged")

    files_out = [e for e in manifest.get("files", []) if e.get("status") == "committed"]
    for e in new_entries:
        clean = {k: v for k, v in e.items() if k not in ("deletes", "reused_staging")}
        clean["status"] = "committed"
        clean["committed_at"] = _now()
        files_out.append(clean)
    new_manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": manifest.get("created_at") or _now(),
        "updated_at": _now(),
        "records": n_live,
        "key": ["pmid", "version"],
        "generation": generation,
        "schema": CORPUS_SCHEMA.names,
        "exclusions": manifest.get("exclusions", {}),
        "exclusions_sha": excl_sha,
        "shard_policy": {
            "rows_per_shard": policy.rows_per_shard,
            "small_fraction": policy.small_fraction,
            "max_small": policy.max_small,
        },
        "last_commit": stats,
        "files": files_out,
        "failed": manifest.get("failed", []),
    }
    write_json_atomic(nxt / "manifest.json", new_manifest)
    write_json_atomic(nxt / "COMMIT", {"staged": [e["sha256"] for e in new_entries]})
    _checkpoint("commit-marker")
    return n_live


# --------------------------------------------------------------------------- public API
@dataclass
class IngestReport:
    corpus_dir: Path
    files: list[dict] = field(default_factory=list)
    records: int = 0  # live records after ingestion
    seconds: float = 0.0
    commit: dict = field(default_factory=dict)  # shards kept/rewritten/new, bytes written

    @property
    def failed(self) -> list[dict]:
        return [f for f in self.files if f.get("status") == "failed"]

    def summary(self) -> dict:
        by: dict[str, int] = {}
        for f in self.files:
            by[f["status"]] = by.get(f["status"], 0) + 1
        parsed = sum(f.get("records", 0) for f in self.files if f["status"] == "committed")
        return {
            "corpus_dir": str(self.corpus_dir),
            "files": by,
            "parsed_records": parsed,
            "deleted": sum(f.get("deleted", 0) for f in self.files if f["status"] == "committed"),
            "malformed": sum(
                f.get("malformed", 0) for f in self.files if f["status"] == "committed"
            ),
            "excluded": sum(f.get("excluded", 0) for f in self.files if f["status"] == "committed"),
            "unresolved_mesh": sum(
                f.get("unresolved_mesh", 0) for f in self.files if f["status"] == "committed"
            ),
            "live_records": self.records,
            **({"commit": self.commit} if self.commit else {}),
            "seconds": round(self.seconds, 2),
            "records_per_s": round(parsed / self.seconds, 1) if self.seconds else None,
        }


def _run_staging(tasks: list[_Task], workers: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=None,
        unit=" rec",
        unit_scale=True,
        disable=not progress,
        desc="ingest",
        dynamic_ncols=True,
    )
    results: list[dict | None] = [None] * len(tasks)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                results[i] = _stage_file_safe(t, bar.update)
                bar.set_postfix(files=f"{i + 1}/{len(tasks)}")
        else:
            ctx = mp.get_context("spawn") if os.name == "nt" else mp.get_context()
            q = ctx.Queue()
            with ProcessPoolExecutor(
                max_workers=min(workers, len(tasks)),
                mp_context=ctx,
                initializer=_pool_init,
                initargs=(q,),
            ) as pool:
                futs = {pool.submit(_stage_file_safe, t): i for i, t in enumerate(tasks)}
                pending = set(futs)
                done_n = 0
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    with contextlib.suppress(_queue.Empty):
                        while True:
                            bar.update(q.get_nowait())
                    for f in done:
                        results[futs[f]] = f.result()
                        done_n += 1
                        bar.set_postfix(files=f"{done_n}/{len(tasks)}")
                with contextlib.suppress(_queue.Empty):
                    while True:
                        bar.update(q.get(timeout=0.05))
    finally:
        bar.close()
    return [r for r in results if r is not None]


def ingest(
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    exclude_pmids: str | Path | Iterable[int] | None = None,
    default_exclude: bool = True,
    workers: int = 1,
    resolver: MeshResolver | str | None = "auto",
    progress: bool = True,
    incremental: bool = True,
    rows_per_shard: int = ROWS_PER_SHARD,
    compact_small_fraction: float = 0.25,
    compact_max_small: int = 8,
) -> IngestReport:
    """Ingest PubMed XML (and pre-parsed) files into the corpus directory ``out``.

    Re-running with the same files is a no-op; a killed run resumes where it stopped. Files are
    committed together at the end of a run; a file that fails (truncated, not PubMed) is not
    committed, the others are, and :class:`InputError` is raised afterwards naming it.

    ``incremental`` (default): on a corpus that has shards, only the shards holding a
    (pmid, version) the new files replace or delete are rewritten, new keys go into new shards,
    and small shards are compacted when more than ``compact_max_small`` are below
    ``compact_small_fraction * rows_per_shard`` rows. ``incremental=False`` rewrites every shard.
    """
    t0 = time.perf_counter()
    root = Path(out)
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError("no input files given")
    if resolver == "auto":
        resolver = AutoMesh()
    excl: set[int] = set(default_exclusions()) if default_exclude else set()
    excl_files: list[str] = []
    if exclude_pmids is not None:
        if isinstance(exclude_pmids, (str, Path)):
            excl |= load_pmid_list(exclude_pmids)
            excl_files.append(str(Path(exclude_pmids).resolve()))
        else:
            excl |= {int(p) for p in exclude_pmids}
    exclusions = frozenset(excl)
    report = IngestReport(corpus_dir=root)
    with _locked(root):
        recover(root)
        manifest = (
            json.loads((root / "manifest.json").read_text("utf-8"))
            if (root / "manifest.json").exists()
            else {}
        )
        committed = frozenset(
            e["sha256"] for e in manifest.get("files", []) if e.get("status") == "committed"
        )
        tasks = [
            _Task(str(p), str(root / "staging"), committed, exclusions, resolver) for p in paths
        ]
        metas = _run_staging(tasks, workers, progress)
        seen: set[str] = set()
        new_entries: list[dict] = []
        seq0 = max((e.get("seq", 0) for e in manifest.get("files", [])), default=0)
        for m in metas:
            if m["status"] == "staged":
                if m["sha256"] in seen:
                    m = {**m, "status": "duplicate"}
                else:
                    seen.add(m["sha256"])
                    seq0 += 1
                    m["seq"] = seq0
                    new_entries.append(m)
                    continue
            report.files.append({k: v for k, v in m.items() if k != "deletes"})
        manifest.setdefault("exclusions", {})
        manifest["exclusions"] = {
            "pubmedqa_test_default": bool(default_exclude),
            "pmids": len(exclusions),
            "files": excl_files,
        }
        failed = [f for f in report.files if f["status"] == "failed"]
        manifest["failed"] = [
            {"path": f["path"], "error": f["error"], "at": _now()} for f in failed
        ]
        if new_entries or (not (root / "data").exists() and not failed):
            policy = ShardPolicy(rows_per_shard, compact_small_fraction, compact_max_small)
            _merge(root, manifest, new_entries, exclusions, policy, incremental)
            recover(root)
            for e in new_entries:
                report.files.append(
                    {**{k: v for k, v in e.items() if k != "deletes"}, "status": "committed"}
                )
        elif failed and (root / "manifest.json").exists():
            write_json_atomic(root / "manifest.json", {**manifest, "updated_at": _now()})
        if (root / "manifest.json").exists():
            final = json.loads((root / "manifest.json").read_text("utf-8"))
            report.records = final["records"]
            if new_entries:
                report.commit = final.get("last_commit", {})
    report.seconds = time.perf_counter() - t0
    if failed:
        names = "; ".join(f["error"] for f in failed)
        others = "the other files were committed" if new_entries else "nothing new was committed"
        raise InputError(f"{len(failed)} file(s) not ingested ({others}): {names}")
    return report
