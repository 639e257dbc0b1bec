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
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kailin.align.score import CorpusMeshLookup
from kailin.errors import InputError

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


# --- questions --------------------------------------------------------------------------------
@dataclass
class QuestionSet:
    pmids: list[int]
    questions: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    #: MeSH names from the question file (PubMedQA's MESHES), used when the corpus has none
    file_mesh: dict[int, list[str]] = field(default_factory=dict)


def _pqal_split(split: str) -> set[str] | None:
    if split == "all":
        return None
    p = resources.files("kailin") / "data" / "pubmedqa" / "pqal_official_split.json"
    test = set(json.loads(p.read_text(encoding="utf-8"))["test"])
    return test


_LABEL = re.compile(r"(?:^|(?<=[.\s]))[A-Z][A-Z0-9 ,&/()-]{2,40}:\s")
_CONTEXT = re.compile(r"Context \(\d+\):\s*")


def _text_key(text: str, n: int = 64) -> str:
    """A matching key for an abstract: its first ``n`` letters and digits, lower case, with
    structured-abstract labels (BACKGROUND:) and PubMedQA's "Context (1):" removed."""
    text = _CONTEXT.sub(" ", _LABEL.sub(" ", text or ""))
    return re.sub(r"[^a-z0-9]", "", text.lower())[:n]


def load_questions(path: str | Path, *, split: str = "all",
                   corpus_dir: str | Path | None = None) -> QuestionSet:
    """Trusted (pmid, question) pairs from ``path`` (see module doc). ``split`` (PubMedQA
    PQA-L only): ``dev`` (outside the official test split), ``test`` or ``all``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such questions file")
    if split not in ("all", "dev", "test"):
        raise InputError(f"unknown split {split!r}; choose all, dev or test")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".parquet" or path.is_dir():
        import pyarrow.parquet as pq

        tab = pq.read_table(path)
        missing = [c for c in ("pmid", "question") if c not in tab.column_names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; give pmid and question")
        rows = tab.select(["pmid", "question"]).to_pylist()
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            test = _pqal_split(split)
            rows = []
            file_mesh: dict[int, list[str]] = {}
            for key, item in data.items():
                if not isinstance(item, dict) or "QUESTION" not in item:
                    raise InputError(f"{path}: entry {key!r} has no QUESTION; expected "
                                     "PubMedQA's format (PMID -> {QUESTION, ...})")
                if test is not None and ((key in test) != (split == "test")):
                    continue
                rows.append({"pmid": key, "question": item["QUESTION"]})
                if item.get("MESHES"):
                    file_mesh[int(key)] = list(item["MESHES"])
            qs = _to_set(rows, path)
            qs.file_mesh = file_mesh
            qs.info["format"] = "pubmedqa"
            return qs
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of {{pmid, question}} or PubMedQA JSON")
        rows = data
    elif suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: not valid JSON ({exc})") from None
    else:
        raise InputError(f"{path}: unknown question file type; give .json, .jsonl or .parquet")
    if rows and "pmid" not in rows[0] and "passage" in rows[0]:
        return _match_passages(rows, path, corpus_dir)
    return _to_set(rows, path)


def _to_set(rows: list[dict[str, Any]], path: Path) -> QuestionSet:
    pmids, questions = [], []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or "question" not in r or "pmid" not in r:
            raise InputError(f"{path}: record {n} needs 'pmid' and 'question'")
        try:
            pmid = int(r["pmid"])
        except (TypeError, ValueError):
            raise InputError(f"{path}: record {n}: pmid {r['pmid']!r} is not a number") from None
        q = str(r["question"] or "").strip()
        if q:
            pmids.append(pmid)
            questions.append(q)
    return QuestionSet(pmids, questions, {"file": str(path), "items_in_file": len(rows)})


def _match_passages(rows: list[dict[str, Any]], path: Path,
                    corpus_dir: str | Path | None) -> QuestionSet:
    """PQA-A style rows (question + passage, no PMID): find each passage's record in the
    corpus by the start of its abstract."""
    if corpus_dir is None:
        raise InputError(f"{path}: rows have no pmid; give the corpus to match passages")
    from kailin.corpus.reader import open_corpus

    want: dict[str, int] = {}
    for i, r in enumerate(rows):
        key = _text_key(str(r.get("passage", "")))
        if len(key) >= 32:
            want.setdefault(key, i)
    found: dict[int, int] = {}
    for batch in open_corpus(corpus_dir).iter_batches(columns=["pmid", "abstract"]):
        for pmid, ab in zip(batch.column("pmid").to_pylist(), batch.column("abstract").to_pylist(),
                            strict=True):
            i = want.get(_text_key(ab or ""))
            if i is not None:
                found.setdefault(i, int(pmid))
    matched = [{"pmid": found[i], "question": rows[i]["question"]} for i in sorted(found)]
    qs = _to_set(matched, path)
    qs.info.update(items_in_file=len(rows), matched_to_corpus=len(matched),
                   unmatched=len(rows) - len(matched), format="passages")
    log.info("%s: %d of %d passages matched to corpus records", path, len(matched), len(rows))
    return qs


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
        from kailin.retrieval.mesh_embeddings import ensure_mesh_embeddings

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
def _f(x: float, nd: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_markdown(report: dict[str, Any], limit: int | None = None) -> str:
    """The configurations table (best first) as Markdown."""
    q = report["questions"]
    lines = [
        f"Signal over {report['items']} questions ({q.get('file', '')}, split {q.get('split')}),"
        f" corpus {report['corpus']}, index {report['index_kind']}; negatives: another item's "
        f"question, {len(report['negatives']['generic'])} generic questions. Contexts: top "
        f"k with MeSH (passed over {report['passed_over_mean']:.2f} MeSH-less hits per query on "
        f"average, bound {report['max_passed_over']}). AUC: paired, 95% bootstrap CI.",
        "",
        "| configuration | AUC vs other [95% CI] | AUC vs generic [95% CI] | pooled AUC o/g | "
        "NaN | std | ties | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = report["configs"] if limit is None else report["configs"][:limit]
    for r in rows:
        lo, hi = r["auc_other_ci"]
        glo, ghi = r["auc_generic_ci"]
        lines.append(
            f"| {r['name']} | {_f(r['auc_other'])} [{_f(lo)}, {_f(hi)}] | "
            f"{_f(r['auc_generic'])} [{_f(glo)}, {_f(ghi)}] | "
            f"{_f(r['pooled_auc_other'])} / {_f(r['pooled_auc_generic'])} | "
            f"{100 * r['nan_share']:.1f}% | {_f(r['std'])} | {100 * r['tie_share']:.1f}% | "
            f"{r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``signal.json`` and ``signal.md`` under ``out_dir`` (atomic writes)."""
    from kailin.io import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "signal.json", out / "signal.md"
    write_json_atomic(jp, _json_safe(report))
    write_text_atomic(mp, "# MeSH document signal\n\n" + format_markdown(report))
    return jp, mp


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


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
