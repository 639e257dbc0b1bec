"""The statistics of the steering experiment's report: every arm after every round, compared
on the same held-out abstracts under both scorers (pure functions: per-abstract scores in,
numbers out; the pipeline's ``steering`` step gathers the scores and writes the report).

``evals`` maps a tag (``base``, ``dpo.round1``, ``dpo_shuffled.round2``...) to::

    {"model": str, "scores": {pmid: score}, "scores2": {pmid: score},
     "hacking": {...}, "features": {pmid: {"words", "valid", "hacked", ...}}}

and ``arms`` maps an arm (``base``, ``dpo``, ``dpo_shuffled``) to its models, one per round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kailin.align.steering import arm_summary, contrast, length_adjusted_contrast

#: the arm contrasts of the report: (name, a, b), reported as a - b
ARM_CONTRASTS = (("dpo_vs_base", "dpo", "base"), ("dpo_vs_shuffled", "dpo", "dpo_shuffled"),
                 ("shuffled_vs_base", "dpo_shuffled", "base"))
SCORERS = ("scores", "scores2")


def final_tags(arms: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each arm's last round, as its tag."""
    return {arm: (arm if arm == "base" else f"{arm}.round{len(ms)}") for arm, ms in arms.items()}


def arm_contrasts(evals: Mapping[str, dict], final: Mapping[str, str], which: str,
                  over: Sequence[int], n_boot: int, seed: int) -> dict[str, dict]:
    """The final arms against each other under one scorer (``scores`` or ``scores2``)."""
    out = {}
    for name, a, b in ARM_CONTRASTS:
        if a in final and b in final:
            out[name] = contrast(evals[final[a]][which], evals[final[b]][which], over,
                                 n_boot=n_boot, seed=seed)
    return out


def robustness(evals: Mapping[str, dict], final: Mapping[str, str], pmids: Sequence[int],
               n_boot: int, seed: int) -> dict[str, Any]:
    """Could the final policy's gain be something else? Adjusted for question length (a slope
    within each arm); over the abstracts whose policy question neither copies the title nor
    stuffs MeSH terms; validity as a paired contrast; each half of the held-out abstracts
    alone."""
    if "dpo" not in final:
        return {}
    fd, fb = evals[final["dpo"]]["features"], evals[final["base"]]["features"]
    clean = [p for p in pmids if not (fd.get(p) or {}).get("hacked")]
    half = len(pmids) // 2

    def words(f: Mapping[int, dict]) -> dict[int, Any]:
        return {p: x["words"] for p, x in f.items()}

    def both(over: Sequence[int]) -> dict[str, dict]:
        return {which: arm_contrasts(evals, final, which, over, n_boot, seed)
                for which in SCORERS}

    return {
        "length_adjusted": {"dpo_vs_base": {
            which: length_adjusted_contrast(
                evals[final["dpo"]][which], evals[final["base"]][which], words(fd), words(fb),
                pmids, n_boot=n_boot, seed=seed)
            for which in SCORERS}},
        "without_hacking": {"abstracts": len(clean), **both(clean)},
        "validity": {"dpo_vs_base": contrast(
            {p: x["valid"] for p, x in fd.items()}, {p: x["valid"] for p, x in fb.items()},
            pmids, n_boot=n_boot, seed=seed)},
        "halves": {"first": {"abstracts": half, **both(pmids[:half])},
                   "second": {"abstracts": len(pmids) - half, **both(pmids[half:])}},
    }


def round_contrasts(evals: Mapping[str, dict], arms: Mapping[str, Sequence[str]],
                    pmids: Sequence[int], n_boot: int, seed: int) -> dict[str, dict]:
    """Where a gain comes from: each round against the one before (round 1 against base),
    paired over the same held-out abstracts, under both scorers."""
    out: dict[str, dict] = {}
    for arm, ms in arms.items():
        if arm == "base":
            continue
        prev = "base"
        for r in range(1, len(ms) + 1):
            tag = f"{arm}.round{r}"
            out[f"{tag}_vs_{prev}"] = {
                which: contrast(evals[tag][which], evals[prev][which], pmids, n_boot=n_boot,
                                seed=seed)
                for which in SCORERS}
            prev = tag
    return out


def heldout_report(evals: Mapping[str, dict], arms: Mapping[str, Sequence[str]],
                   pmids: Sequence[int], n_boot: int, seed: int) -> dict[str, Any]:
    """The held-out part of ``reports/steering.json``: final arms, contrasts under both
    scorers, reward-hacking signs, robustness checks, every round's mean and the
    round-over-round contrasts."""
    final = final_tags(arms)
    return {
        "final": final,
        "arms": {arm: {**arm_summary(evals[tag]["scores"], pmids), "model": evals[tag]["model"]}
                 for arm, tag in final.items()},
        "contrasts": arm_contrasts(evals, final, "scores", pmids, n_boot, seed),
        "second_arms": {arm: arm_summary(evals[tag]["scores2"], pmids)
                        for arm, tag in final.items()},
        "second_contrasts": arm_contrasts(evals, final, "scores2", pmids, n_boot, seed),
        "hacking": {tag: e["hacking"] for tag, e in evals.items()},
        "robustness": robustness(evals, final, pmids, n_boot, seed),
        "per_round": {tag: {"mean": arm_summary(e["scores"], pmids)["mean"],
                            "mean_second": arm_summary(e["scores2"], pmids)["mean"]}
                      for tag, e in evals.items()},
        "round_contrasts": round_contrasts(evals, arms, pmids, n_boot, seed),
    }
