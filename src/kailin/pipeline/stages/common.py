"""What several steps share: where the corpus is, which model a generator writes with, the
question and score stages as the steps build them, and the setting paths each of those reads
(a step that calls one declares its ``*_READS``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from kailin.engine.run import RunContext
from kailin.engine.view import dump
from kailin.io import duckdb_table

if TYPE_CHECKING:
    from kailin.pipeline.config import RunConfig

log = logging.getLogger("kailin.run")


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def drop_other_dirs(parent: Path, keep: set[str]) -> None:
    """Remove sub-folders of ``parent`` that the current config no longer writes."""
    import shutil

    if parent.is_dir():
        for d in parent.iterdir():
            if d.is_dir() and d.name not in keep:
                log.info("%s: not written by this config any more; removed", d)
                shutil.rmtree(d)


#: what :func:`corpus_dir` reads
CORPUS_DIR_READS = ("corpus.corpus_dir", "corpus.select_mesh", "corpus.select_years")


def corpus_dir(ctx: RunContext) -> Path:
    c = ctx.cfg.corpus
    if c.corpus_dir:
        return ctx.resolve(c.corpus_dir)
    if c.select_mesh or c.select_years:
        return ctx.path("corpus", "selected")
    return ctx.path("corpus", "full")


def local_or_hub(ctx: RunContext, model: str | None) -> str | None:
    """A model given as a path relative to the config file, resolved; a hub id as it is."""
    if model and (model.startswith((".", "/", "~")) or (ctx.base_dir / model).exists()):
        return str(ctx.resolve(str(Path(model).expanduser())))
    return model



def gen(cfg: Any, name: str) -> Any:
    """The generator called ``name``."""
    return next(x for x in cfg.generators if x.name == name)


def dpo_generator(cfg: Any) -> str:
    """The generator that DPO aligns (``dpo.generator``, else the first)."""
    return cfg.dpo.generator or cfg.generators[0].name


#: what :func:`dpo_generator` reads
DPO_GENERATOR_READS = ("dpo.generator", "generators")


def pairs_dpo(cfg: RunConfig) -> bool:
    """Whether the dpo stage (and generator_eval, which compares its model) runs: not when the
    steering experiment trains its own round 1 on the SFT generator's samples
    (``steering.first_round: on_policy``), where that model would be no arm and nothing would
    read it."""
    st = cfg.steering
    return cfg.dpo.enabled and not (st.enabled and st.first_round == "on_policy")



def generator_model(ctx: RunContext, gen_name: str) -> str:
    """The model a generator writes questions with: its SFT output when SFT is on."""
    g = next(g for g in ctx.cfg.generators if g.name == gen_name)
    if g.sft.enabled:
        return str(ctx.path("models", f"{gen_name}-sft", "model"))
    return g.model



#: what the question stages read of the work set
WORK_COLUMNS = ["pmid", "title", "abstract"]

#: what the questions summary reads
QUESTION_STAT_COLUMNS = ("generator", "reject_reason", "prompt_tokens", "completion_tokens")


#: what :func:`question_stage` and :func:`question_key` read (with the generator's settings)
QUESTION_READS = ("generation", "generators")


def question_stage(ctx: RunContext, gen_name: str, model: str, label: str | None = None,
                    temperature: float | None = None, seed: int | None = None,
                    max_new_tokens: int | None = None):
    """The question stage of one generator (each generator runs separately, so that its model
    has its own actor pool on Ray and its own decoding settings). ``label`` names the rows'
    ``generator`` (default: the generator's name); ``temperature``/``seed``/``max_new_tokens``
    override its decoding (the steering rounds sample from a policy)."""
    from kailin.generate.questions import QuestionGenerationStage

    gcfg = ctx.cfg.generation
    g = next(g for g in ctx.cfg.generators if g.name == gen_name)
    if temperature is None:
        temperature = g.temperature  # None: generation.temperature
    if seed is None:
        seed = g.seed
    return QuestionGenerationStage.from_config(
        [f"{label or gen_name}={model}"], gcfg, temperature=temperature, seed=seed,
        max_new_tokens=max_new_tokens, cache_path=ctx.path("cache", "llm.sqlite"))


def question_key(ctx: RunContext, gen_name: str, model_stage: str | None = None) -> str:
    """One generator's questions depend on the generation settings, that generator's settings
    and its model (the SFT stage's output, or ``model_stage``'s)."""
    g = next(g for g in ctx.cfg.generators if g.name == gen_name)
    return ctx.sub_key({"generation": dump(ctx.cfg.generation), "generator": dump(g)},
                       [model_stage or f"sft:{gen_name}"])



#: the index settings a question's contexts depend on (``index.shards`` changes how the index
#: is built, never its hits)
INDEX_READS = ("index.kind", "index.model", "index.k", "index.leave_source_out")
#: what :func:`scorer` and :func:`score_key` read
SCORE_READS = ("mesh", *INDEX_READS, *CORPUS_DIR_READS)


def scorer(ctx: RunContext):
    from kailin.align.score import ScoreStage
    from kailin.mesh.score import DEFAULT_SCORE_K, PAPER_SCORE_K

    m, ix = ctx.cfg.mesh, ctx.cfg.index
    # the score looks at no fewer contexts than the dataset keeps (index.k)
    k = m.k if m.k is not None else max(ix.k, PAPER_SCORE_K if m.faithful else DEFAULT_SCORE_K)
    return ScoreStage.from_config(ctx.path("index"), m.model_copy(update={"k": k}),
                                  corpus_dir=corpus_dir(ctx), mesh_dir=ctx.resolve(m.dir),
                                  exclude_source=ix.leave_source_out)


def score_settings(cfg: RunConfig) -> dict:
    return {"mesh": dump(cfg.mesh), "index": dump(cfg.index)}


def score_key(ctx: RunContext) -> str:
    """Scores depend on the MeSH and index settings, the index and the corpus (the questions
    are the rows, keyed shard by shard)."""
    return ctx.sub_key(score_settings(ctx.cfg), ["index", "corpus"])


def mesh_files(cfg: RunConfig, base: Path) -> list[Path]:
    d = cfg.mesh.dir
    return [] if d is None else [Path(d) if Path(d).is_absolute() else base / d]



def best_questions(scores: pa.Table | Path) -> pa.Table:
    """Per PMID, the best-scoring non-empty question (the one a preference pair would choose).
    Given a folder, DuckDB reads its Parquet parts itself: the driver holds the best rows only,
    never every scored question."""
    from kailin.io import connect_duckdb, register_parquet

    con = connect_duckdb()
    try:
        if isinstance(scores, pa.Table):
            con.register("s", scores)
        else:
            register_parquet(con, "s", scores)
        return duckdb_table(con.sql(
            "select * exclude (rk) from (select *, row_number() over (partition by pmid order "
            "by score desc nulls last, generator) as rk from s where question is not null and "
            "trim(question) <> '' and score is not null and not isnan(score)) where rk = 1 "
            "order by pmid"))
    finally:
        con.close()


def export_scores(ctx: RunContext) -> Path:
    """The scored questions the dataset is made from (a folder of Parquet parts)."""
    if ctx.cfg.export.questions_from == "policy":
        return ctx.path("policy", "scores")
    return ctx.path("scores")



def policy_models(ctx: RunContext) -> list[str]:
    """The DPO policy after each round: round 1 is the dpo stage's model, or, with
    ``steering.first_round: on_policy``, the steering stage's own."""
    gen = dpo_generator(ctx.cfg)
    st = ctx.cfg.steering
    if st.enabled and st.first_round == "on_policy":
        return [str(ctx.path("steering", f"round{r}", "dpo", "model"))
                for r in range(1, st.rounds + 1)]
    out = [str(ctx.path("models", f"{gen}-dpo", "model"))]
    if st.enabled:
        out += [str(ctx.path("steering", f"round{r}", "dpo", "model"))
                for r in range(2, st.rounds + 1)]
    return out


def policy_model(ctx: RunContext) -> tuple[str, int]:
    """The aligned generator that writes the export: (model dir, round)."""
    models = policy_models(ctx)
    r = ctx.cfg.export.policy_round or len(models)
    return models[min(r, len(models)) - 1], min(r, len(models))


def policy_budget(cfg: RunConfig) -> int | None:
    """The token budget of the policy's questions: steering.max_new_tokens when the steering
    experiment set one (the budget its arms were compared at), else generation's."""
    return cfg.steering.max_new_tokens if cfg.steering.enabled else None



def policy_reads(cfg: Any) -> tuple[str, ...]:
    """What :func:`policy_models`, :func:`policy_model` and :func:`policy_budget` read of
    ``cfg``: the steering settings only while the steering experiment runs."""
    steering = (("steering.first_round", "steering.rounds", "steering.max_new_tokens")
                if cfg.steering.enabled else ())
    return ("steering.enabled", *steering, "export.policy_round", *DPO_GENERATOR_READS)
