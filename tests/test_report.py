"""`kailin report RUN_DIR`: a self-contained HTML page; rendered in headless Chromium if present."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from kailin.io import write_parquet_atomic
from kailin.report.html import build_report, histogram_svg, interval_svg

ROOT = Path(__file__).resolve().parents[1]
#: the committed steering report: real bootstrap output (its ``downstream`` is a pubmedqa.json)
STEERING = json.loads((ROOT / "docs" / "results" / "steering.json").read_text())
#: descriptor UIs of the fixture and their names in the packaged MeSH vocabulary
NEOPLASMS, HUMANS, BREAST, LUNG = "D009369", "D006801", "D001943", "D008175"
STAGES = ("corpus", "workset", "index", "questions", "score", "signal", "prefer", "dpo",
          "generator_eval", "steering", "answers", "export", "downstream", "pubmedqa")


def make_run(root: Path, n: int = 30) -> Path:
    """A run folder laid out as `kailin run` writes it: the contexts (PMIDs 9001, 9002) are in
    the run's corpus (corpus/full) but not in its work set, as in a real run."""
    for d in ("preferences/data", "reports", "corpus/full/data", "scores/a", "questions/a",
              "answers", "export/triples", "export/cpt"):
        (root / d).mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({
        "status": "done", "seconds": 570.0, "base_dir": str(root),
        "config": {"corpus": {"demo": True}, "mesh": {"dir": None},
                   "answers": {"grounding_threshold": None}},
        "stages": {**{s: {"status": "done", "key": "abcdef0123456789", "seconds": 1.5,
                          "counts": {"records": 40}} for s in STAGES},
                   "prefer": {"status": "done", "key": "0123", "kept": n, "skipped": True}}}))
    (root / "preferences" / "prefer_stats.json").write_text(json.dumps(
        {"pmids": n + 5, "dropped": {"tie": 3, "same_question": 2}, "kept": n}))
    pmids = list(range(100, 100 + n))
    write_parquet_atomic(pa.table({
        "prompt": ["p"] * n, "chosen": [f"Does <b>{p}</b> work?" for p in pmids],
        "rejected": [f"What is {p}?" for p in pmids], "pmid": pmids,
        "chosen_score": [0.5 + i / 100 for i in range(n)],
        "rejected_score": [0.2 + i / 100 for i in range(n)],
        "chosen_generator": ["a"] * n, "rejected_generator": ["b"] * n,
        "n_questions": [2] * n}), root / "preferences" / "data" / "train.parquet")
    src = {"pmid": pmids, "title": ["T"] * n, "abstract": ["An abstract."] * n,
           "mesh_uis": [[NEOPLASMS, HUMANS]] * n}
    write_parquet_atomic(pa.table(src), root / "corpus" / "work.parquet")
    write_parquet_atomic(pa.table({
        "pmid": [*pmids, 9001, 9002], "title": ["T"] * n + ["ctx one", "ctx two"],
        "abstract": ["An abstract."] * n + ["x", "y"],
        "mesh_uis": [[NEOPLASMS, HUMANS]] * n + [[NEOPLASMS, BREAST], [LUNG]]}),
        root / "corpus" / "full" / "data" / "part-00000.parquet")
    write_parquet_atomic(pa.table({
        "pmid": pmids + pmids, "question": [f"Does <b>{p}</b> work?" for p in pmids]
        + [f"What is {p}?" for p in pmids],
        "context_pmids": [[9001, 9002]] * n + [[9002]] * n,
        "context_titles": [["ctx one", "ctx two"]] * n + [["ctx two"]] * n,
        "score": [0.5] * 2 * n}), root / "scores" / "a" / "part-00000.parquet")
    write_parquet_atomic(pa.table({
        "pmid": [1, 2, 3, 4], "generator": ["a", "a", "a", "b"],
        "question": ["Does X work?", "", "", "Why?"],
        "raw": ["Does X work?", "A summary without a question mark.", "x " * 80, "Why?"],
        "reject_reason": [None, "no_question", "too_long", None]}),
        root / "questions" / "a" / "part-00000.parquet")
    answers = {"pmid": [100, 101, 102], "question": ["Does <b>100</b> work?", "Q2?", "Q3?"],
               "context_pmids": [[9001, 9002]] * 3,
               "answer": ["It works in most patients.", "Unclear.", "No."],
               "decision": ["yes", None, "no"], "is_yes_no": [True, False, True],
               "grounded": [True, False, True], "grounding_score": [0.8, 0.1, 0.6],
               "grounding_method": ["lexical"] * 3, "teacher": ["smollm2"] * 3,
               "score": [0.7, 0.6, 0.5]}
    write_parquet_atomic(pa.table(answers), root / "answers" / "part-00000.parquet")
    write_parquet_atomic(pa.table({**{k: answers[k] for k in (
        "pmid", "question", "context_pmids", "answer", "decision", "is_yes_no", "grounded",
        "grounding_score", "score")}, "contexts": [["ctx one text", "ctx two text"]] * 3}),
        root / "export" / "triples" / "train.parquet")
    write_parquet_atomic(pa.table({"pmid": [100, 101, 102], "text": ["After reading"] * 3}),
                         root / "export" / "cpt" / "train.parquet")
    (root / "export" / "export.json").write_text(json.dumps({
        "input_rows": 3, "records": 3, "distinct_source_pmids": 3, "distinct_context_pmids": 2,
        "splits": {"cpt": {"rows": 3}, "sft": {"rows": 3}, "triples": {"rows": 3}},
        "grounding": {"method": "lexical", "n": 3, "judged": 3, "grounded": 2,
                      "ungrounded": 1, "grounded_rate": 2 / 3},
        "decontamination": {"enabled": True, "rows_excluded_source_pmid": 0,
                            "rows_excluded_context_pmid": 1}}))
    (root / "reports" / "pubmedqa.json").write_text(json.dumps(STEERING["downstream"]))
    (root / "reports" / "steering.json").write_text(json.dumps(
        {k: v for k, v in STEERING.items() if k != "downstream"}))
    (root / "reports" / "generator.json").write_text(json.dumps({
        "n": 29, "before_mean": 0.6075, "after_mean": 0.6074, "delta": -0.00006,
        "ci_low": -0.0022, "ci_high": 0.0022, "n_dropped": 3}))
    (root / "reports" / "signal_selfcheck.json").write_text(json.dumps({
        "sample": 200, "auc_other": 0.7124, "auc_other_ci": [0.6612, 0.7633],
        "auc_generic": 0.9345, "auc_generic_ci": [0.9012, 0.9611], "nan_share": 0.01,
        "verdict": "informative: titles beat other records' titles"}))
    return root


#: elements a browser lays out as separate boxes (their texts never run together)
BLOCKS = {"br", "div", "p", "td", "th", "tr", "table", "li", "h1", "h2", "h3", "section",
          "details", "summary", "svg", "text", "nav", "a"}


def text_of(doc: str) -> str:
    """The page's visible text (no style), as a browser lays it out in reading order."""
    class P(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.skip += tag in ("style", "script", "title")
            if tag in BLOCKS:
                self.parts.append(" ")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("style", "script", "title")
            if tag in BLOCKS:
                self.parts.append(" ")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    p = P()
    p.feed(doc)
    return " ".join("".join(p.parts).split())


def element(doc: str, elem_id: str) -> str:
    """The HTML of the element with ``id=elem_id`` (up to its closing tag, nesting counted)."""
    m = re.search(rf'<(\w+)[^>]*\bid="{elem_id}"', doc)
    assert m, f"no element with id {elem_id}"
    tag, depth = m.group(1), 0
    for t in re.finditer(rf"<(/?){tag}\b[^>]*>", doc[m.start():]):
        depth += -1 if t.group(1) else 1
        if depth == 0:
            return doc[m.start(): m.start() + t.end()]
    return doc[m.start():]


def pqa_ci(setting: str, model: str) -> str:
    a = STEERING["downstream"]["ci"][setting]["models"][model]["accuracy"]
    return f"{a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def check_page(doc: str) -> None:
    """What a reader must see, asserted on the rendered text and DOM."""
    text = text_of(doc)
    head = text_of(element(doc, "headline"))
    # the headline: first, with the numbers of the report files and their CIs
    assert text.index(head[:40]) < text.index("The dataset")
    for s in ("reasoning_required", "question_only"):
        assert f"{pqa_ci(s, 'before')} → {pqa_ci(s, 'after')}" in head
        d = STEERING["downstream"]["ci"][s]["contrasts"]["after_vs_before"]["accuracy"]
        assert f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" in head
    c = STEERING["contrasts"]["dpo_vs_base"]
    assert f"{c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" in head
    assert "AUC 0.71 [0.66, 0.76]" in head and "-0.0001 [-0.0022, +0.0022]" in head
    assert "3 records" in head and "2 of 3" in head and "30 pairs" in head
    # the pairs: contexts' MeSH by name, looked up in the corpus; the shared ones highlighted
    pairs = element(doc, "pairs")
    ptext = text_of(pairs)
    assert "Breast Neoplasms" in ptext and "Lung Neoplasms" in ptext and "Humans" in ptext
    assert f'<mark><span title="{NEOPLASMS}">Neoplasms</span></mark>' in pairs
    assert f'<mark><span title="{BREAST}">' not in pairs  # not the source's: not shared
    assert f'<mark><span title="{HUMANS}">' not in pairs  # the source's, in no context
    assert "MeSH (1 of 2 shared): Neoplasms; Breast Neoplasms" in ptext
    # no empty MeSH line (the source's or a context's)
    assert not re.search(r"MeSH: (chosen|rejected|PMID|$)", ptext)
    assert "MeSH (0 of 0 shared)" not in ptext
    # the other sections
    assert "It works in most patients." in text_of(element(doc, "sec-dataset"))
    q = text_of(element(doc, "questions_table"))
    assert "no_question" in q and "too_long" in q and "A summary without" in q
    # every plot has labelled axes and ticks, and a sentence on how to read it
    plots = re.findall(r"<svg[^>]*class=\"plot\".*?</svg>", doc, re.S)
    assert len(plots) >= 5
    for svg in plots:
        assert 'class="xlabel"' in svg and len(re.findall(r"<text", svg)) >= 4
    scores = element(doc, "scores_svg")
    assert "document score (MeSH similarity" in scores and ">pairs<" in scores
    assert doc.count("How to read:") >= 6
    # the raw dump: at the end, folded
    raw = element(doc, "raw")
    assert raw.startswith("<details") and " open" not in raw[: raw.index(">")]
    assert "ci.reasoning_required.models.after.accuracy.ci_low" in text_of(raw)
    assert text.index("Every report file") > text.index("Downstream: PubMedQA")


def test_report_is_self_contained_and_has_every_section(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = build_report(run)
    doc = path.read_text()
    assert path == run / "report.html"
    for elem in ('id="stages"', 'id="funnel"', 'id="scores_svg"', 'id="signal_table"',
                 'id="pubmedqa_table"', 'id="pairs"', 'id="headline"', 'id="raw"'):
        assert elem in doc
    check_page(doc)
    assert doc.count('class="pair"') == 20 and 'href="export/README.md"' in doc
    assert "&lt;b&gt;" in doc and "<b>100</b>" not in doc  # texts are escaped
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", doc)  # nothing fetched: offline
    assert "<script" not in doc
    res = CliRunner().invoke(__import__("kailin.cli.main", fromlist=["app"]).app,
                             ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1] == f"report: {tmp_path / 'r.html'}"
    assert 'href="run/export/README.md"' in (tmp_path / "r.html").read_text()  # from --out
    out = " ".join(lines)
    assert f"{pqa_ci('reasoning_required', 'before')} → {pqa_ci('reasoning_required', 'after')}" \
        in out and "AUC 0.71 [0.66, 0.76]" in out and "3 records" in out


def test_pair_contexts_show_mesh_names_from_the_run_corpus(tmp_path: Path) -> None:
    """The contexts come from the whole corpus, not the work set: their descriptors are read
    from corpus/full and named by the MeSH vocabulary (an empty `MeSH:` line before)."""
    run = make_run(tmp_path / "run", n=3)
    pairs = text_of(element(build_report(run).read_text(), "pairs"))
    assert pairs.count("Breast Neoplasms") == 3 and pairs.count("Lung Neoplasms") == 6
    assert BREAST not in pairs and "MeSH (0 of 0 shared)" not in pairs


def test_report_of_an_empty_run_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    doc = build_report(tmp_path / "run").read_text()
    text = text_of(doc)
    assert "no manifest.json" in doc and "no preference pairs" in doc
    for rel in ("export/export.json", "answers/", "questions/", "reports/pubmedqa.json",
                "preferences/prefer_stats.json",
                "reports/signal_selfcheck.json", "reports/steering.json"):
        assert f"not run in this config (no {rel} in the run folder)" in text
    assert histogram_svg([], []) == '<p class="note">no scores</p>'
    # a run still going (kailin run writes its manifest with status running first)
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"status": "running",
                                                                "stages": {}}))
    text = text_of(build_report(tmp_path / "run").read_text())
    assert "not run yet: the run is still going (no reports/pubmedqa.json so far)" in text


def test_report_says_which_stages_this_config_turned_off(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    for s in ("answers", "export", "pubmedqa", "signal", "steering", "generator_eval"):
        m["stages"][s] = {"status": "disabled"}
    (run / "manifest.json").write_text(json.dumps(m))
    doc = build_report(run).read_text()
    head = text_of(element(doc, "headline"))
    for s in ("export", "pubmedqa", "signal", "steering"):
        assert f"not run in this config (the {s} stage is off)" in head
    text = text_of(doc)
    assert "not run in this config (the answers stage is off)" in text
    assert pqa_ci("reasoning_required", "after") not in text.split("Raw report files")[0]
    assert "Breast Neoplasms" in text  # the sections of the stages that ran are kept


def test_histogram_and_interval_plots_have_axes() -> None:
    svg = histogram_svg([0.1, 0.2, 0.25, 0.9], [0.3], xlabel="score x", ylabel="how many")
    assert ">score x<" in svg and ">how many<" in svg and ">0.2<" in svg and ">1<" in svg
    svg = interval_svg([("a − b", 0.01, -0.002, 0.02)], xlabel="delta", reference=0.0,
                       reference_label="no difference")
    assert ">delta<" in svg and ">no difference<" in svg and ">a − b<" in svg
    assert ">0.000<" in svg or ">0.00<" in svg


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); the "
                    "report's DOM is checked without rendering by the other tests")
    path = build_report(make_run(tmp_path / "run"))
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run([*base, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "<table" in dom and "<svg" in dom
    check_page(dom)
    shot = tmp_path / "report.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,2000", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_report_leaves_out_the_files_of_stages_this_run_turned_off(tmp_path: Path) -> None:
    """A generator.json an earlier config's generator_eval wrote is not this run's result."""
    run = make_run(tmp_path / "run")
    (run / "reports" / "generator.json").write_text(json.dumps({"generator": "stale-marker"}))
    manifest = json.loads((run / "manifest.json").read_text()) if (
        run / "manifest.json").exists() else {}
    manifest.setdefault("stages", {})["generator_eval"] = {"status": "disabled"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    doc = build_report(run).read_text()
    assert "not run in this config (the generator_eval stage is off)" in doc
    assert "stale-marker" not in doc
    manifest["stages"]["generator_eval"] = {"status": "done"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert "stale-marker" in build_report(run).read_text()


def test_kailin_run_does_not_echo_the_report_of_a_stage_it_turned_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kailin.pipeline.stages as stages
    from kailin.cli.main import app

    run = tmp_path / "run"
    (run / "reports").mkdir(parents=True)
    (run / "reports" / "generator.json").write_text(json.dumps({"delta": 0.25}))
    status = {"generator_eval": "disabled"}

    def fake_run_config(cfg: Any, base: Any, **kw: Any) -> dict:
        return {"run_dir": str(run), "seconds": 1.0, "ran": [],
                "stages": {k: {"status": v} for k, v in status.items()}}

    monkeypatch.setattr(stages, "run_config", fake_run_config)
    cfg = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "reports/generator.json" not in res.output
    status["generator_eval"] = "done"
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert "reports/generator.json" in res.output and "0.25" in res.output
