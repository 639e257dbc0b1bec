"""`kailin status` as a newcomer reads it after a failed run (issue 28): the stored error in
full (not "last run failed" alone), wrapped at words instead of cut mid-word, and numbers
without 17-digit noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "pubmed_xml_samples" / "pubmed-29768149.xml"


def test_status_shows_the_stored_error_whole_and_short_numbers(tmp_path: Path) -> None:
    from kailin.cli.main import app

    data = SAMPLE.read_bytes()
    at = data.index(b"<AbstractText") + 200
    (tmp_path / "bad.xml").write_bytes(data[:at] + b"\xe9" + data[at:])  # a Latin-1 'é'
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("run_dir: run\ncorpus: {inputs: [bad.xml]}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run([sys.executable, "-m", "kailin.cli.main", "--quiet", "run", str(cfg),
                          "--no-progress", "--only", "corpus"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 2 and "byte" in res.stderr, res.stderr
    state = tmp_path / "run" / "state" / "corpus.json"
    stored = json.loads(state.read_text())
    assert stored["status"] == "failed" and stored["error"].startswith("InputError: ")

    out = CliRunner().invoke(app, ["status", str(tmp_path / "run"), "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    shown = " ".join(out.output.replace("│", " ").split())  # the cell wraps over lines
    assert "last run failed: InputError: 1 file(s) not ingested" in shown
    assert "to keep the records before that byte." in shown  # the end of a 400-char error

    # a done stage's float counts (as pubmedqa or generator_eval store them) stay readable
    stored.update(status="done", error=None, seconds=1.2345678901234567,
                  counts={"accuracy": 0.46666666666666667, "records": 12})
    del stored["error"]
    state.write_text(json.dumps(stored))
    out = CliRunner().invoke(app, ["status", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "accuracy=0.4667, records=12" in out.output and "1.235" in out.output
    assert "0.46666666666666" not in out.output and "1.23456789" not in out.output
