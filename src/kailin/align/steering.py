"""Does MeSH-guided DPO steer the generator? The pieces of the steering experiment.

The experiment (the pipeline's ``steering`` stage runs it; ``configs/experiment.yaml``) trains
arms from the same SFT generator and compares them on the same held-out abstracts:

* ``base``: the SFT generator, no DPO;
* ``dpo``: DPO on the MeSH-labelled preference pairs, for ``rounds`` rounds (round r >= 2 samples
  two questions per abstract from the round r-1 policy, relabels them with the score and trains
  again: m-KAILIN's iterative alignment);
* ``dpo_shuffled``: DPO with the same settings on the same pairs, chosen and rejected swapped at
  random (a seeded coin per pair). If ``dpo`` beats ``base`` only as much as this control does,
  the gain comes from DPO itself (shorter questions, say), not from the MeSH labels.

Held-out quality is the document score under the run's scoring and under a second, independent
configuration (another retriever and another measure), so that a gain cannot be mere
overfitting to the scorer that labelled the pairs. Next to it, what reward hacking would show:
the share of valid questions, their length, the share copying the title, distinct-2 and the
share stuffing MeSH terms. This module holds those pure functions (tables in, numbers out);
the stage in :mod:`kailin.pipeline.stages` wires models, generation and scoring.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from kailin.align.generator_eval import paired_bootstrap
from kailin.config import StageConfig

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def shuffle_pairs(pairs: pa.Table, seed: int = 0) -> tuple[pa.Table, int]:
    """The same pairs with chosen and rejected swapped where a seeded coin says so.

    Every column ``chosen_*`` is swapped with its ``rejected_*`` twin too. Returns the table and
    the number of pairs swapped."""
    rng = np.random.default_rng(seed)
    flip = rng.random(pairs.num_rows) < 0.5
    mask = pa.array(flip)
    cols = {}
    for name in pairs.column_names:
        if name.startswith("chosen") and name.replace("chosen", "rejected", 1) in pairs.column_names:
            other = name.replace("chosen", "rejected", 1)
            cols[name] = pc.if_else(mask, pairs[other], pairs[name])
            cols[other] = pc.if_else(mask, pairs[name], pairs[other])
    out = pairs
    for name, col in cols.items():
        out = out.set_column(out.column_names.index(name), name, col)
    return out, int(flip.sum())


def per_pmid_scores(scores: pa.Table, generator: str | None = None) -> dict[int, float]:
    """PMID -> score (NaN for a missing score) of one generator's score table."""
    pm = scores["pmid"].to_pylist()
    sc = scores["score"].to_pylist()
    gs = (scores["generator"].to_pylist() if "generator" in scores.column_names
          else [None] * len(pm))
    out: dict[int, float] = {}
    for p, s, g in zip(pm, sc, gs, strict=True):
        if generator is not None and g != generator:
            continue
        out[int(p)] = float("nan") if s is None else float(s)
    return out


def arm_summary(scores: Mapping[int, float], pmids: Sequence[int]) -> dict[str, Any]:
    v = np.array([scores.get(p, float("nan")) for p in pmids], dtype=np.float64)
    ok = ~np.isnan(v)
    return {"mean": float(v[ok].mean()) if ok.any() else None, "n": int(ok.sum()),
            "nan": int((~ok).sum()), "std": float(v[ok].std()) if ok.any() else None,
            "quantiles": ([float(x) for x in np.quantile(v[ok], [0.1, 0.25, 0.5, 0.75, 0.9])]
                          if ok.any() else [])}


def contrast(a: Mapping[int, float], b: Mapping[int, float], pmids: Sequence[int],
             n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """``a`` minus ``b`` over the shared PMIDs, with a paired bootstrap 95% CI. A question with
    no score (NaN: rejected, or no context with MeSH) is left out of the pair."""
    before = [b.get(p, float("nan")) for p in pmids]
    after = [a.get(p, float("nan")) for p in pmids]
    r = paired_bootstrap(before, after, n_boot=n_boot, seed=seed)
    out = {k: r[k] for k in ("delta", "ci_low", "ci_high", "n", "n_dropped")}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def copies_title(question: str, title: str, threshold: float = 0.8) -> bool:
    """The question repeats the title: at least ``threshold`` of the title's words (with
    repeats) occur in the question, for a title of at least 4 words."""
    tw = _words(title)
    if len(tw) < 4:
        return False
    qw = set(_words(question))
    return sum(w in qw for w in tw) / len(tw) >= threshold


def _stem(w: str) -> str:
    """A crude plural fold, the same on both sides (adolescents ~ adolescent)."""
    return w[:-1] if len(w) > 3 and w.endswith("s") else w


def mesh_terms_in(question: str, names: Sequence[str]) -> int:
    """How many of the source's MeSH descriptor names occur (as whole words, plurals folded)
    in the question."""
    q = " " + " ".join(_stem(w) for w in _words(question)) + " "
    n = 0
    for name in names:
        w = " ".join(_stem(x) for x in _words(name))
        if w and f" {w} " in q:
            n += 1
    return n


def distinct_n(questions: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of the questions (Li et al. 2016's distinct-n)."""
    grams: list[tuple[str, ...]] = []
    for q in questions:
        w = _words(q)
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def _question_rows(questions: pa.Table, titles: Mapping[int, str],
                   mesh_names: Mapping[int, Sequence[str]], stuffing: int
                   ) -> list[dict[str, Any]]:
    """One dict per row of an arm's questions: ``pmid``, ``question``, ``valid`` (accepted:
    ``reject_reason`` null and a non-blank text) and, for a valid one, ``words``,
    ``copies_title`` and ``mesh_stuffing`` (names at least ``stuffing`` of the source's MeSH
    descriptors)."""
    pm = questions["pmid"].to_pylist()
    qs = questions["question"].to_pylist()
    reasons = (questions["reject_reason"].to_pylist() if "reject_reason" in
               questions.column_names else [None] * len(pm))
    rows = []
    for p, q, r in zip(pm, qs, reasons, strict=True):
        p = int(p)
        ok = r is None and bool(q and q.strip())
        rows.append({"pmid": p, "question": q, "valid": ok,
                     "words": len(_words(q)) if ok else None,
                     "copies_title": ok and copies_title(q, titles.get(p, "")),
                     "mesh_stuffing": ok and mesh_terms_in(q, mesh_names.get(p, ())) >= stuffing})
    return rows


def hacking_metrics(questions: pa.Table, titles: Mapping[int, str],
                    mesh_names: Mapping[int, Sequence[str]], stuffing: int = 3
                    ) -> dict[str, Any]:
    """What reward hacking would show, over one arm's questions on the held-out abstracts.

    ``valid``: share of rows whose question was accepted (``reject_reason`` null);
    ``words``: mean length of valid questions; ``copies_title``: share of valid questions that
    repeat the source title; ``distinct_2``; ``mesh_stuffing``: share of valid questions naming
    at least ``stuffing`` of the source's MeSH descriptors verbatim."""
    rows = _question_rows(questions, titles, mesh_names, stuffing)
    valid = [r for r in rows if r["valid"]]
    n = len(rows)
    if not valid:
        return {"rows": n, "valid": 0.0, "words": None, "copies_title": None,
                "distinct_2": None, "mesh_stuffing": None}
    return {
        "rows": n,
        "valid": len(valid) / n,
        "words": float(np.mean([r["words"] for r in valid])),
        "copies_title": float(np.mean([r["copies_title"] for r in valid])),
        "distinct_2": distinct_n([r["question"] for r in valid]),
        "mesh_stuffing": float(np.mean([r["mesh_stuffing"] for r in valid])),
    }


def dpo_curve(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """trl's logged DPO metrics per logging step: loss, reward margin and accuracy, chosen and
    rejected rewards."""
    keys = {"loss": "loss", "rewards/margins": "margin", "rewards/accuracies": "accuracy",
            "rewards/chosen": "chosen", "rewards/rejected": "rejected"}
    out = []
    for row in log_history:
        if "rewards/margins" not in row:
            continue
        item: dict[str, Any] = {"step": row.get("step")}
        for k, name in keys.items():
            if k in row:
                item[name] = float(row[k])
        out.append(item)
    return out


def tie_share(scores: pa.Table, tol: float = 1e-9) -> dict[str, Any]:
    """Over PMIDs with two or more scored questions: the share whose best and worst scores lie
    within ``tol`` (the generators wrote questions that the score cannot tell apart)."""
    best: dict[int, list[float]] = {}
    for p, s, q in zip(scores["pmid"].to_pylist(), scores["score"].to_pylist(),
                       scores["question"].to_pylist(), strict=True):
        if s is None or q is None or not str(q).strip() or math.isnan(s):
            continue
        best.setdefault(int(p), []).append(float(s))
    multi = [v for v in best.values() if len(v) >= 2]
    ties = sum(1 for v in multi if max(v) - min(v) <= tol)
    return {"pmids": len(multi), "ties": ties,
            "tie_share": ties / len(multi) if multi else None}


def label_agreement(pairs: pa.Table, second_scores: pa.Table) -> dict[str, Any]:
    """How often an independent scorer orders each preference pair as its label does: the share
    of pairs whose chosen question scores above the rejected one under ``second_scores`` (the
    same questions scored by another retriever and measure), over the pairs where both have a
    score there and they differ. About 0.5 means the labels are noise to any other view of the
    MeSH match; DPO on them cannot be expected to raise an independent held-out score."""
    by_text: dict[tuple[int, str], float] = {}
    for p, q, s in zip(second_scores["pmid"].to_pylist(), second_scores["question"].to_pylist(),
                       second_scores["score"].to_pylist(), strict=True):
        if q is not None and s is not None and s == s:
            by_text[(int(p), q)] = float(s)
    agree = n = 0
    for p, c, r in zip(pairs["pmid"].to_pylist(), pairs["chosen"].to_pylist(),
                       pairs["rejected"].to_pylist(), strict=True):
        sc, sr = by_text.get((int(p), c)), by_text.get((int(p), r))
        if sc is None or sr is None or abs(sc - sr) <= 1e-12:
            continue
        n += 1
        agree += sc > sr
    return {"pairs": pairs.num_rows, "compared": n,
            "agreement": round(agree / n, 4) if n else None}


def question_features(questions: pa.Table, titles: Mapping[int, str],
                      mesh_names: Mapping[int, Sequence[str]], stuffing: int = 3
                      ) -> dict[int, dict[str, Any]]:
    """Per abstract, what :func:`hacking_metrics` averages: ``valid`` (1.0 or 0.0), ``words``
    (None for an invalid question) and ``hacked`` (a valid question that copies the title or
    names at least ``stuffing`` of the source's MeSH descriptors)."""
    return {r["pmid"]: {"valid": float(r["valid"]), "words": r["words"],
                        "hacked": bool(r["copies_title"] or r["mesh_stuffing"])}
            for r in _question_rows(questions, titles, mesh_names, stuffing)}


def length_adjusted_contrast(a: Mapping[int, float], b: Mapping[int, float],
                             a_words: Mapping[int, int | None], b_words: Mapping[int, int | None],
                             pmids: Sequence[int], n_boot: int = 10_000, seed: int = 0
                             ) -> dict[str, Any]:
    """``a`` minus ``b`` once the score's linear dependence on question length is taken out:
    the slope of score on word count is fitted within each arm (each arm's own means removed,
    so that a gain of one arm over the other does not pass for a length effect), and each
    score minus slope x words is compared as in :func:`contrast`. A gain that only came from
    longer questions (more query terms for the retriever) would vanish here."""
    xc: list[float] = []
    yc: list[float] = []
    for s, w in ((a, a_words), (b, b_words)):
        pts = [(float(w[p]), float(s[p])) for p in pmids
               if w.get(p) is not None and s.get(p, float("nan")) == s.get(p, float("nan"))]
        if pts:
            x, y = np.array(pts).T
            xc += list(x - x.mean())
            yc += list(y - y.mean())
    x, y = np.array(xc), np.array(yc)
    if len(x) < 3 or not (x ** 2).sum():
        return {"delta": None, "ci_low": None, "ci_high": None, "n": 0, "slope_per_word": None,
                "corr_words_score": None}
    slope = float((x * y).sum() / (x ** 2).sum())
    corr = float(np.corrcoef(x, y)[0, 1]) if (y ** 2).sum() else 0.0

    def adjusted(s: Mapping[int, float], w: Mapping[int, int | None]) -> dict[int, float]:
        return {p: (s.get(p, float("nan")) - slope * w[p]) if w.get(p) is not None
                else float("nan") for p in pmids}

    out = contrast(adjusted(a, a_words), adjusted(b, b_words), pmids, n_boot=n_boot, seed=seed)
    return {**out, "slope_per_word": slope, "corr_words_score": corr}


class SteeringConfig(StageConfig):
    """The steering experiment (``kailin.align.steering``): DPO arms against controls on the
    held-out abstracts (corpus.heldout), for ``rounds`` rounds of iterative alignment."""

    added_fields: ClassVar[tuple[str, ...]] = ("samples", "validity_share", "max_new_tokens",
                                               "first_round", "later_epochs")

    enabled: bool = False
    first_round: Literal["pairs", "on_policy"] = Field(
        "pairs", description="round 1's pairs: `pairs` trains on the preferences stage's pairs "
        "(one question per generator, the dpo stage's model); `on_policy` samples `samples` "
        "questions per abstract from the SFT generator and pairs the best against the worst, "
        "like every later round (the dpo and generator_eval stages then do not run: their model "
        "would be no arm; the steering report's round-1-vs-base contrast replaces "
        "reports/generator.json)")
    rounds: int = Field(2, ge=1, description="round r >= 2 samples `samples` questions per "
                        "abstract from the round r-1 policy, relabels them and trains again")
    samples: int = Field(2, ge=2, description="sampled rounds (r >= 2; round 1 too with "
                         "first_round on_policy): questions sampled per abstract; "
                         "the pair is the best against the worst of them (wider margins, "
                         "surer labels)")
    validity_share: float | None = Field(
        None, ge=0, le=1, description="sampled rounds (needs preferences.invalid_rejected): up to "
        "this share of the pairs are validity pairs, the best question against an invalid "
        "sample of the same abstract (preferences.validity_share); with several samples an "
        "abstract rarely has a single valid question, so the rule of round 1 seldom fires")
    max_new_tokens: int | None = Field(
        None, ge=1, description="token budget of every question the steering experiment "
        "compares or trains on after round 1 (policy samples, every arm's held-out questions, "
        "base included) and of the policy's export questions; default generation.max_new_tokens. "
        "Policies write longer questions than the SFT generators: a budget they hit makes "
        "truncated, invalid questions")
    later_epochs: float | None = Field(
        None, gt=0, description="DPO epochs of rounds r >= 2 (both arms; default dpo.epochs). "
        "Their pairs are two samples of one policy that differ in a few words: one epoch barely "
        "fits them")
    shuffled_control: bool = Field(True, description="also train dpo_shuffled: the same pairs, "
                                   "chosen and rejected swapped at random")
    sample_temperature: float = Field(0.8, gt=0, description="sampled rounds: temperature "
                                      "of the policy samples")
    seed: int = 0
    second_index: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "bm25", "method": "bm25+", "stemmer": None,
                                 "stopwords": None},
        description="the independent check's retriever (build_index options)")
    second_measure: str = Field("kailin", description="the independent check's measure")
    second_faithful: bool = Field(True, description="the independent check in the paper's form "
                                  "(all-pairs mean, every descriptor)")
    n_boot: int = Field(10_000, ge=100)
