"""Progress on every long step, and -q / --no-progress obeyed by every command.

The commands run as a user runs them (CliRunner on the real ``kailin`` app, real PubMed XML);
the bm25s check runs in a fresh process, where bm25s's own import sets its logger to DEBUG.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kailin import progress
from kailin.cli.main import app
from kailin.engine.executors.local import LocalExecutor
from kailin.engine.stage import Stage

ROOT = Path(__file__).resolve().parents[1]
XML = ROOT / "data/samples/pubmed_xml_samples/pubmed20n1016_excerpt.xml.gz"
# what a tqdm bar writes: "NAME:  40%|####      | 4/10 [00:01<00:02, 2.1rec/s]"
BAR_MARKS = ("%|", "it/s]", "rec/s]", "doc/s]", "?rec/s", "?doc/s")


def _has_bar(text: str) -> bool:
    return any(m in text for m in BAR_MARKS)


@pytest.fixture(autouse=True)
def _restore_switch():
    progress.set_enabled(True)  # an earlier `kailin -q` in this process leaves it off
    yield
    progress.set_enabled(True)


def _run(args: list[str]) -> object:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + (res.stderr if res.stderr_bytes is not None else "")
    return res


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    res = CliRunner().invoke(app, ["ingest", str(XML), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("flag", ["-q", "--no-progress"])
def test_ingest_obeys_quiet_and_no_progress(tmp_path: Path, flag: str) -> None:
    shown = _run(["ingest", str(XML), "--out", str(tmp_path / "a")])
    assert _has_bar(shown.stderr), shown.stderr  # the bar exists: the check below can fail
    hidden = _run([flag, "ingest", str(XML), "--out", str(tmp_path / "b")])
    assert not _has_bar(hidden.stderr), hidden.stderr
    assert '"live_records"' in hidden.stdout  # the summary still prints


@pytest.mark.parametrize("flag", ["-q", "--no-progress"])
def test_index_build_obeys_quiet_and_no_progress(corpus: Path, tmp_path: Path,
                                                  flag: str) -> None:
    shown = _run(["index", "build", str(corpus), "--out", str(tmp_path / "a")])
    assert _has_bar(shown.stderr), shown.stderr
    hidden = _run([flag, "index", "build", str(corpus), "--out", str(tmp_path / "b")])
    assert not _has_bar(hidden.stderr), hidden.stderr
    assert "bm25 index of" in hidden.stdout


def test_no_bm25s_debug_line_at_default_verbosity(corpus: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "kailin.cli.main", "--no-progress", "index", "build",
           str(corpus), "--out"]
    res = subprocess.run([*cmd, str(tmp_path / "a")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "DEBUG" not in res.stderr and "bm25s" not in res.stderr, res.stderr
    verbose = subprocess.run([sys.executable, "-m", "kailin.cli.main", "-v", *cmd[3:],
                              str(tmp_path / "b")], capture_output=True, text=True, env=env,
                             timeout=300)
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG bm25s" in verbose.stderr  # -v still shows it


class _Halves(Stage):
    """Reports its rows done in two halves, as a long stage (teacher batches) does."""

    name = "halves"

    def process(self, batch: pa.Table) -> pa.Table:
        half = batch.num_rows // 2
        self.advance(half)
        self.advance(batch.num_rows - half)
        return batch


class _Bar:
    made: ClassVar[list[_Bar]] = []

    def __init__(self, total=None, desc="", unit="it", enabled_=True, **kw) -> None:
        self.total, self.unit, self.n, self.updates = total, unit, 0, []
        _Bar.made.append(self)

    def update(self, n: int) -> None:
        self.n += n
        self.updates.append(n)

    def close(self) -> None:
        pass


def test_local_executor_bar_counts_records(tmp_path: Path, monkeypatch, capsys) -> None:
    table = pa.table({"pmid": list(range(10))})
    pq.write_table(table, tmp_path / "in.parquet")
    # the real bar: a total of records, not shards
    LocalExecutor(rows_per_shard=4, progress=True).run(_Halves(), tmp_path / "in.parquet",
                                                       tmp_path / "out")
    err = capsys.readouterr().err
    assert "0/10" in err and "rec" in err and "shard" not in err, err
    # and it moves within a shard as the stage reports rows, then skips done shards at once
    monkeypatch.setattr(progress, "bar", _Bar)
    _Bar.made.clear()
    LocalExecutor(rows_per_shard=4, progress=True).run(_Halves(), table, tmp_path / "out2")
    b = _Bar.made[-1]
    assert (b.total, b.unit, b.n) == (10, "rec", 10)
    assert b.updates == [2, 2, 0, 2, 2, 0, 1, 1, 0]
    LocalExecutor(rows_per_shard=4, progress=True).run(_Halves(), table, tmp_path / "out2")
    assert _Bar.made[-1].updates == [4, 4, 2]


def test_quiet_switch_hides_a_bar_its_caller_wants(capsys) -> None:
    progress.set_enabled(False)
    b = progress.bar(total=5, desc="x", enabled_=True)
    b.update(5)
    b.close()
    assert not _has_bar(capsys.readouterr().err)
