"""The ``export`` step: CPT text, SFT records, triples and the dataset card (``export/``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet
from kailin.pipeline.stages.common import (
    CORPUS_DIR_READS,
    INDEX_READS,
    best_questions,
    corpus_dir,
    export_scores,
    generator_model,
    mesh_files,
)

#: the settings an export is made from: its key holds them and its card records them (the
#: others, training, evaluation, executor, workers, do not go into the card, or it would go
#: stale)
READS = ("corpus.demo", "corpus.inputs", "corpus.exclude_pmids", "corpus.limit",
         "corpus.heldout", *CORPUS_DIR_READS, "mesh", *INDEX_READS, "generators", "generation",
         "answers", "export", "retriever")


def export_provenance(ctx: RunContext) -> dict:
    """The card's ``config``: the settings the export was made from, and where its questions
    come from."""
    out = {k: v for k, v in ctx.cfg.model_dump().items() if k != "retriever"}
    if ctx.cfg.retriever.enabled:  # the contexts' encoder (a disabled one is in no key)
        out["retriever"] = ctx.cfg.retriever.model_dump(mode="json")
    if ctx.cfg.export.questions_from == "policy":
        p = ctx.path("policy", "policy.json")
        out["questions"] = {"from": "policy", **(json.loads(p.read_text()) if p.exists() else {})}
    else:
        out["questions"] = {"from": "generators", "models": {
            g.name: generator_model(ctx, g.name) for g in ctx.cfg.generators}, "round": 0}
    return out


def write_export(ctx: RunContext, records: pa.Table, out: Path, template: str | None = None,
                  questions: dict | None = None) -> dict:
    """Export ``records`` to ``out`` with the config's export settings (``template`` and the
    card's ``questions`` provenance overridable, for the downstream controls)."""
    from kailin.dataset.export import export_dataset
    from kailin.mesh import load_mesh

    e = ctx.cfg.export
    update: dict[str, Any] = {
        "require_grounded": e.require_grounded or ctx.cfg.answers.filter_ungrounded,
        "n_contexts": e.n_contexts or ctx.cfg.index.k}
    if template:
        update["template"] = template
    config = e.model_copy(update=update)
    prov = export_provenance(ctx)
    if questions is not None:
        prov["questions"] = questions
    return export_dataset(records, out, corpus_dir=corpus_dir(ctx), config=config,
                          mesh=load_mesh(ctx.resolve(ctx.cfg.mesh.dir)),
                          provenance={"config": prov, "key": ctx.key,
                                      "run_dir": str(ctx.run_dir)})


def run(ctx: RunContext) -> dict:
    if ctx.cfg.answers.enabled:
        records = read_parquet(ctx.path("answers"))
    else:
        records = best_questions(export_scores(ctx))
    res = write_export(ctx, records, ctx.path("export"))
    dec = res.get("decontamination", {})
    return {"records": res.get("records"), "source_pmids": res.get("distinct_source_pmids"),
            "excluded_pubmedqa_test_rows": dec.get("rows_excluded_source_pmid", 0)
            + dec.get("rows_excluded_context_pmid", 0)}



def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("export", run, reads=READS,
                      inputs=["answers", "score", "policy_questions", "corpus"],
                      outputs=["export"], files=mesh_files, code="1")]
