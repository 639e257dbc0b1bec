"""MeSH descriptor embeddings: cosine similarity between descriptors with the dense encoder.

The KAILIN evaluators are described as comparing MeSH terms by the cosine similarity of their
embeddings. Each descriptor is embedded from a short text made of its preferred name, its entry
terms (synonyms) and its place in the tree (the names of the ancestors along its first tree
number), e.g. ``"Myocardial Infarction. Synonyms: Heart Attack; ... MeSH tree: Cardiovascular
Diseases > Heart Diseases > Myocardial Ischemia"``.

Files (written atomically): ``mesh_embeddings.npy`` (float16 ``[len(mesh.uis), dim]``, row ``i``
= ``mesh.uis[i]``, L2-normalised; an all-zero row = not embedded) and ``mesh_embeddings.json``
(model, text mode, counts, a hash of the UI order). They live in the MeSH build folder or, when
that is not writable (the packaged build), in ``kailin.io.user_cache_dir()``. Embedding all
30,764 MeSH 2024 descriptors with MiniLM takes ~25 min on a laptop CPU; ``uis=`` embeds a subset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kailin.errors import InputError
from kailin.io import atomic_path, user_cache_dir, write_json_atomic

log = logging.getLogger(__name__)

VECTORS_FILE = "mesh_embeddings.npy"
META_FILE = "mesh_embeddings.json"
TEXT_MODES = ("name", "name+entries", "full")
MAX_ENTRY_TERMS = 8


def _uis_hash(uis: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(uis).encode()).hexdigest()[:16]


def tree_path_names(mesh: Any, ui: str) -> list[str]:
    """Names of the ancestors of ``ui`` along its first tree number, top-down (itself excluded)."""
    tns = mesh.tree_numbers(ui)
    if not tns:
        return []
    h = mesh.hierarchy
    names = mesh.vocab.name_list
    parts = sorted(tns)[0].split(".")
    out = []
    for d in range(1, len(parts)):
        k = h.tn_id.get(".".join(parts[:d]))
        if k is None:
            continue
        i = int(h.tn_desc[k])
        if i >= 0:
            out.append(names[i])
    return out


def descriptor_text(mesh: Any, ui: str, mode: str = "full") -> str:
    """The text embedded for descriptor ``ui`` (``mode``: name, name+entries or full)."""
    if mode not in TEXT_MODES:
        raise InputError(f"unknown text mode {mode!r}: use one of {', '.join(TEXT_MODES)}")
    name = mesh.names(ui)
    text = name + "."
    if mode in ("name+entries", "full"):
        seen = {name.lower()}
        entries = []
        for t in mesh.entry_terms(ui):
            if t.lower() not in seen:
                seen.add(t.lower())
                entries.append(t)
        if entries:
            text += " Synonyms: " + "; ".join(entries[:MAX_ENTRY_TERMS]) + "."
    if mode == "full":
        path = tree_path_names(mesh, ui)
        if path:
            text += " MeSH tree: " + " > ".join(path) + "."
    return text


def default_embeddings_dir(mesh: Any, model_name: str, mode: str = "full") -> Path:
    """A cache folder keyed by the MeSH build's descriptors, the model and the text mode."""
    slug = hashlib.sha256(f"{model_name}|{mode}".encode()).hexdigest()[:10]
    return user_cache_dir() / "mesh_embeddings" / f"{_uis_hash(mesh.uis)}-{slug}"


def build_mesh_embeddings(
    mesh: Any,
    model_path: str | Path | None = None,
    out_path: str | Path | None = None,
    *,
    uis: Iterable[str] | None = None,
    mode: str = "full",
    batch_size: int = 64,
    dtype: str = "float16",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Embed the descriptors of ``mesh`` (all, or only ``uis``) into ``out_path`` (a folder).

    Returns the folder. Re-running with the same model, mode and descriptors costs nothing.
    """
    from tqdm.auto import tqdm

    from kailin.llm.encoder import Encoder, resolve_model
    from kailin.progress import enabled as progress_enabled

    model = resolve_model(model_path)
    all_uis = list(mesh.uis)
    row_of = {u: i for i, u in enumerate(all_uis)}
    if uis is None:
        todo = all_uis
    else:
        todo = []
        for u in dict.fromkeys(uis):
            if u not in row_of:
                raise InputError(f"{u}: not a descriptor UI of this MeSH build")
            todo.append(u)
    out = Path(out_path) if out_path is not None else default_embeddings_dir(mesh, model, mode)
    meta_path = out / META_FILE
    todo_hash = _uis_hash(sorted(todo))
    if meta_path.exists() and (out / VECTORS_FILE).exists() and not overwrite:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if (
            meta.get("model"),
            meta.get("mode"),
            meta.get("uis_hash"),
            meta.get("embedded_hash"),
            meta.get("dtype"),
        ) == (model, mode, _uis_hash(all_uis), todo_hash, dtype):
            log.info("MeSH embeddings in %s are up to date", out)
            return out
    enc = Encoder(model, batch_size=batch_size)
    vecs = np.zeros((len(all_uis), enc.dim), dtype=np.float32)
    bar = tqdm(total=len(todo), desc="embed MeSH", unit="desc", disable=not progress_enabled(progress))
    for start in range(0, len(todo), 512):
        chunk = todo[start : start + 512]
        texts = [descriptor_text(mesh, u, mode) for u in chunk]
        vecs[[row_of[u] for u in chunk]] = enc.encode(texts)
        bar.update(len(chunk))
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / VECTORS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, vecs.astype(dtype))
    write_json_atomic(
        meta_path,
        {
            "model": model,
            "mode": mode,
            "dim": enc.dim,
            "dtype": dtype,
            "descriptors": len(all_uis),
            "embedded": len(todo),
            "uis_hash": _uis_hash(all_uis),
            "embedded_hash": todo_hash,
            "mesh_meta": {
                k: v
                for k, v in (getattr(mesh, "meta", {}) or {}).items()
                if isinstance(v, (str, int, float))
            },
        },
    )
    return out


class MeshEmbeddingSimilarity:
    """Cosine similarity of descriptor embeddings (NaN when a descriptor was not embedded)."""

    def __init__(self, vectors: np.ndarray, uis: Sequence[str], meta: dict | None = None):
        if vectors.shape[0] != len(uis):
            raise InputError(
                f"MeSH embeddings have {vectors.shape[0]} rows for {len(uis)} descriptors; "
                "rebuild them for this MeSH build"
            )
        self.vectors = vectors
        self.uis = list(uis)
        self.row_of = {u: i for i, u in enumerate(self.uis)}
        self.meta = meta or {}
        self.present = np.abs(vectors).sum(axis=1) > 0

    @classmethod
    def load(cls, path: str | Path, mesh: Any) -> MeshEmbeddingSimilarity:
        path = Path(path)
        vec_path = path / VECTORS_FILE if path.is_dir() else path
        meta_path = vec_path.with_name(META_FILE)
        if not vec_path.exists():
            raise InputError(
                f"{vec_path}: no MeSH embeddings; build them with "
                "kailin.mesh.embeddings.build_mesh_embeddings(mesh, model, out) "
                "or `kailin index embed-mesh`"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        if meta.get("uis_hash") and meta["uis_hash"] != _uis_hash(mesh.uis):
            raise InputError(
                f"{vec_path}: embeddings were made for another MeSH build; rebuild them"
            )
        return cls(np.load(vec_path, mmap_mode="r"), mesh.uis, meta)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def pair_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine of each ``(a[i], b[i])`` pair of descriptor ids (rows of ``mesh.uis``)."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        va, vb = self._rows(a), self._rows(b)
        na, nb = np.linalg.norm(va, axis=1), np.linalg.norm(vb, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = (va * vb).sum(axis=1) / (na * nb)
        sim[~(self.present[a] & self.present[b])] = np.nan
        return sim.astype(np.float64)

    #: the name :func:`kailin.mesh.human_eval.correlations` calls
    pair_similarities = pair_similarity

    def similarity(self, ui_a: str, ui_b: str) -> float:
        try:
            a, b = self.row_of[ui_a], self.row_of[ui_b]
        except KeyError as exc:
            raise InputError(f"{exc.args[0]}: not a descriptor UI of this MeSH build") from None
        return float(self.pair_similarity(np.array([a]), np.array([b]))[0])

    def set_similarity(self, a: Sequence[str], b: Sequence[str]) -> float:
        """Mean cosine over all pairs of embedded descriptors of ``a`` x ``b`` (NaN if none)."""
        ia = [self.row_of[u] for u in a if u in self.row_of and self.present[self.row_of[u]]]
        ib = [self.row_of[u] for u in b if u in self.row_of and self.present[self.row_of[u]]]
        if not ia or not ib:
            return float("nan")
        va, vb = self._rows(np.array(ia)), self._rows(np.array(ib))
        va /= np.linalg.norm(va, axis=1, keepdims=True)
        vb /= np.linalg.norm(vb, axis=1, keepdims=True)
        return float((va @ vb.T).mean())


def load_mesh_embeddings(
    mesh: Any, path: str | Path | None = None, model: str | Path | None = None, mode: str = "full"
) -> MeshEmbeddingSimilarity:
    """Load the embeddings of ``mesh``: from ``path``, else the MeSH build folder, else the
    cache folder of ``model`` (default: the packaged MiniLM)."""
    if path is not None:
        return MeshEmbeddingSimilarity.load(path, mesh)
    root = getattr(mesh, "root", None)
    if root is not None and (Path(root) / VECTORS_FILE).exists():
        return MeshEmbeddingSimilarity.load(root, mesh)
    from kailin.llm.encoder import resolve_model

    return MeshEmbeddingSimilarity.load(
        default_embeddings_dir(mesh, resolve_model(model), mode), mesh
    )


def rated_pair_uis(files: Iterable[str | Path], mesh: Any) -> list[str]:
    """The descriptor UIs of a set of human-rated pair files that this MeSH build knows."""
    from kailin.mesh.human_eval import read_rated_pairs

    known = set(mesh.uis)
    out: dict[str, None] = {}
    for f in files:
        rp = read_rated_pairs(f)
        for u in [*rp.a, *rp.b]:
            if u in known:
                out[u] = None
    return list(out)


def ensure_mesh_embeddings(
    mesh: Any,
    uis: Iterable[str],
    model: str | Path | None = None,
    mode: str = "full",
    *,
    progress: bool = True,
    batch_size: int = 128,
) -> MeshEmbeddingSimilarity:
    """Embeddings of ``mesh`` in which at least ``uis`` are embedded: on demand.

    Loads the cached vectors (the MeSH build folder when it has them, else the cache folder of
    ``model``), embeds only the descriptors of ``uis`` that have no vector yet, and writes the
    merged vectors back to the cache folder (atomically). A corpus needs its own descriptors
    only, a few thousand for a small one: seconds with MiniLM, instead of the ~25 minutes of the
    whole vocabulary."""
    from kailin.llm.encoder import resolve_model

    model_name = resolve_model(model)
    row_of = {u: i for i, u in enumerate(mesh.uis)}
    want = [u for u in dict.fromkeys(uis) if u in row_of]
    root = getattr(mesh, "root", None)
    if root is not None and (Path(root) / VECTORS_FILE).exists():
        try:
            sim = MeshEmbeddingSimilarity.load(root, mesh)
        except InputError:
            sim = None
        if sim is not None and sim.meta.get("model") in (None, model_name) and all(
                sim.present[row_of[u]] for u in want):
            return sim
    out = default_embeddings_dir(mesh, model_name, mode)
    vecs: np.ndarray | None = None
    meta: dict[str, Any] = {}
    if (out / VECTORS_FILE).exists() and (out / META_FILE).exists():
        meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
        if meta.get("uis_hash") == _uis_hash(mesh.uis) and meta.get("model") == model_name:
            vecs = np.load(out / VECTORS_FILE).astype(np.float32)
    present = (np.abs(vecs).sum(axis=1) > 0) if vecs is not None else None
    todo = [u for u in want if present is None or not present[row_of[u]]]
    if not todo and vecs is not None:
        return MeshEmbeddingSimilarity(vecs, mesh.uis, meta)
    from tqdm.auto import tqdm

    from kailin.llm.encoder import Encoder
    from kailin.progress import enabled as progress_enabled

    enc = Encoder(model_name, batch_size=batch_size)
    if vecs is None:
        vecs = np.zeros((len(mesh.uis), enc.dim), dtype=np.float32)
    log.info("embedding %d MeSH descriptors on demand with %s", len(todo), model_name)
    bar = tqdm(total=len(todo), desc="embed MeSH", unit="desc", disable=not progress_enabled(progress))
    for start in range(0, len(todo), 512):
        chunk = todo[start : start + 512]
        vecs[[row_of[u] for u in chunk]] = enc.encode([descriptor_text(mesh, u, mode)
                                                       for u in chunk])
        bar.update(len(chunk))
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / VECTORS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, vecs.astype(np.float16))
    embedded = int((np.abs(vecs).sum(axis=1) > 0).sum())
    meta = {"model": model_name, "mode": mode, "dim": enc.dim, "dtype": "float16",
            "descriptors": len(mesh.uis), "embedded": embedded,
            "uis_hash": _uis_hash(mesh.uis), "on_demand": True}
    write_json_atomic(out / META_FILE, meta)
    return MeshEmbeddingSimilarity(vecs.astype(np.float16).astype(np.float32), mesh.uis, meta)
