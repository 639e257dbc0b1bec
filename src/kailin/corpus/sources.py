"""Input formats, the MeSH resolver used during ingestion, and PMID exclusion lists."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from kailin.corpus.preparsed import (
    is_pubmedqa_json,
    iter_jsonl,
    iter_parquet,
    iter_pubmedqa,
    iter_tiabme,
)
from kailin.corpus.pubmed_xml import MeshResolver, ParseStats, iter_pubmed_records
from kailin.errors import InputError
from kailin.io import read_text_strict

log = logging.getLogger(__name__)

#: file-name endings ingestion recognises, and the format each means
FORMATS: tuple[tuple[str, str], ...] = (
    (".xml.gz", "pubmed-xml"),
    (".xml", "pubmed-xml"),
    (".jsonl.gz", "jsonl"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".parquet", "parquet"),
    (".tiabme", "tiabme"),
    (".json", "json"),
)


def detect_format(path: Path) -> str | None:
    low = path.name.lower()
    for suffix, fmt in FORMATS:
        if low.endswith(suffix):
            return fmt
    return None


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files to ingest: each file as given; for a directory, every recognised file below it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and detect_format(f))
            found = [f for f in found if not f.name.startswith(".")]
            if not found:
                raise InputError(
                    f"{p}: directory holds no PubMed XML/JSONL/Parquet/JSON/TiAbMe files"
                )
            out.extend(found)
        elif p.is_file():
            if detect_format(p) is None:
                raise InputError(
                    f"{p}: unknown input format; expected PubMed XML (.xml, .xml.gz), JSONL "
                    "(.jsonl[.gz]), Parquet (.parquet), PubMedQA JSON (.json) or NLM .TiAbMe"
                )
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


def iter_source(
    path: Path, resolver: MeshResolver | None, stats: ParseStats, salvage: bool = False
) -> Iterator[tuple[str, Any]]:
    """Items of one input file, whatever its format (see :mod:`kailin.corpus.pubmed_xml`).

    ``salvage``: a PubMed XML file that stops being UTF-8 keeps its records before the bad
    byte instead of failing."""
    fmt = detect_format(path)
    if fmt == "pubmed-xml":
        yield from iter_pubmed_records(path, resolver, stats, salvage=salvage)
    elif fmt == "jsonl":
        yield from iter_jsonl(path, resolver, stats)
    elif fmt == "parquet":
        yield from iter_parquet(path, resolver, stats)
    elif fmt == "tiabme":
        yield from iter_tiabme(path, resolver, stats)
    elif fmt == "json":
        with open(path, "rb") as fh:
            head = fh.read(1).strip()
        if head != b"{":
            raise InputError(f"{path}: JSON input must be PubMedQA's object keyed by PMID")
        yield from iter_pubmedqa(path, resolver, stats)
    else:
        raise InputError(f"{path}: unknown input format")


__all__ = [
    "AutoMesh",
    "DictMesh",
    "default_exclusions",
    "detect_format",
    "expand_inputs",
    "is_pubmedqa_json",
    "iter_source",
    "load_pmid_list",
]


# --------------------------------------------------------------------------- MeSH resolvers
class AutoMesh:
    """Resolver that loads the packaged MeSH (``kailin.mesh.load_mesh()``) on first use, in
    whichever process needs it. Picklable (the loaded vocabulary is not pickled). When the MeSH
    engine is unavailable, names stay unresolved (counted in the manifest) and a warning is logged
    once."""

    def __init__(self, mesh_dir: str | Path | None = None) -> None:
        self.mesh_dir = mesh_dir
        self._mesh: Any = None
        self._failed = False

    def __getstate__(self) -> dict:
        return {"mesh_dir": self.mesh_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["mesh_dir"])  # type: ignore[misc]

    def _load(self) -> Any:
        if self._mesh is None and not self._failed:
            try:
                from kailin.mesh import load_mesh  # type: ignore[attr-defined]

                self._mesh = load_mesh(self.mesh_dir)
            except Exception as exc:
                self._failed = True
                log.warning("MeSH vocabulary unavailable (%s): MeSH names stay unresolved", exc)
        return self._mesh

    def lookup(self, name_or_ui: str) -> str | None:
        m = self._load()
        return m.lookup(name_or_ui) if m is not None else None

    def descendants(self, ui: str) -> set[str]:
        m = self._load()
        return set(m.descendants(ui)) if m is not None else set()


class DictMesh:
    """A small in-memory MeSH: ``names`` maps names/UIs to descriptor UIs (case-insensitive) and
    ``children`` maps a UI to the UIs directly below it. Same ``lookup``/``descendants`` interface
    as ``kailin.mesh``; handy for tests and for custom vocabularies."""

    def __init__(self, names: dict[str, str], children: dict[str, list[str]] | None = None) -> None:
        self._names = {k.lower(): v for k, v in names.items()}
        for ui in set(names.values()):
            self._names.setdefault(ui.lower(), ui)
        self._children = children or {}

    def lookup(self, name_or_ui: str) -> str | None:
        s = name_or_ui.strip().lower()
        return self._names.get(s) or self._names.get(s.split("/")[0])

    def descendants(self, ui: str) -> set[str]:
        out: set[str] = set()
        stack = list(self._children.get(ui, []))
        while stack:
            u = stack.pop()
            if u not in out:
                out.add(u)
                stack.extend(self._children.get(u, []))
        return out


# --------------------------------------------------------------------------- exclusions
@functools.lru_cache(maxsize=1)
def default_exclusions() -> frozenset[int]:
    """PMIDs kept out of every corpus by default: the 500 PubMedQA PQA-L test questions (from
    the packaged ``kailin/data/pubmedqa/test_ground_truth.json``), so that nothing distilled
    overlaps the benchmark."""
    ref = resources.files("kailin").joinpath("data/pubmedqa/test_ground_truth.json")
    data = json.loads(ref.read_text(encoding="utf-8"))
    return frozenset(int(k) for k in data)


def load_pmid_list(path: str | Path) -> set[int]:
    """PMIDs from a file: one per line (``#`` comments allowed; first token per line), or a JSON
    list / object keyed by PMID."""
    p = Path(path)
    text = read_text_strict(p, "PMID exclusion list")
    s = text.lstrip()
    if s.startswith(("[", "{")):
        try:
            data = json.loads(s)
        except ValueError as exc:
            raise InputError(f"{p}: invalid JSON PMID list ({exc})") from exc
        items = list(data.keys()) if isinstance(data, dict) else list(data)
        try:
            return {int(x) for x in items}
        except (TypeError, ValueError) as exc:
            raise InputError(f"{p}: PMID list holds a non-numeric entry ({exc})") from exc
    out: set[int] = set()
    for i, line in enumerate(text.splitlines(), 1):
        tok = line.split("#", 1)[0].replace(",", " ").split()
        if not tok:
            continue
        if not tok[0].isdigit():
            raise InputError(f"{p}:{i}: {tok[0]!r} is not a PMID (one numeric PMID per line)")
        out.add(int(tok[0]))
    return out
