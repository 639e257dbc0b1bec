"""Command-line tests: `kailin ingest` and `kailin corpus stats|show|sql|select|demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kailin.cli import corpus as corpus_cli
from kailin.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
XML = ROOT / "data" / "samples" / "pubmed_xml_samples"


def _app() -> typer.Typer:
    # the same registration as kailin.cli.main
    app = typer.Typer()
    app.add_typer(corpus_cli.app, name="corpus")
    app.command("ingest")(corpus_cli.ingest_cmd)
    return app


def _json_out(text: str) -> dict:
    return json.loads(text[text.index("{") :])


def test_cli_ingest_stats_show_sql(tmp_path: Path) -> None:
    r = CliRunner()
    app = _app()
    out = tmp_path / "c"
    ex = tmp_path / "ex.txt"
    ex.write_text("973217\n")
    res = r.invoke(
        app,
        [
            "ingest",
            str(XML / "pubmedsample18n0001.xml.gz"),
            str(XML / "pubmed26n1334_excerpt.xml.gz"),
            "--out",
            str(out),
            "--exclude-pmids",
            str(ex),
            "--workers",
            "2",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    s = _json_out(res.stdout)
    assert s["live_records"] == 206 and s["excluded"] == 1 and s["files"] == {"committed": 2}
    res = r.invoke(
        app, ["ingest", str(XML / "pubmedsample18n0001.xml.gz"), "--out", str(out), "--no-progress"]
    )
    assert _json_out(res.stdout)["files"] == {"unchanged": 1}

    st = _json_out(r.invoke(app, ["corpus", "stats", str(out)]).stdout)
    assert st["records"] == 206 and st["with_mesh"] > 150

    res = r.invoke(app, ["corpus", "show", str(out), "8941094"])
    assert res.exit_code == 0 and _json_out(res.stdout)["pmid"] == 8941094
    res = r.invoke(app, ["corpus", "show", str(out), "973217"])  # excluded
    assert res.exit_code == 1

    res = r.invoke(
        app, ["corpus", "sql", str(out), "select count(*) as n from corpus", "-f", "csv"]
    )
    assert res.exit_code == 0 and res.stdout.splitlines() == ["n", "206"]
    res = r.invoke(
        app,
        [
            "corpus",
            "sql",
            str(out),
            "select pmid, year from corpus order by pmid limit 2",
            "-f",
            "jsonl",
        ],
    )
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["pmid"] < rows[1]["pmid"]
    res = r.invoke(app, ["corpus", "sql", str(out), "select year, count(*) from corpus group by 1"])
    assert res.exit_code == 0 and "year" in res.stdout

    for cmd in (
        ["ingest"],
        ["corpus", "stats"],
        ["corpus", "show"],
        ["corpus", "sql"],
        ["corpus", "select"],
        ["corpus", "demo"],
    ):
        assert r.invoke(app, [*cmd, "--help"]).exit_code == 0


def test_cli_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "feed.xml"
    bad.write_text('<?xml version="1.0"?>\n<rss version="2.0"><channel/></rss>\n')
    res = CliRunner().invoke(
        _app(), ["ingest", str(bad), "--out", str(tmp_path / "c"), "--no-progress"]
    )
    assert isinstance(res.exception, InputError)
    assert "not PubMed XML" in str(res.exception) and "feed.xml" in str(res.exception)


@pytest.mark.slow
def test_cli_demo_and_select_with_packaged_mesh(tmp_path: Path) -> None:
    pytest.importorskip("kailin.mesh", reason="MeSH engine not available")
    from kailin.mesh import load_mesh

    try:
        load_mesh()
    except Exception as exc:  # pragma: no cover - packaged MeSH missing
        pytest.skip(f"packaged MeSH unavailable: {exc}")
    r = CliRunner()
    app = _app()
    demo = tmp_path / "demo"
    res = r.invoke(app, ["corpus", "demo", "--out", str(demo)])
    assert res.exit_code == 0, res.output
    s = _json_out(res.stdout)
    # 264 XML (after dedup/deletions) + 1,400 NLM + 500 PubMedQA outside its test set
    assert s["live_records"] == 2164 and s["excluded"] == 500
    test_pmids = {
        int(p)
        for p in json.loads((ROOT / "src/kailin/data/pubmedqa/test_ground_truth.json").read_text())
    }
    from kailin.corpus import open_corpus

    pmids = set(open_corpus(demo).read(["pmid"]).column("pmid").to_pylist())
    assert not pmids & test_pmids
    st = _json_out(r.invoke(app, ["corpus", "stats", str(demo)]).stdout)
    assert st["with_mesh"] > 2000 and st["unresolved_mesh"] < 0.03 * st["mesh_headings"]

    sub = tmp_path / "neo"
    res = r.invoke(
        app,
        [
            "corpus",
            "select",
            str(demo),
            "--mesh",
            "Neoplasms",
            "--mesh",
            "D001943",
            "--years",
            "1990-2024",
            "--out",
            str(sub),
        ],
    )
    assert res.exit_code == 0, res.output
    sel = _json_out(res.stdout)
    assert sel["records"] > 50 and sel["query"]["matched_uis"] > 500
    only = _json_out(
        r.invoke(
            app,
            [
                "corpus",
                "select",
                str(demo),
                "--mesh",
                "Neoplasms",
                "--no-descendants",
                "--major-only",
                "--out",
                str(tmp_path / "n2"),
            ],
        ).stdout
    )
    assert only["records"] < sel["records"]


def test_cli_ingest_update_rewrites_only_what_it_touches(tmp_path: Path) -> None:
    """An update file on an existing store: the baseline's shards are kept and the new records
    go to new shards; --full-rewrite rewrites every shard instead; the live records agree."""
    r, app = CliRunner(), _app()
    base, upd = XML / "pubmed26n1334_excerpt.xml.gz", XML / "pubmed26n1335_excerpt_updatefile.xml.gz"
    commits, live = {}, {}
    for mode, extra in (("incremental", []), ("full", ["--full-rewrite"])):
        out = tmp_path / mode
        opts = ["--out", str(out), "--rows-per-shard", "20", "--no-progress"]
        assert r.invoke(app, ["ingest", str(base), *opts]).exit_code == 0
        res = r.invoke(app, ["ingest", str(upd), *opts, *extra])
        assert res.exit_code == 0, res.output
        s = _json_out(res.stdout)
        commits[mode], live[mode] = s["commit"], s["live_records"]
    inc, full = commits["incremental"], commits["full"]
    assert inc["mode"] != "full" and inc["shards_rewritten"] == 0 and inc["shards_kept"] == 2
    assert inc["shards_new"] >= 1
    assert full["mode"] == "full" and full["shards_kept"] == 0 and full["shards_rewritten"] == 2
    assert live["incremental"] == live["full"] == 60


def test_cli_ingest_counts_deletions_applied_apart_from_requested(tmp_path: Path) -> None:
    """Issue 28: a deletion file that sorts before the file holding the record, given in the same
    call, reported `deleted: 1` while the record stayed. Deletions apply in file-name order (a
    later file brings a key back); `deleted` counts those that removed a record."""
    rec = XML / "pubmed-29768149.xml"
    head = rec.read_text("utf-8").split("<PubmedArticleSet>")[0]
    dele = (head + '<PubmedArticleSet>\n<DeleteCitation><PMID Version="1">29768149</PMID>'
            '</DeleteCitation>\n</PubmedArticleSet>\n')
    (tmp_path / "a_delete.xml").write_text(dele, "utf-8")
    (tmp_path / "b_records.xml").write_text(rec.read_text("utf-8"), "utf-8")
    (tmp_path / "c_delete.xml").write_text(dele.replace("\n<DeleteCitation>", "\n<DeleteCitation>"
                                                        "<PMID>11111111</PMID>"), "utf-8")
    out = tmp_path / "c"
    r = CliRunner()
    res = r.invoke(_app(), ["ingest", str(tmp_path / "b_records.xml"),
                            str(tmp_path / "a_delete.xml"), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    s = _json_out(res.stdout)
    assert (s["live_records"], s["deleted"], s["deletions_requested"]) == (1, 0, 1)
    # a deletion that sorts after the record removes it; one of a PMID never held does nothing
    res = r.invoke(_app(), ["ingest", str(tmp_path / "c_delete.xml"), "--out", str(out),
                            "--no-progress"])
    s = _json_out(res.stdout)
    assert (s["live_records"], s["deleted"], s["deletions_requested"]) == (0, 1, 2)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert {f["name"]: (f["deleted"], f["deletions_requested"]) for f in files} == {
        "a_delete.xml": (0, 1), "b_records.xml": (0, 0), "c_delete.xml": (1, 2)}


def test_cli_show_has_no_xml_indentation_in_the_abstract(tmp_path: Path) -> None:
    """Issue 28: `kailin corpus show` kept the XML file's newline + tab indentation inside an
    abstract section (pubmed-29768149.xml: "fast-acting β\\n\\t\\t\\t\\t\\t\\t2-agonist")."""
    out = tmp_path / "c"
    r = CliRunner()
    res = r.invoke(_app(), ["ingest", str(XML / "pubmed-29768149.xml"), "--out", str(out),
                            "--no-progress"])
    assert res.exit_code == 0, res.output
    ab = _json_out(r.invoke(_app(), ["corpus", "show", str(out), "29768149"]).stdout)["abstract"]
    assert "fast-acting \u03b2 2-agonist may be an alternative" in ab and "\t" not in ab
    assert [ln.split(":")[0] for ln in ab.split("\n")] == [
        "BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"]
    # a corpus written before the parser took the layout out: tidied when shown
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"pmid": 1, "title": "T", "abstract": "BACKGROUND: a \u03b2\n\t\t\t"
                               "2-agonist.\nMETHODS: b."}) + "\n")
    res = r.invoke(_app(), ["ingest", str(old), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 0, res.output
    shown = _json_out(r.invoke(_app(), ["corpus", "show", str(tmp_path / "o"), "1"]).stdout)
    assert shown["abstract"] == "BACKGROUND: a \u03b2 2-agonist.\nMETHODS: b."
