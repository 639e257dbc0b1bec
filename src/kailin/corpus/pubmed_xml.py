"""Streaming parser for PubMed / MEDLINE XML (``PubmedArticleSet`` and the old ``MedlineCitationSet``).

Files may be gzipped or plain. Memory stays flat: :func:`lxml.etree.iterparse` with a tag filter
hands over one citation at a time, which is cleared (and detached from the root) once read.

Output items are ``("record", dict)`` (keys of :data:`kailin.corpus.schema.CORPUS_SCHEMA`, plus
``_line``, the source line of the citation) and ``("delete", (pmid, version))`` for each PMID of a
``DeleteCitation``.

Bad input:

* a citation that is well-formed XML but unusable (no PMID, non-numeric PMID, no ``Article``) is
  skipped, logged with file and line, and counted (``stats.malformed``);
* a citation that is not well-formed XML makes the fast path fail; the file is then re-read in
  *salvage* mode, which cuts the byte stream at citation boundaries and parses each citation on
  its own, so only the broken citations are lost (again logged and counted);
* a truncated or corrupt gzip stream, a file that ends inside a citation, or a file whose root
  element is not a PubMed/MEDLINE set raises :class:`~kailin.errors.InputError`;
* a file read as UTF-8 (declared so, or declaring no encoding) that holds a byte sequence that is
  not UTF-8 (typically Latin-1 text) raises :class:`~kailin.errors.InputError` naming the byte
  offset: the fault is the file's, not one citation's, so salvaging citation by citation would
  silently drop every citation with an accented letter. With ``salvage=True`` the citations that
  end before that byte are kept and the rest of the file is given up (``stats.salvaged``,
  ``stats.lost_from_byte``).
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lxml import etree

from kailin.corpus.xml_encoding import (  # noqa: F401  (re-exported)
    _encoding_message,
    declared_encoding,
    encoding_error,
    first_invalid_utf8,
    open_binary,
)
from kailin.errors import InputError

log = logging.getLogger(__name__)

_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.\-]*)[\s>/]")
_YEAR_RE = re.compile(r"(\d{4})")
PUBMED_ROOTS = ("PubmedArticleSet", "MedlineCitationSet")


class MeshResolver(Protocol):
    """What ingestion needs from the MeSH vocabulary (``kailin.mesh.load_mesh()`` provides it)."""

    def lookup(self, name_or_ui: str) -> str | None: ...


@dataclass
class ParseStats:
    """Per-file counters (they end up in the corpus manifest)."""

    records: int = 0
    deleted: int = 0
    malformed: int = 0
    books_skipped: int = 0
    unresolved_mesh: int = 0
    unresolved_names: dict[str, int] = field(default_factory=dict)
    malformed_positions: list[str] = field(default_factory=list)
    #: set when an encoding error cut the file short (``salvage=True``): the records kept
    #: (those ending before the bad byte) and the byte offset from which the file was lost
    salvaged: int | None = None
    lost_from_byte: int | None = None

    def note_malformed(self, where: str, why: str) -> None:
        self.malformed += 1
        if len(self.malformed_positions) < 100:
            self.malformed_positions.append(f"{where}: {why}")
        log.warning("skipping malformed record at %s: %s", where, why)

    def note_unresolved(self, name: str) -> None:
        self.unresolved_mesh += 1
        if len(self.unresolved_names) < 1000 or name in self.unresolved_names:
            self.unresolved_names[name] = self.unresolved_names.get(name, 0) + 1


class MalformedRecord(ValueError):
    """A citation that cannot be turned into a record."""




def _read_error(path: Path, exc: BaseException) -> InputError:
    return InputError(
        f"{path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); nothing of it was "
        "ingested. Download it again (check it against NLM's .md5) and re-run the same command."
    )


def detect_root(path: Path) -> str:
    """The root element name of an XML file; :class:`InputError` when it is not PubMed XML."""
    try:
        with open_binary(path) as fh:
            head = fh.read(65536)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_error(path, exc) from exc
    pos = 0
    while True:
        m = _ROOT_RE.search(head, pos)
        if m is None:
            raise InputError(
                f"{path}: not PubMed XML (no root element found in the first 64 KiB); expected "
                f"one of {', '.join(PUBMED_ROOTS)}"
            )
        # skip <?xml ...?> and <!DOCTYPE ...> (the regex only matches names after a bare '<')
        name = m.group(1).decode("ascii", "replace")
        if head[m.start() + 1 : m.start() + 2] not in (b"?", b"!"):
            break
        pos = m.end()
    if name not in PUBMED_ROOTS:
        raise InputError(
            f"{path}: not PubMed XML: the root element is <{name}>, expected one of "
            f"{', '.join(PUBMED_ROOTS)} (PubMed baseline/update files or an efetch result)"
        )
    return name


# --------------------------------------------------------------------------- field extraction
_LAYOUT_RE = re.compile(r"\s*\n\s*")


def tidy_layout(text: str) -> str:
    """``text`` with the source file's line layout taken out: each run of whitespace that holds a
    line break *and* other whitespace (a pretty-printed XML's newline plus indentation, as in
    ``fast-acting &#946;\\n\\t\\t<sub>2</sub>``) becomes one space. A lone line break is
    kept: it separates the labelled sections of a structured abstract. For text parsed before
    the parser did this itself (``kailin corpus show`` applies it)."""
    if "\n" not in text:
        return text
    return _LAYOUT_RE.sub(lambda m: "\n" if m.group(0) == "\n" else " ", text)


# Single passes over child elements (no ElementPath, which runs in Python): this is the hot path.
def _text(el: Any) -> str:
    """The element's text, stripped; a whitespace run holding a line break (XML layout, never
    content: PubMed's text has no line breaks of its own) becomes one space."""
    if el is None:
        return ""
    if len(el) == 0:
        t = el.text
        t = t.strip() if t else ""
    else:
        t = "".join(el.itertext()).strip()
    return _LAYOUT_RE.sub(" ", t) if "\n" in t else t


def _year(pub_date: Any) -> int | None:
    if pub_date is None:
        return None
    y = None
    for ch in pub_date:
        if ch.tag == "Year" or ch.tag == "MedlineDate":
            y = ch.text
            break
    if not y:
        return None
    y = y.strip()
    if len(y) == 4 and y.isdigit():
        return int(y)
    m = _YEAR_RE.search(y)
    return int(m.group(1)) if m else None


def _abstract(ab: Any) -> str | None:
    if ab is None:
        return None
    parts = [p for p in ab if p.tag == "AbstractText"]
    if not parts:
        return None
    if len(parts) == 1:
        return _text(parts[0])
    out = []
    for p in parts:
        label = p.get("Label")
        txt = _text(p)
        if label and label != "UNASSIGNED":
            out.append(f"{label}: {txt}" if txt else f"{label}:")
        elif txt:
            out.append(txt)
    return "\n".join(out)


def _mesh(
    hl: Any, resolver: MeshResolver | None, stats: ParseStats
) -> tuple[list[str], list[bool], list[dict]]:
    uis: list[str] = []
    majors: list[bool] = []
    headings: list[dict] = []
    if hl is None:
        return uis, majors, headings
    for h in hl:
        d = None
        quals = []
        any_qmajor = False
        for x in h:
            if x.tag == "DescriptorName":
                d = x
            elif x.tag == "QualifierName":
                qname = (x.text or "").strip()
                qui = x.get("UI")
                if qui is None and qname and resolver is not None:
                    qui = resolver.lookup(qname)
                qmajor = x.get("MajorTopicYN") == "Y"
                any_qmajor = any_qmajor or qmajor
                quals.append({"ui": qui, "name": qname, "major": qmajor})
        if d is None:
            continue
        name = (d.text or "").strip()
        ui = d.get("UI")
        if ui is None and name and resolver is not None:
            ui = resolver.lookup(name)
        if ui is None and name:
            stats.note_unresolved(name)
        dmajor = d.get("MajorTopicYN") == "Y"
        headings.append({"ui": ui, "name": name, "major": dmajor, "qualifiers": quals})
        if ui is not None:
            uis.append(ui)
            # PubMed's [majr] semantics: the heading is a major topic when the descriptor or
            # any of its qualifiers is starred
            majors.append(dmajor or any_qmajor)
    return uis, majors, headings


def parse_citation(
    el: Any,
    *,
    medline_set: bool,
    resolver: MeshResolver | None,
    stats: ParseStats,
    source_file: str,
) -> dict:
    """One ``PubmedArticle`` (or, for ``MedlineCitationSet``, ``MedlineCitation``) -> record."""
    mc = None
    pubmed_data = None
    if medline_set:
        mc = el
    else:
        for ch in el:
            if ch.tag == "MedlineCitation":
                mc = ch
            elif ch.tag == "PubmedData":
                pubmed_data = ch
    if mc is None:
        raise MalformedRecord("no MedlineCitation element")
    pmid_el = article = hl = chem_list = None
    kw_lists = []
    for ch in mc:
        tag = ch.tag
        if tag == "PMID":
            pmid_el = ch
        elif tag == "Article":
            article = ch
        elif tag == "MeshHeadingList":
            hl = ch
        elif tag == "ChemicalList":
            chem_list = ch
        elif tag == "KeywordList":
            kw_lists.append(ch)
    if pmid_el is None or not (pmid_el.text or "").strip():
        raise MalformedRecord("no PMID")
    ptxt = pmid_el.text.strip()
    if not ptxt.isdigit():
        raise MalformedRecord(f"PMID {ptxt!r} is not a number")
    if article is None:
        raise MalformedRecord(f"PMID {ptxt}: no Article element")
    journal = title_el = ab = None
    langs: list[str] = []
    ptypes: list[str] = []
    eloc_doi = None
    for ch in article:
        tag = ch.tag
        if tag == "Journal":
            journal = ch
        elif tag == "ArticleTitle":
            title_el = ch
        elif tag == "Abstract":
            ab = ch
        elif tag == "Language":
            if ch.text:
                langs.append(ch.text.strip())
        elif tag == "ELocationID":
            if eloc_doi is None and ch.get("EIdType") == "doi" and ch.text:
                eloc_doi = ch.text.strip()
        elif tag == "PublicationTypeList":
            ptypes = [(p.text or "").strip() for p in ch]
    jtitle = None
    pub_date = None
    if journal is not None:
        for ch in journal:
            if ch.tag == "Title":
                jtitle = (ch.text or "").strip() or None
            elif ch.tag == "JournalIssue":
                for x in ch:
                    if x.tag == "PubDate":
                        pub_date = x
    doi = None
    if pubmed_data is not None:
        for ch in pubmed_data:
            if ch.tag == "ArticleIdList":
                for a in ch:
                    if a.get("IdType") == "doi" and a.text:
                        doi = a.text.strip()
                        break
    if doi is None:
        doi = eloc_doi
    uis, majors, headings = _mesh(hl, resolver, stats)
    chem = []
    if chem_list is not None:
        for c in chem_list:
            for x in c:
                if x.tag == "NameOfSubstance":
                    chem.append({"ui": x.get("UI"), "name": (x.text or "").strip()})
    return {
        "pmid": int(ptxt),
        "version": _version(pmid_el),
        "title": _text(title_el),
        "abstract": _abstract(ab),
        "mesh_uis": uis,
        "mesh_major": majors,
        "mesh": headings,
        "keywords": [_text(k) for kl in kw_lists for k in kl],
        "chemicals": chem,
        "publication_types": ptypes,
        "journal": jtitle,
        "year": _year(pub_date),
        "language": ";".join(langs) or None,
        "doi": doi,
        "source_file": source_file,
        "_line": el.sourceline or 0,
    }


def _version(pmid_el: Any) -> int:
    """``<PMID Version="N">``: NLM's version of the citation (1 when absent or not a number).

    NLM's rule: the key of a citation is (PMID, Version); a Version > 1 record is a different
    article (e.g. an updated Cochrane review), not a replacement of Version 1, and a
    ``DeleteCitation`` names the (PMID, Version) it removes."""
    ver = (pmid_el.get("Version") or "").strip()
    return int(ver) if ver.isdigit() and int(ver) > 0 else 1


# --------------------------------------------------------------------------- fast path
def iter_pubmed_xml(
    path: str | Path,
    resolver: MeshResolver | None = None,
    stats: ParseStats | None = None,
) -> Iterator[tuple[str, Any]]:
    """Stream ``("record", dict)`` and ``("delete", (pmid, version))`` items from a PubMed XML file.

    Raises :class:`InputError` for non-PubMed XML and truncated/corrupt files. When the file holds
    ill-formed XML it raises :class:`lxml.etree.XMLSyntaxError` after the items already yielded;
    :func:`iter_pubmed_records` (used by ingestion) then restarts the file in salvage mode.
    """
    path = Path(path)
    stats = stats if stats is not None else ParseStats()
    root_name = detect_root(path)
    medline_set = root_name == "MedlineCitationSet"
    rec_tag = "MedlineCitation" if medline_set else "PubmedArticle"
    tags = (rec_tag, "DeleteCitation", "PubmedBookArticle")
    name = path.name
    try:
        with open_binary(path) as fh:
            ctx = etree.iterparse(
                fh,
                events=("end",),
                tag=tags,
                huge_tree=True,
                resolve_entities=False,
                no_network=True,
                load_dtd=False,
            )
            for _ev, el in ctx:
                tag = el.tag
                if tag == rec_tag:
                    try:
                        rec = parse_citation(
                            el,
                            medline_set=medline_set,
                            resolver=resolver,
                            stats=stats,
                            source_file=name,
                        )
                    except MalformedRecord as exc:
                        stats.note_malformed(f"{path}:{el.sourceline}", str(exc))
                    else:
                        stats.records += 1
                        yield "record", rec
                elif tag == "DeleteCitation":
                    for p in el.iterfind("PMID"):
                        t = (p.text or "").strip()
                        if t.isdigit():
                            stats.deleted += 1
                            yield "delete", (int(t), _version(p))
                        else:
                            stats.note_malformed(
                                f"{path}:{p.sourceline}", f"DeleteCitation PMID {t!r}"
                            )
                else:
                    stats.books_skipped += 1
                el.clear(keep_tail=True)
                parent = el.getparent()
                if parent is not None:
                    while el.getprevious() is not None:
                        del parent[0]
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _read_error(path, exc) from exc
    except OSError as exc:
        raise _read_error(path, exc) from exc


# --------------------------------------------------------------------------- salvage path
def iter_pubmed_xml_salvage(
    path: str | Path,
    resolver: MeshResolver | None = None,
    stats: ParseStats | None = None,
    chunk_size: int = 1 << 20,
    stop_at: int | None = None,
) -> Iterator[tuple[str, Any]]:
    """Cut the byte stream at citation boundaries and parse each citation on its own, so an
    ill-formed citation loses only itself. Slower than the fast path; used only after it failed.

    ``stop_at``: read only the bytes before this offset (of the un-gzipped stream): the
    citations that end before it; the rest of the file is ignored (an encoding error there)."""
    path = Path(path)
    stats = stats if stats is not None else ParseStats()
    root_name = detect_root(path)
    medline_set = root_name == "MedlineCitationSet"
    rec_tag = b"MedlineCitation" if medline_set else b"PubmedArticle"
    kinds = [rec_tag, b"DeleteCitation", b"PubmedBookArticle"]
    start_res = {k: re.compile(b"<" + k + rb"[\s>]") for k in kinds}
    end_tags = {k: b"</" + k + b">" for k in kinds}
    root_end = b"</" + root_name.encode() + b">"
    name = path.name
    buf = b""
    line = 1  # line number of buf[0]
    eof = False
    saw_root_end = False
    left = stop_at  # bytes still to read when cut short
    try:
        with open_binary(path) as fh:
            while True:
                # find the earliest start of any kind
                best: tuple[int, bytes] | None = None
                for k, rx in start_res.items():
                    m = rx.search(buf)
                    if m and (best is None or m.start() < best[0]):
                        best = (m.start(), k)
                end_pos = -1
                if best is not None:
                    end_pos = buf.find(end_tags[best[1]], best[0])
                if best is None or end_pos < 0:
                    if eof and stop_at is not None:
                        break  # cut short: a citation unfinished at the cut is lost with the rest
                    if eof:
                        if best is not None:
                            at = line + buf.count(b"\n", 0, best[0])
                            raise InputError(
                                f"{path}: the file ends inside a citation (line {at}): it is "
                                "truncated; nothing of it was ingested. Download it again and re-run."
                            )
                        saw_root_end = root_end in buf
                        break
                    more = fh.read(chunk_size if left is None else min(chunk_size, left))
                    if left is not None:
                        left -= len(more)
                    if not more:
                        eof = True
                    else:
                        # keep the tail; drop consumed prefix only when no start pending
                        if best is None and len(buf) > 4096:
                            cut = len(buf) - 4096
                            saw_root_end = saw_root_end or root_end in buf[:cut]
                            line += buf.count(b"\n", 0, cut)
                            buf = buf[cut:]
                        buf += more
                    continue
                s, kind = best
                e = end_pos + len(end_tags[kind])
                rec_line = line + buf.count(b"\n", 0, s)
                chunk = buf[s:e]
                line = rec_line + chunk.count(b"\n")
                buf = buf[e:]
                try:
                    el = etree.fromstring(
                        chunk, parser=etree.XMLParser(resolve_entities=False, huge_tree=True)
                    )
                except etree.XMLSyntaxError as exc:
                    stats.note_malformed(f"{path}:{rec_line}", f"ill-formed XML ({exc})")
                    continue
                if kind == rec_tag:
                    try:
                        rec = parse_citation(
                            el,
                            medline_set=medline_set,
                            resolver=resolver,
                            stats=stats,
                            source_file=name,
                        )
                    except MalformedRecord as exc:
                        stats.note_malformed(f"{path}:{rec_line}", str(exc))
                        continue
                    rec["_line"] = rec_line
                    stats.records += 1
                    yield "record", rec
                elif kind == b"DeleteCitation":
                    for p in el.iterfind("PMID"):
                        t = (p.text or "").strip()
                        if t.isdigit():
                            stats.deleted += 1
                            yield "delete", (int(t), _version(p))
                else:
                    stats.books_skipped += 1
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise _read_error(path, exc) from exc
    if not saw_root_end and stop_at is None:
        raise InputError(
            f"{path}: no closing </{root_name}>: the file is truncated; nothing of it was "
            "ingested. Download it again and re-run."
        )


def iter_pubmed_records(
    path: str | Path,
    resolver: MeshResolver | None = None,
    stats: ParseStats | None = None,
    salvage: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Fast path with automatic fallback to salvage mode on ill-formed XML.

    The fallback restarts the file from the beginning, so callers must treat a file's items as
    a unit: ingestion stages them and commits the file only when this iterator completes; on
    restart it receives a ``("restart", None)`` item and discards what it had buffered.

    A file that is not UTF-8 where it is read as UTF-8 raises :class:`InputError` (byte offset
    and line named); with ``salvage`` its citations before the bad byte are kept instead
    (``stats.salvaged``, ``stats.lost_from_byte``).
    """
    path = Path(path)
    stats = stats if stats is not None else ParseStats()
    try:
        yield from iter_pubmed_xml(path, resolver, stats)
        return
    except etree.XMLSyntaxError as exc:
        try:
            bad = encoding_error(path)
        except (OSError, EOFError, zlib.error) as exc2:
            raise _read_error(path, exc2) from exc2
        if bad is not None and not salvage:
            raise InputError(_encoding_message(path, bad)) from None
        if bad is None:
            log.warning("%s: ill-formed XML (%s); re-reading it record by record", path, exc)
    # the fast path's partial counts are discarded along with its items
    for k, v in vars(ParseStats()).items():
        setattr(stats, k, v)
    yield "restart", None
    if bad is None:
        yield from iter_pubmed_xml_salvage(path, resolver, stats)
        return
    log.warning(
        "%s: not UTF-8 at byte %d (line %d); --salvage: keeping the records before it, the "
        "rest of the file is lost", path, bad[0], bad[1],
    )
    yield from iter_pubmed_xml_salvage(path, resolver, stats, stop_at=bad[0])
    stats.salvaged = stats.records
    stats.lost_from_byte = bad[0]
