"""The ``perplexity`` step: held-out NLL of every downstream model (per model, arm and seed, the
base model included) on texts no arm trained on: the run's held-out abstracts and the PubMedQA
test items' contexts (``reports/perplexity.json``, per-text NLLs in ``reports/perplexity/``).

Before scoring, every arm's training data (its CPT texts, and the questions' source rows with
their context PMIDs) is checked for the evaluation texts (:func:`check_contamination`); a text
found in any arm's data is dropped for all arms, so the arms stay paired, and counted."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kailin.engine.run import RunContext, StageSpec
from kailin.io import read_parquet, write_json_atomic, write_parquet_atomic
from kailin.pipeline.stages.common import best_questions, export_scores
from kailin.pipeline.stages.downstream import arm_runs

READS = ("perplexity", "downstream", "export.questions_from", "corpus.heldout")


def training_tables(ctx: RunContext) -> dict[str, Any]:
    """Every trained arm's CPT data, plus the rows the export and pre_dpo arms were written
    from (question, contexts, context PMIDs): what the contamination check reads."""
    import pyarrow.compute as pc

    tables: dict[str, Any] = {}
    runs = arm_runs(ctx.cfg, ctx.run_dir)
    for r in runs:
        if r.data is not None:
            tables.setdefault(f"{r.tag}.{r.arm}", r.data / "cpt")
    keep = pa.array(sorted(set(read_parquet(ctx.path("export", "cpt"), columns=["pmid"])[
        "pmid"].to_pylist())), pa.int64())
    sources = {"export.sources": export_scores(ctx)}
    if any(r.arm == "pre_dpo" for r in runs):
        sources["pre_dpo.sources"] = ctx.path("scores")
    for name, scores in sources.items():
        best = best_questions(scores)
        best = best.filter(pc.is_in(best["pmid"].cast(pa.int64()), value_set=keep))
        # the question as text (the contexts' texts are in the arms' CPT texts), and the
        # context PMIDs: a held-out abstract retrieved as a context counts by PMID
        tables[name] = pa.table({
            "pmid": best["pmid"].cast(pa.int64()),
            "context_pmids": (best["context_pmids"] if "context_pmids" in best.column_names
                              else pa.nulls(best.num_rows, pa.list_(pa.int64()))),
            "text": best["question"]})
    return tables


def eval_texts(ctx: RunContext) -> pa.Table:
    """The held-out evaluation texts (``id``, ``pmid``, ``source``, ``text``)."""
    from kailin.evaluate.contamination import heldout_eval_texts

    p = ctx.cfg.perplexity
    held = ctx.path("corpus", "heldout.parquet")
    heldout = None
    if ctx.cfg.corpus.heldout and held.exists():
        heldout = read_parquet(held)
        if p.heldout_limit:
            heldout = heldout.slice(0, p.heldout_limit)
    return heldout_eval_texts(heldout, pubmedqa=p.pubmedqa, pubmedqa_limit=p.pubmedqa_limit)


def run(ctx: RunContext) -> dict:
    from kailin.evaluate.contamination import check_contamination
    from kailin.evaluate.perplexity import evaluate_perplexity

    p = ctx.cfg.perplexity
    texts = eval_texts(ctx)
    cont = check_contamination(texts, training_tables(ctx), span_words=p.span_words)
    bad = set(cont["items"])
    clean = texts.filter(pa.array([i not in bad for i in texts["id"].to_pylist()]))
    out_dir = ctx.path("reports", "perplexity")
    write_parquet_atomic(clean, out_dir / "texts.parquet")
    write_json_atomic(out_dir / "contamination.json", cont)
    sources = texts["source"].to_pylist()
    counts = {s: {"texts": sources.count(s),
                  "contaminated": sum(1 for i, src in zip(texts["id"].to_pylist(), sources,
                                                          strict=True) if src == s and i in bad)}
              for s in sorted(set(sources))}
    report: dict[str, Any] = {
        "texts": {"n": texts.num_rows, "scored": clean.num_rows, "dropped": len(bad),
                  "by_source": counts, "file": str(out_dir / "texts.parquet")},
        "contamination": {"clean": cont["clean"], "contaminated": cont["contaminated"],
                          "span_words": cont["span_words"],
                          "arms": {a: {k: v for k, v in x.items() if k != "items"}
                                   for a, x in cont["arms"].items()},
                          "file": str(out_dir / "contamination.json")},
        "runs": {}}
    for r in arm_runs(ctx.cfg, ctx.run_dir):
        res = evaluate_perplexity(r.path, out_dir / "texts.parquet", max_length=p.max_length,
                                  stride=p.stride, batch_size=p.batch_size, n_boot=p.n_boot,
                                  json_out=out_dir / f"{r.name}.json", progress=ctx.progress)
        report["runs"][r.name] = {"model": r.model, "tag": r.tag, "arm": r.arm,
                                  "seed": r.seed, "path": r.path,
                                  **{k: res[k] for k in ("n", "tokens", "mean_nll", "ci_low",
                                                         "ci_high", "perplexity",
                                                         "per_text_mean_nll", "per_text_file",
                                                         "seconds")}}
    write_json_atomic(ctx.path("reports", "perplexity.json"), report)
    return {"texts": clean.num_rows, "contaminated": len(bad),
            **{f"{n}.mean_nll": round(v["mean_nll"], 4) for n, v in report["runs"].items()}}


def steps(cfg: Any) -> list[StageSpec]:
    return [StageSpec("perplexity", run, reads=READS,
                      inputs=["downstream", "workset", "export", "score", "policy_questions"],
                      enabled=lambda c: c.downstream.enabled and c.perplexity.enabled,
                      outputs=["reports/perplexity", "reports/perplexity.json"], code="1")]
