"""A MeSH build: vocabulary + hierarchy + frequencies + information content, saved as a folder.

``MESH_DIR`` layout (all Parquet, written atomically; ``meta.json`` last, so a folder without it
is an unfinished build)::

    descriptors.parquet   ui, name, entry_terms, tree_numbers
    frequencies.parquet   ui, df
    ic_faithful.parquet   desc, cat, ic   (authors' IC: node excluded, no smoothing)
    ic_global.parquet     ic              (IC over the whole vocabulary, node included, +1
                                           smoothing: the default measure and Resnik/Lin/JC)
    meta.json             sources, counts, versions

The package ships a default build (MeSH 2024 + document frequencies over 1.46M PubMed records),
used whenever no ``--mesh`` folder is given.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import kailin
from kailin.errors import InputError
from kailin.io import sha256_file, write_json_atomic, write_parquet_atomic
from kailin.mesh.hierarchy import MeshHierarchy
from kailin.mesh.ic import (
    CategoryIC,
    category_ic,
    frequencies_from_corpus,
    global_ic,
    read_frequency_table,
)
from kailin.mesh.vocabulary import MeshVocabulary, load_vocabulary

GLOBAL_SMOOTHING = 1.0


class Mesh:
    """Everything the similarity measures need, with integer ids and dense arrays."""

    def __init__(self, vocab: MeshVocabulary, df: np.ndarray,
                 ic_faithful: CategoryIC | None = None,
                 ic_global: np.ndarray | None = None, meta: dict | None = None,
                 root: Path | None = None) -> None:
        self.vocab = vocab
        self.hierarchy = MeshHierarchy(vocab)
        self.df = df
        self.meta = meta or {}
        self.root = root
        self._ic_f = ic_faithful
        self._ic_g = ic_global

    # --- IC, computed on first use when not loaded -------------------------------------------
    @property
    def ic_faithful(self) -> CategoryIC:
        if self._ic_f is None:
            self._ic_f = category_ic(self.hierarchy, self.df, include_self=False, smoothing=0.0)
        return self._ic_f

    @cached_property
    def chain_ic(self) -> np.ndarray:
        """Per tree-number node: the largest global IC on its path from the root (for MICA)."""
        from kailin.mesh.measures import chain_max_ic

        return chain_max_ic(self.hierarchy, self.ic_global)

    @property
    def ic_global(self) -> np.ndarray:
        if self._ic_g is None:
            self._ic_g = global_ic(self.hierarchy, self.df, smoothing=GLOBAL_SMOOTHING)
        return self._ic_g

    @cached_property
    def category_masks(self) -> np.ndarray:
        from kailin.mesh._kernels import category_masks

        return category_masks(self.hierarchy.desc_cat)

    # --- vocabulary shortcuts -----------------------------------------------------------------
    @property
    def uis(self) -> list[str]:
        return self.vocab.uis

    def lookup(self, text: str) -> str | None:
        return self.vocab.lookup(text)

    def names(self, ui: str) -> str:
        return self.vocab.name(ui)

    def name(self, ui: str) -> str:
        return self.vocab.name(ui)

    def entry_terms(self, ui: str) -> list[str]:
        return self.vocab.entry_terms(ui)

    def tree_numbers(self, ui: str) -> list[str]:
        return self.vocab.tree_numbers(ui)

    def descendants(self, ui: str) -> set[str]:
        return self.hierarchy.descendants(ui)

    def ancestors(self, ui: str) -> set[str]:
        return self.hierarchy.ancestors(ui)

    def require(self, text: str) -> str:
        """UI for ``text`` or an :class:`InputError` saying it is unknown."""
        ui = self.lookup(text)
        if ui is None:
            raise InputError(
                f"unknown MeSH descriptor {text!r}: give a descriptor UI (D009369), a preferred "
                "name or an entry term of this MeSH build"
            )
        return ui

    def scorer(self, measure: str = "kailin", faithful: bool = False, aggregate: str = "mean",
               **options):
        """A :class:`~kailin.mesh.score.MeshScorer` (``options``: its keyword settings)."""
        from kailin.mesh.score import MeshScorer

        return MeshScorer(self, measure=measure, faithful=faithful, aggregate=aggregate,
                          **options)

    @cached_property
    def category_of_tree(self) -> dict[str, str]:
        return {t: t.split(".")[0] for t in self.hierarchy.tree_numbers}

    # --- persistence --------------------------------------------------------------------------
    def save(self, out: str | Path, meta: dict | None = None) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "meta.json").unlink(missing_ok=True)
        write_parquet_atomic(self.vocab.to_table(), out / "descriptors.parquet")
        write_parquet_atomic(pa.table({"ui": self.vocab.uis, "df": self.df}),
                             out / "frequencies.parquet")
        write_parquet_atomic(self.ic_faithful.to_table(), out / "ic_faithful.parquet")
        write_parquet_atomic(pa.table({"ic": self.ic_global}), out / "ic_global.parquet")
        info = {
            "format": 1,
            "kailin_version": kailin.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "descriptors": len(self.vocab),
            "tree_numbers": int((self.hierarchy.tn_desc >= 0).sum()),
            "categories": len(self.hierarchy.categories),
            "documents_frequency_total": float(self.df.sum()),
            "descriptors_with_frequency": int((self.df > 0).sum()),
            "global_smoothing": GLOBAL_SMOOTHING,
            **(meta or self.meta),
        }
        write_json_atomic(out / "meta.json", info)
        self.meta, self.root = info, out
        return out

    @classmethod
    def load(cls, path: str | Path) -> Mesh:
        p = Path(path)
        if not (p / "meta.json").exists() or not (p / "descriptors.parquet").exists():
            raise InputError(
                f"{p}: not a MeSH build (no meta.json/descriptors.parquet); create one with "
                "`kailin mesh build --descriptors FILE --out DIR`"
            )
        meta = json.loads((p / "meta.json").read_text(encoding="utf-8"))
        vocab = MeshVocabulary.from_parquet(p / "descriptors.parquet")
        freq = pq.read_table(p / "frequencies.parquet")
        if freq.column("ui").to_pylist() != vocab.uis:
            raise InputError(f"{p}: frequencies.parquet does not match descriptors.parquet; "
                             "rebuild with `kailin mesh build`")
        df = freq.column("df").to_numpy().astype(np.float64)
        mesh = cls(vocab, df, meta=meta, root=p)
        n, c = len(vocab), len(mesh.hierarchy.categories)
        if (p / "ic_faithful.parquet").exists():
            mesh._ic_f = CategoryIC.from_table(pq.read_table(p / "ic_faithful.parquet"), n, c,
                                               False, 0.0)
        if (p / "ic_global.parquet").exists():
            mesh._ic_g = pq.read_table(p / "ic_global.parquet").column("ic").to_numpy()
        return mesh


def build_mesh(descriptors: str | Path, out: str | Path, corpus: str | Path | None = None,
               frequencies: str | Path | None = None) -> Mesh:
    """Build a MeSH folder from a descriptor file and a frequency source (a corpus of Parquet
    shards or a document-frequency table; with neither, every descriptor gets frequency 0 and
    only the smoothing counts inform IC)."""
    if corpus is not None and frequencies is not None:
        raise InputError("give either --corpus or --frequencies, not both")
    descriptors = Path(descriptors)
    vocab = load_vocabulary(descriptors)
    if len(vocab) == 0:
        raise InputError(f"{descriptors}: no descriptors found")
    meta: dict = {"descriptors_source": {"path": descriptors.name, "sha256": sha256_file(descriptors)}}
    if frequencies is not None:
        df, stats = read_frequency_table(frequencies, vocab)
        meta["frequency_source"] = {"kind": "table", "path": Path(frequencies).name,
                                    "sha256": sha256_file(Path(frequencies)), **stats}
    elif corpus is not None:
        df, stats = frequencies_from_corpus(corpus, vocab)
        meta["frequency_source"] = {"kind": "corpus", "path": str(corpus), **stats}
    else:
        df = np.zeros(len(vocab))
        meta["frequency_source"] = {"kind": "none"}
    mesh = Mesh(vocab, df)
    mesh.save(out, meta=meta)
    return mesh


def default_mesh_dir() -> Path:
    """The MeSH build shipped inside the package."""
    return Path(str(resources.files("kailin") / "data" / "mesh"))


_CACHE: dict[str, Mesh] = {}


def load_mesh(mesh_dir: str | Path | None = None) -> Mesh:
    """Load a MeSH build (the packaged default when ``mesh_dir`` is None); cached per process."""
    p = Path(mesh_dir) if mesh_dir is not None else default_mesh_dir()
    key = str(p.resolve())
    if key not in _CACHE:
        _CACHE[key] = Mesh.load(p)
    return _CACHE[key]
