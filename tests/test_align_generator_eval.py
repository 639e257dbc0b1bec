"""`kailin evaluate generator`: the paired bootstrap on known data, pairing score tables, the JSON
contract, and a small end-to-end run with the packaged SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kailin.align.generator_eval import (
    RESULT_KEYS,
    compare_score_tables,
    format_result_table,
    json_result,
    paired_bootstrap,
)
from kailin.errors import InputError


def test_constant_shift_has_a_degenerate_interval() -> None:
    r = paired_bootstrap([0.1, 0.2, 0.3, 0.5], [0.2, 0.3, 0.4, 0.6], n_boot=500)
    assert r["n"] == 4 and r["n_dropped"] == 0
    assert r["before_mean"] == pytest.approx(0.275) and r["after_mean"] == pytest.approx(0.375)
    assert r["delta"] == pytest.approx(0.1)
    assert r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)


def test_interval_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    before = rng.uniform(0, 0.5, 3000)
    d = rng.normal(0.02, 0.1, 3000)
    r = paired_bootstrap(before, before + d, n_boot=4000, seed=3)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert r["delta"] == pytest.approx(d.mean())
    assert r["ci_low"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert r["ci_high"] == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert r["ci_low"] > 0  # the improvement is detected
    # same seed, same answer; the interval of a null effect covers 0
    assert paired_bootstrap(before, before + d, n_boot=4000, seed=3) == r
    null = paired_bootstrap(before, before + rng.normal(0, 0.1, 3000), n_boot=2000)
    assert null["ci_low"] < 0 < null["ci_high"]


def test_nan_pairs_are_dropped() -> None:
    r = paired_bootstrap([0.1, float("nan"), 0.3], [0.2, 0.5, float("nan")], n_boot=100)
    assert r["n"] == 1 and r["n_dropped"] == 2 and r["delta"] == pytest.approx(0.1)
    empty = paired_bootstrap([float("nan")], [0.1])
    assert empty["n"] == 0 and math.isnan(empty["delta"])
    assert json_result(empty)["delta"] is None
    with pytest.raises(InputError):
        paired_bootstrap([0.1, 0.2], [0.1])


def scores(pmids, gens, vals) -> pa.Table:
    return pa.table({"pmid": pa.array(pmids, pa.int64()), "generator": gens,
                     "score": pa.array(vals, pa.float64())})


def test_compare_score_tables_pairs_by_pmid() -> None:
    before = scores([1, 2, 3, 1, 2, 3], ["a", "a", "a", "b", "b", "b"],
                    [0.1, 0.2, 0.3, 0.9, 0.9, 0.9])
    after = scores([3, 2, 4], ["x", "x", "x"], [0.5, 0.4, 0.0])
    with pytest.raises(InputError, match="several generators"):
        compare_score_tables(before, after)
    r = compare_score_tables(before, after, before_generator="a", n_boot=200)
    # PMIDs 2 and 3 are in both: before 0.2, 0.3; after 0.4, 0.5
    assert r["n"] == 2 and r["delta"] == pytest.approx(0.2)
    assert r["before_mean"] == pytest.approx(0.25) and r["after_mean"] == pytest.approx(0.45)
    with pytest.raises(InputError, match="share no PMID"):
        compare_score_tables(scores([1], ["a"], [0.1]), scores([2], ["a"], [0.1]))
    with pytest.raises(InputError, match="twice"):
        compare_score_tables(scores([1, 1], ["a", "a"], [0.1, 0.2]), scores([1], ["a"], [0.1]))
    assert "delta (after - before)" in format_result_table(r)


def test_cli_with_score_tables(tmp_path: Path) -> None:
    from kailin.cli.main import app

    pq.write_table(scores([1, 2, 3], ["g"] * 3, [0.1, 0.2, 0.3]), tmp_path / "b.parquet")
    pq.write_table(scores([1, 2, 3], ["g"] * 3, [0.2, 0.2, 0.5]), tmp_path / "a.parquet")
    res = CliRunner().invoke(app, ["evaluate", "generator", "--before-scores",
                                   str(tmp_path / "b.parquet"), "--after-scores",
                                   str(tmp_path / "a.parquet"), "--json", str(tmp_path / "r.json"),
                                   "--n-boot", "300"])
    assert res.exit_code == 0, res.output
    assert "mean MeSH score after" in res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert set(RESULT_KEYS) <= set(r)
    assert r["n"] == 3 and r["delta"] == pytest.approx(0.1)
    assert r["ci_low"] <= r["delta"] <= r["ci_high"]


@pytest.mark.slow
def test_end_to_end_same_generator_gives_zero(tmp_path: Path) -> None:
    """Greedy generation with the same model before and after: identical questions, so the
    difference is exactly 0 - checks generation, scoring and pairing wired together."""
    pytest.importorskip("transformers")
    pytest.importorskip("bm25s")
    import torch

    from kailin.align.generator_eval import evaluate_generators
    from kailin.retrieval import build_index
    from test_retrieval_fixtures import build_test_corpus

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus = build_test_corpus(tmp_path / "corpus", n_pubmedqa=40, n_nlm=120)
        build_index(corpus, tmp_path / "index", kind="bm25", progress=False)
        r = evaluate_generators("smollm2", "smollm2", corpus, tmp_path / "index",
                                tmp_path / "work", n=3, max_new_tokens=24, mode="chat",
                                n_boot=200, device="cpu", progress=False)
    finally:
        torch.set_num_threads(n_threads)
    assert r["heldout"] == 3
    assert r["n"] + r["n_dropped"] == 3
    if r["n"]:
        assert r["delta"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0
        assert r["before_mean"] == r["after_mean"]
    q = pq.read_table(tmp_path / "work" / "questions_before")
    assert q.num_rows == 3
    s = pq.read_table(tmp_path / "work" / "scores_after")
    assert {"context_pmids", "score"} <= set(s.column_names)


def test_cli_says_why_there_are_no_numbers(tmp_path: Path) -> None:
    """Issue 28: generator.json showed n: 0 and nulls without a reason."""
    from kailin.cli.main import app

    nan = float("nan")
    pq.write_table(scores([1, 2, 3], ["g"] * 3, [0.1, nan, 0.3]), tmp_path / "b.parquet")
    pq.write_table(scores([1, 2, 3], ["g"] * 3, [nan, nan, nan]), tmp_path / "a.parquet")
    res = CliRunner().invoke(app, ["evaluate", "generator", "--before-scores",
                                   str(tmp_path / "b.parquet"), "--after-scores",
                                   str(tmp_path / "a.parquet"), "--json", str(tmp_path / "r.json"),
                                   "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 0 and r["delta"] is None and r["n_dropped"] == 3
    assert "1 of 3 'before' and 3 of 3 'after' scores are NaN" in r["reason"]
    assert "why no numbers" in res.output and "3 of 3 'after'" in res.output
