"""Stages, executors and the ``kailin run`` orchestration."""

from kailin.pipeline.stage import Stage

__all__ = ["Stage"]
