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
        if measure == "embedding":
            from kailin.mesh.embedding import load_mesh_embeddings

            self._embedding = load_mesh_embeddings(mesh)
        # touch the IC this measure needs so that errors surface now, not mid-batch
        if measure == "kailin" and faithful:
            _ = mesh.ic_faithful
        elif measure in ("kailin", "lin", "resnik", "jiang"):
            _ = mesh.chain_ic

    @property
    def label(self) -> str:
        return "kailin (faithful)" if self.faithful else self.measure

    # --- pairs --------------------------------------------------------------------------------
    def _compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = self.mesh.hierarchy
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
        if len(a) < DEDUP_MIN_PAIRS:
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
    def _ids(self, uis: Sequence[str] | None) -> np.ndarray:
        id_of = self.mesh.vocab.id_of
        out = []
        for u in uis or ():
            i = id_of.get(u)
            if i is None:
                i = id_of.get(self.mesh.lookup(u)) if u else None
            if i is None:
                self.last_stats.unknown_descriptors += 1
                if len(self.last_stats.unknown_examples) < 10:
                    self.last_stats.unknown_examples.append(str(u))
            else:
                out.append(i)
        return np.array(out, dtype=np.int64)

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
        src_ids = [self._ids(s) for s in sources]
        # flatten contexts: ctx_rec[j] = record of context j
        ctx_ids: list[np.ndarray] = []
        ctx_rec: list[int] = []
        for r, ctxs in enumerate(contexts):
            for c in ctxs:
                ids = self._ids(c)
                if len(ids) == 0:
                    st.empty_contexts += 1
                    continue
                ctx_ids.append(ids)
                ctx_rec.append(r)
        n_rec = len(sources)
        out = np.full(n_rec, np.nan)
        if not ctx_ids:
            st.undefined_records = n_rec
            return out
        ctx_rec_a = np.array(ctx_rec, dtype=np.int64)
        s_len = np.array([len(x) for x in src_ids], dtype=np.int64)
        c_len = np.array([len(x) for x in ctx_ids], dtype=np.int64)
        ls = s_len[ctx_rec_a]  # source size per context
        npairs = ls * c_len
        total = int(npairs.sum())
        st.pairs = total
        # build pair arrays, source-major within each context
        src_flat = np.concatenate(src_ids) if any(len(x) for x in src_ids) else np.zeros(0, int)
        src_off = np.r_[0, np.cumsum(s_len)][:-1]
        ctx_flat = np.concatenate(ctx_ids)
        ctx_off = np.r_[0, np.cumsum(c_len)][:-1]
        ctx_of_pair = np.repeat(np.arange(len(ctx_ids)), npairs)
        local = np.arange(total) - np.repeat(np.cumsum(npairs) - npairs, npairs)
        cl = c_len[ctx_of_pair]
        si = local // cl
        ci = local - si * cl
        a = src_flat[src_off[ctx_rec_a][ctx_of_pair] + si]
        b = ctx_flat[ctx_off[ctx_of_pair] + ci]
        sims = self.pair_similarities(a, b)
        n_ctx = len(ctx_ids)
        if self.aggregate == "mean":
            ctx_score = np.bincount(ctx_of_pair, weights=sims, minlength=n_ctx)
            with np.errstate(invalid="ignore", divide="ignore"):
                ctx_score = ctx_score / npairs
        else:
            row_key = ctx_of_pair * (s_len.max() + 1) + si
            col_key = ctx_of_pair * (c_len.max() + 1) + ci
            ctx_score = np.full(n_ctx, np.nan)
            valid = npairs > 0
            rows = _segment_mean_of_max(row_key, ctx_of_pair, sims, n_ctx)
            cols = _segment_mean_of_max(col_key, ctx_of_pair, sims, n_ctx)
            ctx_score[valid] = ((rows + cols) / 2)[valid]
        ctx_score = np.where(npairs > 0, ctx_score, np.nan)
        ok = ~np.isnan(ctx_score)
        tot = np.bincount(ctx_rec_a[ok], weights=ctx_score[ok], minlength=n_rec)
        cnt = np.bincount(ctx_rec_a[ok], minlength=n_rec)
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
