"""Descriptor, set and document MeSH scores, batched.

The document score of a question (the paper's MeSH score) is the mean, over its ``k`` retrieved
contexts, of the set similarity between the source document's descriptors and the context's:

* ``aggregate="mean"`` (the paper's): the mean over all ``|M_d| x |M_r|`` descriptor pairs;
* ``aggregate="bma"``: best-match average, ``(mean_a max_b sim + mean_b max_a sim) / 2``.

Undefined scores are explicit: descriptors unknown to the MeSH build are dropped and counted (as
the authors do); a context left with no known descriptor is skipped; a record whose source has no
known descriptor, or whose contexts all have none, scores ``NaN`` (which the preference filter
``score <= tau`` then drops, as in the authors' ``filter.py``).

:meth:`MeshScorer.doc_scores` scores many records at once: it lays every descriptor pair of the
batch out as two id arrays, computes each distinct pair once (hash-based deduplication with
pyarrow) and reduces with ``bincount``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kailin.errors import InputError
from kailin.mesh.measures import (
    MEASURES,
    ic_measures,
    kailin_corrected,
    kailin_faithful,
    path_measures,
)

DEDUP_MIN_PAIRS = 4096


@dataclass
class ScoreStats:
    records: int = 0
    pairs: int = 0
    unique_pairs: int = 0
    unknown_descriptors: int = 0
    empty_contexts: int = 0
    undefined_records: int = 0
    unknown_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "unknown_examples"}


class MeshScorer:
    def __init__(self, mesh, measure: str = "kailin", faithful: bool = False,
                 aggregate: str = "mean") -> None:
        if measure not in (*MEASURES, "embedding"):
            raise InputError(f"unknown measure {measure!r}; choose one of "
                             f"{', '.join((*MEASURES, 'embedding'))}")
        if faithful and measure != "kailin":
            raise InputError("--faithful applies to the kailin measure only")
        if aggregate not in ("mean", "bma"):
            raise InputError(f"unknown aggregation {aggregate!r}; choose mean or bma")
        self.mesh = mesh
        self.measure = measure
        self.faithful = faithful
        self.aggregate = aggregate
        self.last_stats = ScoreStats()
        self._embedding = None
        self._kargs: tuple | None = None
        self._ui_array = pa.array(mesh.vocab.uis, type=pa.string())
        #: use the compiled kernels when numba is installed (False forces the numpy path)
        self.use_compiled = True
        if measure == "embedding":
            from kailin.retrieval.mesh_embeddings import load_mesh_embeddings

            self._embedding = load_mesh_embeddings(mesh)
        # touch the IC this measure needs so that errors surface now, not mid-batch
        if measure == "kailin" and faithful:
            _ = mesh.ic_faithful
        elif measure in ("kailin", "lin", "resnik", "jiang"):
            _ = mesh.chain_ic

    @property
    def _compiled(self) -> int | None:
        """Kernel kind when the compiled path applies (kailin measures, numba installed)."""
        from kailin.mesh import _kernels

        if self.measure != "kailin" or not _kernels.HAVE_NUMBA or not self.use_compiled:
            return None
        return _kernels.FAITHFUL if self.faithful else _kernels.DEFAULT

    def _kernel_args(self) -> tuple:
        if self._kargs is None:
            h = self.mesh.hierarchy
            f2 = np.zeros((1, 1))

            if self.faithful:
                cic = self.mesh.ic_faithful
                ic, max_ic, has_cat = cic.ic, cic.max_ic, h.desc_cat
                chain, gic, gmax = np.zeros(1), np.zeros(1), 1.0
            else:
                ic, max_ic, has_cat = f2, np.zeros(1), np.zeros((1, 1), dtype=bool)
                chain, gic = self.mesh.chain_ic, self.mesh.ic_global
                gmax = float(gic.max()) or 1.0
            self._kargs = (
                h.desc_tn_ptr, h.desc_tn, np.ascontiguousarray(h.prefix), h.tn_depth, h.tn_desc,
                h.desc_cat_ptr, h.desc_cat_list, np.ascontiguousarray(has_cat),
                np.ascontiguousarray(ic), max_ic, chain, gic, gmax, self.mesh.category_masks,
            )
        return self._kargs

    @property
    def label(self) -> str:
        return "kailin (faithful)" if self.faithful else self.measure

    # --- pairs --------------------------------------------------------------------------------
    def _compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = self.mesh.hierarchy
        kind = self._compiled
        if kind is not None:
            from kailin.mesh._kernels import pair_kernel

            return pair_kernel(kind, a.astype(np.int64), b.astype(np.int64),
                               *self._kernel_args())
        if self.measure == "kailin":
            if self.faithful:
                return kailin_faithful(h, self.mesh.ic_faithful, a, b)
            return kailin_corrected(h, self.mesh.chain_ic, self.mesh.ic_global, a, b)
        if self.measure in ("path", "wu-palmer", "leacock-chodorow"):
            return path_measures(h, a, b, self.measure)
        if self.measure == "embedding":
            return self._embedding.pair_similarity(a, b)
        return ic_measures(h, self.mesh.chain_ic, self.mesh.ic_global, a, b, self.measure)

    def pair_similarities(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity of each ``(a[i], b[i])`` pair of descriptor ids; distinct pairs computed
        once."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        if len(a) < DEDUP_MIN_PAIRS or self._compiled is not None:
            return self._compute(a, b)
        n = len(self.mesh.vocab)
        enc = pc.dictionary_encode(pa.array(a * n + b))
        uniq = enc.dictionary.to_numpy()
        idx = enc.indices.to_numpy()
        self.last_stats.unique_pairs += len(uniq)
        return self._compute(uniq // n, uniq % n)[idx]

    def similarity(self, a: str, b: str) -> float:
        """Similarity of two descriptors given as UIs or names (unknown -> InputError)."""
        ia = self.mesh.vocab.id_of[self.mesh.require(a)]
        ib = self.mesh.vocab.id_of[self.mesh.require(b)]
        return float(self._compute(np.array([ia]), np.array([ib]))[0])

    # --- sets and documents -------------------------------------------------------------------
    def _csr(self, lists: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, np.ndarray]:
        """Descriptor ids of many UI lists as CSR ``(ptr, ids)`` (hash lookups in Arrow).
        Entries that are not UIs are tried as names; unknown ones are dropped and counted."""
        lens = np.fromiter((len(x) if x is not None else 0 for x in lists), dtype=np.int64,
                           count=len(lists))
        flat = pa.array([u for x in lists if x is not None for u in x], type=pa.string())
        idx = pc.index_in(flat, value_set=self._ui_array)
        ids = idx.fill_null(-1).to_numpy().astype(np.int64)
        miss = np.flatnonzero(ids < 0)
        if len(miss):
            values = flat.to_pylist()
            for k in miss:
                ui = self.mesh.lookup(values[k]) if values[k] else None
                if ui is None:
                    self.last_stats.unknown_descriptors += 1
                    if len(self.last_stats.unknown_examples) < 10:
                        self.last_stats.unknown_examples.append(str(values[k]))
                else:
                    ids[k] = self.mesh.vocab.id_of[ui]
        owner = np.repeat(np.arange(len(lists)), lens)
        keep = ids >= 0
        new_lens = np.bincount(owner[keep], minlength=len(lists))
        return np.r_[0, np.cumsum(new_lens)].astype(np.int64), ids[keep]

    def set_similarity(self, a: Sequence[str], b: Sequence[str]) -> float:
        """Similarity of two descriptor sets (``aggregate``); NaN when either is empty."""
        return float(self.doc_scores([list(a)], [[list(b)]])[0])

    def doc_scores(self, sources: Sequence[Sequence[str]],
                   contexts: Sequence[Sequence[Sequence[str]]]) -> np.ndarray:
        """MeSH score of each record: mean over its contexts of the set similarity between the
        source's descriptors and the context's. ``NaN`` where undefined (see module doc)."""
        if len(sources) != len(contexts):
            raise ValueError("sources and contexts must have the same length")
        self.last_stats = st = ScoreStats(records=len(sources))
        n_rec = len(sources)
        src_ptr, src_flat = self._csr(sources)
        flat_ctx = [c for ctxs in contexts for c in ctxs]
        ctx_rec = np.repeat(np.arange(n_rec), [len(c) for c in contexts]).astype(np.int64)
        ctx_ptr, ctx_flat = self._csr(flat_ctx)
        c_len = np.diff(ctx_ptr)
        st.empty_contexts = int((c_len == 0).sum())
        # drop empty contexts: they are skipped, not scored 0
        keep = c_len > 0
        ctx_rec, c_len = ctx_rec[keep], c_len[keep]
        ctx_ptr = np.r_[0, np.cumsum(c_len)].astype(np.int64)
        s_len = np.diff(src_ptr)
        out = np.full(n_rec, np.nan)
        if len(ctx_rec) == 0:
            st.undefined_records = n_rec
            return out
        kind = self._compiled
        if kind is not None:
            from kailin.mesh._kernels import doc_kernel

            out, pairs = doc_kernel(kind, self.aggregate == "bma", src_ptr, src_flat, ctx_rec,
                                    ctx_ptr, ctx_flat, n_rec, *self._kernel_args())
            st.pairs = int(pairs)
            st.undefined_records = int(np.isnan(out).sum())
            return out
        npairs = s_len[ctx_rec] * c_len
        total = int(npairs.sum())
        st.pairs = total
        # build pair arrays, source-major within each context
        ctx_of_pair = np.repeat(np.arange(len(ctx_rec)), npairs)
        local = np.arange(total) - np.repeat(np.cumsum(npairs) - npairs, npairs)
        cl = c_len[ctx_of_pair]
        si = local // cl
        ci = local - si * cl
        a = src_flat[src_ptr[:-1][ctx_rec][ctx_of_pair] + si]
        b = ctx_flat[ctx_ptr[:-1][ctx_of_pair] + ci]
        sims = self.pair_similarities(a, b)
        n_ctx = len(ctx_rec)
        if self.aggregate == "mean":
            ctx_score = np.bincount(ctx_of_pair, weights=sims, minlength=n_ctx)
            with np.errstate(invalid="ignore", divide="ignore"):
                ctx_score = ctx_score / npairs
        else:
            row_key = ctx_of_pair * (s_len.max() + 1) + si
            col_key = ctx_of_pair * (c_len.max() + 1) + ci
            rows = _segment_mean_of_max(row_key, ctx_of_pair, sims, n_ctx)
            cols = _segment_mean_of_max(col_key, ctx_of_pair, sims, n_ctx)
            ctx_score = (rows + cols) / 2
        ctx_score = np.where(npairs > 0, ctx_score, np.nan)
        ok = ~np.isnan(ctx_score)
        tot = np.bincount(ctx_rec[ok], weights=ctx_score[ok], minlength=n_rec)
        cnt = np.bincount(ctx_rec[ok], minlength=n_rec)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
        st.undefined_records = int(np.isnan(out).sum())
        return out


def _segment_mean_of_max(key: np.ndarray, ctx: np.ndarray, vals: np.ndarray, n_ctx: int
                         ) -> np.ndarray:
    """For each context: the mean over its key groups of the max value in each group."""
    u, inv = np.unique(key, return_inverse=True)
    mx = np.full(len(u), -np.inf)
    np.maximum.at(mx, inv, vals)
    owner = np.zeros(len(u), dtype=np.int64)
    owner[inv] = ctx
    tot = np.bincount(owner, weights=mx, minlength=n_ctx)
    cnt = np.bincount(owner, minlength=n_ctx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tot / cnt
