"""Content keys: what an output was made from, as a short hash.

Every output of a run (a stage's shards, a trainer's model, a report) is stamped with a key: a
hash of the settings that made it, the content digests of its inputs (for a step's input steps:
the digest of what they wrote, so a step rebuilt to identical output changes no reader's key:
early cutoff) and the step's own code version. An output whose stamp differs from the key it
would get now is stale and is made again; nothing else is.

Input files (the corpus stage's XML/Parquet, an SFT data file, a MeSH build) are keyed by their
content digest. Hashing a large file on every run would be slow, so the digest is cached per
path with the file's size and mtime, and recomputed only when those change (a ``touch`` costs one
read and changes no key). Keys name input files by base name, not by absolute path, so that
the same files read from another place give the same key.

Part of the engine (:mod:`kailin.engine`): it imports no stage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.io import sha256_file, write_json_atomic

KEY_CHARS = 16
#: files and folders in a step's output that record how it was made, not what it holds: key
#: stamps, shard markers, the executor's note, trainers' checkpoints and logs
BOOKKEEPING = frozenset({"_kailin_key.json", "_done", "_stage.json", "runs", "logs", "checkpoints",
                         "stats.json", "kailin_train.json", "trainer_state.json"})


def digest(payload: Any) -> str:
    """A short, stable hash of a JSON-able value (keys sorted, unknown types as ``str``)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def table_digest(table: pa.Table) -> str:
    """A hash of a table's content: its schema and values (chunking, slice offsets and schema
    metadata do not change it)."""
    t = table.replace_schema_metadata(None)
    # ``take`` copies into fresh buffers at offset 0, so a slice hashes like a fresh table
    t = t.take(pa.array(range(t.num_rows), pa.int64())).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:KEY_CHARS]


class FileDigests:
    """Content digests of input files, cached in ``cache_path`` by (path, size, mtime)."""

    def __init__(self, cache_path: Path | None = None) -> None:
        self.cache_path = cache_path
        self._cache: dict[str, dict[str, Any]] = {}
        if cache_path is not None and cache_path.is_file():
            try:
                self._cache = json.loads(cache_path.read_text())
            except (OSError, json.JSONDecodeError):
                self._cache = {}
        self._dirty = False
        #: files whose digest had to be computed in this session (for logs and tests)
        self.hashed: list[str] = []

    def file(self, path: Path) -> str:
        path = path.resolve()
        st = path.stat()
        k = str(path)
        hit = self._cache.get(k)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        sha = sha256_file(path)
        self._cache[k] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        self._dirty = True
        self.hashed.append(k)
        return sha

    def paths(self, paths: Iterable[Path]) -> dict[str, str]:
        """``{path: digest}`` of files, and of every file below directories (a missing path maps
        to ``"missing"``, so that creating it later changes the key)."""
        out: dict[str, str] = {}
        for p in paths:
            p = Path(p)
            if p.is_file():
                out[str(p.resolve())] = self.file(p)
            elif p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file()
                               and not any(part.startswith(".") for part in
                                           f.relative_to(p).parts))
                out[str(p.resolve())] = digest({str(f.relative_to(p)): self.file(f)
                                                for f in files})
            else:
                out[str(p)] = "missing"
        return out

    def outputs(self, root: Path, rels: Iterable[str]) -> str:
        """The content digest of a step's outputs (files and folders below ``root``, by their
        relative names). Left out: bookkeeping that says how or when they were made rather than
        what they hold (:data:`BOOKKEEPING`), and hidden files. Two builds that wrote the same
        bytes get the same digest, wherever the run folder is."""
        parts: dict[str, str] = {}
        for rel in rels:
            p = root / rel
            if p.is_file():
                parts[rel] = self.file(p)
            elif p.is_dir():
                for f in sorted(p.rglob("*")):
                    r = f.relative_to(p)
                    if f.is_file() and not any(x.startswith(".") or x in BOOKKEEPING
                                               for x in r.parts):
                        parts[f"{rel}/{r.as_posix()}"] = self.file(f)
        return digest(parts)

    def labelled(self, paths: Iterable[Path]) -> dict[str, tuple[str, str]]:
        """``{name: (absolute path, digest)}`` of input files and directories, named by their
        base name (``#2``, ``#3`` for repeats): keys hold the names and digests, not the paths,
        so they do not change when the same files are read from another place (a moved
        checkout, another install of the packaged samples, a copied run); the paths are for
        messages."""
        out: dict[str, tuple[str, str]] = {}
        for p, sha in self.paths(paths).items():
            name = Path(p).name or p
            label, n = name, 1
            while label in out:
                n += 1
                label = f"{name}#{n}"
            out[label] = (p, sha)
        return out

    def save(self) -> None:
        if self._dirty and self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.cache_path, self._cache)
            self._dirty = False


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1}`` from ``{"a": {"b": 1}}`` (lists stay values)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d} if prefix else {"": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(old: Any, new: Any) -> list[str]:
    """The dotted names of the settings that differ between two settings trees."""
    a, b = flat(json.loads(json.dumps(old, default=str))), flat(json.loads(json.dumps(
        new, default=str)))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def path_exists(p: str | os.PathLike[str] | None) -> bool:
    return p is not None and Path(p).exists()
