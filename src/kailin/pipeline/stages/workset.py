"""The ``workset`` step: the abstracts to distil (``corpus.limit``) and those held out
(``corpus.heldout``). Writes ``corpus/work.parquet`` and ``corpus/heldout.parquet``."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.pipeline.stages.common import CORPUS_DIR_READS, corpus_dir


def run(ctx: RunContext) -> dict:
    """The working set: abstracts with MeSH, sorted by PMID; the first ``corpus.limit`` are
    distilled, the next ``corpus.heldout`` are held out for the generator evaluation. DuckDB
    sorts and cuts on disk and the rows are written batch by batch, so the driver holds one
    batch at a time, whatever the corpus size (``corpus.limit`` unset: the whole corpus)."""
    from kailin.corpus.query import connect
    from kailin.corpus.schema import CORPUS_SCHEMA
    from kailin.io import write_batches_atomic

    c = ctx.cfg.corpus
    con = connect(corpus_dir(ctx))
    rows = ("select * from corpus where coalesce(length(abstract), 0) > 0 and "
            "coalesce(len(mesh_uis), 0) > 0 order by pmid")

    def write(sql: str | None, name: str) -> int:
        if sql is None:
            return write_batches_atomic(iter(()), CORPUS_SCHEMA, ctx.path("corpus", name))
        rel = con.sql(sql)
        reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch  # duckdb < 1.4
        batches = reader(8192)
        return write_batches_atomic(batches, CORPUS_SCHEMA, ctx.path("corpus", name))

    n_work = write(rows + (f" limit {int(c.limit)}" if c.limit else ""), "work.parquet")
    n_held = write(f"{rows} limit {int(c.heldout)} offset {int(c.limit)}"
                   if c.limit and c.heldout else None, "heldout.parquet")
    return {"distil": n_work, "heldout": n_held}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("workset", run, reads=("corpus.limit", "corpus.heldout", *CORPUS_DIR_READS),
                      inputs=["corpus"],
                      outputs=["corpus/work.parquet", "corpus/heldout.parquet"], code="1")]
