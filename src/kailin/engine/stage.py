"""The stage protocol: Arrow batches in, Arrow batches out, nothing about where it runs.

A stage is built from its config (plain, picklable values), loads heavy resources lazily in
:meth:`Stage.setup` (once per process or Ray actor), and maps one input batch to one output
table in :meth:`Stage.process`. Executors (``kailin.engine.executors``) feed it shards, write
every output shard atomically and mark it done, so a re-run skips finished shards and a killed run
resumes without duplicates or losses.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow as pa


class Stage(ABC):
    """Base class for a batch stage.

    Subclasses set ``name``, keep their configuration in attributes listed by
    :meth:`fingerprint_config`, and implement :meth:`process`. ``uses_gpu`` and ``stateful`` tell
    the Ray executor to run the stage in an actor pool (model held across batches) with a GPU.
    """

    name: ClassVar[str] = "stage"
    #: bump when a change to the stage's code changes what it writes (its shards' keys hold it)
    code_version: ClassVar[str] = "1"
    #: a model or index is held in memory: run in an actor pool on Ray
    stateful: ClassVar[bool] = False
    uses_gpu: ClassVar[bool] = False

    def __init__(self) -> None:
        self._ready = False

    #: set by an executor for the length of one shard: told how many input rows the stage has
    #: just finished, so a progress bar moves within a long shard (see :meth:`advance`)
    on_rows: Callable[[int], None] | None = None

    def advance(self, rows: int) -> None:
        """Report ``rows`` more input rows done (a no-op unless an executor listens)."""
        if self.on_rows is not None:
            self.on_rows(rows)

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models / indexes. Called once per worker before the first batch."""

    def place(self, device: str) -> None:  # noqa: B027 - optional hook
        """Called by an executor before :meth:`setup` with the device the cluster gave this
        worker (``"cuda:0"`` for the first GPU Ray assigned, see
        :func:`kailin.engine.executors.ray.assigned_device`). A stage that loads a model onto
        a device uses it; the default ignores it."""

    def ensure_setup(self) -> None:
        if not getattr(self, "_ready", False):
            self.setup()
            self._ready = True

    @abstractmethod
    def process(self, batch: pa.Table) -> pa.Table:
        """Map one input batch to one output table (may have a different row count)."""

    def fingerprint_config(self) -> dict[str, Any]:
        """The settings that change this stage's output (used in cache keys). Side inputs (an
        index, a corpus, a model folder) by what they hold, never by their path or mtime, so a
        copied run folder keeps its shards."""
        return {}

    def fingerprint(self) -> str:
        payload = json.dumps(
            {
                "stage": self.name,
                "config": self.fingerprint_config(),
                "code": self.code_version,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        self.ensure_setup()
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        return self.process(batch)
