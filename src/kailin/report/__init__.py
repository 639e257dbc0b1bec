"""``kailin report RUN_DIR``: one self-contained HTML page of what a run produced."""

from __future__ import annotations

from typing import Any


def stage_is_off(manifest: dict[str, Any] | None, stage: str) -> bool:
    """Whether the run's manifest says ``stage`` is disabled in this run: a report file it left
    in the run folder is then an earlier config's, not this run's result."""
    return (((manifest or {}).get("stages") or {}).get(stage) or {}).get("status") == "disabled"
