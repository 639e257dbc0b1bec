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


RANK_WEIGHTINGS = ("none", "reciprocal")

#: kailin's default document score, chosen by ``kailin evaluate signal`` on the PQA-L
#: development questions over ~51k real MEDLINE records (docs/mesh.md has the table): the cosine
#: of descriptor embeddings (name, synonyms and tree path, so the hierarchy is in the text),
#: best-match average, NLM's check tags left out, each descriptor weighted by (IC / MaxIC)^3, so
#: that descriptors which annotate much of the corpus count little.
DEFAULT_SCORING: dict = {"measure": "embedding", "faithful": False, "aggregate": "bma",
                         "exclude": "check-tags", "ic_power": 3.0, "major_weight": 1.0,
                         "rank_weighting": "none", "hybrid_alpha": 0.5}
#: contexts the default score looks at (the paper's k is 4; the signal is stronger with 6)
DEFAULT_SCORE_K = 6
#: the paper's k
PAPER_SCORE_K = 4
#: the paper's form (``--faithful``): the authors' cal_mesh_score.py measure, all-pairs mean
#: over every descriptor, no weights
PAPER_SCORING: dict = {"measure": "kailin", "faithful": True, "aggregate": "mean",
                       "exclude": None, "ic_power": 0.0, "major_weight": 1.0,
                       "rank_weighting": "none", "hybrid_alpha": 0.5}


def resolve_scoring(faithful: bool = False, **given) -> dict:
    """Scorer settings: ``given`` (None = not given) over the default, or over the paper's
    form when ``faithful``. ``exclude="none"`` means no exclusion."""
    out = dict(PAPER_SCORING if faithful else DEFAULT_SCORING)
    for k, v in given.items():
        if k not in out:
            raise InputError(f"unknown scoring setting {k!r}")
        if v is not None:
            out[k] = v
    if out["exclude"] in ("none", ""):
        out["exclude"] = None
    if out["faithful"] and out["measure"] != "kailin":
        raise InputError("--faithful is the paper's kailin measure; drop --measure "
                         f"{out['measure']} or --faithful")
    return out
#: measures a scorer can use: the pair measures, cosine of descriptor embeddings, and ``hybrid``
#: (the mean of normalised Resnik and the embedding cosine)
SCORER_MEASURES = (*MEASURES, "embedding", "hybrid")


class MeshScorer:
    """Document MeSH scores with one configuration.

    ``measure``/``faithful``: the descriptor similarity; ``aggregate``: ``mean`` (all pairs, the
    paper's) or ``bma`` (best-match average). ``exclude``: descriptors left out of every set,
    ``"check-tags"`` for NLM's check tags (:mod:`kailin.mesh.checktags`) or a list of UIs/names.
    ``major_weight``: the weight of a descriptor marked MajorTopicYN (others weigh 1) when the
    caller passes major flags. ``ic_power``: each descriptor also weighs
    ``(IC / MaxIC) ** ic_power`` (0: off), so that descriptors that annotate much of the corpus
    count less. ``rank_weighting``: ``none`` (every context counts the same) or
    ``reciprocal`` (the context at retrieval rank ``r`` weighs ``1/r``). ``hybrid_alpha``: the
    weight of Resnik in ``hybrid``.
    """

    def __init__(self, mesh, measure: str = "kailin", faithful: bool = False,
                 aggregate: str = "mean", *, exclude: str | Sequence[str] | None = None,
                 major_weight: float = 1.0, rank_weighting: str = "none",
                 ic_power: float = 0.0, hybrid_alpha: float = 0.5, embeddings=None) -> None:
        if measure not in SCORER_MEASURES:
            raise InputError(f"unknown measure {measure!r}; choose one of "
                             f"{', '.join(SCORER_MEASURES)}")
        if faithful and measure != "kailin":
            raise InputError("--faithful applies to the kailin measure only")
        if aggregate not in ("mean", "bma"):
            raise InputError(f"unknown aggregation {aggregate!r}; choose mean or bma")
        if rank_weighting not in RANK_WEIGHTINGS:
            raise InputError(f"unknown rank weighting {rank_weighting!r}; choose one of "
                             f"{', '.join(RANK_WEIGHTINGS)}")
        if not major_weight > 0:
            raise InputError(f"major_weight must be > 0, got {major_weight}")
        if not ic_power >= 0:
            raise InputError(f"ic_power must be >= 0, got {ic_power}")
        if not 0.0 <= hybrid_alpha <= 1.0:
            raise InputError(f"hybrid_alpha must be in [0, 1], got {hybrid_alpha}")
        self.mesh = mesh
        self.measure = measure
        self.faithful = faithful
        self.aggregate = aggregate
        self.major_weight = float(major_weight)
        self.rank_weighting = rank_weighting
        self.ic_power = float(ic_power)
        self._ic_w: np.ndarray | None = None
        self.hybrid_alpha = float(hybrid_alpha)
        self.exclude_spec = exclude
        self._excluded = np.zeros(len(mesh.vocab), dtype=bool)
        if exclude is not None:
            if isinstance(exclude, str):
                if exclude != "check-tags":
                    raise InputError(f"unknown exclusion {exclude!r}: give 'check-tags' or a "
                                     "list of descriptors")
                from kailin.mesh.checktags import check_tag_uis

                uis = check_tag_uis(mesh)
            else:
                uis = [mesh.require(x) for x in exclude]
            self._excluded[[mesh.vocab.id_of[u] for u in uis]] = True
        self.last_stats = ScoreStats()
        self._embedding = embeddings
        self._kargs: tuple | None = None
        self._ui_array = pa.array(mesh.vocab.uis, type=pa.string())
        #: use the compiled kernels when numba is installed (False forces the numpy path)
        self.use_compiled = True
        #: embed missing descriptors on demand (``measure`` embedding/hybrid, no vectors given)
        self.embed_on_demand = measure in ("embedding", "hybrid") and embeddings is None
        # touch the IC this measure needs so that errors surface now, not mid-batch
        if measure == "kailin" and faithful:
            _ = mesh.ic_faithful
        elif measure in ("kailin", "lin", "resnik", "jiang", "hybrid"):
            _ = mesh.chain_ic

    @property
    def _compiled(self) -> int | None:
        """Kernel kind when the compiled path applies (IC measures, numba installed)."""
        from kailin.mesh import _kernels

        if (self.measure not in _kernels.KINDS or not _kernels.HAVE_NUMBA
                or not self.use_compiled):
            return None
        if self.measure in ("embedding", "hybrid") and self._emb_matrix() is None:
            return None
        if self.faithful:
            return _kernels.FAITHFUL
        return _kernels.KINDS[self.measure]

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
        emb = self._emb_matrix() if self.measure in ("embedding", "hybrid") else None
        if emb is None:
            emb = np.zeros((1, 1), dtype=np.float32)
        return (*self._kargs, emb, self.hybrid_alpha)

    def _emb_matrix(self) -> np.ndarray | None:
        """The descriptor vectors as a dense float32 matrix, rows L2-normalised (None when
        there are none). Scoring embeds the descriptors of each batch first, so no row that a
        kernel reads is empty."""
        e = self._embedding
        if e is None:
            return None
        if getattr(self, "_emb_cache", None) is None or self._emb_cache[0] is not e:
            v = np.asarray(e.vectors, dtype=np.float32)
            n = np.linalg.norm(v, axis=1, keepdims=True)
            v = np.ascontiguousarray(np.where(n > 0, v / np.where(n > 0, n, 1), 0))
            self._emb_cache = (e, v)
        return self._emb_cache[1]

    @property
    def label(self) -> str:
        parts = ["kailin (faithful)" if self.faithful else self.measure, self.aggregate]
        if self.exclude_spec is not None:
            parts.append("no check tags" if self.exclude_spec == "check-tags" else "excluding")
        if self.major_weight != 1.0:
            parts.append(f"major x{self.major_weight:g}")
        if self.rank_weighting != "none":
            parts.append(f"rank {self.rank_weighting}")
        if self.ic_power:
            parts.append(f"IC^{self.ic_power:g} weights")
        return ", ".join(parts)

    def config(self) -> dict:
        """The settings that define this scorer's numbers (for keys and reports)."""
        return {"measure": self.measure, "faithful": self.faithful,
                "aggregate": self.aggregate,
                "exclude": (self.exclude_spec if self.exclude_spec is None
                            or isinstance(self.exclude_spec, str)
                            else sorted(self.exclude_spec)),
                "major_weight": self.major_weight, "rank_weighting": self.rank_weighting,
                "ic_power": self.ic_power,
                **({"hybrid_alpha": self.hybrid_alpha} if self.measure == "hybrid" else {})}

    # --- pairs --------------------------------------------------------------------------------
    def _compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = self.mesh.hierarchy
        if self.measure in ("embedding", "hybrid"):
            self._ensure_embeddings(np.r_[a, b])
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
        if self.measure == "hybrid":
            ic = ic_measures(h, self.mesh.chain_ic, self.mesh.ic_global, a, b, "resnik")
            cos = self._embedding.pair_similarity(a, b)
            # a descriptor without a vector falls back to the IC part alone
            return np.where(np.isnan(cos), ic,
                            self.hybrid_alpha * ic + (1 - self.hybrid_alpha) * cos)
        return ic_measures(h, self.mesh.chain_ic, self.mesh.ic_global, a, b, self.measure)

    def _ensure_embeddings(self, ids: np.ndarray) -> None:
        """Vectors for descriptors ``ids``: embedded on demand and cached (see
        :func:`kailin.mesh.embeddings.ensure_mesh_embeddings`)."""
        if not self.embed_on_demand:
            return
        ids = np.unique(ids)
        if self._embedding is not None and self._embedding.present[ids].all():
            return
        from kailin.mesh.embeddings import ensure_mesh_embeddings

        uis = self.mesh.vocab.uis
        self._embedding = ensure_mesh_embeddings(self.mesh, [uis[i] for i in ids],
                                                 progress=False)

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
    def _csr(self, lists: Sequence[Sequence[str] | None],
             majors: Sequence[Sequence[bool] | None] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Descriptor ids of many UI lists as CSR ``(ptr, ids, weights)`` (hash lookups in
        Arrow). Entries that are not UIs are tried as names; unknown ones are dropped and
        counted; excluded ones are dropped. ``majors``: MajorTopicYN flags parallel to
        ``lists`` (weight ``major_weight``)."""
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
        weights = np.ones(len(ids))
        if majors is not None and self.major_weight != 1.0:
            if len(majors) != len(lists):
                raise ValueError("major flags must be parallel to the descriptor lists")
            flags = np.zeros(len(ids), dtype=bool)
            pos = 0
            for x, m in zip(lists, majors, strict=True):
                n = len(x) if x is not None else 0
                if m is not None and n:
                    if len(m) != n:
                        raise ValueError("major flags must be parallel to the descriptor lists")
                    flags[pos:pos + n] = np.asarray(m, dtype=bool)
                pos += n
            weights[flags] = self.major_weight
        if self.ic_power:
            if self._ic_w is None:
                gic = np.asarray(self.mesh.ic_global, dtype=np.float64)
                self._ic_w = (gic / (gic.max() or 1.0)) ** self.ic_power
            weights = weights * self._ic_w[np.where(ids >= 0, ids, 0)]
        owner = np.repeat(np.arange(len(lists)), lens)
        keep = ids >= 0
        keep[keep] = ~self._excluded[ids[keep]]
        new_lens = np.bincount(owner[keep], minlength=len(lists))
        return np.r_[0, np.cumsum(new_lens)].astype(np.int64), ids[keep], weights[keep]

    def set_similarity(self, a: Sequence[str], b: Sequence[str]) -> float:
        """Similarity of two descriptor sets (``aggregate``); NaN when either is empty."""
        return float(self.doc_scores([list(a)], [[list(b)]])[0])

    def doc_scores(self, sources: Sequence[Sequence[str]],
                   contexts: Sequence[Sequence[Sequence[str]]],
                   source_major: Sequence[Sequence[bool] | None] | None = None,
                   context_major: Sequence[Sequence[Sequence[bool] | None]] | None = None,
                   ) -> np.ndarray:
        """MeSH score of each record: the (rank-weighted) mean over its contexts, in retrieval
        order, of the set similarity between the source's descriptors and the context's.
        ``NaN`` where undefined (see module doc). ``source_major``/``context_major``: optional
        MajorTopicYN flags parallel to the descriptor lists (used with ``major_weight``)."""
        if len(sources) != len(contexts):
            raise ValueError("sources and contexts must have the same length")
        self.last_stats = st = ScoreStats(records=len(sources))
        n_rec = len(sources)
        src_ptr, src_flat, src_w = self._csr(sources, source_major)
        flat_ctx = [c for ctxs in contexts for c in ctxs]
        flat_major = None
        if context_major is not None:
            if len(context_major) != n_rec:
                raise ValueError("context_major must be parallel to contexts")
            flat_major = [m for ms in context_major for m in ms]
        ctx_counts = np.array([len(c) for c in contexts], dtype=np.int64)
        ctx_rec = np.repeat(np.arange(n_rec), ctx_counts).astype(np.int64)
        # rank of each context within its record (0-based), before empty ones are dropped
        ranks = np.arange(len(ctx_rec)) - np.repeat(np.cumsum(ctx_counts) - ctx_counts,
                                                     ctx_counts)
        ctx_rw = (1.0 / (ranks + 1.0) if self.rank_weighting == "reciprocal"
                  else np.ones(len(ctx_rec)))
        ctx_ptr, ctx_flat, ctx_w = self._csr(flat_ctx, flat_major)
        c_len = np.diff(ctx_ptr)
        st.empty_contexts = int((c_len == 0).sum())
        # drop empty contexts: they are skipped, not scored 0
        keep = c_len > 0
        ctx_rec, c_len, ctx_rw = ctx_rec[keep], c_len[keep], ctx_rw[keep]
        ctx_ptr = np.r_[0, np.cumsum(c_len)].astype(np.int64)
        s_len = np.diff(src_ptr)
        out = np.full(n_rec, np.nan)
        if len(ctx_rec) == 0:
            st.undefined_records = n_rec
            return out
        if self.measure in ("embedding", "hybrid"):
            self._ensure_embeddings(np.r_[src_flat, ctx_flat])
        kind = self._compiled
        if kind is not None:
            from kailin.mesh._kernels import doc_kernel

            out, pairs = doc_kernel(kind, self.aggregate == "bma", src_ptr, src_flat, src_w,
                                    ctx_rec, ctx_ptr, ctx_flat, ctx_w, ctx_rw, n_rec,
                                    *self._kernel_args())
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
        ia = src_ptr[:-1][ctx_rec][ctx_of_pair] + si
        ib = ctx_ptr[:-1][ctx_of_pair] + ci
        sims = self.pair_similarities(src_flat[ia], ctx_flat[ib])
        wa, wb = src_w[ia], ctx_w[ib]
        n_ctx = len(ctx_rec)
        valid = ~np.isnan(sims)
        if self.aggregate == "mean":
            w = np.where(valid, wa * wb, 0.0)
            num = np.bincount(ctx_of_pair, weights=w * np.where(valid, sims, 0.0),
                              minlength=n_ctx)
            den = np.bincount(ctx_of_pair, weights=w, minlength=n_ctx)
            with np.errstate(invalid="ignore", divide="ignore"):
                ctx_score = np.where(den > 0, num / den, np.nan)
        else:
            row_key = ctx_of_pair * (s_len.max() + 1) + si
            col_key = ctx_of_pair * (c_len.max() + 1) + ci
            rows = _segment_mean_of_max(row_key, ctx_of_pair, sims, wa, n_ctx)
            cols = _segment_mean_of_max(col_key, ctx_of_pair, sims, wb, n_ctx)
            ctx_score = (rows + cols) / 2
        ok = ~np.isnan(ctx_score)
        tot = np.bincount(ctx_rec[ok], weights=ctx_rw[ok] * ctx_score[ok], minlength=n_rec)
        cnt = np.bincount(ctx_rec[ok], weights=ctx_rw[ok], minlength=n_rec)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)
        st.undefined_records = int(np.isnan(out).sum())
        return out


def _segment_mean_of_max(key: np.ndarray, ctx: np.ndarray, vals: np.ndarray,
                         weights: np.ndarray, n_ctx: int) -> np.ndarray:
    """For each context: the weighted mean over its key groups of the max value in each group
    (NaN values ignored; a group's weight is that of its members, which share it)."""
    u, inv = np.unique(key, return_inverse=True)
    mx = np.full(len(u), -np.inf)
    np.maximum.at(mx, inv, np.where(np.isnan(vals), -np.inf, vals))
    owner = np.zeros(len(u), dtype=np.int64)
    owner[inv] = ctx
    gw = np.zeros(len(u))
    gw[inv] = weights
    ok = np.isfinite(mx)
    tot = np.bincount(owner[ok], weights=gw[ok] * mx[ok], minlength=n_ctx)
    cnt = np.bincount(owner[ok], weights=gw[ok], minlength=n_ctx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)
