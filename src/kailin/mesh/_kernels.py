"""Compiled (numba) kernels for the two KAILIN measures and the batched document score.

Each kernel is the loop form of the numpy code in :mod:`kailin.mesh.measures` (which stays as
the fallback when numba is not installed, and as a cross-check in the tests): per pair, walk the
tree-number pairs, find the common prefix by comparing prefix ids with an early exit, and apply
the formula. The document kernel scores records without materialising pair arrays. Compiled
code is cached on disk (``cache=True``), so only the first call in an environment pays the JIT.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        def wrap(f):
            return f

        return wrap(args[0]) if args and callable(args[0]) else wrap


FAITHFUL = 0
DEFAULT = 1
RESNIK = 2
LIN = 3
JIANG = 4
EMBEDDING = 5
HYBRID = 6
#: measure name -> kernel kind (the measures that the compiled path covers)
KINDS = {"kailin": DEFAULT, "resnik": RESNIK, "lin": LIN, "jiang": JIANG,
         "embedding": EMBEDDING, "hybrid": HYBRID}
LN10 = math.log(10.0)


@njit(cache=True, nogil=True)
def _common(prefix, depth, ta, tb):
    n = min(depth[ta], depth[tb])
    d = 0
    while d < n and prefix[ta, d] == prefix[tb, d]:
        d += 1
    return d


def category_masks(has_cat: np.ndarray) -> np.ndarray:
    """(N, W) uint64 bit masks of each descriptor's top-level categories: two descriptors can
    only have a common tree-number prefix when their masks intersect."""
    n, c = has_cat.shape
    w = max(1, (c + 63) // 64)
    out = np.zeros((n, w), dtype=np.uint64)
    for k in range(c):
        out[has_cat[:, k], k // 64] |= np.uint64(1) << np.uint64(k % 64)
    return out


@njit(cache=True, nogil=True)
def _share_category(masks, a, b):
    for w in range(masks.shape[1]):  # noqa: SIM110 - an explicit loop compiles in numba
        if masks[a, w] & masks[b, w]:
            return True
    return False


@njit(cache=True, nogil=True)
def _sim_faithful(a, b, tn_ptr, tns, prefix, depth, tn_desc, cat_ptr, cat_list, has_cat, ic,
                  max_ic, masks):
    if a == b:
        return 1.0
    if not _share_category(masks, a, b):
        return 0.0
    best_d = 0
    best_t = -1
    for i in range(tn_ptr[a], tn_ptr[a + 1]):
        ta = tns[i]
        for j in range(tn_ptr[b], tn_ptr[b + 1]):
            d = _common(prefix, depth, ta, tns[j])
            if d > best_d:
                best_d = d
                best_t = ta
    if best_d == 0:
        return 0.0
    lca = tn_desc[prefix[best_t, best_d - 1]]
    if lca < 0:
        return 0.0
    total = 0.0
    count = 0
    for k in range(cat_ptr[lca], cat_ptr[lca + 1]):
        c = cat_list[k]
        if not (has_cat[a, c] and has_cat[b, c]):
            continue
        mx = max_ic[c]
        if mx <= 0:
            continue
        ictmp = ic[lca, c] / mx
        ia = ic[a, c]
        ib = ic[b, c]
        s = (0.0 if math.isnan(ia) else ia) + (0.0 if math.isnan(ib) else ib)
        if s > 0:
            lin = 2 * ictmp / s
            jiang = 1 - min(1.0, s - 2 * ictmp)
            rel = lin * (1 - 10.0 ** (-ictmp * mx))
            total += min(max(lin, 0.0), 1.0) + min(max(jiang, 0.0), 1.0) + min(max(rel, 0.0),
                                                                                   1.0)
            count += 3
    return total / count if count > 0 else 0.0


@njit(cache=True, nogil=True)
def _sim_default(a, b, tn_ptr, tns, prefix, depth, chain_ic, gic, gmax, masks):
    if a == b:
        return 1.0
    m = 0.0
    if _share_category(masks, a, b):
        for i in range(tn_ptr[a], tn_ptr[a + 1]):
            ta = tns[i]
            for j in range(tn_ptr[b], tn_ptr[b + 1]):
                d = _common(prefix, depth, ta, tns[j])
                if d > 0:
                    v = chain_ic[prefix[ta, d - 1]]
                    if v > m:
                        m = v
    s = gic[a] + gic[b]
    lin = 2 * m / s if s > 0 else 0.0
    lin = min(max(lin, 0.0), 1.0)
    jiang = min(max(1 - (s - 2 * m) / (2 * gmax), 0.0), 1.0)
    rel = lin * (1 - math.exp(-m * LN10)) if m > 0 else 0.0
    return (lin + jiang + rel) / 3


@njit(cache=True, nogil=True)
def _mica(a, b, tn_ptr, tns, prefix, depth, chain_ic, masks):
    """IC of the most informative common ancestor of ``a`` and ``b`` (0 when none).

    ``_sim_default`` keeps its own copy of this loop: calling this function from it made the
    old default 25% slower in ``benchmarks/bench_mesh.py`` (3.7M -> 2.9M pairs/s)."""
    m = 0.0
    if _share_category(masks, a, b):
        for i in range(tn_ptr[a], tn_ptr[a + 1]):
            ta = tns[i]
            for j in range(tn_ptr[b], tn_ptr[b + 1]):
                d = _common(prefix, depth, ta, tns[j])
                if d > 0:
                    v = chain_ic[prefix[ta, d - 1]]
                    if v > m:
                        m = v
    return m


@njit(cache=True, nogil=True)
def _sim_ic(kind, a, b, tn_ptr, tns, prefix, depth, chain_ic, gic, gmax, masks):
    """Resnik (normalised by MaxIC), Lin and Jiang-Conrath, as in ``measures.ic_measures``."""
    if a == b:
        return gic[a] / gmax if kind == 2 else 1.0
    m = _mica(a, b, tn_ptr, tns, prefix, depth, chain_ic, masks)
    if kind == 2:
        return m / gmax
    s = gic[a] + gic[b]
    if kind == 3:
        return min(max(2 * m / s, 0.0), 1.0) if s > 0 else 0.0
    return min(max(1 - (s - 2 * m) / (2 * gmax), 0.0), 1.0)


@njit(cache=True, nogil=True, fastmath=True)
def _cosine(emb, a, b):
    """Dot product of two rows of ``emb`` (L2-normalised descriptor vectors)."""
    acc = np.float32(0.0)
    for i in range(emb.shape[1]):
        acc += emb[a, i] * emb[b, i]
    return float(acc)


@njit(cache=True, nogil=True)
def _sim(kind, a, b, tn_ptr, tns, prefix, depth, tn_desc, cat_ptr, cat_list, has_cat, ic,
         max_ic, chain_ic, gic, gmax, masks, emb, alpha):
    if kind == 5:
        return _cosine(emb, a, b)
    if kind == 6:
        r = _sim_ic(2, a, b, tn_ptr, tns, prefix, depth, chain_ic, gic, gmax, masks)
        return alpha * r + (1 - alpha) * _cosine(emb, a, b)
    if kind == 0:
        return _sim_faithful(a, b, tn_ptr, tns, prefix, depth, tn_desc, cat_ptr, cat_list,
                             has_cat, ic, max_ic, masks)
    if kind == 1:
        return _sim_default(a, b, tn_ptr, tns, prefix, depth, chain_ic, gic, gmax, masks)
    return _sim_ic(kind, a, b, tn_ptr, tns, prefix, depth, chain_ic, gic, gmax, masks)


@njit(cache=True, nogil=True)
def pair_kernel(kind, a_arr, b_arr, tn_ptr, tns, prefix, depth, tn_desc, cat_ptr, cat_list,
                has_cat, ic, max_ic, chain_ic, gic, gmax, masks, emb, alpha):
    out = np.empty(len(a_arr))
    for i in range(len(a_arr)):
        out[i] = _sim(kind, a_arr[i], b_arr[i], tn_ptr, tns, prefix, depth, tn_desc, cat_ptr,
                      cat_list, has_cat, ic, max_ic, chain_ic, gic, gmax, masks, emb, alpha)
    return out


@njit(cache=True, nogil=True)
def doc_kernel(kind, bma, src_ptr, src_ids, src_w, ctx_rec, ctx_ptr, ctx_ids, ctx_w, ctx_rw,
               n_rec, tn_ptr, tns, prefix, depth, tn_desc, cat_ptr, cat_list, has_cat, ic,
               max_ic, chain_ic, gic, gmax, masks, emb, alpha):
    """Per record: the weighted mean over its (non-empty) contexts of the set similarity with
    its source.

    ``src_ptr``/``src_ids``: CSR of source descriptor ids per record, ``src_w`` a weight per
    entry; ``ctx_ptr``/``ctx_ids``/``ctx_w``: the same per context, ``ctx_rec[j]`` its record and
    ``ctx_rw[j]`` its weight in the record's mean (retrieval rank). Set similarity: the weighted
    all-pairs mean ``sum w_a w_b s / sum w_a w_b``, or with ``bma`` the weighted best-match
    average ``(sum_a w_a max_b s / sum w_a + sum_b w_b max_a s / sum w_b) / 2``. Returns
    (scores, pairs)."""
    tot = np.zeros(n_rec)
    cnt = np.zeros(n_rec)
    pairs = 0
    maxs = 1
    for r in range(n_rec):
        maxs = max(maxs, src_ptr[r + 1] - src_ptr[r])
    maxc = 1
    for j in range(len(ctx_rec)):
        maxc = max(maxc, ctx_ptr[j + 1] - ctx_ptr[j])
    buf = np.empty((maxs, maxc))
    # embedding kinds: the cosine block of a (source, context) pair is one small matrix product
    # (BLAS) of the gathered vectors; the source's vectors are gathered once per record
    dense = kind == 5 or kind == 6
    dim = emb.shape[1] if dense else 1
    sbuf = np.zeros((maxs, dim), dtype=np.float32)
    cbuf = np.zeros((maxc, dim), dtype=np.float32)
    cos = np.zeros((maxs, maxc), dtype=np.float32)
    last_r = -1
    for j in range(len(ctx_rec)):
        r = ctx_rec[j]
        s0, s1 = src_ptr[r], src_ptr[r + 1]
        c0, c1 = ctx_ptr[j], ctx_ptr[j + 1]
        ns, nc = s1 - s0, c1 - c0
        if ns == 0 or nc == 0:
            continue
        pairs += ns * nc
        if dense:
            if r != last_r:
                for x in range(ns):
                    sbuf[x, :] = emb[src_ids[s0 + x]]
                last_r = r
            for y in range(nc):
                cbuf[y, :] = emb[ctx_ids[c0 + y]]
            cos[:ns, :nc] = np.dot(sbuf[:ns], cbuf[:nc].T)
        acc = 0.0
        wsum = 0.0
        for x in range(ns):
            a = src_ids[s0 + x]
            wa = src_w[s0 + x]
            for y in range(nc):
                if kind == 5:
                    v = float(cos[x, y])
                elif kind == 6:
                    v = alpha * _sim_ic(2, a, ctx_ids[c0 + y], tn_ptr, tns, prefix, depth,
                                        chain_ic, gic, gmax, masks) \
                        + (1 - alpha) * float(cos[x, y])
                else:
                    v = _sim(kind, a, ctx_ids[c0 + y], tn_ptr, tns, prefix, depth, tn_desc,
                             cat_ptr, cat_list, has_cat, ic, max_ic, chain_ic, gic, gmax, masks,
                             emb, alpha)
                buf[x, y] = v
                w = wa * ctx_w[c0 + y]
                acc += w * v
                wsum += w
        if bma:
            rows = 0.0
            rw = 0.0
            for x in range(ns):
                m = buf[x, 0]
                for y in range(1, nc):
                    m = max(m, buf[x, y])
                rows += src_w[s0 + x] * m
                rw += src_w[s0 + x]
            cols = 0.0
            cw = 0.0
            for y in range(nc):
                m = buf[0, y]
                for x in range(1, ns):
                    m = max(m, buf[x, y])
                cols += ctx_w[c0 + y] * m
                cw += ctx_w[c0 + y]
            if rw <= 0 or cw <= 0:
                continue
            score = (rows / rw + cols / cw) / 2
        else:
            if wsum <= 0:
                continue
            score = acc / wsum
        tot[r] += ctx_rw[j] * score
        cnt[r] += ctx_rw[j]
    out = np.full(n_rec, np.nan)
    for r in range(n_rec):
        if cnt[r] > 0:
            out[r] = tot[r] / cnt[r]
    return out, pairs
