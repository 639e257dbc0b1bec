"""Scores -> preference pairs (KAILIN step 3): one (chosen, rejected) pair per source PMID.

Input: a Parquet file or directory with at least ``pmid``, ``generator``, ``prompt``,
``question`` and ``score`` (what ``kailin score`` writes). Per PMID:

1. ``too_few_questions``: a question that is null or only whitespace does not count; a PMID with
   fewer than two non-empty questions is dropped.
2. ``tau`` (the authors' ``filter.py``): keep the PMID only when **every** score of its non-empty
   questions is ``<= tau`` (off by default; the authors' 0.5 is on the paper's score scale, so
   give it with ``--faithful`` scores). A NaN or null score
   is not ``<= tau``, so such a PMID is dropped here.
3. ``band`` (optional ``(low, high)``, e.g. (0.2, 0.7) from a comment in the authors' code): keep
   the PMID only when every score lies strictly inside ``(low, high)``. NaN is never inside, so a
   PMID with a NaN score that survived (tau off) is dropped here.
4. ``nan_score``: with both tau and band off, a PMID with any NaN/null score is dropped (a NaN
   cannot be ranked).
5. chosen = the question with the highest score, rejected = the one with the lowest (ties inside
   the top or bottom broken by generator name, then question text, so the result is
   deterministic). ``tie``: chosen and rejected scores equal -> dropped. ``margin``: their
   difference is below ``min_margin`` -> dropped.
6. ``same_question``: chosen and rejected texts are identical after trimming -> dropped (DPO
   would learn nothing from the pair).

Two options (off by default, so the rules above are the paper's):

7. ``invalid_rejected``: a PMID left with one valid question whose other output was rejected by
   the question extractor (``reject_reason`` set, the model's ``raw`` text non-empty) makes a pair
   of its own: chosen = the valid question, rejected = the invalid raw output. Sampling from a
   policy (the steering rounds) yields many such outputs; without these pairs DPO never learns
   to avoid them and validity falls round after round. Counted as ``validity_pairs``.
8. ``max_pairs``: keep only the N pairs with the widest score margin (the most reliable labels;
   validity pairs first, since no score can be wrong about them), ``max_pairs`` counts the rest.

The first filter that rejects a PMID is the one counted. Output: ``OUT/data/train.parquet`` (load
with ``datasets.load_dataset("parquet", data_files=...)`` or ``load_dataset(OUT)``) with columns
``prompt``, ``chosen``, ``rejected``, ``pmid``, ``chosen_score``, ``rejected_score``,
``chosen_generator``, ``rejected_generator``, ``n_questions``; and ``OUT/prefer_stats.json`` with
the count each filter dropped and the count kept. Pure pyarrow + DuckDB (no torch).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from kailin.errors import InputError
from kailin.io import duckdb_table, read_parquet, write_json_atomic, write_parquet_atomic

REQUIRED_COLUMNS = ("pmid", "generator", "prompt", "question", "score")
FILTERS = ("too_few_questions", "tau", "band", "nan_score", "tie", "margin", "same_question",
           "max_pairs")
#: extractor verdicts that say nothing about the model (no input was sent)
NOT_THE_MODELS_FAULT = ("no_abstract",)
PREFERENCES_FILE = Path("data") / "train.parquet"
STATS_FILE = "prefer_stats.json"


@dataclass(frozen=True)
class PreferSettings:
    """Filter settings; see the module docstring for the exact rules."""

    tau: float | None = None
    band: tuple[float, float] | None = None
    min_margin: float = 0.0
    invalid_rejected: bool = False
    max_pairs: int | None = None

    def __post_init__(self) -> None:
        if self.tau is not None and math.isnan(self.tau):
            raise InputError("tau must be a number or None, not NaN")
        if self.band is not None:
            lo, hi = self.band
            if not lo < hi:
                raise InputError(f"--band {lo} {hi}: LOW must be smaller than HIGH")
        if self.min_margin < 0 or math.isnan(self.min_margin):
            raise InputError(f"--min-margin {self.min_margin}: must be >= 0")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise InputError(f"--max-pairs {self.max_pairs}: must be >= 1")


def build_preferences(
    scores: pa.Table, settings: PreferSettings | None = None, source: str = "scores"
) -> tuple[pa.Table, dict[str, Any]]:
    """Apply the rules to a scores table; return (pairs table, stats dict)."""
    s = settings or PreferSettings()
    missing = [c for c in REQUIRED_COLUMNS if c not in scores.column_names]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {missing}; a scores table needs {list(REQUIRED_COLUMNS)} "
            "(run `kailin score` first)"
        )
    t = scores.select(list(REQUIRED_COLUMNS))
    t = t.set_column(t.column_names.index("score"), "score", t["score"].cast(pa.float64()))
    con = duckdb.connect()
    con.register("t", t)
    tau = "NULL" if s.tau is None else repr(float(s.tau))
    lo, hi = ("NULL", "NULL") if s.band is None else (repr(float(s.band[0])), repr(float(s.band[1])))
    sql = f"""
    WITH q AS (
        SELECT pmid, generator, prompt, question, score,
               (question IS NOT NULL AND trim(question) <> '') AS nonempty,
               (score IS NULL OR isnan(score)) AS isnanscore
        FROM t
    ),
    ne AS (
        SELECT *,
          row_number() OVER (PARTITION BY pmid ORDER BY score DESC, generator ASC, question ASC)
            AS r_hi,
          row_number() OVER (PARTITION BY pmid ORDER BY score ASC, generator DESC, question DESC)
            AS r_lo
        FROM q WHERE nonempty
    ),
    agg AS (
        SELECT pmid,
               count(*) FILTER (WHERE nonempty) AS n_questions,
               coalesce(bool_or(isnanscore) FILTER (WHERE nonempty), false) AS any_nan,
               coalesce(bool_and(NOT isnanscore AND score <= {tau})
                        FILTER (WHERE nonempty), false) AS all_le_tau,
               coalesce(bool_and(NOT isnanscore AND score > {lo} AND score < {hi})
                        FILTER (WHERE nonempty), false) AS all_in_band
        FROM q GROUP BY pmid
    ),
    pairs AS (
        SELECT a.*, c.prompt AS prompt, c.question AS chosen, r.question AS rejected,
               c.score AS chosen_score, r.score AS rejected_score,
               c.generator AS chosen_generator, r.generator AS rejected_generator
        FROM agg a
        LEFT JOIN ne c ON c.pmid = a.pmid AND c.r_hi = 1
        LEFT JOIN ne r ON r.pmid = a.pmid AND r.r_lo = 1
    )
    SELECT *,
      CASE
        WHEN n_questions < 2 THEN 'too_few_questions'
        WHEN {tau} IS NOT NULL AND NOT all_le_tau THEN 'tau'
        WHEN {lo} IS NOT NULL AND NOT all_in_band THEN 'band'
        WHEN any_nan THEN 'nan_score'
        WHEN chosen_score = rejected_score THEN 'tie'
        WHEN chosen_score - rejected_score < {float(s.min_margin)!r} THEN 'margin'
        WHEN trim(chosen) = trim(rejected) THEN 'same_question'
        ELSE 'kept'
      END AS verdict
    FROM pairs
    """
    con.execute(f"CREATE TEMP TABLE judged AS {sql}")
    if s.invalid_rejected and {"raw", "reject_reason"} <= set(scores.column_names):
        _add_validity_pairs(con, scores)
    counts = dict(con.execute("SELECT verdict, count(*) FROM judged GROUP BY verdict").fetchall())
    kept = int(counts.get("kept", 0))
    if s.max_pairs is not None and kept > s.max_pairs:
        con.execute(f"""
            UPDATE judged SET verdict = 'max_pairs' WHERE pmid IN (
              SELECT pmid FROM judged WHERE verdict = 'kept'
              ORDER BY coalesce(chosen_score - rejected_score, 'inf'::DOUBLE) DESC, pmid
              OFFSET {int(s.max_pairs)})""")
        counts = dict(con.execute(
            "SELECT verdict, count(*) FROM judged GROUP BY verdict").fetchall())
    validity = int(con.execute("SELECT count(*) FROM judged WHERE verdict = 'kept' AND "
                               "rejected_score IS NULL").fetchall()[0][0])
    out = duckdb_table(con.sql(
        """
        SELECT prompt, chosen, rejected, pmid, chosen_score, rejected_score,
               chosen_generator, rejected_generator, n_questions
        FROM judged WHERE verdict = 'kept' ORDER BY pmid
        """
    ))
    con.close()
    n_pmids = sum(counts.values())
    stats: dict[str, Any] = {
        "input_rows": t.num_rows,
        "pmids": n_pmids,
        "dropped": {f: int(counts.get(f, 0)) for f in FILTERS},
        "kept": int(counts.get("kept", 0)),
        "validity_pairs": validity,
        "settings": {
            "tau": s.tau,
            "band": list(s.band) if s.band else None,
            "min_margin": s.min_margin,
            "invalid_rejected": s.invalid_rejected,
            "max_pairs": s.max_pairs,
        },
    }
    return out, stats


def _add_validity_pairs(con: duckdb.DuckDBPyConnection, scores: pa.Table) -> None:
    """Turn ``too_few_questions`` PMIDs with one valid, scored question and an invalid raw
    output into (valid, invalid) pairs (rule 7)."""
    bad = scores.select(["pmid", "generator", "raw", "reject_reason"])
    con.register("bad_src", bad)
    excluded = ", ".join(repr(x) for x in NOT_THE_MODELS_FAULT)
    con.execute(f"""
        UPDATE judged SET verdict = 'kept', rejected = b.raw, rejected_score = NULL,
                          rejected_generator = b.generator
        FROM (SELECT pmid, arg_min(trim(raw), generator) AS raw, min(generator) AS generator
              FROM bad_src WHERE reject_reason IS NOT NULL
                AND reject_reason NOT IN ({excluded}) AND raw IS NOT NULL AND trim(raw) <> ''
              GROUP BY pmid) b
        WHERE judged.pmid = b.pmid AND judged.verdict = 'too_few_questions'
          AND judged.n_questions = 1 AND judged.chosen IS NOT NULL
          AND judged.chosen_score IS NOT NULL AND NOT isnan(judged.chosen_score)
          AND trim(judged.chosen) <> trim(b.raw)""")
    con.unregister("bad_src")


def prefer(
    scores_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: PreferSettings | None = None,
    scores: pa.Table | None = None,
) -> dict[str, Any]:
    """Read a scores Parquet file/directory, build pairs, write them and the stats.

    ``scores`` may be given directly (e.g. relabelled by the evaluator); ``scores_path`` is then
    used only in messages.
    """
    if scores is None:
        try:
            scores = read_parquet(scores_path)
        except FileNotFoundError as exc:
            raise InputError(f"{exc}; give the output of `kailin score`") from exc
    table, stats = build_preferences(scores, settings, source=str(scores_path))
    out = Path(out_dir)
    write_parquet_atomic(table, out / PREFERENCES_FILE)
    stats["settings"].update({k: v for k, v in asdict(settings or PreferSettings()).items()
                              if k not in stats["settings"]})
    stats["output"] = str(out / PREFERENCES_FILE)
    write_json_atomic(out / STATS_FILE, stats)
    return stats


def parse_tau(value: str | float | None) -> float | None:
    """``none``/``off`` -> None, else a float (the CLI's ``--tau``)."""
    if value is None:
        return None
    if isinstance(value, float):
        return value
    if value.strip().lower() in {"none", "off", "no", ""}:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise InputError(f"--tau {value!r}: give a number or 'none'") from exc
