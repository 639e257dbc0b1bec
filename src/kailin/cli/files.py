"""Files a command line names: read with a clear error for a missing file or bad encoding."""

from __future__ import annotations

import json
from pathlib import Path

from kailin.errors import InputError


def read_text(path: Path, option: str) -> str:
    """The text of ``path`` (UTF-8), or an error naming the option and what to do."""
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{option} {path}: not UTF-8 text (byte {exc.start}: "
                         f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8") from None


def read_pmids(path: Path, option: str) -> list[int]:
    """PMIDs from a file: one a line, or a JSON list / dict (PubMedQA's, keyed by PMID)."""
    text = read_text(path, option)
    try:
        data = json.loads(text) if text.lstrip()[:1] in ("{", "[") else None
        raw = list(data) if data is not None else text.split()
        return sorted({int(x) for x in raw})
    except (ValueError, TypeError):
        raise InputError(f"{option} {path}: expected PMIDs (integers, one a line, or a JSON "
                         "list)") from None
