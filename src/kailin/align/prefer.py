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

   With several samples per abstract (the steering rounds) almost every PMID keeps two valid
   questions, so this rule rarely fires. ``validity_share`` (with ``invalid_rejected``) widens
   it: any PMID with a valid, scored question and an invalid output is a candidate, its pair =
   its best question against that output, and up to ``floor(validity_share * N)`` of them are
   kept (N = ``max_pairs``, or without it the pairs available). Candidates whose MeSH pair was
   dropped come first, then those with the narrowest MeSH margin (the least sure labels), so
   the validity pairs displace the MeSH pairs that ``max_pairs`` would drop anyway.
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.io import (
    connect_duckdb,
    duckdb_reader,
    read_parquet,
    register_parquet,
    write_batches_atomic,
    write_json_atomic,
)

if TYPE_CHECKING:
    import duckdb

REQUIRED_COLUMNS = ("pmid", "generator", "prompt", "question", "score")
FILTERS = ("too_few_questions", "tau", "band", "nan_score", "tie", "margin", "same_question",
           "max_pairs")
#: extractor verdicts that say nothing about the model (no input was sent)
NOT_THE_MODELS_FAULT = ("no_abstract",)
PREFERENCES_FILE = Path("data") / "train.parquet"
STATS_FILE = "prefer_stats.json"
T = TypeVar("T")


class PreferConfig(StageConfig):
    """Which pairs to keep: the options of ``kailin prefer`` (``kailin.align.prefer``, whose
    docstring gives the exact rules), the ``preferences`` section of ``kailin run``."""

    tau: float | None = Field(None, description="keep a PMID only when "
                              "every score <= tau (the authors' filter, 0.5 on the paper's "
                              "scale: use it with mesh.faithful; off by default)")
    band: tuple[float, float] | None = Field(None, description="LOW HIGH: keep only PMIDs whose "
                                             "scores all lie strictly inside")
    min_margin: float = Field(0.0, ge=0, description="drop a PMID whose "
                              "chosen and rejected scores are closer than this")
    labeller: Literal["mesh", "evaluator"] = Field(
        "mesh", description="mesh: rank by the MeSH score; evaluator: rank by the trained "
        "m-KAILIN evaluator agent (the pipeline's evaluator stage, kailin prefer --evaluator)")
    invalid_rejected: bool = Field(False, description="a PMID with one valid question and an "
                                   "output the extractor rejected makes a (valid, invalid raw "
                                   "output) pair, so DPO learns to avoid invalid outputs")
    max_pairs: int | None = Field(None, ge=1, description="keep only the pairs with the widest "
                                  "score margins (validity pairs first)")
    validity_share: float | None = Field(
        None, ge=0, le=1, description="with invalid_rejected: any PMID with a valid question "
        "and an invalid output may give a validity pair (best question vs that output), up to "
        "this share of max_pairs (or of the pairs available); for several samples per "
        "abstract, where a PMID rarely has one valid question")

    added_fields: ClassVar[tuple[str, ...]] = ("validity_share",)

    @field_validator("tau", "min_margin")
    @classmethod
    def _not_nan(cls, v: float | None) -> float | None:
        if v is not None and math.isnan(v):
            raise ValueError("must be a number, not NaN")
        return v

    @model_validator(mode="after")
    def _share_needs_invalid_rejected(self) -> PreferConfig:
        if self.validity_share is not None and not self.invalid_rejected:
            raise ValueError("validity_share needs invalid_rejected (the validity pairs it "
                             "shares out)")
        return self

    @field_validator("band")
    @classmethod
    def _band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"band {v[0]} {v[1]}: LOW must be smaller than HIGH")
        return v


#: the kept pairs of the table ``judged`` that :func:`_judge` leaves, each with the prompt of
#: its chosen question, in PMID order (a PMID's rows, more than one only where the same
#: generator gave the same question twice, ordered by prompt: :func:`_first_per_pmid` keeps one)
KEPT_PAIRS = """
    SELECT t.prompt, j.chosen, j.rejected, j.pmid, j.chosen_score, j.rejected_score,
           j.chosen_generator, j.rejected_generator, j.n_questions
    FROM judged j JOIN t ON t.pmid IS NOT DISTINCT FROM j.pmid AND t.question = j.chosen
                        AND t.generator IS NOT DISTINCT FROM j.chosen_generator
    WHERE j.verdict = 'kept' ORDER BY j.pmid, t.prompt"""


def _first_per_pmid(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches of :data:`KEPT_PAIRS` with one row per PMID (the first)."""
    last: Any = None
    for b in batches:
        if not b.num_rows:
            continue
        pmids = b.column("pmid").to_pylist()
        keep = [p != q for p, q in zip(pmids, [last, *pmids[:-1]], strict=True)]
        last = pmids[-1]
        yield b if all(keep) else b.filter(pa.array(keep))


def build_preferences(
    scores: pa.Table | str | os.PathLike[str], settings: PreferConfig | None = None,
    source: str = "scores"
) -> tuple[pa.Table, dict[str, Any]]:
    """Apply the rules to a scores table (ranked by its ``score`` column, whatever
    ``settings.labeller``: :func:`prefer` relabels); return (pairs table, stats dict).

    The pairs come back as one in-memory table; :func:`write_preferences` streams them to a
    file instead (what :func:`prefer` does, for scores of any size)."""
    def gather(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
        return pa.Table.from_batches(list(batches), schema)

    return _pairs(scores, settings, source, gather, 65536)


def write_preferences(
    scores: pa.Table | str | os.PathLike[str], target: str | os.PathLike[str],
    settings: PreferConfig | None = None, source: str = "scores", batch_size: int = 8192
) -> dict[str, Any]:
    """:func:`build_preferences`, with the pairs written to the Parquet file ``target``
    (atomically) a batch at a time: memory stays within DuckDB's bound whatever the number of
    questions (the scale rehearsal: 2M questions peaked at 3.2 GiB when the pairs were first
    gathered into one table). Returns the stats."""
    def write(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> int:
        return write_batches_atomic(batches, schema, target)

    return _pairs(scores, settings, source, write, batch_size)[1]


def _pairs(scores: pa.Table | str | os.PathLike[str], settings: PreferConfig | None,
           source: str, consume: Callable[[Iterator[pa.RecordBatch], pa.Schema], T],
           batch_size: int) -> tuple[T, dict[str, Any]]:
    """Judge ``scores`` on a bounded DuckDB connection (it groups every scored question by
    PMID: DuckDB spills instead of holding them all), then ``consume`` the kept pairs, one row
    per PMID, batch by batch; returns (what ``consume`` returns, the stats)."""
    con = connect_duckdb()
    try:
        stats = _judge(con, scores, settings or PreferConfig(), source)
        reader = duckdb_reader(con.sql(KEPT_PAIRS), batch_size)
        return consume(_first_per_pmid(reader), reader.schema), stats
    finally:
        con.close()


def _judge(con: duckdb.DuckDBPyConnection, scores: pa.Table | str | os.PathLike[str],
           s: PreferConfig, source: str) -> dict[str, Any]:
    """Judge every PMID of ``scores`` into the table ``judged`` (one row per PMID with its
    verdict); return the stats. A Parquet file or folder is read by DuckDB itself, which spills
    past its bound, so memory does not hold every scored question."""
    if isinstance(scores, pa.Table):
        con.register("src", scores)
        columns = scores.column_names
    else:
        try:
            columns = register_parquet(con, "src", scores)
        except FileNotFoundError as exc:
            raise InputError(f"{exc}; give the output of `kailin score`") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {missing}; a scores table needs {list(REQUIRED_COLUMNS)} "
            "(run `kailin score` first)"
        )
    con.execute("CREATE TEMP VIEW t AS SELECT pmid, generator, prompt, question, "
                "CAST(score AS DOUBLE) AS score FROM src")
    n_rows = int(con.execute("SELECT count(*) FROM t").fetchall()[0][0])
    tau = "NULL" if s.tau is None else repr(float(s.tau))
    lo, hi = ("NULL", "NULL") if s.band is None else (repr(float(s.band[0])), repr(float(s.band[1])))
    # chosen = the first non-empty question by (score DESC, generator, question), rejected =
    # the first by (score ASC, generator DESC, question DESC), in DuckDB's order (NaN above every
    # number, NULL last): one pass of arg_min / arg_max over rank keys, holding one chosen and
    # one rejected question per PMID. (Two window functions and two self-joins, carrying the
    # prompt, peaked at 2.6 GiB on 2M questions against ~1 GiB; the prompt is fetched for the
    # kept pairs only, by :data:`KEPT_PAIRS`.)
    sql = f"""
    WITH q AS (
        SELECT pmid, generator, question, score,
               (question IS NOT NULL AND trim(question) <> '') AS nonempty,
               (score IS NULL OR isnan(score)) AS isnanscore,
               CASE WHEN score IS NULL THEN 2 WHEN isnan(score) THEN 0 ELSE 1 END AS hi_rank,
               CASE WHEN score IS NULL THEN 0 WHEN isnan(score) THEN 1 ELSE 2 END AS lo_rank,
               CASE WHEN score IS NULL OR isnan(score) THEN 0.0 ELSE -score END AS neg_score
        FROM t
    ),
    agg AS (
        SELECT pmid,
               count(*) FILTER (WHERE nonempty) AS n_questions,
               coalesce(bool_or(isnanscore) FILTER (WHERE nonempty), false) AS any_nan,
               coalesce(bool_and(NOT isnanscore AND score <= {tau})
                        FILTER (WHERE nonempty), false) AS all_le_tau,
               coalesce(bool_and(NOT isnanscore AND score > {lo} AND score < {hi})
                        FILTER (WHERE nonempty), false) AS all_in_band,
               arg_min(struct_pack(question := question, score := score, generator := generator),
                       struct_pack(a := hi_rank, s := neg_score, g := generator, q := question))
                 FILTER (WHERE nonempty) AS c,
               arg_max(struct_pack(question := question, score := score, generator := generator),
                       struct_pack(a := lo_rank, s := neg_score, g := generator, q := question))
                 FILTER (WHERE nonempty) AS r
        FROM q GROUP BY pmid
    ),
    pairs AS (
        SELECT pmid, n_questions, any_nan, all_le_tau, all_in_band,
               c.question AS chosen, r.question AS rejected,
               c.score AS chosen_score, r.score AS rejected_score,
               c.generator AS chosen_generator, r.generator AS rejected_generator
        FROM agg
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
    candidates = 0
    if s.invalid_rejected and {"raw", "reject_reason"} <= set(columns):
        if s.validity_share is None:
            _add_validity_pairs(con)
        else:
            candidates = _share_validity_pairs(con, s.validity_share, s.max_pairs)
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
    n_pmids = sum(counts.values())
    stats: dict[str, Any] = {
        "input_rows": n_rows,
        "pmids": n_pmids,
        "dropped": {f: int(counts.get(f, 0)) for f in FILTERS},
        "kept": int(counts.get("kept", 0)),
        "validity_pairs": validity,
        **({"validity_candidates": candidates} if s.validity_share is not None else {}),
        "settings": {
            "tau": s.tau,
            "band": list(s.band) if s.band else None,
            "min_margin": s.min_margin,
            "invalid_rejected": s.invalid_rejected,
            "max_pairs": s.max_pairs,
            **({"validity_share": s.validity_share} if s.validity_share is not None else {}),
        },
    }
    return stats


#: per PMID, one output the extractor rejected through the model's fault (the view ``src``)
INVALID_OUTPUTS = f"""
    SELECT pmid, arg_min(trim(raw), generator) AS raw, min(generator) AS generator
    FROM src WHERE reject_reason IS NOT NULL
      AND reject_reason NOT IN ({", ".join(repr(x) for x in NOT_THE_MODELS_FAULT)})
      AND raw IS NOT NULL AND trim(raw) <> ''
    GROUP BY pmid"""


def _add_validity_pairs(con: duckdb.DuckDBPyConnection) -> None:
    """Turn ``too_few_questions`` PMIDs with one valid, scored question and an invalid raw
    output into (valid, invalid) pairs (rule 7); the scores are the view ``src``."""
    con.execute(f"""
        UPDATE judged SET verdict = 'kept', rejected = b.raw, rejected_score = NULL,
                          rejected_generator = b.generator
        FROM ({INVALID_OUTPUTS}) b
        WHERE judged.pmid = b.pmid AND judged.verdict = 'too_few_questions'
          AND judged.n_questions = 1 AND judged.chosen IS NOT NULL
          AND judged.chosen_score IS NOT NULL AND NOT isnan(judged.chosen_score)
          AND trim(judged.chosen) <> trim(b.raw)""")


def _share_validity_pairs(con: duckdb.DuckDBPyConnection, share: float,
                          max_pairs: int | None) -> int:
    """Rule 7 widened by ``validity_share``: every PMID with a valid, scored best question and
    an invalid raw output is a candidate; up to ``floor(share * N)`` become (best question,
    invalid output) pairs, PMIDs without a kept MeSH pair first, then the narrowest MeSH
    margins. Returns the number of candidates."""
    con.execute(f"""
        CREATE TEMP TABLE vcand AS
        SELECT j.pmid, b.raw, b.generator, j.verdict = 'kept' AS mesh_kept,
               CASE WHEN j.verdict = 'kept' THEN j.chosen_score - j.rejected_score END
                 AS mesh_margin
        FROM judged j JOIN ({INVALID_OUTPUTS}) b ON j.pmid = b.pmid
        WHERE j.chosen IS NOT NULL AND j.chosen_score IS NOT NULL
          AND NOT isnan(j.chosen_score) AND trim(j.chosen) <> trim(b.raw)""")
    n_cand = int(con.execute("SELECT count(*) FROM vcand").fetchall()[0][0])
    if max_pairs is not None:
        n = max_pairs
    else:
        n = int(con.execute("SELECT (SELECT count(*) FROM judged WHERE verdict = 'kept') + "
                            "(SELECT count(*) FROM vcand WHERE NOT mesh_kept)").fetchall()[0][0])
    quota = math.floor(share * n + 1e-9)
    con.execute(f"""
        UPDATE judged SET verdict = 'kept', rejected = v.raw, rejected_score = NULL,
                          rejected_generator = v.generator
        FROM (SELECT * FROM vcand ORDER BY mesh_kept, mesh_margin NULLS FIRST, pmid
              LIMIT {int(quota)}) v
        WHERE judged.pmid = v.pmid""")
    con.execute("DROP TABLE vcand")
    return n_cand


def prefer(
    scores_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: PreferConfig | None = None,
    scores: pa.Table | None = None,
    evaluator: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Read a scores Parquet file/directory, build pairs, write them and the stats.

    With ``settings.labeller == "evaluator"`` the questions are ranked by the evaluator agent in
    ``evaluator`` (``kailin train evaluator``, the pipeline's evaluator stage) instead of the
    MeSH score. ``scores`` may be given directly (already relabelled, say); ``scores_path`` is
    then used only in messages.
    """
    s = settings or PreferConfig()
    if scores is None:
        if not Path(scores_path).exists():
            raise InputError(f"{scores_path}: no such Parquet file or directory; give the "
                             "output of `kailin score`")
        scores = scores_path  # read by DuckDB: one row per PMID in memory
        if s.labeller == "evaluator":
            scores = read_parquet(scores_path)
            if evaluator is None:
                raise InputError("labeller evaluator needs the evaluator directory "
                                 "(`kailin train evaluator`; kailin prefer --evaluator DIR)")
            from kailin.align.evaluator import relabel_scores

            scores = relabel_scores(scores, evaluator)
    out = Path(out_dir)
    stats = write_preferences(scores, out / PREFERENCES_FILE, s, source=str(scores_path))
    stats["settings"].update({k: v for k, v in s.model_dump(mode="json").items()
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
