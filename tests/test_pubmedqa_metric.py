"""The PubMedQA metric (official evaluation.py semantics), the error cases, breakdowns, CLI."""

from __future__ import annotations

import json
import random

import pytest
import typer
from typer.testing import CliRunner

from kailin.cli.evaluate import app as evaluate_app
from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pq

app = typer.Typer()
app.add_typer(evaluate_app, name="evaluate")


def test_hand_computed_metric() -> None:
    y_true = ["yes", "yes", "no", "maybe", "no"]
    y_pred = ["yes", "no", "no", "yes", "no"]
    assert pq.accuracy(y_true, y_pred) == pytest.approx(0.6)
    # yes: tp1 fp1 fn1 -> 2/4; no: tp2 fp1 fn0 -> 4/5; maybe: tp0 fn1 -> 0
    assert pq.per_label_f1(y_true, y_pred) == pytest.approx({"yes": 0.5, "no": 0.8, "maybe": 0.0})
    assert pq.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_label_only_in_predictions_counts_like_sklearn() -> None:
    # sklearn's label set is the union of y_true and y_pred labels
    assert pq.macro_f1(["yes", "yes"], ["yes", "maybe"]) == pytest.approx((2 / 3 + 0.0) / 2)
    assert pq.macro_f1(["yes", "no"], ["yes", "no"]) == pytest.approx(1.0)


def test_majority_baseline_on_packaged_test_set() -> None:
    gt = pq.load_ground_truth()
    assert len(gt) == 500
    res = pq.score_predictions({p: "yes" for p in gt})
    # PubMedQA paper: majority ("yes") baseline 55.2 % accuracy; yes F1 = 2*276/(2*276+224)
    assert res["accuracy"] == pytest.approx(0.552)
    assert res["macro_f1"] == pytest.approx((2 * 276 / (2 * 276 + 224)) / 3)
    assert res["n"] == 500
    assert res["label_counts"]["ground_truth"] == {"yes": 276, "no": 169, "maybe": 55}
    assert sum(m["n"] for m in res["by_year"].values()) == 500
    assert set(res["by_year"]) <= {b[0] for b in pq.YEAR_BINS} | {"unknown"}
    assert len(res["by_mesh"]) == 10 and "Humans" in res["by_mesh"]


def test_matches_sklearn_on_random_labels() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    for n in (1, 7, 50, 500):
        t = [rng.choice(pq.LABELS) for _ in range(n)]
        p = [rng.choice(pq.LABELS[:2]) for _ in range(n)]
        assert pq.accuracy(t, p) == pytest.approx(metrics.accuracy_score(t, p))
        assert pq.macro_f1(t, p) == pytest.approx(metrics.f1_score(t, p, average="macro"))


def test_errors_name_missing_extra_and_bad_labels() -> None:
    gt = {"1": "yes", "2": "no", "3": "maybe"}
    with pytest.raises(InputError, match=r"missing: 3"):
        pq.score_predictions({"1": "yes", "2": "no"}, gt)
    with pytest.raises(InputError, match=r"not in the ground truth: 99"):
        pq.score_predictions({"1": "yes", "2": "no", "3": "no", "99": "yes"}, gt)
    with pytest.raises(InputError, match=r"2='No'"):
        pq.score_predictions({"1": "yes", "2": "No", "3": "no"}, gt)


def test_year_bins() -> None:
    assert pq.year_bin(1989) == "1989-2000"
    assert pq.year_bin(2004) == "2001-2004"
    assert pq.year_bin(2017) == "2016-2017"
    assert pq.year_bin(None) == "unknown"
    assert pq.year_bin(2020) == "unknown"


def test_cli_scores_prediction_file(tmp_path) -> None:
    gt = pq.load_ground_truth()
    pqal = pq.load_pqal()
    # predict the packaged reasoning-free human prediction: a real, imperfect prediction file
    pred = {p: pqal[p].label if i % 3 else "no" for i, p in enumerate(gt)}
    pf = tmp_path / "pred.json"
    pf.write_text(json.dumps(pred))
    out = tmp_path / "res.json"
    r = CliRunner().invoke(app, ["evaluate", "pubmedqa", "--predictions", str(pf), "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    expected = pq.metrics([gt[p] for p in gt], [pred[p] for p in gt])
    assert res["accuracy"] == pytest.approx(expected["accuracy"])
    assert res["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert res["n"] == 500
    assert "accuracy" in r.output and "by_year" in res and "by_mesh" in res


def test_cli_custom_ground_truth_and_errors(tmp_path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"1": "yes", "2": "no"}))
    pf = tmp_path / "pred.json"
    pf.write_text(json.dumps({"1": "yes", "2": "yes"}))
    r = CliRunner().invoke(app, ["evaluate", "pubmedqa", "-p", str(pf), "--ground-truth", str(gt),
                                 "--json", str(tmp_path / "o.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o.json").read_text())
    assert res["accuracy"] == 0.5 and res["n"] == 2
    assert res["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    pf.write_text(json.dumps({"1": "yes", "2": "perhaps"}))
    r = CliRunner().invoke(app, ["evaluate", "pubmedqa", "-p", str(pf), "--ground-truth", str(gt)])
    assert isinstance(r.exception, InputError) and "2='perhaps'" in str(r.exception)
    pf.write_text("[1, 2]")
    r = CliRunner().invoke(app, ["evaluate", "pubmedqa", "-p", str(pf)])
    assert isinstance(r.exception, InputError) and "pred.json" in str(r.exception)


def test_bootstrap_report_cis_and_paired_contrasts() -> None:
    rng = random.Random(0)
    labels = ["yes", "no", "maybe"]
    gt = {str(i): rng.choice(labels) for i in range(300)}
    perfect = dict(gt)
    noisy = {p: (v if rng.random() < 0.6 else rng.choice(labels)) for p, v in gt.items()}
    constant = {p: "yes" for p in gt}
    rep = pq.bootstrap_report(gt, {"perfect": perfect, "noisy": noisy, "constant": constant,
                                   "noisy2": dict(noisy)},
                              [("perfect", "noisy"), ("noisy", "noisy2"), ("noisy", "missing")],
                              n_boot=500, seed=1)
    assert rep["n"] == 300 and rep["n_boot"] == 500
    m = rep["models"]
    assert m["perfect"]["accuracy"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    y_true, y_pred = list(gt.values()), [noisy[p] for p in gt]
    for name, fn in (("accuracy", pq.accuracy), ("macro_f1", pq.macro_f1)):
        v = m["noisy"][name]
        assert v["value"] == pytest.approx(fn(y_true, y_pred))
        assert v["ci_low"] < v["value"] < v["ci_high"]
        assert v["ci_high"] - v["ci_low"] < 0.2
    # macro-F1 of a constant predictor: sklearn's mean over the labels present
    assert m["constant"]["macro_f1"]["value"] == pytest.approx(
        pq.macro_f1(y_true, ["yes"] * 300))
    c = rep["contrasts"]
    assert set(c) == {"perfect_vs_noisy", "noisy_vs_noisy2"}  # unknown arms are skipped
    assert c["perfect_vs_noisy"]["accuracy"]["significant"]
    assert c["perfect_vs_noisy"]["accuracy"]["ci_low"] > 0
    same = c["noisy_vs_noisy2"]["macro_f1"]
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "significant": False}
    with pytest.raises(InputError):
        pq.bootstrap_report(gt, {"short": dict(list(gt.items())[:10])})
