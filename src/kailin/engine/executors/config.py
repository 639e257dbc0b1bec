"""Settings of the run's engine step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kailin.config import StageConfig


class ExecutorConfig(StageConfig):
    kind: Literal["local", "ray"] = "local"
    rows_per_shard: int = Field(64, ge=1)
    num_cpus: int | None = Field(None, ge=1, description="Ray: CPUs of a local instance")
    address: str | None = Field(None, description="Ray: address of an existing cluster")
    concurrency: int | None = Field(None, ge=1, description="Ray: actors per model stage")
    num_gpus_per_worker: float = Field(0.0, ge=0)
