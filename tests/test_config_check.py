"""A config is checked whole before any work (issue 28.2): a copy of the demo config moved to
another folder, bad inputs, an unknown model spec, a missing corpus folder are all reported at
once, with their key paths, in about a second, by `kailin run` (exit 2, nothing run),
`kailin run --check` and `kailin status --config`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _kailin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kailin.cli.main", *args], capture_output=True,
                          text=True, timeout=120)


def test_a_moved_demo_config_fails_at_once(tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "demo.yaml"
    moved.parent.mkdir()
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["run_dir"] = str(tmp_path / "run")
    moved.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    r = _kailin("run", str(moved))
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    assert "generators[1].sft.data: SFT data file" in r.stderr
    assert "pqaa_test_500.jsonl does not exist" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing ran, nothing written
    assert took < 30  # (about a second on an idle machine: no model is loaded)


def test_every_problem_at_once_with_its_key(tmp_path: Path) -> None:
    cfg = {
        "run_dir": "run",
        "corpus": {"inputs": ["missing.xml", "packaged:nope"], "exclude_pmids": "none.txt"},
        "mesh": {"dir": "no-mesh"},
        "index": {"kind": "dense", "model": "./no-encoder"},
        "generators": [{"name": "a", "model": "smolm2", "sft": {"data": "qa.json"}},
                       {"name": "b", "model": "smollm2", "sft": {"enabled": False}}],
        "answers": {"teacher": "openai:localhost:8000#m"},
        "downstream": {"model": "./nowhere"},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _kailin("run", "--check", str(path))
    assert r.returncode == 2
    err = r.stderr
    for key in ("corpus.inputs[0]: ", "corpus.inputs[1]: ", "corpus.exclude_pmids: ",
                "mesh.dir: ", "index.model: ", "generators[0].model: ",
                "generators[0].sft.data: ", "answers.teacher: ", "downstream.model: "):
        assert key in err, (key, err)
    assert "'smolm2': unknown model spec" in err
    assert "9 problems found before any work" in err
    # a corpus folder that is not one
    (tmp_path / "corp").mkdir()
    path.write_text(yaml.safe_dump({"corpus": {"corpus_dir": "corp"}}))
    r = _kailin("run", str(path))
    assert r.returncode == 2 and "corpus.corpus_dir: " in r.stderr


def test_check_passes_the_demo_and_status_checks_too(tmp_path: Path) -> None:
    r = _kailin("run", "--check", str(ROOT / "configs" / "demo.yaml"))
    assert r.returncode == 0, r.stderr
    assert "no problem found" in r.stdout and "sft:pqal" in r.stdout
    (tmp_path / "run" / "state").mkdir(parents=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"generators": [{"name": "a", "model": "./gone"},
                                                  {"name": "b"}]}))
    r = _kailin("status", str(tmp_path / "run"), "--config", str(bad))
    assert r.returncode == 2 and "generators[0].model: model folder" in r.stderr
