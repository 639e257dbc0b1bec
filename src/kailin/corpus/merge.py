"""The commit of an ingest: staged records and deletions merged into the corpus shards (each
PMID's latest version wins, deletions applied, shards rewritten only where they changed)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.corpus import layout as _layout
from kailin.corpus.schema import CORPUS_SCHEMA
from kailin.io import (
    connect_duckdb,
    duckdb_in_file_order,
    duckdb_reader,
    duckdb_table,
    parquet_scan,
    write_json_atomic,
)

log = logging.getLogger("kailin.corpus.store")


@dataclass(frozen=True)
class ShardPolicy:
    """Shard sizes and the compaction rule.

    A shard holding fewer than ``small_fraction * rows_per_shard`` rows is *small*; when a commit
    leaves more than ``max_small`` small shards, they are all merged (sorted by (pmid, version))
    into shards of ``rows_per_shard`` rows. Daily updates each add one small shard of new
    records, so with the defaults about every ninth update also compacts."""

    rows_per_shard: int = _layout.ROWS_PER_SHARD
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
    return t.select(_layout.TOMB_SCHEMA.names).cast(_layout.TOMB_SCHEMA)


def pmid_range(f: Path) -> tuple[float, float]:
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
        return self.write_batches(duckdb_reader(con.sql(sql)))

    def discard(self) -> None:
        """Remove every shard written so far (a streamed merge that found its input out of
        order starts again)."""
        for f in self.written:
            f.unlink(missing_ok=True)
        self.written, self.k = [], 0

    def write_batches(self, batches: Iterable[pa.RecordBatch]) -> list[Path]:
        made: list[Path] = []
        writer: pq.ParquetWriter | None = None
        in_shard = 0
        for batch in batches:
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


class _NotInOrder(Exception):
    """A staged file's records are not in (PMID, Version) order (the merge then sorts)."""


#: rows per row group of a streamed merge's shards (DuckDB's batch size: the sorted merge
#: writes row groups of up to this many rows, cut where DuckDB's batches end)
MERGE_BATCH_ROWS = 65536
#: rows per batch a streamed merge reads (smaller than a row group: 1M records, 1,016 -> 840 MiB
#: of peak RSS with 16,384 rows instead of 65,536)
MERGE_READ_ROWS = 16384


def files_in_pmid_order(files: list[Path]) -> list[int] | None:
    """The indexes of the Parquet ``files`` in PMID order when their footers give them disjoint
    PMID ranges, else None: staged baseline files (MEDLINE numbers them in PMID order), and the
    shards kailin's merge writes (one sorted run cut into shards, updates in shards of their
    own)."""
    import itertools

    ranged = sorted((pmid_range(f), k) for k, f in enumerate(files))
    for (a, _), (b, _) in itertools.pairwise(ranged):
        if not a[1] < b[0]:
            return None
    return [k for _, k in ranged]


def _last_per_key(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Rows in (pmid, version) order, a key's records adjacent in ``_seq`` order: the last
    record of each key (what the sorted merge's ``row_number() ... = 1`` keeps within a file);
    raises :class:`_NotInOrder` at the first row out of that order."""
    import numpy as np

    carry: pa.Table | None = None
    for t in tables:
        if t.num_rows == 0:
            continue
        if carry is not None:
            t = pa.concat_tables([carry, t])
        p = t.column("pmid").to_numpy()
        v = t.column("version").to_numpy()
        q = t.column("_seq").to_numpy()
        dp, dv, dq = np.diff(p), np.diff(v), np.diff(q)
        same = (dp == 0) & (dv == 0)
        if bool(((dp < 0) | ((dp == 0) & (dv < 0)) | (same & (dq <= 0))).any()):
            raise _NotInOrder
        # row i is dropped when row i + 1 has its key; the last row waits for the next batch
        if t.num_rows > 1:
            yield t.slice(0, t.num_rows - 1).filter(pa.array(~same))
        carry = t.slice(t.num_rows - 1)
    if carry is not None:
        yield carry


def _rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``tables`` as batches of exactly ``rows`` rows (the last may be shorter)."""
    buf: list[pa.Table] = []
    n = 0
    for t in tables:
        buf.append(t)
        n += t.num_rows
        while n >= rows:
            whole = pa.concat_tables(buf)
            yield from whole.slice(0, rows).combine_chunks().to_batches()
            rest = whole.slice(rows)
            buf, n = [rest], rest.num_rows
    if n:
        yield from pa.concat_tables(buf).combine_chunks().to_batches()


def _streamed_full_merge(con: Any, shards: _ShardWriter, staged: list[Path],
                         ranks: list[int]) -> bool:
    """The full merge of staged files with disjoint PMID ranges and no live shards, without
    sorting: each file in PMID order, its deleted and excluded records filtered as in the
    sorted merge, the last record per (pmid, version) kept: the same records in the same
    shards (row groups may be cut elsewhere). Memory: a few batches, whatever the corpus (the
    rehearsal's ingest of 1M records: 1,814 -> 806 MiB of peak RSS, 3M: 809 MiB; the sorted
    merge fills DuckDB's 1 GiB budget). False, with nothing written, when the files' ranges
    overlap or a file turns out not to be sorted: the caller then sorts."""
    order = files_in_pmid_order(staged)
    if order is None:
        return False
    cols = ", ".join(f'"{c}"' for c in CORPUS_SCHEMA.names)

    def tables() -> Iterator[pa.Table]:
        for k in order:
            rel = con.sql(
                f"SELECT {cols}, _seq FROM {parquet_scan([staged[k]])} c "
                "WHERE NOT EXISTS (SELECT 1 FROM tomb t WHERE t.pmid = c.pmid "
                f"AND t.version = c.version AND t.rank >= {int(ranks[k])}) "
                "AND c.pmid NOT IN (SELECT pmid FROM excl)")
            reader = duckdb_reader(rel, MERGE_READ_ROWS)
            try:  # (DuckDB runs no other query on the connection while a result is open)
                for b in reader:
                    yield pa.Table.from_batches([b])
            finally:
                reader.close()

    with duckdb_in_file_order(con):
        source = tables()
        try:
            out = (t.drop_columns(["_seq"]) for t in _last_per_key(source))
            shards.write_batches(_rechunk(out, MERGE_BATCH_ROWS))
        except _NotInOrder:
            log.info("a staged file is not in PMID order: the merge sorts the records")
            shards.discard()
            return False
        finally:
            source.close()
    return True


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

    tmpdir = root / ".duckdb_tmp"
    con = connect_duckdb(tmpdir)  # the merge sorts every staged row: spill, don't grow
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
    tombs = pa.concat_tables(tomb_parts).cast(_layout.TOMB_SCHEMA)
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
    if stats["mode"] == "full" and not live and _streamed_full_merge(
            con, shards, [staging / (e["sha256"] + ".parquet") for e in new_entries],
            [rank_of_entry[n_old + k] for k in range(len(new_entries))]):
        stats.update(shards_rewritten=0, shards_kept=0, merge="streamed")
    elif stats["mode"] == "full":
        stats["merge"] = "sorted"
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
            con.register("inc_t", pa.Table.from_pylist([], schema=_layout.STAGE_SCHEMA))
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
            lo, hi = pmid_range(f)
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
        _layout.checkpoint("rewritten")
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
        _layout.checkpoint("compacted")
    out_files = sorted((nxt / "data").glob("*.parquet"))
    n_live = sum(_num_rows(f) for f in out_files)
    written = [f for f in out_files if f not in {nxt / "data" / k.name for k in kept}]
    stats.update(
        shards=len(out_files),
        bytes_written=sum(f.stat().st_size for f in written) + copied,
        bytes_total=sum(f.stat().st_size for f in out_files),
        rows_written=sum(_num_rows(f) for f in written),
    )

    # deletions: requested by this run's files vs applied (a key that was live, or came in with
    # this commit, and is not live after it), each credited to the last file that deleted it
    applied = _applied_deletions(
        con, [staging / f"{e['sha256']}.parquet" for e in new_entries], live, out_files
    )
    for e in new_entries:
        e["deletions_requested"] = len(_norm_deletes(e.get("deletes", [])))
        e["deleted"] = applied.get(e["name"], 0)
    stats["deletions_requested"] = sum(e["deletions_requested"] for e in new_entries)
    stats["deleted"] = sum(applied.values())

    # tombstones: per (pmid, version) the one of the last file that deleted it
    live_tomb = duckdb_table(
        con.sql(
            "SELECT DISTINCT t.pmid, t.version, t.source_file FROM tombs_t t JOIN tomb m "
            "ON m.pmid = t.pmid AND m.version = t.version "
            "JOIN ranks r ON r.name = t.source_file AND r.rank = m.rank ORDER BY t.pmid, t.version"
        )
    )
    pq.write_table(live_tomb.cast(_layout.TOMB_SCHEMA), nxt / "tombstones.parquet")
    stats["tombstone_bytes"] = (nxt / "tombstones.parquet").stat().st_size
    con.close()
    shutil.rmtree(tmpdir, ignore_errors=True)
    _layout.checkpoint("merged")

    files_out = [e for e in manifest.get("files", []) if e.get("status") == "committed"]
    for e in new_entries:
        clean = {k: v for k, v in e.items() if k not in ("deletes", "reused_staging")}
        clean["status"] = "committed"
        clean["committed_at"] = _layout.now()
        files_out.append(clean)
    new_manifest = {
        "format": _layout.MANIFEST_FORMAT,
        "created_at": manifest.get("created_at") or _layout.now(),
        "updated_at": _layout.now(),
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
    _layout.checkpoint("commit-marker")
    return n_live


def _applied_deletions(
    con: Any, incoming: list[Path], before: list[Path], after: list[Path]
) -> dict[str, int]:
    """Per file name, the deletions of this commit (``ntombs_t``) that took effect: the key was
    in a live shard (``before``) or an incoming staged file, and is in no shard of the next
    generation (``after``). Shards are pruned by their PMID range (footer statistics)."""
    import numpy as np

    con.execute(
        "CREATE TEMP TABLE nd AS SELECT t.pmid, t.version, arg_max(t.source_file, r.rank) AS file "
        "FROM ntombs_t t JOIN ranks r ON r.name = t.source_file GROUP BY t.pmid, t.version"
    )
    pmids = np.sort(np.asarray(con.sql("SELECT DISTINCT pmid FROM nd").fetchnumpy()["pmid"]))
    if len(pmids) == 0:
        return {}

    def holding(files: list[Path]) -> str:
        keep = []
        for f in files:
            lo, hi = pmid_range(f)
            a = np.searchsorted(pmids, lo, "left") if np.isfinite(lo) else 0
            b = np.searchsorted(pmids, hi, "right") if np.isfinite(hi) else len(pmids)
            if b > a:
                keep.append(f)
        if not keep:
            return "SELECT NULL::BIGINT AS pmid, NULL::INTEGER AS version WHERE false"
        names = ", ".join(f"'{f.as_posix()}'" for f in keep)
        return f"SELECT pmid, version FROM read_parquet([{names}])"

    rows = con.execute(
        f"SELECT file, count(*) FROM nd WHERE EXISTS (SELECT 1 FROM ({holding(before + incoming)})"
        " b WHERE b.pmid = nd.pmid AND b.version = nd.version) AND NOT EXISTS (SELECT 1 FROM "
        f"({holding(after)}) a WHERE a.pmid = nd.pmid AND a.version = nd.version) GROUP BY file"
    ).fetchall()
    return {str(f): int(n) for f, n in rows}
