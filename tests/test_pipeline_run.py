"""`kailin run` end to end on a tiny real config: every stage, kill -9 resume, no-op re-run,
the report formats, `kailin status`, and the Ray executor against the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kailin.io import read_parquet

ROOT = Path(__file__).resolve().parents[1]

TINY = """
run_dir: run
executor: {kind: local, rows_per_shard: 2}
corpus: {demo: true, limit: 8, heldout: 3}
index: {kind: bm25, k: 4}
generators:   # SFT has its own tests; here: base model, greedy vs sampled
  - {name: greedy, model: smollm2, sft: {enabled: false}}
  - {name: sampled, model: smollm2, temperature: 0.6, seed: 1, sft: {enabled: false}}
generation: {mode: chat, max_new_tokens: 28, max_abstract_chars: 300, batch_size: 8,
              threads: 2}
preferences: {tau: null}
dpo: {max_steps: 1, batch_size: 1, warmup_steps: 0, max_length: 160}
answers: {teacher: smollm2, max_new_tokens: 12, limit: 3, grounding: lexical}
export: {questions_from: policy}
downstream: {model: smollm2, cpt_steps: 1, batch_size: 1, max_length: 96, controls: true}
pubmedqa: {limit: 4, n_boot: 200}
"""


def _run(cfg: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kailin.cli.main", "run", str(cfg),
                             "--no-progress", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_pipeline_end_to_end_with_kill_and_resume(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    # 1. start, then kill -9 as soon as the question stage has written a shard
    p = _run(cfg)
    deadline = time.time() + 600
    done_dir = run / "questions"
    while time.time() < deadline and p.poll() is None:
        if done_dir.is_dir() and any(done_dir.rglob("_done/*.json")):
            break
        time.sleep(0.2)
    assert p.poll() is None, p.stdout.read() if p.stdout else ""
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    state = json.loads((run / "state" / "questions.json").read_text())
    assert state["status"] == "running"
    n_done = len(list(done_dir.rglob("_done/*.json")))
    assert 1 <= n_done < 8  # 2 generators x 4 shards
    # 2. resume: finishes, with exactly one row per (abstract, generator)
    p = _run(cfg)
    out, _ = p.communicate(timeout=1500)
    assert p.returncode == 0, out[-3000:]
    assert "corpus: up to date" in out and "questions: running" in out
    qs = read_parquet(run / "questions")
    keys = list(zip(qs["pmid"].to_pylist(), qs["generator"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 8 * 2
    # 3. the outputs the issue names
    gen = json.loads((run / "reports" / "generator.json").read_text())
    assert {"n", "before_mean", "after_mean", "delta", "ci_low", "ci_high"} <= set(gen)
    pqa = json.loads((run / "reports" / "pubmedqa.json").read_text())
    assert {"accuracy", "macro_f1", "n"} <= set(pqa) and pqa["n"] == 4
    assert set(pqa["before"]["settings"]) == {"reasoning_required", "question_only"}
    # the downstream controls: the same steps on the same abstracts without questions, and on
    # an export of the pre-DPO questions; every model with bootstrap CIs, paired contrasts
    assert set(pqa["models"]) == {"before", "after", "raw_abstracts", "pre_dpo"}
    for s in ("reasoning_required", "question_only"):
        ci = pqa["ci"][s]
        assert set(ci["models"]) == set(pqa["models"]) and ci["n"] == 4
        assert {"after_vs_before", "after_vs_raw_abstracts", "after_vs_pre_dpo"} <= set(
            ci["contrasts"])
        acc = ci["models"]["after"]["accuracy"]
        assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    raw = read_parquet(run / "controls" / "raw_abstracts" / "cpt")
    assert raw.num_rows == read_parquet(run / "export" / "cpt").num_rows
    assert not any("pondered" in t for t in raw["text"].to_pylist())
    card = json.loads((run / "controls" / "pre_dpo" / "export.json").read_text())
    assert "generators" in json.dumps(card)
    for arm in ("raw_abstracts", "pre_dpo"):
        assert (run / "models" / f"downstream-{arm}" / "model").is_dir()
    export = read_parquet(run / "export" / "cpt")
    assert "pmid" in export.column_names and export.num_rows > 0
    assert export["text"][0].as_py().startswith("After reading the paper ```")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["versions"]["kailin"] and manifest["stages"]["pubmedqa"]["status"] == "done"
    # 4. a finished run re-runs for free
    t0 = time.time()
    p = _run(cfg)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0
    assert "running" not in out.replace("run finished", "")
    assert time.time() - t0 < 60
    # 5. status lists every stage
    st = subprocess.run([sys.executable, "-m", "kailin.cli.main", "status", str(run), "--json"],
                        capture_output=True, text=True, check=True)
    rows = {r["stage"]: r for r in json.loads(st.stdout)}
    assert rows["questions"]["status"] == "done" and rows["pubmedqa"]["status"] == "done"
    # 6. the Ray executor reproduces the local scores
    pytest.importorskip("ray")
    local_scores = read_parquet(run / "scores")
    import shutil

    # the same run folder without its scores; `--only score` recomputes them on Ray
    shutil.copytree(run, tmp_path / "ray_run", dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "ray_run" / "scores")
    (tmp_path / "ray_run" / "state" / "score.json").unlink()
    p = _run(cfg, "--only", "score", "--executor", "ray", "--out", str(tmp_path / "ray_run"))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    ray_scores = read_parquet(tmp_path / "ray_run" / "scores")

    def rows(t):  # NaN scores (rejected questions) compare equal as None
        cols = t.select(["pmid", "generator", "question", "score", "context_pmids"]).to_pylist()
        return [{**r, "score": None if r["score"] != r["score"] else r["score"]} for r in cols]

    assert rows(ray_scores) == rows(local_scores)
    assert any(r["score"] is not None for r in rows(local_scores))
