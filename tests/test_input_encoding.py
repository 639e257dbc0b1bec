"""Text kailin reads that is not UTF-8 (Latin-1 bytes) is a clear `error:` naming the file and
where, exit code 2, never a traceback or silently dropped records (issue 28)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XML = ROOT / "data" / "samples" / "pubmed_xml_samples"


def kailin(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it (``kailin ...`` is ``python -m kailin.cli.main``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "kailin.cli.main", "--quiet", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _sample() -> tuple[str, list[str]]:
    """The XML head and the first 26 citations of a real PubMed sample file (UTF-8)."""
    text = gzip.decompress((XML / "pubmedsample18n0001.xml.gz").read_bytes()).decode("utf-8")
    parts = re.split(r"(?=\n\s*<PubmedArticle>)", text)
    assert parts[0].startswith('<?xml version="1.0" encoding="utf-8"?>')
    return parts[0], parts[1:27]


TAIL = "\n</PubmedArticleSet>\n"


def latin1_pubmed(tmp: Path) -> tuple[Path, int, int]:
    """The first 26 citations of a real PubMed sample, declared UTF-8, with citations 11 to 26
    saved as Latin-1. Returns the file, how many citations precede the first Latin-1 byte and
    that byte's offset."""
    head, arts = _sample()
    good = (head + "".join(arts[:10])).encode("utf-8")
    bad = ("".join(arts[10:]) + TAIL).encode("latin-1", errors="xmlcharrefreplace")
    # the first non-ASCII character from citation 11 on (citation 13 holds an 'ä')
    first = next(i for i, a in enumerate(arts[10:], 10) if any(ord(c) > 127 for c in a))
    offset = len(good) + len("".join(arts[10:first]).encode("latin-1")) + next(
        j for j, c in enumerate(arts[first]) if ord(c) > 127)
    assert bad[offset - len(good)] > 127
    path = tmp / "pubmed_latin1.xml"
    path.write_bytes(good + bad)
    return path, first, offset


def test_latin1_pubmed_xml_is_an_error_or_salvaged_up_to_the_bad_byte(tmp_path: Path) -> None:
    src, n_before, offset = latin1_pubmed(tmp_path)
    out = tmp_path / "corpus"
    res = kailin("ingest", str(src), "--out", str(out), "--no-progress")
    assert res.returncode == 2, res.stdout + res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(src) in err[0] and f"byte {offset}" in err[0] and "UTF-8" in err[0]
    assert "--salvage" in err[0]
    assert not list((out / "data").glob("*.parquet")) if (out / "data").exists() else True
    assert not (out / "manifest.json").exists() or json.loads(
        (out / "manifest.json").read_text())["records"] == 0

    res = kailin("ingest", str(src), "--out", str(out), "--no-progress", "--salvage")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout[res.stdout.index("{"):])
    assert s["salvaged"] == n_before == 12 and s["live_records"] == 12 and s["malformed"] == 0
    assert s["salvaged_files"] == [{"file": src.name, "records_kept": 12,
                                    "lost_from_byte": offset, "rest_of_file": "lost"}]
    res = kailin("corpus", "sql", str(out), "select count(*) as n from corpus", "-f", "csv")
    assert res.stdout.split() == ["n", "12"]


def test_a_latin1_file_that_says_so_is_read(tmp_path: Path) -> None:
    head, arts = _sample()
    head = head.replace('encoding="utf-8"', 'encoding="ISO-8859-1"')
    p = tmp_path / "declared_latin1.xml"
    p.write_bytes((head + "".join(arts) + TAIL).encode("latin-1", errors="xmlcharrefreplace"))
    res = kailin("ingest", str(p), "--out", str(tmp_path / "c"), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout[res.stdout.index("{"):])["live_records"] == 26


# -- every other text file a user hands kailin -----------------------------------------------
LATIN1_NOTE = "# Ausschlussliste f\xfcr die Studie\n".encode("latin-1")  # 'ü' as one byte


def _invoke(*args: str):
    from typer.testing import CliRunner

    from kailin.cli.main import app

    return CliRunner().invoke(app, list(args))


def _assert_encoding_error(res, path: Path, line: int) -> None:
    from kailin.errors import InputError

    assert isinstance(res.exception, InputError), (res.output, res.exception)
    msg = str(res.exception)
    assert str(path) in msg and f"line {line}" in msg and "save it as UTF-8" in msg, msg


def test_latin1_exclusion_list_is_a_clear_error(tmp_path: Path) -> None:
    ex = tmp_path / "exclude.txt"
    ex.write_bytes(b"12345\n" + LATIN1_NOTE + b"67890\n")
    res = kailin("ingest", str(XML / "pubmed-29768149.xml"), "--out", str(tmp_path / "c"),
                 "--no-progress", "--exclude-pmids", str(ex))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and f"{ex}: the PMID exclusion list is not UTF-8: " \
        "line 2, column 20 (byte 25) is 0xfc" in res.stderr and "save it as UTF-8" in res.stderr
    for cmd in (["dataset", "export", str(tmp_path / "scores"), str(tmp_path / "out"),
                 "--exclude-pmids", str(ex)],
                ["index", "finetune", str(tmp_path / "corpus"), "--out", str(tmp_path / "o"),
                 "--exclude-pmids", str(ex)]):
        _assert_encoding_error(_invoke(*cmd), ex, 2)


def test_latin1_templates_are_a_clear_error(tmp_path: Path) -> None:
    t = tmp_path / "template.txt"
    t.write_bytes("Question \xe0 propos de l'article :\n{abstract}\n".encode("latin-1"))
    res = _invoke("generate", "questions", str(tmp_path / "corpus"), "-g", "a=smollm2",
                  "--out", str(tmp_path / "q"), "--template", str(t))
    _assert_encoding_error(res, t, 1)
    res = _invoke("dataset", "export", str(tmp_path / "scores"), str(tmp_path / "out"),
                  "--template-file", str(t))
    _assert_encoding_error(res, t, 1)


def test_latin1_training_and_query_files_are_a_clear_error(tmp_path: Path) -> None:
    sft = tmp_path / "pqa.json"
    sft.write_bytes(b'{"1": {"QUESTION": "Is it safe?",\n "CONTEXTS": ["Caf\xe9 au lait."]}}')
    res = _invoke("train", "sft", str(sft), "--out", str(tmp_path / "sft"))
    if "pip install" in str(res.exception):  # training extras absent: nothing to check
        return
    _assert_encoding_error(res, sft, 2)
    q = tmp_path / "queries.tsv"
    q.write_bytes(b"Caf\xe9 and sleep?\t123\n")
    res = _invoke("index", "evaluate", str(tmp_path / "ix"), "--queries", str(q))
    _assert_encoding_error(res, q, 1)


def test_latin1_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    text = (ROOT / "configs" / "demo.yaml").read_text("utf-8")
    cfg.write_bytes(b"# Konfiguration f\xfcr den Testlauf\n" + text.encode("utf-8"))
    _assert_encoding_error(_invoke("run", str(cfg)), cfg, 1)
