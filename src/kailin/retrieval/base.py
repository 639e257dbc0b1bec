"""The index interface shared by every retrieval backend.

An index directory holds

* ``meta.json``: kind, backend, model, parameters, counts and the corpus manifest hash it was
  built from (so a stale index is detected);
* ``docstore.arrow``: an uncompressed Arrow IPC file with one row per indexed document (``pmid``,
  ``title``, ``abstract``, ``mesh_uis``, ``year``). It is memory-mapped when loaded, so hits carry
  their text and MeSH UIs without rereading the corpus and without loading it all into RAM;
* the backend's files (``bm25/``, ``dense.faiss``, ``qdrant/``).

Row ``i`` of the docstore is document id ``i`` in every backend. Backends implement one method,
:meth:`Index._search_rows`, which returns the best ``n`` row ids (``-1`` padded) and scores per
query among the allowed rows; :meth:`Index.search` adds the options the pipeline needs (top-k,
leaving the source document out, a year range) and turns rows into :class:`Hit` objects.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import kailin
from kailin.errors import InputError, KailinError
from kailin.io import write_json_atomic

log = logging.getLogger(__name__)

#: option values that mean "the default" (not recorded in settings)
_DEFAULTS: dict[str, Any] = {"faiss_index": "auto", "model": "default", "shards": 1}

META_FILE = "meta.json"
DOCSTORE_FILE = "docstore.arrow"
FORMAT_VERSION = 1

DOCSTORE_SCHEMA = pa.schema(
    [
        ("pmid", pa.int64()),
        ("title", pa.string()),
        ("abstract", pa.string()),
        ("mesh_uis", pa.list_(pa.string())),
        ("year", pa.int32()),
    ]
)
#: corpus columns an index reads
INDEX_COLUMNS = [f.name for f in DOCSTORE_SCHEMA]


class StaleIndexError(KailinError):
    """The index was built from a different version of the corpus."""


@dataclass(frozen=True)
class Hit:
    """One retrieved document."""

    pmid: int
    score: float
    title: str
    abstract: str
    mesh_uis: list[str] = field(default_factory=list)
    year: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pmid": self.pmid,
            "score": self.score,
            "title": self.title,
            "abstract": self.abstract,
            "mesh_uis": list(self.mesh_uis),
            "year": self.year,
        }


def doc_text(title: str | None, abstract: str | None) -> str:
    """The text indexed for a document: title and abstract."""
    title = (title or "").strip()
    abstract = (abstract or "").strip()
    if title and abstract:
        return f"{title} {abstract}"
    return title or abstract


class DocStore:
    """Memory-mapped docstore: row id -> PMID, title, abstract, MeSH UIs, year."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise InputError(f"{path}: index docstore missing (rebuild with `kailin index build`)")
        self._source = pa.memory_map(str(path), "r")
        self.table = pa.ipc.open_file(self._source).read_all()
        self.pmids = self.table.column("pmid").to_numpy().astype(np.int64, copy=False)
        #: rows whose record carries at least one MeSH descriptor (what the MeSH score needs)
        self.has_mesh = (
            pc.fill_null(pc.list_value_length(self.table.column("mesh_uis")), 0)
            .to_numpy().astype(bool)
        )
        years = self.table.column("year")
        self.years = years.fill_null(-(2**31)).to_numpy().astype(np.int32, copy=False)
        # the file's record batches (zero-copy views of the map) and where each one starts:
        # hits() takes rows batch by batch, because Table.take on a many-chunk table
        # concatenates every string column first (~5 ms a query at 50k documents, growing)
        self._batches = self.table.to_batches()
        self._starts = np.cumsum([0, *(b.num_rows for b in self._batches)])

    def __len__(self) -> int:
        return self.table.num_rows

    def year_mask(self, years: tuple[int | None, int | None] | None) -> np.ndarray | None:
        """Boolean mask of rows whose year lies in ``years`` (inclusive; None = open end)."""
        if years is None:
            return None
        lo, hi = years
        if lo is None and hi is None:
            return None
        mask = self.years > -(2**31)  # a document with no year never matches a year filter
        if lo is not None:
            mask &= self.years >= int(lo)
        if hi is not None:
            mask &= self.years <= int(hi)
        return mask

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits for the given row ids (in the given order)."""
        if len(rows) == 0:
            return []
        sub = self._take(np.asarray(rows, dtype=np.int64))
        return [
            Hit(
                pmid=int(sub["pmid"][i]),
                score=float(scores[i]),
                title=sub["title"][i] or "",
                abstract=sub["abstract"][i] or "",
                mesh_uis=list(sub["mesh_uis"][i] or []),
                year=sub["year"][i],
            )
            for i in range(len(rows))
        ]


    def _take(self, rows: np.ndarray) -> dict[str, list]:
        """Columns of ``rows`` (in that order) as lists, taken from each record batch that holds
        some of them."""
        which = np.searchsorted(self._starts, rows, side="right") - 1
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"docstore row out of range (0..{len(self) - 1})")
        out: dict[str, list] = {name: [None] * len(rows) for name in self.table.column_names}
        for b in np.unique(which):
            at = np.nonzero(which == b)[0]
            part = self._batches[b].take(pa.array(rows[at] - self._starts[b])).to_pydict()
            for name, values in part.items():
                col = out[name]
                for j, v in zip(at.tolist(), values, strict=True):
                    col[j] = v
        return out


class DocStoreWriter:
    """Stream docstore batches to an Arrow IPC file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, DOCSTORE_SCHEMA)
        self.count = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        table = table.select(INDEX_COLUMNS).cast(DOCSTORE_SCHEMA)
        self._writer.write_table(table)
        self.count += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def _norm_settings(settings: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in settings.items() if v is not None and _DEFAULTS.get(k) != v}
    return json.loads(json.dumps(clean, default=str, sort_keys=True))


def _normalise_years(
    years: tuple[int | None, int | None] | None,
) -> tuple[int | None, int | None] | None:
    if years is None:
        return None
    if len(years) != 2:
        raise InputError(f"year range must be (from, to), got {years!r}")
    lo, hi = years
    if lo is not None and hi is not None and lo > hi:
        raise InputError(f"year range {lo}-{hi} is empty: the first year is after the second")
    return (lo, hi)


class Index(ABC):
    """A loaded index. Use :func:`kailin.retrieval.build_index` and
    :func:`kailin.retrieval.load_index` to get one."""

    kind: ClassVar[str] = ""

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.docstore = DocStore(self.root / DOCSTORE_FILE)

    # -- backend hooks ------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def _build_backend(
        cls,
        batches: Iterator[tuple[pa.Table, list[str]]],
        num_docs: int,
        tmp_dir: Path,
        opts: dict[str, Any],
    ) -> dict[str, Any]:
        """Consume ``(batch, texts)`` pairs (all rows, in docstore order), write the backend's
        files under ``tmp_dir`` and return the parameters to record in ``meta.json``."""

    @abstractmethod
    def _search_rows(
        self,
        queries: list[str],
        n: int,
        mask: np.ndarray | None,
        years: tuple[int | None, int | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``n`` rows per query among rows where ``mask`` is true (all rows when None;
        ``mask`` is the docstore's view of the ``years`` range, which backends that filter on
        their own side, like Qdrant, use instead): int64 ids ``[len(queries), n]`` (-1 = none)
        and float32 scores, best first."""

    # -- public API ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.docstore)

    def search(
        self,
        queries: Sequence[str],
        k: int = 4,
        exclude_pmids: Sequence[int | None] | None = None,
        years: tuple[int | None, int | None] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each query, searched as one batch.

        ``exclude_pmids[i]`` (when given and not None) is left out of query ``i``'s hits: the
        source document of a generated question must not be its own context. ``years`` keeps
        documents published in ``[from, to]`` (inclusive; either end may be None).
        """
        return self.search_with_mesh(queries, k, exclude_pmids, years, require_mesh=False)[0]

    def search_with_mesh(
        self,
        queries: Sequence[str],
        k: int = 4,
        exclude_pmids: Sequence[int | None] | None = None,
        years: tuple[int | None, int | None] | None = None,
        *,
        require_mesh: bool = True,
        max_passed_over: int = 16,
    ) -> tuple[list[list[Hit]], list[int]]:
        """Like :meth:`search`, but with ``require_mesh`` the top ``k`` hits *that carry MeSH*:
        hits without descriptors (recent records not yet indexed by NLM) are passed over, up to
        ``max_passed_over`` of them per query (the bound: at most ``k + max_passed_over`` hits
        are looked at). Returns the hits and, per query, how many hits were passed over."""
        queries = [q if isinstance(q, str) else str(q) for q in queries]
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if max_passed_over < 0:
            raise InputError(f"max_passed_over must be >= 0, got {max_passed_over}")
        if exclude_pmids is not None and len(exclude_pmids) != len(queries):
            raise InputError(
                f"exclude_pmids has {len(exclude_pmids)} entries for {len(queries)} queries"
            )
        if not queries:
            return [], []
        years = _normalise_years(years)
        mask = self.docstore.year_mask(years)
        excluding = exclude_pmids is not None and any(p is not None for p in exclude_pmids)
        filtering = require_mesh and not self.docstore.has_mesh.all()
        extra = max_passed_over if filtering else 0
        n = min(k + extra + (1 if excluding else 0), len(self))
        rows, scores = self._search_rows(list(queries), n, mask, years)
        out: list[list[Hit]] = []
        passed: list[int] = []
        for i in range(len(queries)):
            r, s = rows[i], scores[i]
            keep = r >= 0
            if excluding and exclude_pmids[i] is not None:
                keep &= self.docstore.pmids[np.where(r >= 0, r, 0)] != int(exclude_pmids[i])
            r, s = r[keep], s[keep]
            skipped = 0
            if filtering:
                with_mesh = self.docstore.has_mesh[r]
                # keep the first k rows with MeSH; count the MeSH-less rows ranked above the
                # last one kept (or all looked at, when fewer than k were found)
                pos = np.flatnonzero(with_mesh)[:k]
                last = int(pos[-1]) + 1 if len(pos) == k else len(r)
                skipped = int((~with_mesh[:last]).sum())
                r, s = r[pos], s[pos]
            r, s = r[:k], s[:k]
            out.append(self.docstore.hits(r, s))
            passed.append(skipped)
        return out, passed

    def describe(self) -> dict[str, Any]:
        return dict(self.meta)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources (Qdrant's local storage lock)."""

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_fresh(self, corpus_dir: str | Path, on_stale: str = "error") -> bool:
        """Compare the index with the corpus at ``corpus_dir``; ``on_stale`` = error|warn."""
        return check_fresh(self.root, self.meta, corpus_dir, on_stale)


def check_fresh(
    root: Path, meta: dict[str, Any], corpus_dir: str | Path, on_stale: str = "error"
) -> bool:
    from kailin.corpus.reader import open_corpus

    corpus = open_corpus(corpus_dir)
    now = corpus.manifest_hash()
    built = meta.get("corpus", {}).get("manifest_hash")
    if now == built:
        return True
    msg = (
        f"index {root} is stale: it was built from corpus {meta.get('corpus', {}).get('path')} "
        f"with manifest hash {built}, but {corpus_dir} now has hash {now} "
        f"({corpus.num_rows} records vs {meta.get('counts', {}).get('documents')} indexed). "
        f"Rebuild it: kailin index build {corpus_dir} --out {root} "
        f"--kind {meta.get('kind')} --overwrite"
    )
    if on_stale == "error":
        raise StaleIndexError(msg)
    log.warning(msg)
    return False


# -- build / load ---------------------------------------------------------------------------------


def index_identity(index_dir: str | Path) -> dict[str, Any] | None:
    """What an index holds, not where it is: its kind, format, settings, parameters, counts and
    the content hash of the corpus it was built from (the meta file less the corpus's path and
    the kailin version). An index rebuilt from the same corpus with the same settings, or a copy
    of it elsewhere, has the same identity."""
    if not (Path(index_dir) / META_FILE).is_file():
        return None
    meta = read_meta(index_dir)
    return {"format_version": meta.get("format_version"), "kind": meta.get("kind"),
            "settings": meta.get("settings"), "params": meta.get("params"),
            "counts": meta.get("counts"),
            "corpus": (meta.get("corpus") or {}).get("manifest_hash")}


def read_meta(index_dir: str | Path) -> dict[str, Any]:
    root = Path(index_dir)
    path = root / META_FILE
    if not path.exists():
        raise InputError(
            f"{root}: not an index directory (no {META_FILE}); build one with "
            "`kailin index build CORPUS_DIR --out INDEX_DIR`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: unreadable index metadata ({exc}); rebuild the index") from exc


def _iter_corpus(
    corpus: Any, batch_size: int, progress: bool, desc: str
) -> Iterator[tuple[pa.Table, list[str]]]:
    from tqdm.auto import tqdm

    from kailin.progress import enabled as progress_enabled

    columns = [c for c in INDEX_COLUMNS]
    bar = tqdm(total=corpus.num_rows, desc=desc, unit="doc", disable=not progress_enabled(progress))
    try:
        for rb in corpus.iter_batches(columns=columns, batch_size=batch_size):
            table = pa.Table.from_batches([rb])
            titles = table.column("title").to_pylist()
            abstracts = table.column("abstract").to_pylist()
            texts = [doc_text(t, a) for t, a in zip(titles, abstracts, strict=True)]
            yield table, texts
            bar.update(table.num_rows)
    finally:
        bar.close()


def build(
    cls: type[Index],
    corpus_dir: str | Path,
    out_dir: str | Path,
    opts: dict[str, Any],
    *,
    overwrite: bool = False,
    batch_size: int = 1024,
    progress: bool = True,
) -> Index:
    """Build an index of kind ``cls`` from the corpus at ``corpus_dir`` into ``out_dir``.

    The index is written to a temporary sibling directory and renamed into place when complete.
    If ``out_dir`` already holds an index of the same kind and settings built from the same
    corpus version, it is loaded instead (re-running costs nothing).
    """
    from kailin.corpus.reader import open_corpus

    corpus = open_corpus(corpus_dir)
    out = Path(out_dir)
    chash = corpus.manifest_hash()
    num_docs = corpus.num_rows
    if num_docs == 0:
        raise InputError(f"{corpus_dir}: the corpus holds no records; nothing to index")
    # the requested settings, defaults left out so that equal requests compare equal
    settings = {
        "kind": cls.kind,
        **{k: v for k, v in opts.items() if v is not None and _DEFAULTS.get(k) != v},
    }
    if (out / META_FILE).exists():
        meta = read_meta(out)
        old_settings = _norm_settings(meta.get("settings") or {})
        new_settings = _norm_settings(settings)
        same = meta.get("corpus", {}).get("manifest_hash") == chash and old_settings == new_settings
        if same and not overwrite:
            log.info("index %s is up to date (corpus %s); nothing to do", out, chash)
            return _load(out, meta)
        if not overwrite:
            raise InputError(
                f"{out}: already holds an index (corpus hash "
                f"{meta.get('corpus', {}).get('manifest_hash')}, settings {old_settings}) that "
                f"differs from the one requested (corpus hash {chash}, settings {new_settings}); "
                "pass --overwrite to replace it or choose another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not an index directory; choose another --out")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        writer = DocStoreWriter(tmp / DOCSTORE_FILE)

        def batches() -> Iterator[tuple[pa.Table, list[str]]]:
            for table, texts in _iter_corpus(corpus, batch_size, progress, f"index {cls.kind}"):
                writer.write(table)
                yield table, texts

        try:
            params = cls._build_backend(
                batches(),
                num_docs,
                tmp,
                {
                    **opts,
                    "_corpus_hash": chash,
                    # for backends that read the corpus in parallel (sharded BM25): the same
                    # files, in the order the docstore is written
                    "_corpus_files": [str(f) for f in corpus.files()],
                    "_batch_size": batch_size,
                },
            )
        finally:
            writer.close()
        if writer.count != num_docs:
            raise KailinError(
                f"{corpus_dir}: read {writer.count} records but the shards report {num_docs}; "
                "the corpus changed during the build, run it again"
            )
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": cls.kind,
            "kailin_version": kailin.__version__,
            "settings": json.loads(json.dumps(settings, default=str)),
            "params": params,
            "counts": {"documents": writer.count},
            "corpus": {"path": str(Path(corpus_dir).resolve()), "manifest_hash": chash},
        }
        write_json_atomic(tmp / META_FILE, meta)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _load(out, meta)


def _load(root: Path, meta: dict[str, Any]) -> Index:
    from kailin.retrieval.registry import index_class

    cls = index_class(meta.get("kind", ""))
    return cls(root, meta)
