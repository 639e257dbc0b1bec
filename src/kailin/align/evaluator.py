"""The m-KAILIN question-evaluation agent: learn the MeSH "cold-start" preferences, then judge
pairs without MeSH.

Model: a pairwise logistic (Bradley-Terry) model over features of a (source abstract, question,
retrieved contexts) triple. The features come from a sentence encoder (the packaged
all-MiniLM-L6-v2 by default) plus a few surface statistics:

=====================  =============================================================
``q_src``              cosine(question, source abstract)
``q_ctx_mean/max``     mean / max cosine(question, context)
``src_ctx_mean/max``   mean / max cosine(source abstract, context) - how on-topic the
                       retrieved contexts are, the quantity MeSH similarity stands for
``ctx_ctx``            mean pairwise cosine among the contexts (coherence)
``q_len``              log(1 + words in the question)
``q_mark``             the question ends with "?"
``overlap``            Jaccard overlap of question and source word sets
``n_ctx``              number of contexts
=====================  =============================================================

P(A better than B) = sigmoid(w . (z(A) - z(B))), z = standardised features; trained with
L2-regularised Newton steps on every pair of a PMID's questions whose MeSH scores differ (both
orders, so no intercept is needed). ``u = w . z`` is a per-question utility, so the evaluator can
replace the MeSH score column and ``kailin prefer`` keeps working unchanged
(:func:`relabel_scores`: ``score = sigmoid(u)``).

Contexts are the retrieved documents' titles (``context_titles`` in the scores table). The source
abstract is taken from the KAILIN prompt (or the whole prompt for other templates).

Agreement is measured on held-out PMIDs (never seen in training): the share of held-out pairs whose
preferred question matches the MeSH label.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.io import read_parquet, write_json_atomic

log = logging.getLogger(__name__)

FEATURES = ("q_src", "q_ctx_mean", "q_ctx_max", "src_ctx_mean", "src_ctx_max", "ctx_ctx",
            "q_len", "q_mark", "overlap", "n_ctx")
MODEL_FILE = "evaluator.safetensors"
META_FILE = "evaluator.json"
_WORD = re.compile(r"[a-z0-9]+")


def source_from_prompt(prompt: str) -> str:
    """The abstract inside a KAILIN prompt (the prompt itself for other templates)."""
    from kailin.align.sft import KAILIN_PROMPT

    pre, post = KAILIN_PROMPT.split("{abstract}")
    if prompt.startswith(pre) and prompt.endswith(post):
        return prompt[len(pre): len(prompt) - len(post)]
    m = re.search(r"「(.*)」", prompt, flags=re.S)
    return m.group(1) if m else prompt


class FeatureExtractor:
    """Features of (source, question, contexts) triples, encoded in one batch."""

    def __init__(self, model: str | None = None, encoder: Any = None) -> None:
        self.model = model
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from kailin.retrieval.dense import Encoder

            self._encoder = Encoder(self.model, batch_size=64)
        return self._encoder

    def features(self, sources: list[str], questions: list[str], contexts: list[list[str]]
                 ) -> np.ndarray:
        n = len(questions)
        uniq: dict[str, int] = {}
        for t in [*sources, *questions, *(c for cs in contexts for c in cs)]:
            uniq.setdefault(t, len(uniq))
        todo = [t for t in uniq if t not in self._cache]
        if todo:  # sources repeat across generators: encode each text once
            for t, v in zip(todo, self.encoder.encode(todo), strict=True):
                self._cache[t] = v
        vecs = (np.stack([self._cache[t] for t in uniq]) if uniq
                else np.zeros((0, 1), np.float32))
        X = np.zeros((n, len(FEATURES)), dtype=np.float64)
        for i in range(n):
            s = vecs[uniq[sources[i]]]
            q = vecs[uniq[questions[i]]]
            cs = [c for c in contexts[i] if c]
            C = vecs[[uniq[c] for c in cs]] if cs else np.zeros((0, vecs.shape[1]))
            qc = C @ q if len(C) else np.zeros(1)
            sc = C @ s if len(C) else np.zeros(1)
            if len(C) > 1:
                G = C @ C.T
                cc = (G.sum() - np.trace(G)) / (len(C) * (len(C) - 1))
            else:
                cc = 0.0
            qw = set(_WORD.findall(questions[i].lower()))
            sw = set(_WORD.findall(sources[i].lower()))
            X[i] = (
                float(q @ s), float(qc.mean()), float(qc.max()), float(sc.mean()),
                float(sc.max()), float(cc), math.log1p(len(qw)),
                float(questions[i].strip().endswith("?")),
                len(qw & sw) / max(1, len(qw | sw)), float(len(cs)),
            )
        return X

    def table_features(self, t: pa.Table) -> np.ndarray:
        for c in ("prompt", "question"):
            if c not in t.column_names:
                raise InputError(f"scores table: missing column {c!r}")
        ctx = (t["context_titles"].to_pylist() if "context_titles" in t.column_names
               else [[] for _ in range(t.num_rows)])
        return self.features(
            [source_from_prompt(p or "") for p in t["prompt"].to_pylist()],
            [q or "" for q in t["question"].to_pylist()],
            [list(c or []) for c in ctx],
        )


@dataclass
class PairwiseLogistic:
    """Bradley-Terry / pairwise logistic regression over standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray

    def utility(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale) @ self.weights

    def prob_first_better(self, XA: np.ndarray, XB: np.ndarray) -> np.ndarray:
        return _sigmoid(self.utility(XA) - self.utility(XB))

    @classmethod
    def fit(cls, X: np.ndarray, pairs: np.ndarray, l2: float = 1.0, iters: int = 50
            ) -> PairwiseLogistic:
        """``pairs``: int array (m, 2) of row indices (winner, loser)."""
        if len(pairs) == 0:
            raise InputError("no training pairs (need PMIDs with two differently scored questions)")
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-9] = 1.0
        Z = (X - mean) / scale
        D = Z[pairs[:, 0]] - Z[pairs[:, 1]]
        D = np.vstack([D, -D])
        y = np.concatenate([np.ones(len(pairs)), np.zeros(len(pairs))])
        w = np.zeros(X.shape[1])
        for _ in range(iters):  # Newton-Raphson on the L2-penalised log-likelihood
            p = _sigmoid(D @ w)
            g = D.T @ (p - y) + l2 * w
            H = (D * (p * (1 - p))[:, None]).T @ D + l2 * np.eye(len(w))
            step = np.linalg.solve(H, g)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(mean, scale, w)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def labelled_pairs(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (winner, loser) row indices, pmid per pair) from MeSH scores: every two non-empty
    questions of a PMID with finite, different scores."""
    pm = t["pmid"].to_pylist()
    sc = t["score"].to_pylist()
    qs = t["question"].to_pylist()
    groups: dict[int, list[int]] = {}
    for i, (p, s, q) in enumerate(zip(pm, sc, qs, strict=True)):
        if q and q.strip() and s is not None and not math.isnan(s):
            groups.setdefault(int(p), []).append(i)
    pairs, pmids = [], []
    for p, rows in groups.items():
        for a, b in combinations(rows, 2):
            if sc[a] == sc[b]:
                continue
            pairs.append((a, b) if sc[a] > sc[b] else (b, a))
            pmids.append(p)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(pmids, dtype=np.int64)


def _heldout(pmid: int, fraction: float, seed: int) -> bool:
    h = hashlib.sha256(f"{seed}:{pmid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def train_evaluator(
    scores: str | os.PathLike[str] | pa.Table,
    out_dir: str | os.PathLike[str],
    test_fraction: float = 0.2,
    seed: int = 0,
    l2: float = 1.0,
    model: str | None = None,
    extractor: FeatureExtractor | None = None,
) -> dict[str, Any]:
    """Train on the MeSH labels of a ``kailin score`` output, report held-out agreement, save."""
    t = scores if isinstance(scores, pa.Table) else read_parquet(scores)
    for c in ("pmid", "prompt", "question", "score"):
        if c not in t.column_names:
            raise InputError(f"{scores if not isinstance(scores, pa.Table) else 'scores'}: "
                             f"missing column {c!r} (give `kailin score` output)")
    if not 0 <= test_fraction < 1:
        raise InputError(f"test fraction {test_fraction}: must lie in [0, 1)")
    pairs, pair_pmids = labelled_pairs(t)
    if len(pairs) == 0:
        raise InputError("scores hold no PMID with two differently scored questions")
    ext = extractor or FeatureExtractor(model)
    X = ext.table_features(t)
    test_mask = np.array([_heldout(int(p), test_fraction, seed) for p in pair_pmids], dtype=bool)
    if test_fraction > 0 and (test_mask.all() or not test_mask.any()):
        # tiny inputs: put at least one PMID on each side
        uniq = sorted(set(pair_pmids.tolist()))
        if len(uniq) < 2:
            raise InputError("need at least two PMIDs with labelled pairs to hold some out")
        n_test = max(1, round(test_fraction * len(uniq)))
        test_set = set(uniq[:n_test])
        test_mask = np.array([int(p) in test_set for p in pair_pmids], dtype=bool)
    train_pairs, test_pairs = pairs[~test_mask], pairs[test_mask]
    mdl = PairwiseLogistic.fit(X, train_pairs, l2=l2)
    metrics = {
        "train_pairs": len(train_pairs),
        "test_pairs": len(test_pairs),
        "train_pmids": len(set(pair_pmids[~test_mask].tolist())),
        "test_pmids": len(set(pair_pmids[test_mask].tolist())),
        "train_agreement": agreement(mdl, X, train_pairs),
        "test_agreement": agreement(mdl, X, test_pairs) if len(test_pairs) else None,
        # a one-feature reference: the question closest to its source abstract wins
        "test_agreement_q_src_only": (
            float(np.mean(X[test_pairs[:, 0], 0] > X[test_pairs[:, 1], 0]))
            if len(test_pairs) else None),
    }
    meta = {
        "kind": "pairwise_logistic",
        "features": list(FEATURES),
        "encoder": model,  # None: the packaged default (resolved again where it is loaded)
        "encoder_resolved": str(getattr(ext.encoder, "model_name", model)),
        "l2": l2,
        "seed": seed,
        "test_fraction": test_fraction,
        "metrics": metrics,
        "weights": dict(zip(FEATURES, map(float, mdl.weights), strict=True)),
    }
    save_evaluator(mdl, meta, out_dir)
    return meta


def agreement(mdl: PairwiseLogistic, X: np.ndarray, pairs: np.ndarray) -> float:
    """Share of (winner, loser) pairs the model orders the same way (ties count half)."""
    if len(pairs) == 0:
        return float("nan")
    u = mdl.utility(X)
    d = u[pairs[:, 0]] - u[pairs[:, 1]]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def save_evaluator(mdl: PairwiseLogistic, meta: dict[str, Any], out_dir: str | os.PathLike[str]
                   ) -> None:
    from safetensors.numpy import save_file

    from kailin.io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE) as tmp:
        save_file({"mean": mdl.mean, "scale": mdl.scale, "weights": mdl.weights}, str(tmp))
    write_json_atomic(out / META_FILE, meta)


def load_evaluator(path: str | os.PathLike[str]) -> tuple[PairwiseLogistic, dict[str, Any]]:
    p = Path(path)
    if not (p / META_FILE).is_file() or not (p / MODEL_FILE).is_file():
        raise InputError(f"{p}: not an evaluator directory (run `kailin train evaluator`)")
    from safetensors.numpy import load_file

    meta = json.loads((p / META_FILE).read_text())
    w = load_file(str(p / MODEL_FILE))
    return PairwiseLogistic(w["mean"], w["scale"], w["weights"]), meta


def relabel_scores(t: pa.Table, evaluator_dir: str | os.PathLike[str],
                   extractor: FeatureExtractor | None = None) -> pa.Table:
    """Replace ``score`` by the evaluator's ``sigmoid(utility)`` (the MeSH score, if any, moves
    to ``mesh_score``); empty questions get NaN."""
    mdl, meta = load_evaluator(evaluator_dir)
    ext = extractor or FeatureExtractor(meta.get("encoder"))
    X = ext.table_features(t)
    s = _sigmoid(mdl.utility(X))
    empty = np.array([not (q and q.strip()) for q in t["question"].to_pylist()], dtype=bool)
    s[empty] = np.nan
    out = t
    if "score" in out.column_names:
        out = out.append_column("mesh_score", out["score"]).drop_columns(["score"])
    return out.append_column("score", pa.array(s, pa.float64()))


class EvaluatorConfig(StageConfig):
    """The evaluator agent's training (``kailin train evaluator``, the run's ``evaluator``)."""

    added_fields: ClassVar[tuple[str, ...]] = ("test_fraction", "l2", "encoder", "seed")

    enabled: bool = Field(False, description="train the evaluator in a run (also when "
                          "preferences.labeller is evaluator)")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of PMIDs held out "
                                 "to measure agreement")
    l2: float = Field(1.0, description="L2 penalty")
    encoder: str | None = Field(None, description="sentence encoder (default: the packaged "
                                "all-MiniLM-L6-v2)")
    seed: int = Field(0, description="seed of the held-out split")
