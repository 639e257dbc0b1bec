"""`kailin report RUN_DIR`: a self-contained HTML page; rendered in headless Chromium if present."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from kailin.io import write_parquet_atomic
from kailin.report.html import build_report, histogram_svg


def make_run(root: Path, n: int = 30) -> Path:
    (root / "preferences" / "data").mkdir(parents=True)
    (root / "reports").mkdir()
    (root / "corpus").mkdir()
    (root / "manifest.json").write_text(json.dumps({"status": "done", "stages": {
        "corpus": {"status": "done", "key": "abcdef0123456789", "records": 40, "seconds": 1.5},
        "prefer": {"status": "done", "key": "0123", "kept": n, "skipped": True},
        "dpo": {"status": "disabled"}}}))
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
    write_parquet_atomic(pa.table({
        "pmid": [*pmids, 9001, 9002], "title": ["T"] * n + ["ctx one", "ctx two"],
        "abstract": ["An abstract."] * n + ["x", "y"],
        "mesh_uis": [["D000001", "D000002"]] * n + [["D000001"], ["D000009"]]}),
        root / "corpus" / "work.parquet")
    (root / "scores").mkdir()
    write_parquet_atomic(pa.table({
        "pmid": pmids, "question": [f"Does <b>{p}</b> work?" for p in pmids],
        "context_pmids": [[9001, 9002]] * n, "context_titles": [["ctx one", "ctx two"]] * n,
        "score": [0.5] * n}), root / "scores" / "part-00000.parquet")
    (root / "reports" / "pubmedqa.json").write_text(json.dumps(
        {"before": {"accuracy": 0.5, "ci": [0.4, 0.6]}, "after": {"accuracy": 0.55}}))
    (root / "reports" / "signal_selfcheck.json").write_text(json.dumps({"auc": 0.71}))
    return root


def test_report_is_self_contained_and_has_every_section(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = build_report(run)
    doc = path.read_text()
    assert path == run / "report.html"
    for elem in ('id="stages"', 'id="funnel"', 'id="scores_svg"', 'id="signal"',
                 'id="pubmedqa"', 'id="pairs"'):
        assert elem in doc
    assert "reports/generator.json not present" in doc
    assert doc.count('class="pair"') == 20
    assert "<mark>D000001</mark>" in doc and "<mark>D000009</mark>" not in doc
    assert "&lt;b&gt;" in doc and "<b>100</b>" not in doc  # texts are escaped
    assert "[0.4, 0.6]" in doc
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", doc)  # nothing fetched: offline
    assert "<script" not in doc
    res = CliRunner().invoke(__import__("kailin.cli.main", fromlist=["app"]).app,
                             ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(tmp_path / "r.html")


def test_report_of_an_empty_run_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    doc = build_report(tmp_path / "run").read_text()
    assert "no manifest.json" in doc and "no preference pairs" in doc
    assert histogram_svg([], []) == '<p class="note">no scores</p>'


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); the "
                    "report's DOM is checked without rendering by the other tests")
    path = build_report(make_run(tmp_path / "run"))
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run([*base, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    for elem in ('id="stages"', 'id="funnel"', 'id="pairs"'):
        assert elem in dom
    assert "<table" in dom and "<svg" in dom
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
    assert "the generator_eval stage is off in this run" in doc and "stale-marker" not in doc
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
