"""Read a run folder for the report: its manifest, report files and tables, the corpus the run
retrieved its contexts from, and MeSH descriptor names.

Every reader returns ``None`` for what is absent or unreadable, so that each section of the
report can say "not run in this config" instead of failing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.report import stage_is_off

#: report file -> the stage that writes it
REPORT_STAGES = {"signal_selfcheck.json": "signal", "generator.json": "generator_eval",
                 "steering.json": "steering", "pubmedqa.json": "pubmedqa"}


@dataclass
class RunFolder:
    """A run folder written by ``kailin run`` (any part of it may be missing)."""

    root: Path
    _names: dict[str, str] = field(default_factory=dict, repr=False)

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        return self.json("manifest.json")

    @property
    def config(self) -> dict[str, Any]:
        return (self.manifest or {}).get("config") or {}

    def json(self, rel: str) -> Any:
        try:
            return json.loads((self.root / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def table(self, rel: str, columns: list[str] | None = None) -> pa.Table | None:
        """A Parquet file or folder of the run; with ``columns``, only those of them it has."""
        from kailin.io import parquet_files

        path = self.root / rel
        try:
            files = parquet_files(path)
        except FileNotFoundError:
            return None
        if not files:
            return None
        import pyarrow.parquet as pq

        try:
            tables = []
            for f in files:
                names = pq.read_schema(f).names
                cols = None if columns is None else [c for c in columns if c in names]
                tables.append(pq.read_table(f, columns=cols))
            return pa.concat_tables(tables, promote_options="default")
        except (OSError, pa.ArrowException):  # an unreadable file: the section says so
            return None

    def stage_status(self, stage: str) -> str | None:
        """The stage's status in the manifest (``done``, ``disabled``, ...); None if unlisted."""
        st = ((self.manifest or {}).get("stages") or {}).get(stage)
        return (st or {}).get("status") if isinstance(st, dict) else None

    def stage_off(self, stage: str) -> bool:
        """The manifest says the stage is off, or it lists stages and not this one (a stage a
        config does not have, like ``steering`` without ``steering.enabled``)."""
        stages = (self.manifest or {}).get("stages")
        return stage_is_off(self.manifest, stage) or (bool(stages) and stage not in stages)

    def report(self, name: str) -> Any:
        """``reports/NAME``, or None when missing or written by a stage this run turned off (an
        earlier config's result, not this run's)."""
        stage = REPORT_STAGES.get(name)
        if stage is not None and stage_is_off(self.manifest, stage):
            return None
        return self.json(f"reports/{name}")

    # --- the corpus ---------------------------------------------------------------------------
    def _resolve(self, p: str) -> Path:
        q = Path(p)
        if q.is_absolute():
            return q
        base = (self.manifest or {}).get("base_dir")
        return Path(base) / q if base else self.root / q

    @cached_property
    def corpus_dir(self) -> Path | None:
        """The corpus the run indexed (its contexts come from it): ``corpus.corpus_dir`` of the
        manifest's config, else ``corpus/selected`` (a MeSH / year selection), else
        ``corpus/full``."""
        c = self.config.get("corpus") or {}
        cands = []
        if c.get("corpus_dir"):
            cands.append(self._resolve(c["corpus_dir"]))
        if c.get("select_mesh") or c.get("select_years") or not c:
            cands.append(self.root / "corpus" / "selected")
        cands.append(self.root / "corpus" / "full")
        for p in cands:
            if (p / "data").is_dir() and any((p / "data").glob("*.parquet")):
                return p
        return None

    def records(self, pmids: Iterable[int], columns: list[str]) -> dict[int, dict[str, Any]]:
        """Corpus records by PMID, read with DuckDB from the run's corpus (only the rows asked
        for), then from the work set and the held-out set for any it lacks."""
        want = sorted({int(p) for p in pmids})
        out: dict[int, dict[str, Any]] = {}
        if not want:
            return out
        import duckdb

        from kailin.io import connect_duckdb, duckdb_table, parquet_files

        sources: list[list[Path]] = []
        if self.corpus_dir is not None:
            sources.append(parquet_files(self.corpus_dir / "data"))
        for name in ("work.parquet", "heldout.parquet"):
            if (self.root / "corpus" / name).is_file():
                sources.append([self.root / "corpus" / name])
        con = connect_duckdb()
        con.register("want", pa.table({"pmid": pa.array(want, pa.int64())}))
        for files in sources:
            missing = [p for p in want if p not in out]
            if not missing or not files:
                break
            lst = ", ".join("'" + f.as_posix().replace("'", "''") + "'" for f in files)
            try:
                have = {r[0] for r in con.sql(f"describe select * from read_parquet([{lst}], "
                                             "union_by_name=true)").fetchall()}
                cols = [c for c in columns if c in have and c != "pmid"]
                sel = ", ".join(["pmid", *(f'"{c}"' for c in cols)])
                t = duckdb_table(con.sql(
                    f"select {sel} from read_parquet([{lst}], union_by_name=true) "
                    "where pmid in (select pmid from want)"))
            except duckdb.Error:
                continue
            for r in t.to_pylist():
                out.setdefault(int(r["pmid"]), r)
        return out

    # --- MeSH names ---------------------------------------------------------------------------
    @cached_property
    def mesh_dir(self) -> Path | None:
        from kailin.mesh import default_mesh_dir

        d = (self.config.get("mesh") or {}).get("dir")
        for p in ([self._resolve(d)] if d else []) + [default_mesh_dir()]:
            if (p / "descriptors.parquet").is_file():
                return p
        return None

    def mesh_names(self, uis: Iterable[str], records: Iterable[dict[str, Any]] = ()
                   ) -> dict[str, str]:
        """Descriptor UI -> name, from the run's MeSH build (the vocabulary, ``mesh.dir`` or the
        packaged one); a UI it lacks takes the name the corpus records give it (their ``mesh``
        headings), else stays a UI."""
        want = {u for u in uis if u and u not in self._names}
        if want and self.mesh_dir is not None:
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            t = pq.read_table(self.mesh_dir / "descriptors.parquet", columns=["ui", "name"])
            t = t.filter(pc.is_in(t["ui"], value_set=pa.array(sorted(want), pa.string())))
            self._names.update(zip(t["ui"].to_pylist(), t["name"].to_pylist(), strict=True))
        for r in records:
            for h in r.get("mesh") or []:
                if h and h.get("ui") and h.get("name"):
                    self._names.setdefault(h["ui"], h["name"])
        return {u: self._names.get(u, u) for u in uis}
