"""Executors run a :class:`~kailin.engine.stage.Stage` over Parquet shards."""

from kailin.engine.executors.local import LocalExecutor, run_stage

__all__ = ["LocalExecutor", "run_stage"]
