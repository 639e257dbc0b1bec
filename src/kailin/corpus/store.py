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
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kailin.corpus import layout as _layout
from kailin.corpus.layout import MANIFEST_FORMAT, ROWS_PER_SHARD, sha256_file  # noqa: F401
from kailin.corpus.merge import ShardPolicy, _merge
from kailin.corpus.pubmed_xml import MeshResolver
from kailin.corpus.sources import (
    AutoMesh,
    default_exclusions,
    expand_inputs,
    load_pmid_list,
)
from kailin.corpus.staging import _run_staging, _Task
from kailin.errors import InputError, KailinError
from kailin.io import write_json_atomic

log = logging.getLogger(__name__)

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
        _layout.checkpoint("swap")
        os.rename(nxt / "data", root / "data")
    _layout.checkpoint("after-swap")
    for name in ("tombstones.parquet", "manifest.json"):
        if (nxt / name).exists():
            os.replace(nxt / name, root / name)
    _layout.checkpoint("after-manifest")
    staging = root / "staging"
    for sha in info.get("staged", []):
        for suffix in (".parquet", ".json"):
            (staging / f"{sha}{suffix}").unlink(missing_ok=True)
    if old.exists():
        shutil.rmtree(old)
    shutil.rmtree(nxt)


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
            "deletions_requested": sum(
                f.get("deletions_requested", f.get("deleted", 0))
                for f in self.files
                if f["status"] == "committed"
            ),
            "malformed": sum(
                f.get("malformed", 0) for f in self.files if f["status"] == "committed"
            ),
            "excluded": sum(f.get("excluded", 0) for f in self.files if f["status"] == "committed"),
            "unresolved_mesh": sum(
                f.get("unresolved_mesh", 0) for f in self.files if f["status"] == "committed"
            ),
            "live_records": self.records,
            **self._salvage_summary(),
            **({"commit": self.commit} if self.commit else {}),
            "seconds": round(self.seconds, 2),
            "records_per_s": round(parsed / self.seconds, 1) if self.seconds else None,
        }


    def _salvage_summary(self) -> dict:
        cut = [f for f in self.files if f["status"] == "committed" and "lost_from_byte" in f]
        if not cut:
            return {}
        return {
            "salvaged": sum(f["salvaged"] for f in cut),
            "salvaged_files": [
                {"file": f["name"], "records_kept": f["salvaged"],
                 "lost_from_byte": f["lost_from_byte"], "rest_of_file": "lost"}
                for f in cut
            ],
        }


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
    salvage: bool = False,
) -> IngestReport:
    """Ingest PubMed XML (and pre-parsed) files into the corpus directory ``out``.

    Re-running with the same files is a no-op; a killed run resumes where it stopped. Files are
    committed together at the end of a run; a file that fails (truncated, not PubMed) is not
    committed, the others are, and :class:`InputError` is raised afterwards naming it.

    ``incremental`` (default): on a corpus that has shards, only the shards holding a
    (pmid, version) the new files replace or delete are rewritten, new keys go into new shards,
    and small shards are compacted when more than ``compact_max_small`` are below
    ``compact_small_fraction * rows_per_shard`` rows. ``incremental=False`` rewrites every shard.

    A PubMed XML file that stops being UTF-8 (Latin-1 bytes in a file read as UTF-8) fails as a
    whole; with ``salvage`` its records before the bad byte are committed and the report says
    how many (``salvaged``) and from which byte the file was lost.
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
            _Task(str(p), str(root / "staging"), committed, exclusions, resolver, salvage)
            for p in paths
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
            {"path": f["path"], "error": f["error"], "at": _layout.now()} for f in failed
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
            write_json_atomic(root / "manifest.json", {**manifest, "updated_at": _layout.now()})
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
