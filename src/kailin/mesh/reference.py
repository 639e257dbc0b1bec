"""A straightforward, per-pair implementation of the KAILIN measure (the authors' approach).

This is the readable specification of ``kailin --faithful`` and the baseline that the
vectorised engine is tested and benchmarked against. It works from plain dictionaries, walks the
descendants of a node recursively each time it needs an IC (as ``cal_mesh_score.py`` does with
one SQLite query per node), and loops over pairs in Python. ``precompute=True`` caches each IC
after its first computation (the "pure Python with precomputed dictionaries" variant).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable


class ReferenceKailin:
    def __init__(self, descriptors: dict[str, list[str]], df: dict[str, float],
                 include_self: bool = False, smoothing: float = 0.0,
                 precompute: bool = False) -> None:
        """``descriptors``: UI -> tree numbers (in file order); ``df``: UI -> document
        frequency."""
        self.trees = descriptors
        self.tree_to_ui = {t: u for u, ts in descriptors.items() for t in ts}
        self.children: dict[str, list[str]] = defaultdict(list)
        for t in self.tree_to_ui:
            if "." in t:
                self.children[t.rsplit(".", 1)[0]].append(t)
        self.cats = {u: {t.split(".")[0] for t in ts} for u, ts in descriptors.items()}
        self.include_self = include_self
        self.counts = {u: df.get(u, 0.0) + smoothing for u in descriptors}
        self.total: dict[str, float] = defaultdict(float)
        for u, cs in self.cats.items():
            for c in cs:
                self.total[c] += self.counts[u]
        self.precompute = precompute
        self._ic_cache: dict[str, dict[str, float]] = {}
        self.max_ic: dict[str, float] = defaultdict(float)
        for u in descriptors:
            for c, v in self.ic(u).items():
                self.max_ic[c] = max(self.max_ic[c], v)
        if not precompute:
            self._ic_cache.clear()

    def _below(self, tree: str, out: set[str]) -> None:
        for ch in self.children.get(tree, ()):
            out.add(self.tree_to_ui[ch])
            self._below(ch, out)

    def descendants(self, ui: str) -> set[str]:
        out: set[str] = set()
        for t in self.trees[ui]:
            self._below(t, out)
        return out

    def ic(self, ui: str) -> dict[str, float]:
        if ui in self._ic_cache:
            return self._ic_cache[ui]
        d = self.descendants(ui)
        if self.include_self:
            d.add(ui)
        res = {}
        for c in self.cats[ui]:
            # Σ p_c(x) computed as (Σ df(x)) / Z_c: exact for integer counts, so a sum that is
            # mathematically 1 is exactly 1 (IC 0), not float noise that Lin would amplify
            z = self.total[c]
            s = sum(self.counts[x] for x in d if c in self.cats[x]) / z if z > 0 else 0.0
            res[c] = -math.log10(s) if 0 < s <= 1 else 0.0
        self._ic_cache[ui] = res
        return res

    def lca(self, a: str, b: str) -> str | None:
        best = ""
        for t1 in self.trees[a]:
            for t2 in self.trees[b]:
                p1, p2 = t1.split("."), t2.split(".")
                k = 0
                while k < min(len(p1), len(p2)) and p1[k] == p2[k]:
                    k += 1
                pref = ".".join(p1[:k])
                if len(pref) > len(best):
                    best = pref
        return self.tree_to_ui.get(best) if best else None

    def similarity(self, a: str, b: str) -> float:
        if a == b:
            return 1.0
        lca = self.lca(a, b)
        if lca is None:
            return 0.0
        ic_l, ic_a, ic_b = self.ic(lca), self.ic(a), self.ic(b)
        vals: list[float] = []
        for c in ic_l:
            if c not in self.cats[a] or c not in self.cats[b]:
                continue
            mx = self.max_ic.get(c, 0.0)
            if mx <= 0:
                continue
            ictmp = ic_l[c] / mx
            s = ic_a.get(c, 0.0) + ic_b.get(c, 0.0)
            if s > 0:
                lin = 2 * ictmp / s
                jiang = 1 - min(1, s - 2 * ictmp)
                rel = lin * (1 - 10 ** (-ictmp * mx))
                vals += [min(max(v, 0.0), 1.0) for v in (lin, jiang, rel)]
        return sum(vals) / len(vals) if vals else 0.0

    def set_similarity(self, a: Iterable[str], b: Iterable[str]) -> float:
        a = [x for x in a if x in self.trees]
        b = [x for x in b if x in self.trees]
        if not a or not b:
            return math.nan
        return sum(self.similarity(x, y) for x in a for y in b) / (len(a) * len(b))

    def doc_score(self, source: list[str], contexts: list[list[str]]) -> float:
        vals = [self.set_similarity(source, c) for c in contexts]
        vals = [v for v in vals if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan
