"""The ``workset`` step: the abstracts to distil (``corpus.limit``) and those held out
(``corpus.heldout``). Writes ``corpus/work.parquet`` and ``corpus/heldout.parquet``."""

from __future__ import annotations

from typing import Any

from kailin.engine.run import RunContext, StageSpec
from kailin.pipeline.stages.common import CORPUS_DIR_READS, corpus_dir

#: the corpus records a run distils: those with an abstract and MeSH descriptors
WORKSET_WHERE = "coalesce(length(abstract), 0) > 0 and coalesce(len(mesh_uis), 0) > 0"


def run(ctx: RunContext) -> dict:
    """The working set: abstracts with MeSH, sorted by PMID; the first ``corpus.limit`` are
    distilled, the next ``corpus.heldout`` are held out for the generator evaluation. The
    shards are streamed in PMID order (sorted by DuckDB on disk only where they overlap:
    :func:`kailin.corpus.query.pmid_ordered`) and the rows written batch by batch, so the
    driver holds a few batches, whatever the corpus size (``corpus.limit`` unset: the whole
    corpus)."""
    from kailin.corpus.query import connect, pmid_ordered
    from kailin.corpus.schema import CORPUS_SCHEMA
    from kailin.io import write_batches_atomic

    c = ctx.cfg.corpus
    src = corpus_dir(ctx)
    con = connect(src)

    def writer(name: str) -> Any:
        return lambda batches: write_batches_atomic(batches, CORPUS_SCHEMA,
                                                    ctx.path("corpus", name))

    n_work = pmid_ordered(con, src, WORKSET_WHERE, writer("work.parquet"), limit=c.limit)
    if c.limit and c.heldout:
        n_held = pmid_ordered(con, src, WORKSET_WHERE, writer("heldout.parquet"), limit=c.heldout,
                              offset=c.limit)
    else:
        n_held = writer("heldout.parquet")(iter(()))
    con.close()
    return {"distil": n_work, "heldout": n_held}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("workset", run, reads=("corpus.limit", "corpus.heldout", *CORPUS_DIR_READS),
                      inputs=["corpus"],
                      outputs=["corpus/work.parquet", "corpus/heldout.parquet"], code="1")]
