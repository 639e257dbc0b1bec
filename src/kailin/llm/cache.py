"""SQLite response cache: a re-run or a resumed run pays nothing for answers it already has.

Keys are SHA-256 hashes of (backend identity, request, sampling parameters) — see
:func:`kailin.llm.base.request_key`. The database uses WAL mode, so several processes (local
workers, Ray actors on one host) can read while one writes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from kailin.io import user_cache_dir
from kailin.llm.base import Backend, Completion, Request, SamplingParams, request_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason TEXT,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    return user_cache_dir() / "llm_cache.sqlite"


class ResponseCache:
    """A key -> :class:`Completion` store in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._local = threading.local()
        with self._conn() as con:
            con.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self._timeout)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        con = self._conn()
        uniq = list(dict.fromkeys(keys))
        for start in range(0, len(uniq), 500):
            chunk = uniq[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = con.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, finish_reason "
                f"FROM responses WHERE key IN ({marks})",
                chunk,
            ).fetchall()
            for key, text, pt, ct, fr in rows:
                out[key] = Completion(text, pt, ct, fr, cached=True)
        return out

    def put_many(self, items: Iterable[tuple[str, str, str, Completion]]) -> None:
        """Store ``(key, backend, model, completion)`` tuples."""
        now = time.time()
        rows = [
            (k, b, m, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, now)
            for k, b, m, c in items
        ]
        if not rows:
            return
        con = self._conn()
        with con:
            con.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def __getstate__(self) -> dict:  # picklable for Ray: connections are reopened lazily
        return {"path": self.path, "_timeout": self._timeout}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._timeout = state["_timeout"]
        self._local = threading.local()


class CachedBackend(Backend):
    """Wraps a backend: answers from the cache, sends only the misses to the backend.

    Counters of this object's work, per request: ``hits`` (answered from the cache) and
    ``misses`` (not in the cache); per prompt sent: ``prompts_sent`` (the distinct missing
    requests handed to the wrapped backend; a request repeated within one batch is sent once, so
    ``prompts_sent`` <= ``misses``); per batch: ``backend_batches`` (``generate`` calls forwarded
    to the wrapped backend, each holding one or more prompts). Each new completion is
    written to the cache the moment the backend reports it (:meth:`Backend.generate_each`), in
    its own committed SQLite transaction (WAL), so a killed run keeps every answer it received.
    """

    def __init__(self, backend: Backend, cache: ResponseCache) -> None:
        self.backend = backend
        self.cache = cache
        self.kind = backend.kind  # type: ignore[misc]
        self.hits = 0
        self.misses = 0
        self.prompts_sent = 0
        self.backend_batches = 0
        #: completions written to the cache by this object (each right after it arrived)
        self.stored = 0

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def identity(self) -> dict:
        return self.backend.identity()

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        ident = self.backend.identity()
        keys = [request_key(ident, r, params) for r in requests]
        found = self.cache.get_many(keys)
        missing: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in found and k not in missing:
                missing[k] = i
        self.hits += len(requests) - sum(1 for k in keys if k not in found)
        self.misses += sum(1 for k in keys if k not in found)
        if missing:
            self.backend_batches += 1
            self.prompts_sent += len(missing)
            miss_keys = list(missing)
            backend_name, model = ident["backend"], str(ident.get("model"))

            def keep(j: int, c: Completion) -> None:
                # committed one by one as they arrive: a crash or a failed request later in the
                # batch loses none of the completions already paid for
                self.cache.put_many([(miss_keys[j], backend_name, model, c)])
                self.stored += 1

            new = self.backend.generate_each([requests[i] for i in missing.values()], params,
                                             keep)
            for k, c in zip(missing, new, strict=True):
                found[k] = Completion(c.text, c.prompt_tokens, c.completion_tokens,
                                      c.finish_reason, cached=False)
        out = []
        for k in keys:
            c = found[k]
            out.append(Completion(c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason,
                                  cached=c.cached))
        return out

    def close(self) -> None:
        self.backend.close()
