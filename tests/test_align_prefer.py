"""Preference construction: every rule of `kailin prefer` on hand-made score tables."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from kailin.align.prefer import (
    FILTERS,
    PREFERENCES_FILE,
    STATS_FILE,
    PreferConfig,
    build_preferences,
    parse_tau,
    prefer,
)
from kailin.errors import InputError

NAN = float("nan")


def table(rows: list[tuple[int, str, str | None, float | None]]) -> pa.Table:
    """rows of (pmid, generator, question, score); prompt is derived from the pmid."""
    return pa.table(
        {
            "pmid": pa.array([r[0] for r in rows], pa.int64()),
            "generator": [r[1] for r in rows],
            "prompt": [f"prompt {r[0]}" for r in rows],
            "question": [r[2] for r in rows],
            "score": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


def pairs_by_pmid(t: pa.Table) -> dict[int, dict]:
    return {r["pmid"]: r for r in t.to_pylist()}


def test_chosen_is_highest_rejected_is_lowest() -> None:
    t = table([
        (1, "llama", "What is A?", 0.30),
        (1, "bio", "What is B?", 0.10),
        (1, "third", "What is C?", 0.20),
    ])
    out, stats = build_preferences(t)
    (row,) = out.to_pylist()
    assert row["chosen"] == "What is A?" and row["rejected"] == "What is B?"
    assert row["chosen_score"] == pytest.approx(0.30)
    assert row["rejected_score"] == pytest.approx(0.10)
    assert row["chosen_generator"] == "llama" and row["rejected_generator"] == "bio"
    assert row["prompt"] == "prompt 1" and row["n_questions"] == 3
    assert stats["kept"] == 1 and sum(stats["dropped"].values()) == 0


def test_tau_filter_every_score_must_be_at_most_tau() -> None:
    t = table([
        (1, "a", "q1a?", 0.5), (1, "b", "q1b?", 0.1),     # 0.5 <= 0.5: kept
        (2, "a", "q2a?", 0.51), (2, "b", "q2b?", 0.1),    # one above tau: dropped
        (3, "a", "q3a?", 0.9), (3, "b", "q3b?", 0.7),     # both above
    ])
    out, stats = build_preferences(t, PreferConfig(tau=0.5))
    assert out["pmid"].to_pylist() == [1]
    assert stats["dropped"]["tau"] == 2
    out, stats = build_preferences(t, PreferConfig(tau=None))
    assert out["pmid"].to_pylist() == [1, 2, 3]
    assert stats["dropped"]["tau"] == 0
    out, _ = build_preferences(t, PreferConfig(tau=0.8))
    assert out["pmid"].to_pylist() == [1, 2]


def test_nan_scores_are_dropped_by_tau_then_band_then_nan_rule() -> None:
    t = table([
        (1, "a", "q1a?", NAN), (1, "b", "q1b?", 0.1),
        (2, "a", "q2a?", None), (2, "b", "q2b?", 0.3),   # null counts as NaN
        (3, "a", "q3a?", 0.3), (3, "b", "q3b?", 0.1),
    ])
    out, stats = build_preferences(t, PreferConfig(tau=0.5))
    assert out["pmid"].to_pylist() == [3] and stats["dropped"]["tau"] == 2
    out, stats = build_preferences(t, PreferConfig(tau=None, band=(0.0, 1.0)))
    assert out["pmid"].to_pylist() == [3] and stats["dropped"]["band"] == 2
    out, stats = build_preferences(t, PreferConfig(tau=None))
    assert out["pmid"].to_pylist() == [3] and stats["dropped"]["nan_score"] == 2


def test_band_is_strict_on_both_ends() -> None:
    t = table([
        (1, "a", "q1a?", 0.6), (1, "b", "q1b?", 0.3),    # inside (0.2, 0.7)
        (2, "a", "q2a?", 0.7), (2, "b", "q2b?", 0.3),    # 0.7 is not < 0.7
        (3, "a", "q3a?", 0.5), (3, "b", "q3b?", 0.2),    # 0.2 is not > 0.2
        (4, "a", "q4a?", 0.5), (4, "b", "q4b?", 0.1),    # 0.1 outside
    ])
    out, stats = build_preferences(t, PreferConfig(tau=None, band=(0.2, 0.7)))
    assert out["pmid"].to_pylist() == [1]
    assert stats["dropped"]["band"] == 3
    # tau runs first: pmid 2 (0.7 > 0.5) and 1 (0.6) are counted under tau
    out, stats = build_preferences(t, PreferConfig(tau=0.5, band=(0.2, 0.7)))
    assert out.num_rows == 0
    assert stats["dropped"]["tau"] == 2 and stats["dropped"]["band"] == 2


def test_ties_and_margin() -> None:
    t = table([
        (1, "a", "q1a?", 0.30), (1, "b", "q1b?", 0.30),   # tie
        (2, "a", "q2a?", 0.30), (2, "b", "q2b?", 0.295),  # 0.005 apart
        (3, "a", "q3a?", 0.30), (3, "b", "q3b?", 0.20),   # 0.1 apart
    ])
    out, stats = build_preferences(t)
    assert out["pmid"].to_pylist() == [2, 3] and stats["dropped"]["tie"] == 1
    out, stats = build_preferences(t, PreferConfig(min_margin=0.01))
    assert out["pmid"].to_pylist() == [3]
    assert stats["dropped"]["tie"] == 1 and stats["dropped"]["margin"] == 1
    # exactly the margin is kept ("closer than the margin" is dropped)
    out, _ = build_preferences(t, PreferConfig(min_margin=0.1 - 1e-12))
    assert out["pmid"].to_pylist() == [3]


def test_fewer_than_two_nonempty_questions() -> None:
    t = table([
        (1, "a", "q1a?", 0.3),                            # one question
        (2, "a", "q2a?", 0.3), (2, "b", "   ", 0.1),      # blank
        (3, "a", "q3a?", 0.3), (3, "b", None, 0.1),       # null
        (4, "a", "", 0.3), (4, "b", None, 0.1),           # none at all
        (5, "a", "q5a?", 0.3), (5, "b", "q5b?", 0.1), (5, "c", "", 0.45),
    ])
    out, stats = build_preferences(t)
    assert stats["dropped"]["too_few_questions"] == 4
    (row,) = out.to_pylist()
    assert row["pmid"] == 5 and row["n_questions"] == 2  # the blank one is ignored


def test_empty_questions_scores_do_not_count_for_tau() -> None:
    # the empty question's score (0.9) is not a score "of a question": tau looks at real ones
    t = table([(1, "a", "q1a?", 0.3), (1, "b", "q1b?", 0.1), (1, "c", "", 0.9)])
    out, _ = build_preferences(t, PreferConfig(tau=0.5))
    assert out["pmid"].to_pylist() == [1]


def test_identical_chosen_and_rejected_text_dropped() -> None:
    t = table([(1, "a", "Is X true?", 0.3), (1, "b", " Is X true? ", 0.1)])
    out, stats = build_preferences(t)
    assert out.num_rows == 0 and stats["dropped"]["same_question"] == 1


def test_counts_add_up_and_cover_every_filter() -> None:
    t = table([
        (1, "a", "q?", 0.3), (1, "b", "r?", 0.1),
        (2, "a", "q?", 0.3),
        (3, "a", "q?", 0.9), (3, "b", "r?", 0.1),
        (4, "a", "q?", 0.2), (4, "b", "r?", 0.2),
    ])
    _, stats = build_preferences(t, PreferConfig(tau=0.5))
    assert set(stats["dropped"]) == set(FILTERS)
    assert stats["pmids"] == 4 and stats["input_rows"] == 7
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["pmids"]


def test_missing_columns_is_an_input_error() -> None:
    t = table([(1, "a", "q?", 0.3)]).drop_columns(["score"])
    with pytest.raises(InputError, match="score"):
        build_preferences(t, source="x.parquet")


def test_bad_settings() -> None:
    with pytest.raises(ValidationError, match="LOW must be smaller than HIGH"):
        PreferConfig(band=(0.7, 0.2))
    with pytest.raises(ValidationError, match="min_margin"):
        PreferConfig(min_margin=-1)
    with pytest.raises(ValidationError, match="NaN"):
        PreferConfig(tau=NAN)
    with pytest.raises(ValidationError, match="extra"):
        PreferConfig(taus=0.5)
    assert parse_tau("none") is None and parse_tau("0.4") == 0.4
    with pytest.raises(InputError):
        parse_tau("high")


def test_prefer_writes_hf_loadable_parquet_and_stats(tmp_path) -> None:
    t = table([(1, "a", "q1a?", 0.3), (1, "b", "q1b?", 0.1),
               (2, "a", "q2a?", 0.9), (2, "b", "q2b?", 0.1)])
    src = tmp_path / "scores"
    src.mkdir()
    pq.write_table(t.slice(0, 2), src / "part-00000.parquet")
    pq.write_table(t.slice(2), src / "part-00001.parquet")
    stats = prefer(src, tmp_path / "prefs", PreferConfig(tau=0.5))
    saved = json.loads((tmp_path / "prefs" / STATS_FILE).read_text())
    assert saved["kept"] == 1 and saved["dropped"]["tau"] == 1 and stats == saved
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(tmp_path / "prefs"), split="train")
    assert ds.num_rows == 1
    assert {"prompt", "chosen", "rejected", "pmid", "chosen_score", "rejected_score"} <= set(
        ds.column_names
    )
    assert ds[0]["chosen"] == "q1a?"
    ds2 = datasets.load_dataset("parquet", data_files=str(tmp_path / "prefs" / PREFERENCES_FILE))
    assert ds2["train"].num_rows == 1


def test_cli_prefer(tmp_path) -> None:
    from kailin.cli.main import app

    t = table([(1, "a", "q1a?", 0.3), (1, "b", "q1b?", 0.1),
               (2, "a", "q2a?", 0.9), (2, "b", "q2b?", 0.1),
               (3, "a", "q3a?", 0.3), (3, "b", "q3b?", 0.29)])
    pq.write_table(t, tmp_path / "scores.parquet")
    res = CliRunner().invoke(app, ["prefer", str(tmp_path / "scores.parquet"), "--out",
                                   str(tmp_path / "o"), "--tau", "none", "--min-margin", "0.05"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / STATS_FILE).read_text())
    assert stats["kept"] == 2 and stats["dropped"]["margin"] == 1
    assert stats["settings"]["tau"] is None
    res = CliRunner().invoke(app, ["prefer", str(tmp_path / "scores.parquet"), "--out",
                                   str(tmp_path / "o2"), "--band", "0.2", "0.5", "--tau",
                                   "0.5"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o2" / STATS_FILE).read_text())
    assert stats["kept"] == 1 and stats["dropped"]["band"] == 1 and stats["dropped"]["tau"] == 1
    assert not math.isnan(pq.read_table(tmp_path / "o2" / PREFERENCES_FILE)["chosen_score"][0]
                          .as_py())


def test_tau_is_off_by_default_and_a_nan_question_is_never_chosen() -> None:
    # the default document score has another scale than the paper's: no tau unless asked
    t = table([(1, "a", "q1a?", 0.9), (1, "b", "q1b?", 0.6),
               (2, "a", "q2a?", NAN), (2, "b", "q2b?", 0.2),
               (3, "a", "q3a?", 0.4), (3, "b", "q3b?", NAN), (3, "c", "q3c?", 0.1)])
    out, stats = build_preferences(t)
    assert stats["settings"]["tau"] is None and stats["dropped"]["tau"] == 0
    assert out["pmid"].to_pylist() == [1]
    assert stats["dropped"]["nan_score"] == 2
    chosen = set(out["chosen"].to_pylist())
    assert not chosen & {"q2a?", "q3b?"}


def with_raw(t: pa.Table, raws: list[str | None], reasons: list[str | None]) -> pa.Table:
    return t.append_column("raw", pa.array(raws, pa.string())).append_column(
        "reject_reason", pa.array(reasons, pa.string()))


def test_invalid_rejected_pairs_a_valid_question_with_an_invalid_output() -> None:
    t = with_raw(table([
        (1, "s0", "What drives tumour growth?", 0.30),  # valid + invalid -> validity pair
        (1, "s1", None, None),
        (2, "s0", "Is A linked to B?", 0.40),            # two valid -> ordinary pair
        (2, "s1", "What is C?", 0.10),
        (3, "s0", None, None),                           # no valid question: nothing to choose
        (3, "s1", None, None),
        (4, "s0", "Does X help?", NAN),                  # valid but unscored: never chosen
        (4, "s1", None, None),
        (5, "s0", "Why Y?", 0.2),                        # the other had no abstract to read
        (5, "s1", None, None),
    ]), ["What drives tumour growth?", "Abstract: the the the", "Is A linked to B?",
         "What is C?", "junk", "more junk", "Does X help?", "bad output", "Why Y?", ""],
        [None, "no_question_mark", None, None, "no_question_mark", "too_short", None,
         "no_question_mark", None, "no_abstract"])
    off, stats_off = build_preferences(t)
    assert sorted(off["pmid"].to_pylist()) == [2] and stats_off["validity_pairs"] == 0
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True))
    rows = pairs_by_pmid(out)
    assert sorted(rows) == [1, 2]
    assert rows[1]["chosen"] == "What drives tumour growth?"
    assert rows[1]["rejected"] == "Abstract: the the the" and rows[1]["rejected_score"] is None
    assert rows[1]["rejected_generator"] == "s1"
    assert rows[2]["rejected"] == "What is C?"
    assert stats["validity_pairs"] == 1 and stats["kept"] == 2
    assert stats["dropped"]["too_few_questions"] == 3
    # without the raw/reject_reason columns the option cannot apply
    plain, _ = build_preferences(t.drop_columns(["raw", "reject_reason"]),
                                 PreferConfig(invalid_rejected=True))
    assert plain["pmid"].to_pylist() == [2]


def test_max_pairs_keeps_the_widest_margins_validity_pairs_first() -> None:
    t = with_raw(table([
        (1, "a", "Q1a?", 0.50), (1, "b", "Q1b?", 0.45),   # margin 0.05
        (2, "a", "Q2a?", 0.90), (2, "b", "Q2b?", 0.10),   # margin 0.80
        (3, "a", "Q3a?", 0.60), (3, "b", "Q3b?", 0.30),   # margin 0.30
        (4, "a", "Q4a?", 0.20), (4, "b", None, None),     # validity pair
    ]), ["Q1a?", "Q1b?", "Q2a?", "Q2b?", "Q3a?", "Q3b?", "Q4a?", "rambling"],
        [None] * 7 + ["no_question_mark"])
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, max_pairs=2))
    assert out["pmid"].to_pylist() == [2, 4]
    assert stats["kept"] == 2 and stats["dropped"]["max_pairs"] == 2
    out, stats = build_preferences(t, PreferConfig(max_pairs=2))
    assert out["pmid"].to_pylist() == [2, 3] and stats["dropped"]["max_pairs"] == 1
    out, stats = build_preferences(t, PreferConfig(max_pairs=10))
    assert out.num_rows == 3 and stats["dropped"]["max_pairs"] == 0
    with pytest.raises(ValidationError, match="max_pairs"):
        PreferConfig(max_pairs=0)


def multi_sample_scores() -> pa.Table:
    """Four samples per PMID, as a steering round writes them: every PMID has at least two valid
    questions, so the one-valid-question rule never fires."""
    rows, raws, reasons = [], [], []
    for pmid, margin in ((1, 0.40), (2, 0.30), (3, 0.20), (4, 0.10), (5, 0.05)):
        for i, score in enumerate((0.5, 0.5 - margin / 2, 0.5 - margin)):
            q = f"Q{pmid}.{i}?"
            rows.append((pmid, f"s{i}", q, score))
            raws.append(q)
            reasons.append(None)
        if pmid in (2, 4, 5):  # a fourth sample the extractor rejected
            rows.append((pmid, "s3", None, None))
            raws.append(f"statement about {pmid}")
            reasons.append("no_question")
    reasons[-1] = "no_abstract"  # pmid 5: not the model's fault, never a validity pair
    return with_raw(table(rows), raws, reasons)


def test_validity_share_keeps_validity_pairs_when_every_abstract_has_valid_questions() -> None:
    t = multi_sample_scores()
    # the one-valid-question rule: no PMID qualifies, the MeSH pairs fill max_pairs
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, max_pairs=4))
    assert stats["validity_pairs"] == 0 and out["pmid"].to_pylist() == [1, 2, 3, 4]
    # a quota of half of max_pairs: both candidates (2 and 4) become validity pairs; 4, whose
    # MeSH margin is the narrowest, is the one max_pairs would have dropped first
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, max_pairs=4,
                                                   validity_share=0.5))
    rows = pairs_by_pmid(out)
    assert stats["validity_candidates"] == 2 and stats["validity_pairs"] == 2
    assert sorted(rows) == [1, 2, 3, 4] and stats["kept"] == 4
    assert rows[2]["chosen"] == "Q2.0?" and rows[2]["rejected"] == "statement about 2"
    assert rows[2]["rejected_score"] is None and rows[2]["rejected_generator"] == "s3"
    assert rows[1]["rejected"] == "Q1.2?" and rows[3]["rejected_score"] == pytest.approx(0.3)
    # a quota of one: the candidate with the narrowest MeSH margin (4) goes first
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, max_pairs=3,
                                                   validity_share=0.34))
    rows = pairs_by_pmid(out)
    assert stats["validity_pairs"] == 1 and rows[4]["rejected"] == "statement about 4"
    assert sorted(rows) == [1, 2, 4] and stats["dropped"]["max_pairs"] == 2
    # no max_pairs: the share is of the pairs available (5); 0 turns the validity pairs off
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, validity_share=0.2))
    assert stats["validity_pairs"] == 1 and out.num_rows == 5
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, validity_share=0.0))
    assert stats["validity_pairs"] == 0 and out.num_rows == 5
    with pytest.raises(ValidationError, match="invalid_rejected"):
        PreferConfig(validity_share=0.5)


def test_validity_share_prefers_pmids_without_a_mesh_pair() -> None:
    # pmid 1: one valid question + an invalid output (no MeSH pair possible); pmid 2: a wide
    # MeSH pair + an invalid sample; pmid 3: a tie (no MeSH pair) + an invalid sample
    t = with_raw(table([
        (1, "a", "Q1?", 0.4), (1, "b", None, None),
        (2, "a", "Q2a?", 0.9), (2, "b", "Q2b?", 0.1), (2, "c", None, None),
        (3, "a", "Q3a?", 0.5), (3, "b", "Q3b?", 0.5), (3, "c", None, None),
    ]), ["Q1?", "junk 1", "Q2a?", "Q2b?", "junk 2", "Q3a?", "Q3b?", "junk 3"],
        [None, "too_short", None, None, "too_short", None, None, "too_short"])
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True, max_pairs=4,
                                                   validity_share=0.5))
    rows = pairs_by_pmid(out)
    assert stats["validity_candidates"] == 3 and stats["validity_pairs"] == 2
    assert rows[1]["rejected"] == "junk 1" and rows[3]["rejected"] == "junk 3"
    assert rows[2]["rejected"] == "Q2b?"  # its MeSH pair stays
    # the default (no share) keeps the documented rule: only pmid 1 qualifies
    out, stats = build_preferences(t, PreferConfig(invalid_rejected=True))
    assert stats["validity_pairs"] == 1 and "validity_candidates" not in stats


def test_preferences_run_under_the_bounded_duckdb_memory(monkeypatch, tmp_path) -> None:
    """Prefer groups every scored question by PMID: its DuckDB connection gets kailin's bound
    (it spills past it) instead of DuckDB's default of 80% of the machine's memory."""
    import kailin.align.prefer as pr
    from kailin.io import duckdb_memory_limit

    monkeypatch.delenv("KAILIN_DUCKDB_MEMORY", raising=False)
    limits: list[tuple[str, str]] = []
    real = pr.connect_duckdb

    def spy(temp_dir=None):
        con = real(tmp_path / "spill")
        limits.append((duckdb_memory_limit(int(con.execute(
            "SELECT current_setting('threads')").fetchall()[0][0])), con.execute(
            "SELECT current_setting('memory_limit')").fetchall()[0][0]))
        return con

    monkeypatch.setattr(pr, "connect_duckdb", spy)
    out, stats = build_preferences(table([(1, "a", "q1", 0.9), (1, "b", "q2", 0.1)]))
    assert out.num_rows == 1 and stats["kept"] == 1
    assert len(limits) == 1
    # DuckDB reports the limit in its own units ("976.5 MiB" for kailin's 1024MB): compared
    # with a connection set to the same size (as test_corpus_store does); its default is 80%
    # of this machine's memory
    limit, reported = limits[0]
    import duckdb

    ref = duckdb.connect()
    default = ref.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    ref.execute(f"SET memory_limit='{limit}'")
    assert reported == ref.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert reported != default


def test_ties_inside_the_top_and_bottom_break_by_generator_then_question() -> None:
    """chosen: highest score, then generator A-Z, then question A-Z; rejected: lowest score,
    then generator Z-A, then question Z-A; the pair's prompt is the chosen question's."""
    rows = [
        (1, "a", "q1?", 0.9), (1, "b", "q0?", 0.9), (1, "c", "x?", 0.1), (1, "d", "y?", 0.1),
        (2, "g", "qb?", 0.9), (2, "g", "qa?", 0.9), (2, "g", "r1?", 0.1), (2, "g", "r2?", 0.1),
    ]
    t = table(rows).set_column(2, "prompt", pa.array([f"prompt of {r[1]} {r[2]}" for r in rows]))
    got = pairs_by_pmid(build_preferences(t)[0])
    assert (got[1]["chosen"], got[1]["chosen_generator"]) == ("q1?", "a")
    assert (got[1]["rejected"], got[1]["rejected_generator"]) == ("y?", "d")
    assert got[1]["prompt"] == "prompt of a q1?"
    assert (got[2]["chosen"], got[2]["rejected"]) == ("qa?", "r2?")
    assert got[2]["prompt"] == "prompt of g qa?"


def test_written_pairs_equal_the_built_ones_batch_by_batch(tmp_path) -> None:
    """write_preferences streams the pairs to the file a batch at a time (memory bounded
    whatever the number of questions): the same rows as build_preferences, one per PMID even
    where a scores file holds the chosen question twice (two runs' parts), NaN scores and all."""
    from kailin.align.prefer import write_preferences

    rows = []
    for p in range(1, 41):
        rows += [(p, "a", f"qa{p}?", (p % 7) / 10), (p, "b", f"qb{p}?", (p % 5) / 10)]
    rows += [(6, "a", "qa6?", 0.6), (41, "a", "q?", NAN), (41, "b", "r?", 0.2)]
    t = table(rows)
    t = t.set_column(2, "prompt", pa.array([f"prompt {r[0]}" + (" again" if i >= 80 else "")
                                            for i, r in enumerate(rows)]))
    folder = tmp_path / "scores"
    folder.mkdir()
    pq.write_table(t.slice(0, 50), folder / "part-00000.parquet")
    pq.write_table(t.slice(50), folder / "part-00001.parquet")
    built, stats = build_preferences(t)
    written = write_preferences(folder, tmp_path / "pairs.parquet", batch_size=2)
    got = pq.read_table(tmp_path / "pairs.parquet")
    assert got.equals(built) and written == stats
    assert got["pmid"].to_pylist() == sorted(set(got["pmid"].to_pylist()))
    assert stats["dropped"]["nan_score"] == 1 and 41 not in got["pmid"].to_pylist()
    # pmid 6's chosen question is in the table twice: one pair, the first prompt in order
    (p6,) = [r for r in got.to_pylist() if r["pmid"] == 6]
    assert p6["prompt"] == "prompt 6"
