"""Readers for records that arrive already parsed.

* JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``) and Parquet: one object/row per article with
  ``pmid``, ``title``, ``abstract`` and MeSH given as ``mesh`` (a list of descriptor UIs, of names,
  or of ``{"UI": ..., "name": ..., "major": ...}`` objects as in the KAILIN authors' JSON) or as
  ``mesh_uis``; optional ``year``, ``journal``, ``keywords``, ``doi``, ``language``.
* PubMedQA ``ori_pqal.json``: an object keyed by PMID; ``MESHES`` are descriptor *names* and are
  resolved to UIs with the MeSH vocabulary (unresolved names are counted).
* NLM's MeSH-indexing benchmark ``*.TiAbMe`` (``pmid|t|title``, ``pmid|a|abstract``,
  ``pmid|m|entry|entry|...`` with lower-cased ``descriptor!qualifier*`` entries).

Every reader yields the same items as :mod:`kailin.corpus.pubmed_xml`: ``("record", dict)``.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from kailin.corpus.pubmed_xml import MeshResolver, ParseStats
from kailin.errors import InputError
from kailin.io import read_text_strict

_UI_RE = re.compile(r"^[DCQ]\d{6,9}$")


def _resolve(name_or_ui: str, resolver: MeshResolver | None, stats: ParseStats) -> str | None:
    s = name_or_ui.strip()
    if _UI_RE.match(s):
        return s
    ui = resolver.lookup(s) if resolver is not None and s else None
    if ui is None and s:
        stats.note_unresolved(s)
    return ui


def _headings_from_json(
    mesh: Any, resolver: MeshResolver | None, stats: ParseStats
) -> tuple[list[str], list[bool], list[dict]]:
    uis: list[str] = []
    majors: list[bool] = []
    heads: list[dict] = []
    if mesh is None:
        return uis, majors, heads
    if isinstance(mesh, str):
        mesh = [m for m in re.split(r"[;|]", mesh) if m.strip()]
    for m in mesh:
        if isinstance(m, dict):
            raw = m.get("UI") or m.get("ui") or m.get("DescriptorUI") or ""
            name = m.get("name") or m.get("Name") or m.get("DescriptorName") or m.get("term") or ""
            major_v = m.get("major", m.get("MajorTopicYN", m.get("major_topic", False)))
            major = major_v in (True, "Y", "y", "yes", 1, "true")
            ui = _resolve(raw, None, stats) if raw else _resolve(str(name), resolver, stats)
            quals = [
                {
                    "ui": q.get("UI") or q.get("ui"),
                    "name": q.get("name") or q.get("Name") or "",
                    "major": q.get("major", q.get("MajorTopicYN")) in (True, "Y"),
                }
                for q in (m.get("qualifiers") or m.get("Qualifiers") or [])
                if isinstance(q, dict)
            ]
        else:
            name = str(m)
            major = False
            ui = _resolve(name, resolver, stats)
            name = "" if ui == name.strip() else name
            quals = []
        heads.append({"ui": ui, "name": str(name) or None, "major": major, "qualifiers": quals})
        if ui is not None:
            uis.append(ui)
            majors.append(major)
    return uis, majors, heads


def _str_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return [str(x) for x in v]


def _int_or_none(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(str(v)[:4]) if not isinstance(v, int) else v
    except ValueError:
        return None


def record_from_mapping(
    obj: dict, resolver: MeshResolver | None, stats: ParseStats, source_file: str, line: int
) -> dict:
    """A corpus record from a pre-parsed mapping; ValueError when it is unusable."""
    pmid = obj.get("pmid", obj.get("PMID"))
    if pmid is None or not str(pmid).strip().isdigit():
        raise ValueError(f"pmid {pmid!r} missing or not a number")
    if "mesh_uis" in obj and obj.get("mesh") is None:
        mesh_in: Any = obj["mesh_uis"]
    else:
        mesh_in = obj.get("mesh", obj.get("MESHES", obj.get("mesh_terms")))
    uis, majors, heads = _headings_from_json(mesh_in, resolver, stats)
    if obj.get("mesh_major") is not None and len(obj["mesh_major"]) == len(uis):
        majors = [bool(x) for x in obj["mesh_major"]]
    abstract = obj.get("abstract")
    if isinstance(abstract, list):
        abstract = "\n".join(str(a) for a in abstract)
    return {
        "pmid": int(str(pmid).strip()),
        "version": int(obj.get("version") or 1),
        "title": str(obj.get("title") or ""),
        "abstract": abstract if abstract is None else str(abstract),
        "mesh_uis": uis,
        "mesh_major": majors,
        "mesh": heads,
        "keywords": _str_list(obj.get("keywords")),
        "chemicals": [],
        "publication_types": _str_list(obj.get("publication_types")),
        "journal": obj.get("journal"),
        "year": _int_or_none(obj.get("year")),
        "language": obj.get("language"),
        "doi": obj.get("doi"),
        "source_file": source_file,
        "_line": line,
    }


def iter_jsonl(
    path: Path, resolver: MeshResolver | None, stats: ParseStats
) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                    rec = record_from_mapping(obj, resolver, stats, path.name, i)
                except (ValueError, TypeError) as exc:
                    stats.note_malformed(f"{path}:{i}", str(exc))
                    continue
                stats.records += 1
                yield "record", rec
    except (EOFError, OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: unreadable or truncated ({exc}); nothing of it was ingested"
        ) from exc


def iter_parquet(
    path: Path, resolver: MeshResolver | None, stats: ParseStats
) -> Iterator[tuple[str, Any]]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    if "pmid" not in pf.schema_arrow.names:
        raise InputError(
            f"{path}: Parquet input needs a 'pmid' column (has {pf.schema_arrow.names})"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            try:
                rec = record_from_mapping(obj, resolver, stats, path.name, row)
            except (ValueError, TypeError) as exc:
                stats.note_malformed(f"{path}:row {row}", str(exc))
                continue
            stats.records += 1
            yield "record", rec


def is_pubmedqa_json(obj: Any) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    v = next(iter(obj.values()))
    return isinstance(v, dict) and "CONTEXTS" in v


def iter_pubmedqa(
    path: Path, resolver: MeshResolver | None, stats: ParseStats
) -> Iterator[tuple[str, Any]]:
    """PubMedQA ``ori_pqal.json`` (also ``ori_pqaa.json``/``ori_pqau.json``): title = the question
    (PubMedQA derives it from the article title), abstract = the labelled contexts plus the
    conclusion (``LONG_ANSWER``) labelled ``CONCLUSIONS``."""
    try:
        data = json.loads(read_text_strict(path, "PubMedQA JSON"))
    except ValueError as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from exc
    if not is_pubmedqa_json(data):
        raise InputError(
            f"{path}: not PubMedQA JSON (expected an object keyed by PMID with CONTEXTS/MESHES)"
        )
    for i, (pmid, v) in enumerate(data.items(), 1):
        try:
            if not str(pmid).isdigit() or not isinstance(v, dict):
                raise ValueError(f"key {pmid!r} is not a PMID with an object value")
            ctx = v.get("CONTEXTS") or []
            labels = v.get("LABELS") or []
            parts = []
            for j, c in enumerate(ctx):
                lab = labels[j] if j < len(labels) else ""
                parts.append(f"{lab}: {c}" if lab and lab != "UNLABELLED" else str(c))
            if v.get("LONG_ANSWER"):
                parts.append(f"CONCLUSIONS: {v['LONG_ANSWER']}")
            uis, majors, heads = _headings_from_json(v.get("MESHES") or [], resolver, stats)
            rec = {
                "pmid": int(pmid),
                "version": 1,
                "title": str(v.get("QUESTION") or ""),
                "abstract": "\n".join(parts) or None,
                "mesh_uis": uis,
                "mesh_major": majors,
                "mesh": heads,
                "keywords": [],
                "chemicals": [],
                "publication_types": [],
                "journal": None,
                "year": _int_or_none(v.get("YEAR")),
                "language": "eng",
                "doi": None,
                "source_file": path.name,
                "_line": i,
            }
        except (ValueError, TypeError) as exc:
            stats.note_malformed(f"{path}:entry {i}", str(exc))
            continue
        stats.records += 1
        yield "record", rec


def _tiabme_record(
    pmid: str,
    d: dict[str, str],
    resolver: MeshResolver | None,
    stats: ParseStats,
    source: str,
    line: int,
) -> dict:
    if not pmid.isdigit():
        raise ValueError(f"PMID {pmid!r} is not a number")
    if "t" not in d:
        raise ValueError(f"PMID {pmid}: no title line")
    order: list[str] = []
    quals: dict[str, list[dict]] = {}
    major: dict[str, bool] = {}
    for e in (x for x in d.get("m", "").split("|") if x):
        desc, _, qual = e.partition("!")
        starred = e.endswith("*")
        desc = desc.rstrip("*")
        qual = qual.rstrip("*")
        if desc not in quals:
            order.append(desc)
            quals[desc] = []
            major[desc] = False
        # "desc*" = major descriptor; "desc!qual*" = major qualifier: both make the heading major
        major[desc] = major[desc] or starred
        if qual:
            qui = resolver.lookup(qual) if resolver is not None else None
            quals[desc].append({"ui": qui, "name": qual, "major": starred})
    uis: list[str] = []
    majors: list[bool] = []
    heads: list[dict] = []
    for desc in order:
        ui = _resolve(desc, resolver, stats)
        heads.append({"ui": ui, "name": desc, "major": major[desc], "qualifiers": quals[desc]})
        if ui is not None:
            uis.append(ui)
            majors.append(major[desc])
    return {
        "pmid": int(pmid),
        "version": 1,
        "title": d["t"],
        "abstract": d.get("a") or None,
        "mesh_uis": uis,
        "mesh_major": majors,
        "mesh": heads,
        "keywords": [],
        "chemicals": [],
        "publication_types": [],
        "journal": None,
        "year": None,
        "language": "eng",
        "doi": None,
        "source_file": source,
        "_line": line,
    }


def iter_tiabme(
    path: Path, resolver: MeshResolver | None, stats: ParseStats
) -> Iterator[tuple[str, Any]]:
    cur: str | None = None
    cur_line = 0
    fields: dict[str, str] = {}

    def flush() -> Iterator[tuple[str, Any]]:
        if cur is None:
            return
        try:
            rec = _tiabme_record(cur, fields, resolver, stats, path.name, cur_line)
        except ValueError as exc:
            stats.note_malformed(f"{path}:{cur_line}", str(exc))
            return
        stats.records += 1
        yield "record", rec

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                parts = line.split("|", 2)
                if len(parts) < 3 or parts[1] not in ("t", "a", "m"):
                    stats.note_malformed(f"{path}:{i}", "not a 'pmid|t|...', '|a|' or '|m|' line")
                    continue
                pmid, kind, rest = parts
                if pmid != cur:
                    yield from flush()
                    cur, cur_line, fields = pmid, i, {}
                fields[kind] = rest
            yield from flush()
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
