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

