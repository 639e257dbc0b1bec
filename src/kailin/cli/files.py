"""Files a command line names: read with a clear error for a missing file or a bad encoding
(:func:`kailin.io.read_text_strict`)."""

from __future__ import annotations

import json
from pathlib import Path

from kailin.errors import InputError
from kailin.io import read_text_strict


def read_text(path: Path, option: str, what: str) -> str:
    """The text of ``path`` (UTF-8), or an error naming the option and what to do."""
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    return read_text_strict(path, what)


def read_pmids(path: Path, option: str) -> list[int]:
    """PMIDs from a file: one a line, or a JSON list / dict (PubMedQA's, keyed by PMID)."""
    text = read_text(path, option, "PMID exclusion list")
    try:
        data = json.loads(text) if text.lstrip()[:1] in ("{", "[") else None
        raw = list(data) if data is not None else text.split()
        return sorted({int(x) for x in raw})
    except (ValueError, TypeError):
        raise InputError(f"{option} {path}: expected PMIDs (integers, one a line, or a JSON "
                         "list)") from None
