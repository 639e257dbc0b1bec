"""Messages and help that name a command name one that exists (issue 28: an error pointed to
`kailin align score`, which does not exist; the command is `kailin score`)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from typer.testing import CliRunner

SRC = Path(__file__).resolve().parents[1] / "src" / "kailin"


def test_every_command_named_in_the_sources_exists() -> None:
    from kailin.cli.main import app

    root = typer.main.get_command(app)
    missing = []
    for p in SRC.rglob("*.py"):
        for m in re.finditer(r"`+kailin ([a-z][a-z0-9-]*)(?: ([a-z][a-z0-9-]*))?", p.read_text()):
            cmd = root.commands.get(m.group(1))  # type: ignore[attr-defined]
            sub = m.group(2)
            if cmd is None or (hasattr(cmd, "commands") and sub and sub not in cmd.commands):
                missing.append(f"{p.relative_to(SRC)}: {m.group(0)}")
    assert missing == []


def test_export_of_a_table_without_contexts_names_the_real_command(tmp_path: Path) -> None:
    from kailin.cli.main import app
    from kailin.errors import InputError

    q = tmp_path / "questions.parquet"
    pq.write_table(pa.table({"pmid": [21645374], "question": ["Is it safe?"]}), q)
    res = CliRunner().invoke(app, ["dataset", "export", str(q), str(tmp_path / "out")])
    assert isinstance(res.exception, InputError), res.output
    assert "`kailin score`" in str(res.exception) and "kailin align" not in str(res.exception)
