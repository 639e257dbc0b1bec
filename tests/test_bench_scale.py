"""The scale rehearsal's helpers (benchmarks/bench_scale.py): the copies it ingests, the fit of
alpha, and the markdown it renders from its results JSON."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_scale.py"


@pytest.fixture(scope="module")
def bs():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" /
                                                  "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_fit_alpha_recovers_the_exponent(bs):
    ns = [1e5, 1e6, 3e6]
    assert bs.fit_alpha(ns, [2.0 * n**1.0 for n in ns]) == pytest.approx(1.0)
    assert bs.fit_alpha(ns, [0.5 * n**1.3 for n in ns]) == pytest.approx(1.3)
    assert bs.fit_alpha([1e5, 1e5], [1.0, 2.0]) is None


def test_copies_have_new_pmids_and_shuffled_sentences(bs):
    base = pa.table({
        "pmid": pa.array([11, 12], pa.int64()),
        "title": ["Aspirin and the heart.", "Statins."],
        "abstract": ["First sentence here. Second one follows. Third ends it.", None],
    })
    assert bs._copy_table(base, 0, None).equals(base)
    c3 = bs._copy_table(base, 3, None)
    assert c3["pmid"].to_pylist() == [11 + 3 * bs.PMID_STRIDE, 12 + 3 * bs.PMID_STRIDE]
    assert c3["title"].to_pylist() == ["Aspirin and the heart. (copy 3)", "Statins. (copy 3)"]
    a = c3["abstract"][0].as_py()
    assert sorted(bs._SENT.split(a)) == sorted(bs._SENT.split(base["abstract"][0].as_py()))
    assert c3["abstract"][1].as_py() is None
    assert bs._copy_table(base, 3, 1).num_rows == 1
    # the same copy is the same every time (the sizes share their input files)
    assert bs._copy_table(base, 3, None).equals(c3)
    # a title question carries no copy marker (its word would hit every copied title)
    assert [bs.question_title(t) for t in c3["title"].to_pylist()] == [
        "Aspirin and the heart.", "Statins."]
    assert bs.question_title("Copy number variation (copy 12)") == "Copy number variation"


def test_input_files_cut_the_last_copy(bs, tmp_path):
    files = bs.input_files(tmp_path, 120, 50)
    assert [(c, rows) for c, rows, _ in files] == [(0, None), (1, None), (2, 20)]
    assert files[2][2].name == "copy-0002-head20.parquet"


def _stage(rows: int, cpu: float, rss: float) -> dict:
    return {"rows": rows, "wall_s": 2 * cpu, "cpu_s": cpu, "rss_peak_mib": rss,
            "rss_before_mib": 100.0, "workers_rss_peak_mib": 0.0, "bytes": 2**20,
            "load_avg_1m": 3.0, "finished_at": "2026-12-07 14:00:00 UTC",
            "mib_per_million_docs": 500.0}


def test_markdown_marks_what_is_not_measured_and_fits(bs, tmp_path):
    res = {"settings": {"sizes": [1000, 4000], "questions": [100, 400], "questions_at": 4000,
                        "cpus": 2},
           "corpus": {"1000": {s: _stage(1000, 1.0, 300) for s in bs.CORPUS_STAGES},
                      "4000": {"ingest": _stage(4000, 4.0, 310)}},
           "questions": {"1000": {"100": {"score": _stage(100, 2.0, 700)}},
                         "4000": {"100": {"score": _stage(100, 4.0, 720)},
                                  "400": {"score": _stage(400, 16.0, 730)}}}}
    md = bs.render_markdown(res)
    assert "| 4,000 | index | *not yet measured* |" in md
    assert "| 1,000 | 100 | prefer | *not yet measured* |" in md
    # each row says when it was measured (a rerun may remeasure only some stages)
    assert "| 1,000 | ingest | 1,000 | 2.0 | 1.0 | 500 | 300 | 0 | 1.0 | 12-07 14:00 |" in md
    summ = bs.summarize(res)
    assert summ["corpus"]["ingest"]["alpha_cpu"] == pytest.approx(1.0)
    assert summ["questions_vs_corpus"]["score"]["alpha_cpu"] == pytest.approx(0.5)
    assert summ["questions_vs_count"]["score"]["alpha_cpu"] == pytest.approx(1.0)
    # 0.04 s per question at 4,000 records, x (36M / 4,000)^0.5, x 72M questions
    per_q = 0.04 * (36e6 / 4000) ** 0.5
    assert summ["projection"]["score"]["cpu_s_per_question_36m"] == pytest.approx(per_q)
    assert summ["projection"]["score"]["core_hours_72m"] == pytest.approx(per_q * 72e6 / 3600)
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{bs.DOC_BEGIN}\nold\n{bs.DOC_END}\nafter\n")
    bs.write_doc(doc, md)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{bs.DOC_END}\nafter\n")
    assert "old" not in text and "| 4,000 | index |" in text


def test_every_stage_runs_on_a_small_corpus(bs, tmp_path, monkeypatch):
    """Each stage body of the rehearsal, in this process, on copies of a real PubMed excerpt
    (the path measure instead of the descriptor embeddings, to stay cheap)."""
    from kailin.corpus.store import ingest

    monkeypatch.setenv("BENCH_SCALE_MEASURE", "path")
    monkeypatch.setenv("KAILIN_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "w"
    ingest([ROOT / "data" / "samples" / "pubmed_xml_samples" / "pubmed20n1016_excerpt.xml.gz"],
           work / "base", progress=False)
    from kailin.corpus.reader import open_corpus

    n_base = open_corpus(work / "base").num_rows
    size = n_base * 2 + n_base // 2
    made = bs.child_make(work, size)
    assert made["rows"] == size and made["files"] == 3
    ing = bs.child_ingest(work, size)
    assert ing["rows"] == size and ing["bytes"] > 0 and ing["rss_peak_mib"] > 0
    assert bs.child_index(work, size)["mib_per_million_docs"] >= 0
    assert 0 < bs.child_workset(work, size)["rows"] <= size
    assert bs.child_stats(work, size)["rows"] == size
    nq = 40
    assert bs.child_questions(work, nq)["rows"] == nq
    sc = bs.child_score(work, size, nq)
    assert sc["rows"] == sc["rows_out"] == nq
    pr = bs.child_prefer(work, size, nq)
    assert pr["pmids"] == nq // 2 and 0 <= pr["pairs"] <= pr["pmids"]
    ex = bs.child_export(work, size, nq)
    assert 0 < ex["records"] <= nq // 2


def test_timed_reports_the_peak_of_memory_not_backed_by_a_file(tmp_path):
    """The score stage maps its BM25 index: VmHWM counts the mapped pages read, RssAnon does
    not. An allocation shows in the anonymous peak; reading a mapped file does not. Run in a
    fresh interpreter, as bench_scale runs each stage: in the test process, memory freed by
    earlier tests moved the baseline by more than the 96 MiB measured."""
    import json
    import subprocess

    script = tmp_path / "probe.py"
    script.write_text(f"""
import importlib.util, json, mmap, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("bench_scale", {str(BENCH)!r})
bs = importlib.util.module_from_spec(spec); sys.modules["bench_scale"] = bs
spec.loader.exec_module(bs)
big = {str(tmp_path / "mapped.bin")!r}
open(big, "wb").write(np.ones(64 * 2**20, np.uint8).tobytes())
def read_mapped():
    with open(big, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        total = sum(m[i] for i in range(0, len(m), 4096))
    time.sleep(0.3)
    return {{"rows": total, "out": {str(tmp_path)!r}}}
def allocate():
    x = np.ones(96 * 2**20, np.uint8)  # 96 MiB of anonymous memory, held for 0.3 s
    time.sleep(0.3)
    return {{"rows": int(x[:1].sum()), "out": {str(tmp_path)!r}}}
print(json.dumps([bs._timed(read_mapped), bs._timed(allocate)]))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    m, a = json.loads(out.strip().splitlines()[-1])
    assert m["rss_anon_peak_mib"] < m["rss_anon_before_mib"] + 32
    assert a["rss_anon_peak_mib"] > a["rss_anon_before_mib"] + 80
