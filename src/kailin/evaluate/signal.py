"""Does the MeSH document score tell a good question from a bad one? (``kailin evaluate signal``)

Every preference label rests on the document score of a question: the source abstract's MeSH
against the MeSH of the ``k`` contexts that the question retrieves. This module measures, for
many scoring configurations at once, how well that score ranks a *trusted* question about an
abstract above two kinds of negatives, each scored against the same source:

* ``other``: the question of another item (a seeded derangement of the items);
* ``generic``: questions that fit any abstract (:data:`GENERIC_QUESTIONS`).

Contexts are retrieved once per question (``k_max`` hits that carry MeSH, the source left out)
and every configuration scores the same contexts, so the rows of the table differ only by the
scoring. Per configuration: the paired AUC against each negative (the share of items whose
trusted question scores higher, ties count one half and a NaN trusted score counts as a loss),
with a percentile bootstrap 95% CI over items, the pooled (Mann-Whitney) AUC, the share of NaN
scores, the spread of the trusted scores (std), the share of pairs tied within 1e-6, and the
seconds spent scoring.

Question files (:func:`load_questions`): PubMedQA JSON (``ori_pqal.json``: PMID -> {QUESTION,
MESHES, ...}), the PQA-A JSONL sample (``question`` + ``passage``, no PMID: matched to corpus
records by abstract text), or Parquet/JSONL/JSON with ``pmid`` and ``question``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from kailin.align.score import CorpusMeshLookup
from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.evaluate.signal_questions import (
    QuestionSet,
    load_questions,
)
from kailin.evaluate.signal_report import _json_safe, format_markdown, write_report  # noqa: F401

log = logging.getLogger(__name__)

#: questions that fit almost any abstract (the ``generic`` negatives)
GENERIC_QUESTIONS: tuple[str, ...] = (
    "What are the effects of this treatment in patients?",
    "What is the role of this protein in the disease?",
    "What are the risk factors associated with this condition?",
    "How does this method compare with the standard approach?",
    "What are the clinical outcomes of this intervention?",
)

#: the measures a configuration can use; ``faithful`` is the paper's kailin measure
SIGNAL_MEASURES = ("kailin", "faithful", "lin", "resnik", "jiang", "path", "embedding", "hybrid")
TIE_EPS = 1e-6


# --- configurations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalConfig:
    """One way of scoring a document: measure, set aggregation, exclusions, weights, k."""

    measure: str = "resnik"
    aggregate: str = "bma"
    exclude: str = "none"  # "none" or "check-tags"
    major_weight: float = 1.0
    rank_weighting: str = "none"
    ic_power: float = 0.0
    k: int = 4
    hybrid_alpha: float = 0.5

    @property
    def name(self) -> str:
        parts = [self.measure, self.aggregate]
        if self.exclude != "none":
            parts.append(f"no-{self.exclude}")
        if self.major_weight != 1.0:
            parts.append(f"major{self.major_weight:g}")
        if self.rank_weighting != "none":
            parts.append(f"rank-{self.rank_weighting}")
        if self.ic_power:
            parts.append(f"ic^{self.ic_power:g}")
        if self.measure == "hybrid" and self.hybrid_alpha != 0.5:
            parts.append(f"alpha{self.hybrid_alpha:g}")
        parts.append(f"k{self.k}")
        return " ".join(parts)

    def scorer_key(self) -> tuple:
        return (self.measure, self.aggregate, self.exclude, self.major_weight,
                self.rank_weighting, self.ic_power, self.hybrid_alpha)


def candidate_configs(
    measures: Sequence[str] = SIGNAL_MEASURES,
    aggregates: Sequence[str] = ("mean", "bma"),
    excludes: Sequence[str] = ("none", "check-tags"),
    major_weights: Sequence[float] = (1.0, 2.0),
    rank_weightings: Sequence[str] = ("none", "reciprocal"),
    ks: Sequence[int] = (4,),
    ic_powers: Sequence[float] = (0.0, 1.0),
    hybrid_alphas: Sequence[float] = (0.5,),
) -> list[SignalConfig]:
    """Every combination of the given settings."""
    for m in measures:
        if m not in SIGNAL_MEASURES:
            raise InputError(f"unknown measure {m!r}; choose from {', '.join(SIGNAL_MEASURES)}")
    for e in excludes:
        if e not in ("none", "check-tags"):
            raise InputError(f"unknown exclusion {e!r}; choose none or check-tags")
    out = []
    for m, a, e, w, r, p, k in itertools.product(measures, aggregates, excludes, major_weights,
                                                  rank_weightings, ic_powers, ks):
        for h in (hybrid_alphas if m == "hybrid" else (0.5,)):
            out.append(SignalConfig(m, a, e, float(w), r, float(p), int(k), float(h)))
    return out


class SignalEvalConfig(StageConfig):
    """Settings of ``kailin evaluate signal``: the grid of scoring settings compared (an empty
    list: that setting's defaults) and the run's size and seeds."""

    measure: list[str] = Field(default_factory=list, description="measures to compare (default "
                               "all: " + ", ".join(SIGNAL_MEASURES) + ")")
    aggregate: list[str] = Field(default_factory=list, description="mean and/or bma (default "
                                 "both)")
    exclude: list[str] = Field(default_factory=list, description="none and/or check-tags "
                               "(default both)")
    major_weight: list[float] = Field(default_factory=list, description="weights of "
                                      "MajorTopicYN descriptors (default 1 and 2)")
    rank_weighting: list[str] = Field(default_factory=list, description="none and/or "
                                      "reciprocal (default both)")
    ic_power: list[float] = Field(default_factory=list, description="descriptor weights "
                                  "(IC/MaxIC)^p: values of p (default 0 and 1)")
    hybrid_alpha: list[float] = Field(default_factory=list, description="weights of Resnik in "
                                      "the hybrid measure (default 0.5)")
    k: list[int] = Field(default_factory=list, description="contexts per question (default 4)")
    k_sweep: int = Field(3, description="also score the best N configurations at k = 1..8")
    split: str = Field("all", description="PubMedQA PQA-L only: dev (outside the test split), "
                       "test, all")
    max_items: int | None = Field(None, description="use at most N questions")
    max_passed_over: int = Field(16, description="contexts without MeSH passed over per "
                                 "question before giving up")
    n_boot: int = Field(1000, description="bootstrap resamples")
    seed: int = Field(0, description="seed of the negatives and the bootstrap")

    def configs(self) -> list[SignalConfig]:
        """The grid: :func:`candidate_configs` of the given settings, defaults for the rest."""
        return candidate_configs(
            measures=self.measure or SIGNAL_MEASURES,
            aggregates=self.aggregate or ("mean", "bma"),
            excludes=self.exclude or ("none", "check-tags"),
            major_weights=self.major_weight or (1.0, 2.0),
            rank_weightings=self.rank_weighting or ("none", "reciprocal"),
            ks=self.k or (4,),
            ic_powers=self.ic_power or (0.0, 1.0),
            hybrid_alphas=self.hybrid_alpha or (0.5,),
        )


# --- questions --------------------------------------------------------------------------------


# --- metrics ----------------------------------------------------------------------------------
def paired_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Per pair: 1 when ``pos`` > ``neg``, 0.5 on a tie (within 1e-6), 0 otherwise. A NaN
    ``pos`` loses; a NaN ``neg`` against a defined ``pos`` wins (NaN is never chosen)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    d = pos - neg
    out = np.where(d > TIE_EPS, 1.0, np.where(d < -TIE_EPS, 0.0, 0.5))
    out = np.where(np.isnan(neg), 1.0, out)
    return np.where(np.isnan(pos), 0.0, out)


def pooled_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC of all defined ``pos`` against all defined ``neg`` scores."""
    p = np.asarray(pos, dtype=np.float64)
    n = np.asarray(neg, dtype=np.float64)
    p, n = p[~np.isnan(p)], n[~np.isnan(n)]
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(np.r_[p, n])
    return float((r[: len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n)))


def bootstrap_ci(per_item: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over items (rows of ``per_item``)."""
    if len(per_item) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_item), size=(n_boot, len(per_item)))
    means = per_item[idx].mean(axis=1)
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


# --- the evaluation ---------------------------------------------------------------------------
@dataclass
class _Retrieved:
    """Contexts of one question for one source (top ``k_max`` with MeSH, best first)."""

    ctx_uis: list[list[str]]
    ctx_major: list[list[bool]]
    passed_over: int


def _retrieve(index: Any, queries: list[str], exclude: list[int], k_max: int,
              max_passed_over: int, corpus: CorpusMeshLookup, batch: int = 256) -> list[_Retrieved]:
    out: list[_Retrieved] = []
    for s in range(0, len(queries), batch):
        hits, passed = index.search_with_mesh(queries[s:s + batch], k=k_max,
                                              exclude_pmids=exclude[s:s + batch],
                                              max_passed_over=max_passed_over)
        mesh = corpus.get([h.pmid for hs in hits for h in hs])
        for hs, p in zip(hits, passed, strict=True):
            uis, major = [], []
            for h in hs:
                u, m = mesh.get(int(h.pmid), ([], []))
                if not u:  # not in the corpus files (e.g. an index of another corpus)
                    u, m = list(h.mesh_uis or []), [False] * len(h.mesh_uis or [])
                uis.append(u)
                major.append(m)
            out.append(_Retrieved(uis, major, int(p)))
    return out


def _make_scorer(mesh: Any, cfg: SignalConfig, embeddings: Any) -> Any:
    measure, faithful = (("kailin", True) if cfg.measure == "faithful" else (cfg.measure, False))
    return mesh.scorer(measure, faithful=faithful, aggregate=cfg.aggregate,
                       exclude=None if cfg.exclude == "none" else cfg.exclude,
                       major_weight=cfg.major_weight, rank_weighting=cfg.rank_weighting,
                       ic_power=cfg.ic_power, hybrid_alpha=cfg.hybrid_alpha,
                       embeddings=embeddings)


def evaluate_signal(
    corpus_dir: str | Path,
    index_dir: str | Path | None,
    questions: str | Path | QuestionSet,
    *,
    configs: Sequence[SignalConfig] | None = None,
    mesh_dir: str | Path | None = None,
    index: Any = None,
    mesh: Any = None,
    split: str = "all",
    generic: Sequence[str] = GENERIC_QUESTIONS,
    max_items: int | None = None,
    max_passed_over: int = 16,
    k_sweep: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every configuration on the same contexts; return the report (see module doc).

    ``k_sweep``: after the given configurations, the best ``k_sweep`` of them (by the mean of
    the two paired AUCs) are also scored at every k from 1 to 8 (0: no sweep)."""
    from tqdm.auto import tqdm

    from kailin.progress import enabled as progress_enabled

    t_start = time.perf_counter()
    if index is None:
        if index_dir is None:
            raise InputError("give the index (--index DIR) the questions retrieve from")
        from kailin.retrieval import load_index

        index = load_index(index_dir)
    if mesh is None:
        from kailin.mesh import load_mesh

        mesh = load_mesh(mesh_dir)
    qs = questions if isinstance(questions, QuestionSet) else load_questions(
        questions, split=split, corpus_dir=corpus_dir)
    configs = list(configs) if configs is not None else candidate_configs()
    if not configs:
        raise InputError("no configuration to evaluate")
    corpus = CorpusMeshLookup(corpus_dir)

    # items: trusted questions whose source is in the corpus with MeSH (or MeSH in the file)
    src = corpus.get(qs.pmids)
    keep, sources = [], []
    seen: set[int] = set()
    no_source = 0
    for i, p in enumerate(qs.pmids):
        if p in seen:
            continue
        uis, major = src.get(p, ([], []))
        if not uis and p in qs.file_mesh:
            uis = [u for u in (mesh.lookup(n) for n in qs.file_mesh[p]) if u]
            major = [False] * len(uis)
        if not uis:
            no_source += 1
            continue
        seen.add(p)
        keep.append(i)
        sources.append((uis, major))
    if max_items is not None and len(keep) > max_items:
        pick = np.sort(np.random.default_rng(seed).choice(len(keep), max_items, replace=False))
        keep = [keep[i] for i in pick]
        sources = [sources[i] for i in pick]
    n = len(keep)
    if n < 2:
        raise InputError(
            f"only {n} question(s) have a source abstract with MeSH in {corpus_dir}; the "
            "evaluation needs the questions' source records in the corpus (ingest them)")
    pmids = [qs.pmids[i] for i in keep]
    texts = [qs.questions[i] for i in keep]
    perm = _derangement(n, seed)
    k_max = 8
    if any(not 1 <= c.k <= k_max for c in configs):
        raise InputError(f"k must be between 1 and {k_max}")

    # one retrieval per (question, source): trusted, other, each generic
    t0 = time.perf_counter()
    queries = texts + [texts[j] for j in perm]
    exclude = pmids + pmids
    for g in generic:
        queries += [g] * n
        exclude += pmids
    log.info("retrieving contexts for %d questions (k=%d with MeSH)", len(queries), k_max)
    ret = _retrieve(index, queries, exclude, k_max, max_passed_over, corpus)
    t_retrieve = time.perf_counter() - t0
    groups = {"expert": ret[:n], "other": ret[n:2 * n]}
    generic_rets = [ret[2 * n + g * n: 2 * n + (g + 1) * n] for g in range(len(generic))]
    passed = np.array([r.passed_over for r in ret], dtype=np.float64)

    embeddings = None
    if any(c.measure in ("embedding", "hybrid") for c in configs):
        from kailin.mesh.embeddings import ensure_mesh_embeddings

        used = {u for uis, _ in sources for u in uis}
        used |= {u for r in ret for c in r.ctx_uis for u in c}
        embeddings = ensure_mesh_embeddings(mesh, used, progress=progress)

    scorers: dict[tuple, Any] = {}

    def run(cfgs: Sequence[SignalConfig]) -> list[dict[str, Any]]:
        rows = []
        for cfg in tqdm(cfgs, desc="score configurations", unit="cfg", disable=not progress_enabled(progress)):
            sc = scorers.get(cfg.scorer_key())
            if sc is None:
                sc = scorers[cfg.scorer_key()] = _make_scorer(mesh, cfg, embeddings)
            t = time.perf_counter()
            scores = {}
            pairs = 0
            for name, rs in [*groups.items(), *((f"generic{g}", r)
                                                for g, r in enumerate(generic_rets))]:
                scores[name] = sc.doc_scores(
                    [s[0] for s in sources], [r.ctx_uis[:cfg.k] for r in rs],
                    [s[1] for s in sources], [r.ctx_major[:cfg.k] for r in rs])
                pairs += sc.last_stats.pairs
            secs = time.perf_counter() - t
            rows.append(_row(cfg, scores, len(generic), secs, pairs, n_boot, seed))
        return rows

    table = run(configs)
    if k_sweep:
        best = sorted(table, key=_rank_key, reverse=True)[:k_sweep]
        have = {r["name"] for r in table}
        sweep = []
        for r in best:
            base = SignalConfig(**r["config"])
            sweep += [c for c in (SignalConfig(**{**asdict(base), "k": k}) for k in
                                  range(1, k_max + 1)) if c.name not in have]
        table += run(sweep)
    table.sort(key=_rank_key, reverse=True)
    return {
        "items": n,
        "questions": {**qs.info, "usable": n, "without_source_mesh": no_source,
                      "split": split},
        "corpus": str(corpus_dir),
        "index": str(index_dir) if index_dir is not None else getattr(index, "kind", None),
        "index_kind": type(index).__name__,
        "mesh": str(getattr(mesh, "root", None)),
        "negatives": {"other": "another item's question (seeded derangement), scored against "
                               "this item's source", "generic": list(generic)},
        "k_max": k_max,
        "max_passed_over": max_passed_over,
        "passed_over_mean": float(passed.mean()),
        "passed_over_mean_expert": float(passed[:n].mean()),
        "passed_over_max": int(passed.max()) if len(passed) else 0,
        "retrieval_seconds": round(t_retrieve, 2),
        "seconds": round(time.perf_counter() - t_start, 2),
        "seed": seed,
        "n_boot": n_boot,
        "configs": table,
    }


def _rank_key(row: dict[str, Any]) -> tuple:
    a, b = row["auc_other"], row["auc_generic"]
    a = -1.0 if math.isnan(a) else a
    b = -1.0 if math.isnan(b) else b
    return ((a + b) / 2, -row["nan_share"])


def _derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (item i gets item perm[i]'s question)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    # a cyclic shift of a random order: never a fixed point
    out = np.empty(n, dtype=np.int64)
    out[perm] = np.roll(perm, 1)
    return out


def _row(cfg: SignalConfig, scores: dict[str, np.ndarray], n_generic: int, secs: float,
         pairs: int, n_boot: int, seed: int) -> dict[str, Any]:
    e = scores["expert"]
    other = paired_auc(e, scores["other"])
    gens = np.stack([paired_auc(e, scores[f"generic{g}"]) for g in range(n_generic)], axis=1)
    gen = gens.mean(axis=1)
    negs = np.concatenate([scores["other"], *(scores[f"generic{g}"] for g in range(n_generic))])
    alls = np.concatenate([e, negs])
    diffs = np.concatenate([e - scores["other"], *(e - scores[f"generic{g}"]
                                                  for g in range(n_generic))])
    ok = ~np.isnan(diffs)
    lo_o, hi_o = bootstrap_ci(other, n_boot, seed)
    lo_g, hi_g = bootstrap_ci(gen, n_boot, seed)
    return {
        "name": cfg.name,
        "config": asdict(cfg),
        "auc_other": float(other.mean()),
        "auc_other_ci": [lo_o, hi_o],
        "auc_generic": float(gen.mean()),
        "auc_generic_ci": [lo_g, hi_g],
        "pooled_auc_other": pooled_auc(e, scores["other"]),
        "pooled_auc_generic": pooled_auc(np.repeat(e, n_generic),
                                         np.concatenate([scores[f"generic{g}"]
                                                         for g in range(n_generic)])),
        "nan_share": float(np.isnan(e).mean()),
        "nan_share_all": float(np.isnan(alls).mean()),
        "mean": float(np.nanmean(e)) if (~np.isnan(e)).any() else float("nan"),
        "std": float(np.nanstd(e)) if (~np.isnan(e)).any() else float("nan"),
        "tie_share": float((np.abs(diffs[ok]) <= TIE_EPS).mean()) if ok.any() else float("nan"),
        "seconds": round(secs, 3),
        "pairs": int(pairs),
    }


# --- output -----------------------------------------------------------------------------------


# --- the per-run self-check ---------------------------------------------------------------------
def title_selfcheck(
    corpus_dir: str | Path,
    index: Any,
    *,
    mesh: Any = None,
    mesh_dir: str | Path | None = None,
    scoring: dict[str, Any] | None = None,
    k: int | None = None,
    sample: int = 200,
    max_passed_over: int = 16,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Does the signal carry information on *this* corpus? Titles stand in for expert
    questions: the AUC of a record's title against another record's title and against generic
    questions, each scored against the record's own MeSH, for the run's scoring (``scoring``:
    :func:`kailin.mesh.score.resolve_scoring` settings) and for the paper's form side by side.
    A sample of ``sample`` records with MeSH and a title, drawn with ``seed``."""
    import pyarrow.compute as pc

    from kailin.corpus.reader import open_corpus
    from kailin.mesh.score import (
        DEFAULT_SCORE_K,
        DEFAULT_SCORING,
        PAPER_SCORE_K,
        PAPER_SCORING,
    )

    if mesh is None:
        from kailin.mesh import load_mesh

        mesh = load_mesh(mesh_dir)
    scoring = dict(scoring or DEFAULT_SCORING)
    k = k or (PAPER_SCORE_K if scoring.get("faithful") else DEFAULT_SCORE_K)
    t0 = time.perf_counter()
    pmids: list[int] = []
    titles: list[str] = []
    for batch in open_corpus(corpus_dir).iter_batches(columns=["pmid", "title", "mesh_uis"]):
        ok = pc.and_(pc.greater(pc.fill_null(pc.list_value_length(batch.column("mesh_uis")), 0),
                                0),
                     pc.greater(pc.utf8_length(pc.fill_null(batch.column("title"), "")), 10))
        sub = batch.filter(ok)
        pmids += sub.column("pmid").to_pylist()
        titles += sub.column("title").to_pylist()
    out: dict[str, Any] = {"sample": 0, "k": k, "scoring": scoring,
                           "candidates": len(pmids), "seed": seed}
    if len(pmids) < 10:
        out["verdict"] = "too few records with MeSH and a title to check the signal"
        return out
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(pmids), min(sample, len(pmids)), replace=False))
    qs = QuestionSet([int(pmids[i]) for i in pick], [str(titles[i]) for i in pick],
                     {"file": "corpus titles"})
    forms = [("run", scoring, k)]
    if not scoring.get("faithful"):
        forms.append(("paper", PAPER_SCORING, PAPER_SCORE_K))
    for label, sc, kk in forms:
        cfg = SignalConfig(
            measure="faithful" if sc.get("faithful") else sc["measure"],
            aggregate=sc["aggregate"], exclude=sc.get("exclude") or "none",
            major_weight=float(sc.get("major_weight", 1.0)),
            rank_weighting=sc.get("rank_weighting", "none"),
            ic_power=float(sc.get("ic_power", 0.0)), k=int(kk),
            hybrid_alpha=float(sc.get("hybrid_alpha", 0.5)))
        rep = evaluate_signal(corpus_dir, None, qs, configs=[cfg], index=index, mesh=mesh,
                              max_passed_over=max_passed_over, k_sweep=0, n_boot=n_boot,
                              seed=seed, progress=False)
        row = rep["configs"][0]
        keys = ("name", "auc_other", "auc_other_ci", "auc_generic", "auc_generic_ci",
                "nan_share", "std", "tie_share")
        if label == "run":
            out.update({k2: row[k2] for k2 in keys})
            out["sample"] = rep["items"]
            out["passed_over_mean"] = rep["passed_over_mean_expert"]
        else:
            out["paper_form"] = {k2: row[k2] for k2 in keys}
    lo = out["auc_other_ci"][0]
    out["verdict"] = (
        "informative: titles beat other records' titles" if lo > 0.6 else
        "weak: the score barely tells a record's own title from another's on this corpus; "
        "check the MeSH coverage and the index before spending GPU hours on DPO")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
