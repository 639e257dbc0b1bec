"""Information content of MeSH descriptors from annotation frequencies.

``df(x)`` is how many documents descriptor ``x`` annotates. Two families of IC are computed:

* **per category** (KAILIN): for a top-level category ``c`` (``C04``) and a descriptor ``m`` in it,
  ``p_c(x) = df(x) / Σ_{y in c} df(y)`` and ``IC_c(m) = -log10 Σ_{x in D(m), x in c} p_c(x)``,
  where ``D(m)`` is the set of descriptors strictly below one of ``m``'s tree numbers. The
  authors' code leaves ``m`` out of ``D(m)`` (so every leaf has IC 0: ``faithful``); the corrected
  form counts ``m`` itself and adds a smoothing count to every descriptor so that unseen
  descriptors get a finite IC.
* **global** (Resnik's classical IC over the whole vocabulary, ``m`` and a smoothing count
  included), used by the classical measures.

``MaxIC_c`` is the largest ``IC_c`` over the descriptors of ``c``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from kailin.errors import InputError
from kailin.io import read_text_strict
from kailin.mesh.hierarchy import MeshHierarchy


@dataclass
class CategoryIC:
    """Dense ``ic[descriptor, category]`` (NaN where the descriptor is not in the category) and
    ``max_ic[category]``."""

    ic: np.ndarray
    max_ic: np.ndarray
    include_self: bool
    smoothing: float

    def to_table(self) -> pa.Table:
        d, c = np.nonzero(~np.isnan(self.ic))
        return pa.table({"desc": d.astype(np.int32), "cat": c.astype(np.int32),
                         "ic": self.ic[d, c]})

    @classmethod
    def from_table(cls, t: pa.Table, n_desc: int, n_cat: int, include_self: bool,
                   smoothing: float) -> CategoryIC:
        ic = np.full((n_desc, n_cat), np.nan)
        d = t.column("desc").to_numpy()
        c = t.column("cat").to_numpy()
        ic[d, c] = t.column("ic").to_numpy()
        return cls(ic, _max_ic(ic), include_self, smoothing)


def _max_ic(ic: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        m = np.nanmax(np.where(np.isnan(ic), -np.inf, ic), axis=0)
    return np.where(np.isfinite(m), m, 0.0)


def category_ic(h: MeshHierarchy, df: np.ndarray, include_self: bool = False,
                smoothing: float = 0.0) -> CategoryIC:
    """Per-category IC as defined in the module docstring (``faithful`` = no self, no
    smoothing)."""
    n = len(h.vocab)
    counts = df.astype(np.float64) + smoothing
    has_cat = h.desc_cat
    z = counts @ has_cat  # Σ df over descriptors of each category
    ic = np.full(has_cat.shape, np.nan)
    for i in range(n):
        cats = np.nonzero(has_cat[i])[0]
        if len(cats) == 0:
            continue
        xs = h.descendant_ids(i)
        if include_self and (len(xs) == 0 or not np.any(xs == i)):
            xs = np.append(xs, i)
        if len(xs):
            s = (counts[xs] @ has_cat[np.ix_(xs, cats)]) / np.where(z[cats] > 0, z[cats], 1)
        else:
            s = np.zeros(len(cats))
        with np.errstate(divide="ignore"):
            v = np.where((s > 0) & (s <= 1), -np.log10(np.where(s > 0, s, 1)), 0.0)
        ic[i, cats] = v
    return CategoryIC(ic, _max_ic(ic), include_self, smoothing)


def global_ic(h: MeshHierarchy, df: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Resnik IC over the whole vocabulary: ``-log10(Σ_{x in {m} ∪ D(m)} (df(x)+s) / total)``."""
    n = len(h.vocab)
    counts = df.astype(np.float64) + smoothing
    total = counts.sum()
    out = np.zeros(n)
    for i in range(n):
        xs = h.descendant_ids(i)
        s = counts[i] + counts[xs[xs != i]].sum()
        out[i] = -math.log10(s / total) if s > 0 else 0.0
    return out


# --- frequencies ------------------------------------------------------------------------------
def read_frequency_table(path: str | Path, vocab) -> tuple[np.ndarray, dict]:
    """Descriptor document frequencies from a tab-separated table with a ``doc_freq`` column and
    either a UI column (``descriptor_ui``, ``descriptor_ui_mesh2024`` or ``ui``) or a name column
    (``descriptor_name``); rows of the same UI are summed. Returns ``(df array, stats)``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such frequency file")
    df = np.zeros(len(vocab), dtype=np.float64)
    stats = {"rows": 0, "resolved": 0, "unresolved": 0, "skipped_type": 0}
    with io.StringIO(read_text_strict(path, "frequency file"), newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        cols = reader.fieldnames or []
        ui_col = next((c for c in ("descriptor_ui", "descriptor_ui_mesh2024", "ui", "UI")
                       if c in cols), None)
        name_col = next((c for c in ("descriptor_name", "name") if c in cols), None)
        freq_col = next((c for c in ("doc_freq", "df", "count", "frequency") if c in cols), None)
        if freq_col is None or (ui_col is None and name_col is None):
            raise InputError(
                f"{path}: expected a tab-separated table with a header holding 'doc_freq' and "
                f"'descriptor_ui' (or 'descriptor_name'); found columns {cols}"
            )
        for lineno, row in enumerate(reader, 2):
            stats["rows"] += 1
            if row.get("type") not in (None, "", "mesh_heading"):
                stats["skipped_type"] += 1
                continue
            try:
                value = float(row[freq_col])
            except (TypeError, ValueError):
                raise InputError(
                    f"{path}:{lineno}: {freq_col}={row.get(freq_col)!r} is not a number"
                ) from None
            ui = None
            if ui_col and row.get(ui_col):
                ui = vocab.lookup(row[ui_col])
            if ui is None and name_col and row.get(name_col):
                ui = vocab.lookup(row[name_col])
            if ui is None:
                stats["unresolved"] += 1
                continue
            stats["resolved"] += 1
            df[vocab.id_of[ui]] += value
    return df, stats


def frequencies_from_corpus(corpus_dir: str | Path, vocab) -> tuple[np.ndarray, dict]:
    """Document frequencies of descriptors over a corpus of Parquet shards (``mesh_uis``): each
    descriptor counted once per record."""
    from kailin.io import connect_duckdb, parquet_files

    # a corpus folder (kailin.corpus.store) keeps its shards under data/; read here without the
    # corpus package, which sits above MeSH (it selects records by descriptor)
    data = Path(corpus_dir) / "data"
    if not data.is_dir():
        raise InputError(f"{corpus_dir}: not a corpus directory: no data/ folder inside "
                         "(create one with `kailin ingest`)")
    files = [str(f) for f in parquet_files(data)]
    if not files:
        raise InputError(f"{corpus_dir}: corpus has no shards")
    con = connect_duckdb()  # a group-by over every (record, descriptor): spill, don't grow
    rows = con.execute(
        "select ui, count(distinct pmid) from (select pmid, unnest(mesh_uis) as ui "
        "from read_parquet($files)) group by ui",
        {"files": files},
    ).fetchall()
    n_docs = con.execute("select count(*) from read_parquet($files)", {"files": files}).fetchone()
    df = np.zeros(len(vocab), dtype=np.float64)
    unresolved = 0
    for ui, c in rows:
        i = vocab.id_of.get(ui)
        if i is None:
            unresolved += 1
        else:
            df[i] += c
    return df, {"documents": int(n_docs[0]), "descriptors": len(rows), "unresolved": unresolved}
