"""Does the alignment work? Mean MeSH score of a generator's questions before vs after DPO.

On the same held-out abstracts, each generator writes one question per abstract; each question is
scored exactly like the preference data (:class:`~kailin.align.score.ScoreStage`). The two score
lists are paired by PMID and :func:`paired_bootstrap` gives the mean difference (after - before)
with a percentile bootstrap confidence interval over abstracts.

NaN handling: a PMID whose score is NaN (no question, nothing retrieved, no known MeSH) in
*either* table is left out of the pairing and counted in ``n_dropped``; the means are over the
same ``n`` paired abstracts.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.io import read_parquet

log = logging.getLogger(__name__)

RESULT_KEYS = ("n", "before_mean", "after_mean", "delta", "ci_low", "ci_high")


def paired_bootstrap(
    before: np.ndarray | list[float],
    after: np.ndarray | list[float],
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean before/after, their difference, and a percentile bootstrap CI of the difference.

    Pairs where either value is NaN are dropped (``n_dropped``); with none left, ``n`` is 0, the
    means and the interval are NaN (null in JSON) and ``reason`` says why (how many scores of
    each side are NaN). Resampling draws abstracts with replacement and recomputes the mean of
    the paired differences, ``n_boot`` times.
    """
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 1:
        raise InputError(f"before and after must be 1-D and paired; got {b.shape} and {a.shape}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence {confidence}: must lie in (0, 1)")
    nan_b, nan_a = np.isnan(b), np.isnan(a)
    ok = ~(nan_b | nan_a)
    b, a = b[ok], a[ok]
    n = len(b)
    out: dict[str, Any] = {
        "n": n,
        "before_mean": float("nan"),
        "after_mean": float("nan"),
        "delta": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "n_dropped": int((~ok).sum()),
        "confidence": confidence,
        "n_boot": n_boot,
    }
    if n == 0:
        out["reason"] = (
            f"no abstract has a score on both sides: {int(nan_b.sum())} of {len(nan_b)} 'before' "
            f"and {int(nan_a.sum())} of {len(nan_a)} 'after' scores are NaN (no question "
            "generated or accepted, nothing retrieved for it, or no known MeSH in its contexts); "
            "see the rejection counts of the question stage"
            if len(nan_b) else "no abstracts to compare"
        )
        return out
    d = a - b
    out.update(before_mean=float(b.mean()), after_mean=float(a.mean()), delta=float(d.mean()))
    if n == 1:
        out.update(ci_low=float(d[0]), ci_high=float(d[0]))
        return out
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, min(n_boot, 2_000_000 // n))  # bounded memory: chunk x n indices at a time
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        means[start: start + m] = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def pair_scores(before: pa.Table, after: pa.Table, before_generator: str | None = None,
                after_generator: str | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Pair two score tables by PMID (one row per PMID after the optional generator filter).

    Returns (pmids, before scores, after scores) over the PMIDs present in both tables.
    """
    def per_pmid(t: pa.Table, gen: str | None, name: str) -> dict[int, float]:
        for c in ("pmid", "score"):
            if c not in t.column_names:
                raise InputError(f"{name} scores: missing column {c!r} (give `kailin score` output)")
        pm = t["pmid"].to_pylist()
        sc = t["score"].to_pylist()
        gs = t["generator"].to_pylist() if "generator" in t.column_names else [None] * len(pm)
        if gen is None and len({g for g in gs}) > 1:
            raise InputError(f"{name} scores hold several generators {sorted(set(map(str, gs)))}; "
                             f"pick one with --{name}-generator")
        out: dict[int, float] = {}
        for p, s, g in zip(pm, sc, gs, strict=True):
            if gen is not None and g != gen:
                continue
            if int(p) in out:
                raise InputError(f"{name} scores: PMID {p} appears twice for one generator")
            out[int(p)] = float("nan") if s is None else float(s)
        if not out:
            raise InputError(f"{name} scores: no rows for generator {gen!r}")
        return out

    b = per_pmid(before, before_generator, "before")
    a = per_pmid(after, after_generator, "after")
    common = sorted(set(b) & set(a))
    if not common:
        raise InputError("before and after score tables share no PMID")
    return (common, np.array([b[p] for p in common]), np.array([a[p] for p in common]))


def compare_score_tables(
    before: str | os.PathLike[str] | pa.Table,
    after: str | os.PathLike[str] | pa.Table,
    before_generator: str | None = None,
    after_generator: str | None = None,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`paired_bootstrap` over two ``kailin score`` outputs paired by PMID."""
    bt = before if isinstance(before, pa.Table) else read_parquet(before)
    at = after if isinstance(after, pa.Table) else read_parquet(after)
    pmids, b, a = pair_scores(bt, at, before_generator, after_generator)
    res = paired_bootstrap(b, a, n_boot=n_boot, confidence=confidence, seed=seed)
    res["n_common_pmids"] = len(pmids)
    return res


def heldout_abstracts(
    corpus_dir: str | os.PathLike[str],
    n: int,
    exclude: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> pa.Table:
    """``n`` abstracts (with MeSH) drawn from the corpus, leaving out the PMIDs of ``exclude``
    (a preference / scores / questions Parquet: the data the generator was aligned on)."""
    from kailin.corpus.reader import open_corpus

    t = open_corpus(corpus_dir).read(["pmid", "title", "abstract", "mesh_uis"])
    keep = [
        i for i, (ab, m) in enumerate(zip(t["abstract"].to_pylist(), t["mesh_uis"].to_pylist(),
                                          strict=True))
        if ab and ab.strip() and m
    ]
    t = t.take(pa.array(keep, pa.int64()))
    if exclude:
        used = set(read_parquet(exclude, columns=["pmid"])["pmid"].to_pylist())
        t = t.filter(pa.array([p not in used for p in t["pmid"].to_pylist()]))
    if t.num_rows == 0:
        raise InputError(f"{corpus_dir}: no held-out abstracts with MeSH left")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(t.num_rows)[: min(n, t.num_rows)])
    return t.take(pa.array(idx, pa.int64()))


def format_result_table(res: dict[str, Any]) -> str:
    """The result as a small aligned text table."""
    conf = round(100 * res.get("confidence", 0.95))
    rows = [
        ("abstracts (paired)", str(res["n"])),
        ("dropped (NaN)", str(res.get("n_dropped", 0))),
        ("mean MeSH score before", _fmt(res["before_mean"])),
        ("mean MeSH score after", _fmt(res["after_mean"])),
        ("delta (after - before)", _fmt(res["delta"])),
        (f"{conf}% bootstrap CI", f"[{_fmt(res['ci_low'])}, {_fmt(res['ci_high'])}]"),
    ]
    if res.get("reason"):
        rows.append(("why no numbers", str(res["reason"])))
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def json_result(res: dict[str, Any]) -> dict[str, Any]:
    """The contract object (``n``, means, delta, CI) plus the extra fields; NaN -> null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}


class GeneratorEvalConfig(StageConfig):
    """Settings of ``kailin evaluate generator`` (:func:`evaluate_generators`; the bootstrap's
    also for :func:`compare_score_tables`)."""

    n: int = Field(100, description="held-out abstracts to draw")
    k: int | None = Field(None, description="contexts per question (default: the document "
                          "score's, 6)")
    mode: str = Field("raw", description="prompt mode for generation: raw (the KAILIN prompt "
                      "as trained) or chat")
    max_new_tokens: int = 64
    device: str = Field("auto", description="auto | cpu | cuda[:N]")
    n_boot: int = Field(10_000, description="bootstrap resamples")
    seed: int = 0


def evaluate_generators(
    before_spec: str,
    after_spec: str,
    corpus_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    mesh_dir: str | os.PathLike[str] | None = None,
    n: int = 100,
    exclude: str | os.PathLike[str] | None = None,
    k: int | None = None,
    max_new_tokens: int = 64,
    mode: str = "raw",
    n_boot: int = 10_000,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """End to end: draw ``n`` held-out abstracts, let each generator write one question per
    abstract (``kailin.generate``'s question stage, greedy, the KAILIN prompt in ``mode``), score
    both with :class:`~kailin.align.score.ScoreStage`, bootstrap the paired difference.

    Intermediate tables (questions, scores, and the LLM response cache) live in ``work_dir``, so
    a re-run with the same generators costs nothing. Use a fresh ``work_dir`` after retraining a
    generator into the same directory (the cache keys on the model path).
    """
    from kailin.align.score import score_questions
    from kailin.engine.executors.local import LocalExecutor
    from kailin.generate.questions import (
        GenerationConfig,
        QuestionGenerationStage,
        question_stats,
    )
    from kailin.llm.spec import parse_spec
    from kailin.mesh.score import DEFAULT_SCORE_K

    work = Path(work_dir)
    held = heldout_abstracts(corpus_dir, n, exclude=exclude, seed=seed)
    scored: dict[str, pa.Table] = {}
    gen_stats: dict[str, Any] = {}
    for tag, spec in (("before", before_spec), ("after", after_spec)):
        g = parse_spec(_generation_spec(spec), name=tag)
        stage = QuestionGenerationStage.from_config(
            [g], GenerationConfig(mode=mode, max_new_tokens=max_new_tokens, device=device,
                                  batch_size=batch_size, max_abstract_chars=None),
            cache_path=work / "llm_cache.sqlite")
        qdir = work / f"questions_{tag}"
        LocalExecutor(rows_per_shard=64, progress=progress).run(stage, held, qdir)
        q = read_parquet(qdir)
        gen_stats[tag] = question_stats(q)
        sdir = work / f"scores_{tag}"
        score_questions(qdir, index_dir, sdir, corpus_dir=corpus_dir, mesh_dir=mesh_dir, k=k,
                        progress=progress)
        scored[tag] = read_parquet(sdir)
    res = compare_score_tables(scored["before"], scored["after"], n_boot=n_boot, seed=seed)
    res.update(
        before=before_spec, after=after_spec, k=k if k is not None else DEFAULT_SCORE_K,
        heldout=held.num_rows,
        before_rejected=gen_stats["before"].get("rejected"),
        after_rejected=gen_stats["after"].get("rejected"),
    )
    return res


def _generation_spec(spec: str) -> str:
    """A `kailin train` output directory generates with its final model (``OUT/model``)."""
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "model" / "config.json").is_file():
        return str(p / "model")
    return spec
