"""Store tests: one row per live PMID, updates/deletions, resumability, exclusions, selection."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import kailin.corpus.layout as layout
import kailin.corpus.staging as staging
import kailin.corpus.store as store
from kailin.corpus import CORPUS_SCHEMA, open_corpus
from kailin.corpus.query import select, show, sql, stats
from kailin.corpus.sources import DictMesh
from kailin.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
XML = ROOT / "data" / "samples" / "pubmed_xml_samples"
PQA = ROOT / "src" / "kailin" / "data" / "pubmedqa" / "ori_pqal.json"
BASE = XML / "pubmedsample18n0001.xml.gz"
FAKE = DictMesh(
    {
        "Humans": "D006801",
        "Neoplasms": "D009369",
        "Breast Neoplasms": "D001943",
        "Lung Neoplasms": "D008175",
        "Apoptosis": "D017209",
    },
    children={"D009369": ["D001943", "D008175"]},
)


def _ingest(files, out, **kw):
    kw.setdefault("resolver", FAKE)
    kw.setdefault("progress", False)
    return store.ingest(files, out, **kw)


def _live(out: Path) -> dict[tuple[int, int], dict]:
    """The live records keyed by (pmid, version), checking each key is in exactly one row."""
    t = open_corpus(out).read(["pmid", "title", "version", "source_file"])
    rows = t.to_pylist()
    keys = [(r["pmid"], r["version"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (pmid, version) keys in the live shards"
    return {(r["pmid"], r["version"]): r for r in rows}


def _update_file(tmp: Path) -> tuple[Path, int, int]:
    """A real-format update file (named after the baseline, so ordered after it): a revised
    record (same PMID and Version, changed title), a Version 2 of another baseline record (a
    distinct article under NLM's rule) and a DeleteCitation of a third."""
    text = gzip.decompress(BASE.read_bytes()).decode("utf-8")
    head, _, rest = text.partition("<PubmedArticle>")
    arts = [
        "<PubmedArticle>" + a.split("</PubmedArticle>")[0] + "</PubmedArticle>"
        for a in rest.split("<PubmedArticle>")[:3]
    ]
    upd_pmid = 973217
    assert f">{upd_pmid}</PMID>" in arts[0]
    new = arts[0].replace("Hospital debt management", "UPDATED Hospital debt management", 1)
    v2 = arts[2].replace('<PMID Version="1">', '<PMID Version="2">', 1)
    gone = int(arts[1].split("</PMID>")[0].rsplit(">", 1)[1])
    body = new + v2 + f'\n<DeleteCitation><PMID Version="1">{gone}</PMID></DeleteCitation>\n'
    f = tmp / "pubmedsample18n0002_update.xml.gz"
    with gzip.open(f, "wt", encoding="utf-8") as fh:
        fh.write(head + body + "</PubmedArticleSet>\n")
    return f, upd_pmid, gone


def test_ingest_samples_one_row_per_pmid(tmp_path: Path) -> None:
    out = tmp_path / "c"
    rep = _ingest([XML], out, workers=2)
    live = _live(out)
    assert rep.records == len(live) == 264  # medsamp2006's 88 PMIDs are all in the 2018 sample
    assert live[(973217, 1)]["source_file"] == BASE.name
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["files"]) == 6 and m["records"] == 264
    for e in m["files"]:
        assert {"path", "sha256", "records", "deleted", "malformed", "status"} <= set(e)
        assert e["status"] == "committed" and len(e["sha256"]) == 64
    # the update file asks for 268 deletions, of PMIDs none of the samples holds: none applied
    assert sum(e["deletions_requested"] for e in m["files"]) == 268
    assert sum(e["deleted"] for e in m["files"]) == 0
    assert pq.read_schema(open_corpus(out).files()[0]).equals(CORPUS_SCHEMA)
    # a second run is a no-op: nothing rewritten
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    rep2 = _ingest([XML], out)
    assert {f["status"] for f in rep2.files} == {"unchanged"}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before
    assert not list((out / "staging").glob("*"))


def test_updates_and_deletions_in_file_order(tmp_path: Path) -> None:
    upd, upd_pmid, gone = _update_file(tmp_path)
    one = tmp_path / "one"
    _ingest([upd, BASE], one)  # given out of order: processed by file name
    live = _live(one)
    assert live[(upd_pmid, 1)]["title"].startswith("UPDATED")
    v2 = [k for k in live if k[1] == 2]
    assert len(v2) == 1 and (v2[0][0], 1) in live  # Version 2 sits next to Version 1
    assert live[v2[0]]["title"] == live[(v2[0][0], 1)]["title"]
    assert (gone, 1) not in live and len(live) == 177
    # the same in two runs (baseline first, update later) gives the same corpus
    two = tmp_path / "two"
    _ingest([BASE], two)
    assert (gone, 1) in _live(two)
    _ingest([upd], two)
    assert _live(two) == live
    assert show(two, gone) is None and show(two, upd_pmid)["title"].startswith("UPDATED")
    assert show(two, v2[0][0])["version"] == 2 and show(two, v2[0][0], version=1)["version"] == 1
    # re-ingesting the baseline later does not bring back the older version or the deleted PMID
    _ingest([BASE], two)
    assert _live(two) == live


CRASH_POINTS = ["staged", "merged", "commit-marker", "swap", "after-swap", "after-manifest"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_anywhere_resumes_without_loss_or_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    upd, _, _ = _update_file(tmp_path)
    files = [BASE, upd, XML / "pubmed26n1334_excerpt.xml.gz"]
    ref = tmp_path / "ref"
    _ingest(files, ref)
    expected = _live(ref)

    out = tmp_path / "c"
    _ingest([XML / "pubmed-29768149.xml"], out)  # an existing generation to swap out

    class Crash(Exception):
        pass

    real_stage = staging._stage_file
    calls = {"n": 0}

    def stage_then_crash(task, cb=None):
        calls["n"] += 1
        if point == "staged" and calls["n"] == 2:
            raise Crash  # killed while staging the 2nd file (the 1st is staged)
        return real_stage(task, cb)

    def cp(name: str) -> None:
        if name == point:
            raise Crash

    monkeypatch.setattr(staging, "_stage_file", stage_then_crash)
    monkeypatch.setattr(layout, "checkpoint", cp)
    with pytest.raises(Crash):
        _ingest(files, out)
    monkeypatch.setattr(layout, "checkpoint", lambda name: None)
    monkeypatch.setattr(staging, "_stage_file", real_stage)
    _ingest(files, out)
    live = _live(out)
    extra = live.pop((29768149, 1))
    assert extra["source_file"] == "pubmed-29768149.xml"
    assert live == expected
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(e["name"] for e in m["files"]) == sorted(
        [f.name for f in files] + ["pubmed-29768149.xml"]
    )
    assert not (out / ".next").exists() and not list((out / "staging").glob("*.parquet"))


def test_truncated_file_is_not_committed(tmp_path: Path) -> None:
    good = XML / "pubmed26n1334_excerpt.xml.gz"
    bad = tmp_path / "pubmed26n1335_bad.xml.gz"
    data = (XML / "pubmed26n1335_excerpt_updatefile.xml.gz").read_bytes()
    bad.write_bytes(data[: len(data) - 200])
    out = tmp_path / "c"
    with pytest.raises(InputError, match="pubmed26n1335_bad.xml.gz.*truncated"):
        _ingest([good, bad], out)
    live = _live(out)
    assert len(live) == 30 and {r["source_file"] for r in live.values()} == {good.name}
    m = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in m["files"]] == [good.name]
    assert m["failed"] and "truncated" in m["failed"][0]["error"]
    # the fixed file goes in on the next run
    shutil.copy(XML / "pubmed26n1335_excerpt_updatefile.xml.gz", bad)
    _ingest([good, bad], out)
    assert len(_live(out)) == 60


def test_decontamination_and_exclusion_file(tmp_path: Path) -> None:
    out = tmp_path / "c"
    rep = _ingest([PQA], out)
    test_pmids = set(json.loads((PQA.parent / "test_ground_truth.json").read_text()))
    live = _live(out)
    assert len(live) == 500 and not {str(p) for p, _ in live} & test_pmids
    m = json.loads((out / "manifest.json").read_text())
    assert m["files"][0]["excluded"] == 500 and m["exclusions"]["pubmedqa_test_default"]
    assert rep.summary()["excluded"] == 500

    ex = tmp_path / "ex.txt"
    keep_out = [p for p, _ in sorted(live)[:7]]
    ex.write_text("\n".join(map(str, keep_out)) + "\n")
    out2 = tmp_path / "c2"
    _ingest([PQA], out2, exclude_pmids=ex, default_exclude=False)
    live2 = _live(out2)
    assert len(live2) == 993 and not set(keep_out) & {p for p, _ in live2}


def test_stats_sql_select(tmp_path: Path) -> None:
    out = tmp_path / "c"
    _ingest([PQA], out)
    s = stats(out)
    assert s["records"] == s["distinct_pmids"] == 500 and s["excluded"] == 500
    assert s["with_mesh"] > 400 and s["year_min"] >= 1980
    t = sql(out, "select count(*) as n from corpus where list_contains(mesh_uis, 'D006801')")
    n_humans = t.column("n")[0].as_py()
    assert 300 < n_humans < 500
    with pytest.raises(InputError, match="SQL error"):
        sql(out, "select nope from corpus")

    sub = tmp_path / "neo"
    r = select(out, ["Neoplasms"], sub, mesh=FAKE)
    neo = _live(sub)
    want = (
        sql(
            out,
            "select pmid from corpus where list_has_any(mesh_uis, ['D009369','D001943','D008175'])",
        )
        .column("pmid")
        .to_pylist()
    )
    assert {p for p, _ in neo} == set(want) and r["records"] == len(want) > 0
    assert r["query"]["matched_uis"] == 3
    assert select(out, ["Neoplasms"], sub, mesh=FAKE)["reused"] is True
    r2 = select(out, ["D009369"], tmp_path / "neo2", mesh=FAKE, descendants=False)
    assert r2["records"] <= r["records"]
    r3 = select(out, ["Neoplasms"], tmp_path / "neo3", mesh=FAKE, years="2010-2012")
    yrs = open_corpus(tmp_path / "neo3").read(["year"]).column("year").to_pylist()
    assert all(2010 <= y <= 2012 for y in yrs) and r3["records"] == len(yrs)
    with pytest.raises(InputError, match="not a MeSH descriptor"):
        select(out, ["No Such Heading"], tmp_path / "x", mesh=FAKE)


def test_major_only(tmp_path: Path) -> None:
    out = tmp_path / "c"
    _ingest([BASE], out)
    all_h = select(out, ["Humans"], tmp_path / "a", mesh=FAKE)["records"]
    maj = select(out, ["Humans"], tmp_path / "b", mesh=FAKE, major_only=True)["records"]
    want = (
        sql(
            out,
            "select count(*) from (select pmid, unnest(mesh_uis) u, unnest(mesh_major) m "
            "from corpus) where u = 'D006801' and m",
        )
        .column(0)[0]
        .as_py()
    )
    assert maj == want < all_h


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    """A real kill (SIGKILL, no cleanup) at several moments, then a final run: same corpus."""
    import os
    import signal
    import subprocess
    import sys
    import time

    upd, _, _ = _update_file(tmp_path)
    files = [str(XML), str(upd)]
    ref = tmp_path / "ref"
    _ingest([Path(f) for f in files], ref, resolver=None)
    expected = _live(ref)
    out = tmp_path / "c"
    code = (
        "import sys; from kailin.corpus.store import ingest; "
        f"ingest({files!r}, {str(out)!r}, resolver=None, progress=False)"
    )
    for delay in (0.4, 0.9, 1.3, 1.7, 2.1, 2.6):
        p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
        time.sleep(delay)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if (out / "data").exists() and (out / "manifest.json").exists() and p.returncode == 0:
            break
    subprocess.run([sys.executable, "-c", code], check=True)
    assert _live(out) == expected
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["files"]) == 7 and m["records"] == len(expected)


def test_corpus_queries_bound_duckdb_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """The work set's ORDER BY over the whole corpus and the ingest's merge ran with DuckDB's
    default limit (80% of the machine's memory), so their RSS grew with the corpus (~2.4 KB a
    record, benchmarks/bench_scale.py); both now run under a bound and spill to disk."""
    import duckdb

    from kailin.corpus.query import connect
    from kailin.io import duckdb_memory_limit

    def limit(con) -> str:
        return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]

    def ref(size: str) -> str:
        con = duckdb.connect()
        con.execute(f"SET memory_limit='{size}'")
        return limit(con)

    bounds: list[str] = []
    import kailin.corpus.merge as merge

    real = merge.connect_duckdb

    def spy(temp_dir=None):
        con = real(temp_dir)
        bounds.append(limit(con))
        assert temp_dir is not None  # the merge spills beside the corpus, not in /tmp
        return con

    monkeypatch.setattr(merge, "connect_duckdb", spy)
    monkeypatch.delenv("KAILIN_DUCKDB_MEMORY", raising=False)
    _ingest([BASE], tmp_path / "c")
    con = connect(tmp_path / "c")
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    assert bounds == [ref(duckdb_memory_limit(threads))]
    assert limit(con) == ref(duckdb_memory_limit(threads)) != limit(duckdb.connect())
    rows = con.sql("SELECT pmid FROM corpus ORDER BY pmid").fetchall()
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and len(rows) > 0
    assert duckdb_memory_limit(1) == "1024MB" and duckdb_memory_limit(8) == "4096MB"
    monkeypatch.setenv("KAILIN_DUCKDB_MEMORY", "300MB")
    assert limit(connect(tmp_path / "c")) == ref("300MB")
