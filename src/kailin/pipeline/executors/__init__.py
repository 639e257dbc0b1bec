"""Executors run a :class:`~kailin.pipeline.stage.Stage` over Parquet shards."""

from kailin.pipeline.executors.local import LocalExecutor, run_stage

__all__ = ["LocalExecutor", "run_stage"]
