"""Calibrated and continuous PubMedQA scoring, paired deltas, and the contamination check: the
formulas on cases worked by hand (no model)."""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from kailin.errors import InputError
from kailin.evaluate import calibration as cal
from kailin.evaluate.contamination import check_contamination, heldout_eval_texts
from kailin.evaluate.stats import MDE_Z, bootstrap_mean, bootstrap_ratio, paired_delta

LOG = math.log


def test_contextual_calibration_by_hand() -> None:
    # the item: raw probabilities 0.5 / 0.3 / 0.1 (sum 0.9) -> normalised 5/9, 3/9, 1/9
    item = {"yes": LOG(0.5), "no": LOG(0.3), "maybe": LOG(0.1)}
    lp = cal.log_normalize(item)
    assert [math.exp(lp[k]) for k in ("yes", "no", "maybe")] == pytest.approx([5 / 9, 3 / 9, 1 / 9])
    # two content-free inputs: 0.7/0.2/0.1 (given unnormalised, x0.5) and 0.5/0.2/0.3
    cf = [{"yes": LOG(0.35), "no": LOG(0.1), "maybe": LOG(0.05)},
          {"yes": LOG(0.5), "no": LOG(0.2), "maybe": LOG(0.3)}]
    prior = cal.reference_logprobs("contextual", cf)
    assert {k: math.exp(v) for k, v in prior.items()} == pytest.approx(
        {"yes": 0.6, "no": 0.2, "maybe": 0.2})
    # W = diag(p_cf)^-1: (5/9)/0.6, (3/9)/0.2, (1/9)/0.2 = 25/27, 45/27, 15/27 -> /85*27
    c = cal.calibrate(item, prior)
    assert {k: math.exp(v) for k, v in c.items()} == pytest.approx(
        {"yes": 5 / 17, "no": 9 / 17, "maybe": 3 / 17})
    assert cal.predict(lp) == "yes" and cal.predict(c) == "no"
    # gold margins: raw log(1/9) - log(5/9) = -log 5; calibrated log(3/17) - log(9/17) = -log 3
    assert cal.gold_margin(lp, "maybe") == pytest.approx(-LOG(5))
    assert cal.gold_margin(c, "maybe") == pytest.approx(-LOG(3))
    assert cal.gold_margin(lp, "yes") == pytest.approx(LOG(5 / 3))
    # the margin of the unnormalised scores is the same (the constant cancels)
    assert cal.gold_margin(item, "maybe") == pytest.approx(-LOG(5))


def test_dcpmi_by_hand() -> None:
    item = {"yes": LOG(0.5), "no": LOG(0.3), "maybe": LOG(0.1)}
    domain = {"yes": LOG(0.6), "no": LOG(0.3), "maybe": LOG(0.05)}
    # PMI: log(0.5/0.6), log(0.3/0.3) = 0, log(0.1/0.05) = log 2 -> ratios 5/6 : 1 : 2 = 5:6:12
    ref = cal.reference_logprobs("dcpmi", [domain])
    c = cal.calibrate(item, ref)
    assert {k: math.exp(v) for k, v in c.items()} == pytest.approx(
        {"yes": 5 / 23, "no": 6 / 23, "maybe": 12 / 23})
    assert cal.predict(c) == "maybe"
    assert cal.gold_margin(c, "no") == pytest.approx(-LOG(2))
    with pytest.raises(InputError, match="exactly one"):
        cal.reference_logprobs("dcpmi", [domain, domain])
    with pytest.raises(InputError, match="unknown calibration"):
        cal.check_calibration("uniform")


def test_score_items_side_by_side() -> None:
    # three items, the same contextual prior (0.6 / 0.2 / 0.2)
    prior = {"yes": LOG(0.6), "no": LOG(0.2), "maybe": LOG(0.2)}
    scores = {"1": {"yes": LOG(0.5), "no": LOG(0.3), "maybe": LOG(0.1)},   # raw yes, cal no
              "2": {"yes": LOG(0.8), "no": LOG(0.1), "maybe": LOG(0.1)},   # yes, yes
              "3": {"yes": LOG(0.4), "no": LOG(0.1), "maybe": LOG(0.3)}}   # yes, maybe
    gold = {"1": "no", "2": "yes", "3": "maybe"}
    recs, fig = cal.score_items(scores, gold, "contextual", prior, n_boot=200, seed=0)
    assert [r["pred"] for r in recs] == ["yes", "yes", "yes"]
    assert [r["calibrated_pred"] for r in recs] == ["no", "yes", "maybe"]
    c = fig["calibrated"]
    assert c["method"] == "contextual" and c["accuracy"] == 1.0 and c["macro_f1"] == 1.0
    assert c["label_counts"]["predicted"] == {"yes": 1, "no": 1, "maybe": 1}
    assert c["prior"] == pytest.approx({"yes": 0.6, "no": 0.2, "maybe": 0.2})
    # raw margins: log(.3/.5), log(.8/.1), log(.3/.4)
    raw = [LOG(0.3 / 0.5), LOG(8), LOG(0.3 / 0.4)]
    gm = fig["gold_margin"]
    assert gm["mean"] == pytest.approx(sum(raw) / 3) and gm["n"] == 3
    assert min(raw) - 1e-9 <= gm["ci_low"] <= gm["mean"] <= gm["ci_high"] <= max(raw) + 1e-9
    # calibrated margins: item 1 log((.3/.2)/(.5/.6)) = log(1.8); item 2 log((.8/.6)/(.1/.2));
    # item 3 log((.3/.2)/(.4/.6)) = log(2.25)
    want = [LOG(1.8), LOG((0.8 / 0.6) / 0.5), LOG(2.25)]
    assert [r["calibrated_gold_margin"] for r in recs] == pytest.approx(want)
    assert c["gold_margin"]["mean"] == pytest.approx(sum(want) / 3)
    # without calibration: no calibrated block, margins still there
    recs0, fig0 = cal.score_items(scores, gold, "none", None, n_boot=50)
    assert fig0["calibrated"] is None and "calibrated_pred" not in recs0[0]
    assert fig0["gold_margin"]["mean"] == pytest.approx(gm["mean"])
    with pytest.raises(InputError):
        cal.score_items(scores, gold, "contextual", None)


def test_bootstrap_mean_and_ratio() -> None:
    m = bootstrap_mean([1.0, 2.0, 3.0, 4.0], n_boot=500, seed=1)
    assert m["mean"] == 2.5 and m["n"] == 4 and 1.0 <= m["ci_low"] < 2.5 < m["ci_high"] <= 4.0
    assert bootstrap_mean([], n_boot=10)["mean"] is None
    r = bootstrap_ratio([2.0, 6.0], [1.0, 3.0], n_boot=200)
    assert r["value"] == pytest.approx(2.0)
    assert r["ci_low"] == pytest.approx(2.0) and r["ci_high"] == pytest.approx(2.0)


def test_paired_delta() -> None:
    rng = random.Random(3)
    n = 400
    base = [rng.gauss(0, 1) for _ in range(n)]
    a = [{"pmid": str(i), "gold_margin": base[i] + 0.3 + rng.gauss(0, 0.1)} for i in range(n)]
    b = [{"pmid": str(i), "gold_margin": base[i]} for i in range(n)]
    d = paired_delta(a, b, "gold_margin", n_boot=500, seed=0)
    assert d["n"] == n and d["delta"] == pytest.approx(
        sum(x["gold_margin"] for x in a) / n - sum(base) / n)
    assert 0.25 < d["ci_low"] < d["delta"] < d["ci_high"] < 0.35 and d["significant"]
    assert d["mde"] == pytest.approx(MDE_Z * d["se"]) and 0 < d["se"] < 0.02
    # the pairing matters: shuffled pairing has the item noise back (much larger SE)
    b_shuffled = [{"pmid": str(i), "gold_margin": base[(i * 7) % n]} for i in range(n)]
    assert paired_delta(a, b_shuffled, "gold_margin", n_boot=500)["se"] > 5 * d["se"]
    # accuracy / macro-F1 from gold and predictions; mean_nll as a ratio of sums
    g = ["yes", "no", "maybe", "yes"]
    pa_ = [{"id": k, "gold": g[k], "pred": g[k]} for k in range(4)]
    pb_ = [{"id": k, "gold": g[k], "pred": "yes"} for k in range(4)]
    acc = paired_delta(pa_, pb_, "accuracy", n_boot=200)
    assert acc["delta"] == pytest.approx(0.5)
    f1 = paired_delta(pa_, pb_, "macro_f1", n_boot=200)
    assert f1["delta"] == pytest.approx(1.0 - (2 * 2 / (2 * 2 + 2)) / 3)
    nll_a = [{"id": "x", "nll_sum": 10.0, "tokens": 5}, {"id": "y", "nll_sum": 30.0, "tokens": 15}]
    nll_b = [{"id": "x", "nll_sum": 20.0, "tokens": 5}, {"id": "y", "nll_sum": 45.0, "tokens": 15}]
    assert paired_delta(nll_a, nll_b, "mean_nll", n_boot=100)["delta"] == pytest.approx(
        40 / 20 - 65 / 20)
    with pytest.raises(InputError, match="different items"):
        paired_delta(a, b[:-1], "gold_margin")
    with pytest.raises(InputError, match="lack the field"):
        paired_delta(a, b, "calibrated_gold_margin")


def test_contamination_catches_a_planted_context() -> None:
    held = pa.table({"pmid": [900001, 900002, 900003],
                     "title": ["Statins and sepsis", "Aspirin after stroke", "Short"],
                     "abstract": [
                         "We followed 1,204 patients with sepsis admitted to two intensive care "
                         "units between 2004 and 2009 and compared the 90-day mortality of those "
                         "who had received statins before admission with that of those who had not.",
                         "In a randomised trial of 312 patients, low-dose aspirin started within "
                         "48 hours of ischaemic stroke reduced early recurrence without any "
                         "increase in symptomatic intracranial haemorrhage at thirty days.",
                         "Too short."]})
    texts = heldout_eval_texts(held, pubmedqa=True, pubmedqa_limit=3)
    assert texts.num_rows == 6
    assert texts.column("id").to_pylist()[:3] == ["heldout:900001", "heldout:900002",
                                                   "heldout:900003"]
    pq_row = texts.to_pylist()[4]
    assert pq_row["source"] == "pubmedqa_test"
    # a CPT record (the authors' format) that retrieved the second abstract as a context: its
    # PMID is nowhere in the row, the text is escaped by str() of the list, newlines gone
    from kailin.dataset.export import cpt_text

    planted = cpt_text("A source", "An unrelated abstract about diet.",
                       [held.column("abstract")[1].as_py().replace("ischaemic", "ischaemic\n"),
                        "another context"], "Does aspirin help?")
    clean_row = cpt_text("B", "Cholesterol in children.", ["x " * 40], "Why?")
    train = {
        "dpo": pa.table({"pmid": [1, 2], "context_pmids": [[5, 6], [7]],
                         "text": [clean_row, planted]}),
        # an SFT arm whose row's source PMID is a PubMedQA test PMID
        "sft": pa.table({"pmid": [int(pq_row["pmid"])], "messages": [[
            {"role": "user", "content": "Question: something"},
            {"role": "assistant", "content": "An answer."}]]}),
        "raw": pa.table({"pmid": [3], "text": ["Nothing to see here at all."]}),
    }
    rep = check_contamination(texts, train)
    assert not rep["clean"] and rep["contaminated"] == 2
    assert rep["items"]["heldout:900002"]["text"] == ["dpo"]
    assert rep["items"]["heldout:900002"]["pmid"] == []
    # every span of the abstract is there; the ones that reach into the title are not
    assert 0.5 < rep["items"]["heldout:900002"]["overlap"]["dpo"] < 1.0
    assert rep["items"][pq_row["id"]]["pmid"] == ["sft"]
    assert rep["arms"]["raw"] == {"rows": 1, "pmid_hits": 0, "text_hits": 0, "items": []}
    assert rep["arms"]["dpo"]["items"] == ["heldout:900002"]
    # a short text counts when contained whole; a clean training set is clean
    rep2 = check_contamination([{"id": "s", "text": "Too short."}],
                               {"a": pa.table({"text": ["this is too short, really"]})})
    assert rep2["items"]["s"]["text"] == ["a"]
    assert check_contamination(texts, {"raw": train["raw"]})["clean"]
    with pytest.raises(InputError, match="no 'text'"):
        check_contamination(texts, {"bad": pa.table({"pmid": [1]})})


def test_cli_prints_raw_and_calibrated_side_by_side() -> None:
    from kailin.cli.evaluate import _continuous_line

    scores = {"1": {"yes": LOG(0.5), "no": LOG(0.3), "maybe": LOG(0.1)},
              "2": {"yes": LOG(0.8), "no": LOG(0.1), "maybe": LOG(0.1)}}
    gold = {"1": "no", "2": "yes"}
    _, fig = cal.score_items(scores, gold, "dcpmi", cal.log_normalize(
        {"yes": LOG(0.6), "no": LOG(0.3), "maybe": LOG(0.05)}), n_boot=50)
    r = {"label_counts": {"predicted": {"yes": 2, "no": 0, "maybe": 0}}, **fig}
    text = _continuous_line(r)
    assert "predicted: yes 2/no 0/maybe 0" in text
    assert f"gold margin {fig['gold_margin']['mean']:+.4f}" in text
    assert "dcpmi-calibrated: accuracy" in text
    assert _continuous_line({"label_counts": r["label_counts"], "gold_margin": None,
                             "calibrated": None}).count("\n") == 0


def test_contamination_command(tmp_path) -> None:
    import json

    import pyarrow.parquet as pq
    import typer
    from typer.testing import CliRunner

    from kailin.cli.evaluate import app as evaluate_app
    from kailin.evaluate.pubmedqa import test_items

    app = typer.Typer()
    app.add_typer(evaluate_app, name="evaluate")
    held = tmp_path / "heldout.parquet"
    pq.write_table(pa.table({"pmid": [900001], "title": ["T"], "abstract": [
        "A held-out abstract of thirty words or so, about the effect of a drug on the outcome of "
        "patients in a cohort followed for ten years in three hospitals of one region."]}), held)
    item = test_items(1)[0]  # a PubMedQA test context planted in an arm's CPT text
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pq.write_table(pa.table({"pmid": [1], "text": [f"After reading ```{item.contexts[0]}```"]}),
                   tmp_path / "a" / "train.parquet")
    pq.write_table(pa.table({"pmid": [2], "text": ["Something else entirely."]}),
                   tmp_path / "b" / "train.parquet")
    out, texts = tmp_path / "c.json", tmp_path / "texts.parquet"
    r = CliRunner().invoke(app, ["evaluate", "contamination", "--heldout", str(held),
                                 "--train", f"after={tmp_path / 'a'}",
                                 "--train", f"raw={tmp_path / 'b'}", "--write-texts", str(texts),
                                 "--json", str(out)])
    assert r.exit_code == 1, r.output
    rep = json.loads(out.read_text())
    assert rep["n_eval"] == 501 and rep["contaminated"] == 1
    assert list(rep["items"]) == [f"pubmedqa:{item.pmid}"]
    assert rep["arms"]["raw"]["text_hits"] == 0 and "CONTAMINATED" in r.output
    assert pq.read_table(texts).num_rows == 501
    r = CliRunner().invoke(app, ["evaluate", "contamination", "--texts", str(texts),
                                 "--train", f"raw={tmp_path / 'b'}"])
    assert r.exit_code == 0 and "clean" in r.output
    r = CliRunner().invoke(app, ["evaluate", "contamination", "--train", "nonsense"])
    assert isinstance(r.exception, InputError) and "ARM=TABLE" in str(r.exception)
