"""The MeSH hierarchy over tree numbers, as integer arrays.

Every tree number gets an id (its rank in string order, so a subtree is a contiguous id range:
the tree numbers below ``t`` are exactly those that start with ``t + '.'``). For each tree number
we keep its descriptor, depth (number of ``.``-separated parts), top-level category (``C04``) and
the ids of all its prefixes (``prefix[t, d]`` = the ancestor at depth ``d + 1``). A prefix that is
not itself a tree number (an incomplete mtrees file) gets a virtual id with no descriptor.

With those arrays, the common prefix of two tree numbers is a row comparison, the lowest common
ancestor is a lookup, and descendants are id ranges: no string work on any hot path.
"""

from __future__ import annotations

import bisect

import numpy as np

from kailin.mesh.vocabulary import MeshVocabulary

NO_DESCRIPTOR = -1


class MeshHierarchy:
    def __init__(self, vocab: MeshVocabulary) -> None:
        self.vocab = vocab
        n = len(vocab)
        pairs = sorted(
            (t, i) for i, trees in enumerate(vocab.tree_number_lists) for t in trees
        )
        known = {t for t, _ in pairs}
        virtual = sorted(
            {
                ".".join(t.split(".")[:k])
                for t in known
                for k in range(1, t.count(".") + 1)
            }
            - known
        )
        all_tn = sorted(list(known) + virtual)
        self.tree_numbers: list[str] = all_tn
        self.tn_id: dict[str, int] = {t: k for k, t in enumerate(all_tn)}
        m = len(all_tn)
        self.tn_desc = np.full(m, NO_DESCRIPTOR, dtype=np.int32)
        for t, i in pairs:
            self.tn_desc[self.tn_id[t]] = i
        self.tn_depth = np.array([t.count(".") + 1 for t in all_tn], dtype=np.int16)
        self.max_depth = int(self.tn_depth.max()) if m else 0
        self.prefix = np.full((m, max(self.max_depth, 1)), -1, dtype=np.int32)
        for k, t in enumerate(all_tn):
            parts = t.split(".")
            for d in range(len(parts)):
                self.prefix[k, d] = self.tn_id[".".join(parts[: d + 1])]
        # unique negative padding per row so that padding never compares equal across rows
        pad = self.prefix < 0
        self.prefix[pad] = -(np.nonzero(pad)[0] + 2)
        cats = sorted({t.split(".")[0] for t in all_tn})
        self.categories: list[str] = cats
        self.cat_id: dict[str, int] = {c: k for k, c in enumerate(cats)}
        self.tn_cat = np.array([self.cat_id[t.split(".")[0]] for t in all_tn], dtype=np.int16)
        # subtree range [tn_lo, tn_hi): the tree numbers strictly below are tn_lo+1 .. tn_hi-1
        self.tn_hi = np.array(
            [bisect.bisect_left(all_tn, t + "/", k) for k, t in enumerate(all_tn)],
            dtype=np.int64,
        )  # '/' sorts right after '.', so t + '/' bounds every 't.…'
        self._build_lcp_table()
        # descriptor -> tree numbers (CSR, in the vocabulary's order)
        lists = [[self.tn_id[t] for t in trees] for trees in vocab.tree_number_lists]
        self.desc_tn_ptr = np.zeros(n + 1, dtype=np.int64)
        self.desc_tn_ptr[1:] = np.cumsum([len(x) for x in lists])
        self.desc_tn = np.array([k for x in lists for k in x], dtype=np.int32)
        self.desc_ntn = np.diff(self.desc_tn_ptr).astype(np.int32)
        # descriptor -> categories (boolean matrix; a descriptor has few categories)
        self.desc_cat = np.zeros((n, len(cats)), dtype=bool)
        if len(self.desc_tn):
            owner = np.repeat(np.arange(n), self.desc_ntn)
            self.desc_cat[owner, self.tn_cat[self.desc_tn]] = True
        # descriptor -> categories (CSR), for expanding a descriptor's few categories
        r, c = np.nonzero(self.desc_cat)
        self.desc_cat_ptr = np.zeros(n + 1, dtype=np.int64)
        self.desc_cat_ptr[1:] = np.cumsum(np.bincount(r, minlength=n))
        self.desc_cat_list = c.astype(np.int64)

    def _build_lcp_table(self) -> None:
        """Sparse table over the common-prefix depth of neighbours in sorted order: the common
        prefix of tree numbers ``u < v`` is the minimum over ``lcp[u+1 .. v]`` (tree numbers have
        fixed-width parts, so string order is part-wise order), answered in O(1)."""
        m = len(self.tree_numbers)
        lcp = np.zeros(m, dtype=np.int8)
        if m > 1:
            eq = self.prefix[1:] == self.prefix[:-1]
            lcp[1:] = np.where(eq.all(axis=1), eq.shape[1], np.argmin(eq, axis=1))
        levels = [lcp]
        k = 1
        while (1 << k) <= m:
            prev = levels[-1]
            half = 1 << (k - 1)
            nxt = prev.copy()
            nxt[: m - half] = np.minimum(prev[: m - half], prev[half:])
            levels.append(nxt)
            k += 1
        self._sparse = np.stack(levels)  # (levels, m)
        self._log2 = np.zeros(m + 2, dtype=np.int64)
        if m + 2 > 2:
            self._log2[2:] = np.floor(np.log2(np.arange(2, m + 2))).astype(np.int64)

    # --- per-descriptor navigation (UIs in, UIs out) --------------------------------------------
    def _ids(self, ui: str) -> np.ndarray:
        i = self.vocab.id_of[ui]
        return self.desc_tn[self.desc_tn_ptr[i] : self.desc_tn_ptr[i + 1]]

    def _desc_of_tns(self, tns: np.ndarray) -> set[str]:
        d = self.tn_desc[tns]
        return {self.vocab.uis[i] for i in d[d >= 0]}

    def categories_of(self, ui: str) -> list[str]:
        """Top-level categories (``C04``, ``D12``...) of a descriptor's tree numbers."""
        return sorted({self.categories[c] for c in self.tn_cat[self._ids(ui)]})

    def depth(self, ui: str) -> int:
        """Depth of the shallowest tree number (``C04`` is 1); 0 for a descriptor with none."""
        tns = self._ids(ui)
        return int(self.tn_depth[tns].min()) if len(tns) else 0

    def parents(self, ui: str, category: str | None = None) -> set[str]:
        tns = [t for t in self._ids(ui) if self.tn_depth[t] > 1]
        return self._desc_of_tns(
            np.array([self.prefix[t, self.tn_depth[t] - 2] for t in tns
                      if category is None or self.categories[self.tn_cat[t]] == category],
                     dtype=np.int64)
        )

    def children(self, ui: str, category: str | None = None) -> set[str]:
        out: list[int] = []
        for t in self._ids(ui):
            if category is not None and self.categories[self.tn_cat[t]] != category:
                continue
            below = np.arange(t + 1, self.tn_hi[t])
            out.extend(below[self.tn_depth[below] == self.tn_depth[t] + 1])
        return self._desc_of_tns(np.array(out, dtype=np.int64))

    def ancestors(self, ui: str, category: str | None = None) -> set[str]:
        """Descriptors on the path to the root of any of ``ui``'s tree numbers (``ui`` excluded)."""
        out: list[int] = []
        for t in self._ids(ui):
            if category is not None and self.categories[self.tn_cat[t]] != category:
                continue
            out.extend(int(x) for x in self.prefix[t, : self.tn_depth[t] - 1])
        return self._desc_of_tns(np.array(out, dtype=np.int64)) - {ui}

    def descendant_ids(self, i: int) -> np.ndarray:
        """Descriptor ids strictly below any tree number of descriptor ``i`` (sorted, unique)."""
        lo = self.desc_tn[self.desc_tn_ptr[i] : self.desc_tn_ptr[i + 1]]
        if len(lo) == 0:
            return np.zeros(0, dtype=np.int32)
        spans = [np.arange(t + 1, self.tn_hi[t]) for t in lo]
        d = self.tn_desc[np.concatenate(spans)]
        return np.unique(d[d >= 0])

    def descendants(self, ui: str, category: str | None = None) -> set[str]:
        """Descriptors with a tree number strictly below one of ``ui``'s tree numbers."""
        if category is None:
            return {self.vocab.uis[j] for j in self.descendant_ids(self.vocab.id_of[ui])}
        out: list[np.ndarray] = []
        for t in self._ids(ui):
            if self.categories[self.tn_cat[t]] == category:
                out.append(np.arange(t + 1, self.tn_hi[t]))
        return self._desc_of_tns(np.concatenate(out)) if out else set()

    def lca(self, a: str, b: str) -> str | None:
        """KAILIN's lowest common ancestor: the descriptor whose tree number is the longest common
        prefix (whole parts) over all pairs of tree numbers of ``a`` and ``b``; the first such pair
        in tree-number order of ``a`` then ``b`` wins a tie. ``None`` when no first part matches
        (or the prefix is not a descriptor's tree number)."""
        ia, ib = self.vocab.id_of[a], self.vocab.id_of[b]
        node = lca_nodes(self, np.array([ia]), np.array([ib]))[0][0]
        if node < 0:
            return None
        d = self.tn_desc[node]
        return None if d < 0 else self.vocab.uis[d]


def expand_tn_pairs(h: MeshHierarchy, a: np.ndarray, b: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (tree number of a[i], tree number of b[i]) pairs, in the order a-major, b-minor.

    Returns ``(pair_index, tn_a, tn_b)``; descriptors without tree numbers contribute nothing.
    """
    na = h.desc_ntn[a].astype(np.int64)
    nb = h.desc_ntn[b].astype(np.int64)
    cnt = na * nb
    total = int(cnt.sum())
    pair = np.repeat(np.arange(len(a)), cnt)
    if total == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    start = np.cumsum(cnt) - cnt
    local = np.arange(total) - np.repeat(start, cnt)
    nbp = nb[pair]
    ja = local // nbp
    jb = local - ja * nbp
    tn_a = h.desc_tn[h.desc_tn_ptr[a][pair] + ja]
    tn_b = h.desc_tn[h.desc_tn_ptr[b][pair] + jb]
    return pair, tn_a, tn_b


def common_depth(h: MeshHierarchy, tn_a: np.ndarray, tn_b: np.ndarray) -> np.ndarray:
    """Number of leading tree-number parts shared by each pair (0 when the first part differs)."""
    if len(tn_a) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = np.minimum(tn_a, tn_b)
    hi = np.maximum(tn_a, tn_b)
    same = lo == hi
    start = np.where(same, lo, lo + 1)
    k = h._log2[hi - start + 1]
    m = h._sparse.shape[1]
    flat = h._sparse.reshape(-1)
    d = np.minimum(flat[k * m + start], flat[k * m + hi - (1 << k) + 1]).astype(np.int64)
    return np.where(same, h.tn_depth[lo], d)


def lca_nodes(h: MeshHierarchy, a: np.ndarray, b: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """For each pair, the tree-number id of KAILIN's LCA (-1 when none) and its depth."""
    n = len(a)
    node = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    pair, tn_a, tn_b = expand_tn_pairs(h, a, b)
    if len(pair) == 0:
        return node, depth
    d = common_depth(h, tn_a, tn_b)
    # first maximum per pair: maximise depth, then the earliest position
    order_key = d * (len(pair) + 1) + (len(pair) - np.arange(len(pair)))
    best = np.full(n, -1, dtype=np.int64)
    np.maximum.at(best, pair, order_key)
    has = best >= 0
    pos = len(pair) - (best[has] % (len(pair) + 1))
    dd = d[pos]
    ok = dd > 0
    idx = np.nonzero(has)[0][ok]
    node[idx] = h.prefix[tn_a[pos[ok]], dd[ok] - 1]
    depth[idx] = dd[ok]
    return node, depth
