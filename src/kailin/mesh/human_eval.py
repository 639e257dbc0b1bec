"""Agreement of MeSH similarity measures with human similarity judgments (Spearman).

Reads term-pair rating files (CSV with two MeSH UI columns and one or more rating columns, as
the classic sets: Hliaoutakis 2005, Pedersen 2007, MiniMayoSRS, MayoSRS) and correlates every
measure's scores with each rating column. Pairs whose descriptors are not in the MeSH build are
skipped and counted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kailin.errors import InputError
from kailin.io import read_text_strict

RATING_COLUMNS = ("score", "mean", "physician", "physicians", "coder", "coders")


@dataclass
class RatedPairs:
    name: str
    a: list[str]
    b: list[str]
    ratings: dict[str, list[float]]


def read_rated_pairs(path: str | Path) -> RatedPairs:
    path = Path(path)
    with io.StringIO(read_text_strict(path, "rated pairs file"), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: no rows")
    cols = {c.lower().replace(" ", ""): c for c in rows[0]}
    m1 = cols.get("mesh1")
    m2 = cols.get("mesh2")
    if m1 is None or m2 is None:
        raise InputError(f"{path}: expected columns 'mesh 1' and 'mesh 2' (MeSH UIs)")
    rating_cols = [cols[c] for c in RATING_COLUMNS if c in cols]
    if not rating_cols:
        raise InputError(f"{path}: no rating column (one of {', '.join(RATING_COLUMNS)})")
    a, b = [r[m1].strip() for r in rows], [r[m2].strip() for r in rows]
    ratings = {c: [float(r[c]) for r in rows] for c in rating_cols}
    return RatedPairs(path.stem, a, b, ratings)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = rankdata(np.asarray(x, float)), rankdata(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def correlations(mesh, files: list[str | Path], scorers: dict[str, object]) -> list[dict]:
    """One row per (file, rating column): n pairs used, skipped, and Spearman per measure."""
    out = []
    for f in files:
        rp = read_rated_pairs(f)
        keep = [i for i, (x, y) in enumerate(zip(rp.a, rp.b, strict=True))
                if x in mesh.vocab.id_of and y in mesh.vocab.id_of]
        ia = np.array([mesh.vocab.id_of[rp.a[i]] for i in keep], dtype=np.int64)
        ib = np.array([mesh.vocab.id_of[rp.b[i]] for i in keep], dtype=np.int64)
        sims = {name: s.pair_similarities(ia, ib) for name, s in scorers.items()}
        for col, vals in rp.ratings.items():
            human = np.array([vals[i] for i in keep])
            row = {"set": rp.name, "rating": col, "n": len(keep),
                   "skipped": len(rp.a) - len(keep)}
            for name, v in sims.items():
                row[name] = spearman(v, human)
            out.append(row)
    return out
