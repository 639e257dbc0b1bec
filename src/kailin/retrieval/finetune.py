"""Fine-tune the context retriever's encoder on the corpus itself (the authors' embedding step).

The authors' ``Embedding/`` step adapts the encoder to the corpus before retrieving contexts:

1. **Pairs.** ``title -> abstract`` for every record with both (``pairs="title"``), or a run's
   generated ``question -> source abstract`` (``pairs="question"``, ``questions=`` a questions
   Parquet file or folder with ``pmid`` and ``question`` columns). Held-out PMIDs
   (``exclude_pmids``, ``holdout`` fraction chosen by a hash of the PMID) are left out entirely:
   neither pairs nor negatives.
2. **Base index.** Every candidate abstract is encoded with the base encoder into an exact FAISS
   inner-product index (``mine_max_seq_length`` tokens per abstract), or an existing kailin index
   over the same corpus is used (``base_index=``, any kind, e.g. BM25).
3. **Consistency filter.** A pair is kept only when the base index ranks its own abstract in the
   query's top ``filter_top_n`` (pairs the base model cannot connect are usually noise: a title
   such as "Letter to the editor").
4. **Hard negatives.** For each kept pair, ``negatives`` abstracts are taken from the base
   index's ranks ``neg_start..neg_depth`` skipping *false negatives*: records that share at least
   ``false_negative_overlap`` of the source's major MeSH topics (all its MeSH topics when it has
   no major one), which are likely relevant rather than negative.
5. **Training.** sentence-transformers' trainer with ``MultipleNegativesRankingLoss`` (or the
   cached variant, GradCache, for large batches on small memory), the no-duplicates batch sampler,
   checkpoints every ``save_steps`` under ``OUT/checkpoints`` and resume from the last one.

``OUT`` is a normal sentence-transformers folder (``kailin index build --kind dense --model OUT``)
plus ``finetune.json`` (settings and counts) and ``pairs.parquet`` (the mined training set, reused
when the run is resumed with the same settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from kailin.config import StageConfig
from kailin.errors import InputError, require
from kailin.io import write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.parquet"
META_FILE = "finetune.json"
CHECKPOINTS = "checkpoints"


class FinetuneConfig(StageConfig):
    """Settings of :func:`finetune`: the options of ``kailin index finetune`` and the pipeline's
    ``retriever`` section (all recorded in ``OUT/finetune.json``)."""

    added_fields: ClassVar[tuple[str, ...]] = (
        "questions", "exclude_pmids", "base_index", "save_steps", "save_total_limit",
        "encode_batch_size")

    base: str | None = Field(None, description="encoder to fine-tune: a local path or hub id "
                             "(default: the packaged all-MiniLM-L6-v2)")
    pairs: Literal["title", "question"] = Field(
        "title", description="title: title -> abstract of every corpus record; question: "
        "generated questions -> their source abstracts (kailin run: the run's questions; the "
        "stage then runs after questions)")
    questions: str | None = Field(None, description="pairs: question: a questions Parquet "
                                  "file/folder (kailin run: default the run's questions)")
    holdout: float = Field(0.0, ge=0, lt=1, description="fraction of PMIDs (by hash) also left "
                           "out of training, e.g. to evaluate the retriever on them")
    exclude_pmids: list[int] = Field(default_factory=list, description="PMIDs never trained on "
                                     "(kailin run adds its held-out and PubMedQA test PMIDs)")
    max_records: int | None = Field(None, ge=1, description="a random sample of the corpus as "
                                    "the training pool (default: all of it)")
    min_title_words: int = Field(4, ge=1, description="pairs: title: shorter titles are skipped")
    base_index: str | None = Field(None, description="an existing dense kailin index of the "
                                   "corpus to mine with (default: encode the pool)")
    mine_max_seq_length: int = Field(128, ge=8, description="tokens per abstract when the base "
                                     "encoder ranks the pool (consistency filter, negatives)")
    filter_top_n: int = Field(10, ge=0, description="keep a pair when the base encoder ranks its "
                              "abstract in the top N (0: no filter)")
    negatives: int = Field(1, ge=0, description="hard negatives per pair (0: in-batch only)")
    neg_start: int = Field(3, ge=1, description="first base rank a hard negative comes from")
    neg_depth: int = Field(30, ge=1, description="last base rank searched for hard negatives")
    false_negative_overlap: float = Field(0.5, gt=0, le=1, description="a candidate sharing this "
                                          "share of the source's major MeSH topics is not a "
                                          "negative")
    loss: Literal["mnrl", "cached"] = Field("mnrl", description="MultipleNegativesRankingLoss, "
                                            "or its cached (GradCache) form for large batches")
    mini_batch_size: int = Field(32, ge=1, description="loss: cached: GradCache chunk size")
    batch_size: int = Field(32, ge=2, description="pairs per step (in-batch negatives)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs (unless max_steps)")
    max_steps: int | None = Field(None, ge=1, description="training steps (default: epochs)")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps warming up")
    max_seq_length: int = Field(128, ge=8, description="training tokens, and the saved model's "
                                "(so the index's) token limit")
    save_steps: int = Field(100, ge=1, description="checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    seed: int = Field(13, description="sampling and training seed")
    device: str | None = Field(None, description="training device (cpu, cuda, ...; default cpu)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="training precision (bfloat16 / float16: mixed precision, GPU)")
    encode_batch_size: int = Field(64, ge=1, description="texts per batch when encoding the "
                                   "pool")

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype == "float16"

    def identity(self) -> dict[str, Any]:
        """The record of these settings in ``finetune.json`` (in the shape of the former
        dataclass: ``bf16``/``fp16`` flags instead of ``dtype``)."""
        return {k: getattr(self, k) for k in _IDENTITY_FIELDS}

    def mining_key(self) -> str:
        """Digest of the settings the mined pairs depend on (reuse ``pairs.parquet`` if equal)."""
        keys = [
            "base",
            "pairs",
            "questions",
            "holdout",
            "exclude_pmids",
            "max_records",
            "min_title_words",
            "base_index",
            "mine_max_seq_length",
            "filter_top_n",
            "negatives",
            "neg_start",
            "neg_depth",
            "false_negative_overlap",
            "seed",
        ]
        d = self.identity()
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: the fields of :meth:`FinetuneConfig.identity`, in its order
_IDENTITY_FIELDS = (
    "base", "pairs", "questions", "holdout", "exclude_pmids", "max_records", "min_title_words",
    "base_index", "mine_max_seq_length", "filter_top_n", "negatives", "neg_start", "neg_depth",
    "false_negative_overlap", "loss", "mini_batch_size", "batch_size", "epochs", "max_steps",
    "learning_rate", "warmup_ratio", "max_seq_length", "save_steps", "save_total_limit", "seed",
    "device", "bf16", "fp16", "encode_batch_size")


def is_held_out(pmids: Iterable[int], fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic hash split: True for the PMIDs in the held-out ``fraction``."""
    pm = np.asarray(list(pmids), dtype=np.uint64)
    if fraction <= 0 or pm.size == 0:
        return np.zeros(pm.size, dtype=bool)
    x = pm * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(29)
    return (x % np.uint64(1_000_000)) < np.uint64(round(fraction * 1_000_000))


def topic_sets(mesh_uis: Sequence[Sequence[str] | None], mesh_major: Sequence[Any]) -> list[set]:
    """Each record's major MeSH topics (all its topics when none is flagged major)."""
    out = []
    for uis, major in zip(mesh_uis, mesh_major, strict=True):
        uis = list(uis or [])
        flags = list(major or [False] * len(uis))
        maj = {u for u, f in zip(uis, flags, strict=False) if f}
        out.append(maj or set(uis))
    return out


def is_false_negative(source: set, candidate: set, overlap: float) -> bool:
    """The candidate shares at least ``overlap`` of the source's topics (and one at least)."""
    if not source or not candidate:
        return False
    shared = len(source & candidate)
    return shared > 0 and shared >= overlap * len(source)


def consistency_filter(ranked: np.ndarray, positives: np.ndarray, top_n: int) -> np.ndarray:
    """Mask of the queries whose positive row is among the first ``top_n`` ranked rows."""
    if top_n <= 0:
        return np.ones(len(positives), dtype=bool)
    top = ranked[:, :top_n]
    return (top == positives[:, None]).any(axis=1)


def mine_negatives(
    ranked: np.ndarray,
    positives: np.ndarray,
    topics: list[set],
    n: int,
    start: int = 3,
    overlap: float = 0.5,
    texts: Sequence[str] | None = None,
) -> tuple[list[list[int]], int]:
    """Hard negatives for each query: up to ``n`` rows from ``ranked[i, start-1:]`` that are not
    the positive, not a false negative (shared major MeSH topics), and (with ``texts``) not the
    positive's text. Returns the rows per query and the number of false negatives skipped."""
    out: list[list[int]] = []
    skipped = 0
    for i, pos in enumerate(positives):
        chosen: list[int] = []
        src = topics[pos]
        for r in ranked[i, max(0, start - 1) :]:
            r = int(r)
            if r < 0 or r == pos:
                continue
            if texts is not None and texts[r] == texts[pos]:
                continue
            if is_false_negative(src, topics[r], overlap):
                skipped += 1
                continue
            chosen.append(r)
            if len(chosen) == n:
                break
        out.append(chosen)
    return out, skipped


# -- data --------------------------------------------------------------------------------------


def _read_corpus(corpus_dir: Path) -> pa.Table:
    from kailin.corpus.reader import open_corpus

    corpus = open_corpus(corpus_dir)
    cols = ["pmid", "title", "abstract", "mesh_uis"]
    table = corpus.read(cols + (["mesh_major"] if "mesh_major" in _columns(corpus) else []))
    if "mesh_major" not in table.schema.names:
        table = table.append_column(
            "mesh_major", pa.array([None] * table.num_rows, pa.list_(pa.bool_()))
        )
    return table


def _columns(corpus: Any) -> set[str]:
    files = corpus.files()
    return set(pq.ParquetFile(files[0]).schema_arrow.names) if files else set()


def _read_questions(path: Path) -> list[tuple[int, str]]:
    from kailin.io import read_parquet

    if not path.exists():
        raise InputError(f"{path}: questions not found")
    table = read_parquet(path)
    if "pmid" not in table.schema.names or "question" not in table.schema.names:
        raise InputError(f"{path}: needs pmid and question columns (a questions stage output)")
    rej = (
        table.column("reject_reason").to_pylist()
        if "reject_reason" in table.schema.names
        else [None] * table.num_rows
    )
    out = []
    for pmid, q, r in zip(
        table.column("pmid").to_pylist(), table.column("question").to_pylist(), rej, strict=True
    ):
        if q and not r and pmid is not None:
            out.append((int(pmid), str(q)))
    return out


@dataclass
class MinedPairs:
    table: pa.Table  # anchor, positive, negative_1..k, pmid
    stats: dict[str, Any]


def _search_base(
    cfg: FinetuneConfig,
    corpus_dir: Path,
    queries: list[str],
    pool_pmids: np.ndarray,
    pool_texts: list[str],
    depth: int,
    progress: bool,
) -> np.ndarray:
    """Ranked pool rows (queries x depth; -1 = none) from the base index."""
    if cfg.base_index:
        from kailin.retrieval import load_index

        index = load_index(cfg.base_index, corpus=corpus_dir, on_stale="error")
        try:
            row_of = {int(p): i for i, p in enumerate(pool_pmids)}
            ranked = np.full((len(queries), depth), -1, dtype=np.int64)
            step = 256
            for s in range(0, len(queries), step):
                hits = index.search(queries[s : s + step], k=depth + 50)
                for j, hs in enumerate(hits):
                    rows = [row_of[h.pmid] for h in hs if h.pmid in row_of][:depth]
                    ranked[s + j, : len(rows)] = rows
        finally:
            index.close()
        return ranked
    require("faiss", "retrieval")
    import faiss

    from kailin.retrieval.dense import Encoder

    enc = Encoder(
        cfg.base,
        device=cfg.device,
        batch_size=cfg.encode_batch_size,
        max_seq_length=cfg.mine_max_seq_length,
    )
    t0 = time.perf_counter()
    docs = enc.encode(pool_texts, progress=progress)
    log.info("base index: %d abstracts encoded in %.0fs", len(docs), time.perf_counter() - t0)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    _, ranked = index.search(enc.encode(queries, progress=progress), depth)
    return ranked.astype(np.int64)


def mine_pairs(corpus_dir: str | Path, cfg: FinetuneConfig, progress: bool = True) -> MinedPairs:
    """Pairs, consistency filter and hard negatives (steps 1-4 of the module docstring)."""
    corpus_dir = Path(corpus_dir)
    t0 = time.perf_counter()
    table = _read_corpus(corpus_dir)
    pmids = np.asarray(table.column("pmid").to_pylist(), dtype=np.int64)
    titles = [t or "" for t in table.column("title").to_pylist()]
    abstracts = [(a or "").strip() for a in table.column("abstract").to_pylist()]
    held = is_held_out(pmids, cfg.holdout, cfg.seed)
    if cfg.exclude_pmids:
        held |= np.isin(pmids, np.asarray(cfg.exclude_pmids, dtype=np.int64))
    keep = ~held & np.asarray([bool(a) for a in abstracts])
    pool_idx = np.flatnonzero(keep)
    if cfg.max_records and len(pool_idx) > cfg.max_records:
        rng = np.random.default_rng(cfg.seed)
        pool_idx = np.sort(rng.choice(pool_idx, cfg.max_records, replace=False))
    pool_pmids = pmids[pool_idx]
    pool_texts = [abstracts[i] for i in pool_idx]
    all_topics = topic_sets(
        table.column("mesh_uis").to_pylist(), table.column("mesh_major").to_pylist()
    )
    pool_topics = [all_topics[i] for i in pool_idx]
    row_of = {int(p): j for j, p in enumerate(pool_pmids)}

    queries: list[str] = []
    positives: list[int] = []
    if cfg.pairs == "title":
        for j, i in enumerate(pool_idx):
            t = titles[i].strip()
            if len(t.split()) >= cfg.min_title_words:
                queries.append(t)
                positives.append(j)
    elif cfg.pairs == "question":
        if not cfg.questions:
            raise InputError("--pairs question needs --questions (a run's questions output)")
        for pmid, q in _read_questions(Path(cfg.questions)):
            if pmid in row_of:
                queries.append(q)
                positives.append(row_of[pmid])
    else:
        raise InputError(f"unknown --pairs {cfg.pairs!r}: use title or question")
    if not queries:
        raise InputError(f"{corpus_dir}: no {cfg.pairs} -> abstract pairs to train on")
    pos = np.asarray(positives, dtype=np.int64)
    depth = max(cfg.filter_top_n, cfg.neg_depth if cfg.negatives else 0, 1)
    depth = min(depth, len(pool_texts))
    ranked = _search_base(cfg, corpus_dir, queries, pool_pmids, pool_texts, depth, progress)
    ok = consistency_filter(ranked, pos, cfg.filter_top_n)
    kept = np.flatnonzero(ok)
    negs, skipped = (
        mine_negatives(
            ranked[kept],
            pos[kept],
            pool_topics,
            cfg.negatives,
            cfg.neg_start,
            cfg.false_negative_overlap,
            pool_texts,
        )
        if cfg.negatives
        else ([[] for _ in kept], 0)
    )
    rows = [(k, n) for k, n in zip(kept, negs, strict=True) if len(n) == cfg.negatives]
    cols: dict[str, list] = {
        "pmid": [int(pool_pmids[pos[k]]) for k, _ in rows],
        "anchor": [queries[k] for k, _ in rows],
        "positive": [pool_texts[pos[k]] for k, _ in rows],
    }
    for m in range(cfg.negatives):
        cols[f"negative_{m + 1}"] = [pool_texts[n[m]] for _, n in rows]
    stats = {
        "records": len(pmids),
        "held_out": int(held.sum()),
        "pool": len(pool_texts),
        "candidate_pairs": len(queries),
        "consistent_pairs": int(ok.sum()),
        "consistency_rate": round(float(ok.mean()), 4),
        "false_negatives_skipped": int(skipped),
        "too_few_negatives": int(len(kept) - len(rows)),
        "pairs": len(rows),
        "mining_seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("mined pairs: %s", stats)
    return MinedPairs(pa.table(cols), stats)


# -- training ----------------------------------------------------------------------------------


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    cands = [p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(cands, key=lambda p: int(p.name.split("-")[-1])) if cands else None


def _no_final_checkpoint() -> Any:
    """A trainer callback that drops the checkpoint transformers writes after the last step
    whatever ``save_steps`` says. :func:`finetune` saves the finished model right after, so
    that checkpoint (the weights again plus the optimizer state, three times their size) only
    cost time: 18 s of a 115 s one-step run of the packaged MiniLM on the loaded 2-core machine
    (``benchmarks/bench_finetune.py throughput``). A run that ends on a multiple of
    ``save_steps`` keeps it; a later, longer run resumes from the last checkpoint."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            every = int(args.save_steps or 0)  # this run's (a resumed state keeps the old)
            if state.global_step >= state.max_steps and every and state.global_step % every:
                control.should_save = False
            return control

    return NoFinalCheckpoint()


def finetune(
    corpus_dir: str | Path,
    out_dir: str | Path,
    cfg: FinetuneConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Mine pairs from ``corpus_dir`` and fine-tune ``cfg.base`` into ``out_dir``.

    With ``resume``, a run interrupted after its mining step reuses ``OUT/pairs.parquet`` and
    continues from the last checkpoint under ``OUT/checkpoints``. Returns ``finetune.json``."""
    require("sentence_transformers", "retrieval")
    require("datasets", "train")
    cfg = cfg or FinetuneConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_FILE
    key = cfg.mining_key()
    prev = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    pairs_path = out / PAIRS_FILE
    if resume and pairs_path.exists() and prev.get("mining_key") == key:
        table = pq.read_table(pairs_path)
        stats = prev["mining"]
        log.info("reusing %d mined pairs from %s", table.num_rows, pairs_path)
    else:
        mined = mine_pairs(corpus_dir, cfg, progress=progress)
        table, stats = mined.table, mined.stats
        write_parquet_atomic(table, pairs_path)
        ckpts = out / CHECKPOINTS
        if ckpts.exists():  # checkpoints of other pairs cannot be resumed
            import shutil

            shutil.rmtree(ckpts)
    meta: dict[str, Any] = {
        "config": cfg.identity(),
        "mining_key": key,
        "mining": stats,
        "complete": False,
    }
    write_json_atomic(meta_path, meta)
    if table.num_rows < 2:
        raise InputError(f"only {table.num_rows} pairs passed the filter: nothing to train on")

    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from kailin.retrieval.dense import resolve_model

    base = resolve_model(cfg.base)
    model = SentenceTransformer(base, device=cfg.device or "cpu")
    model.max_seq_length = cfg.max_seq_length
    train_cols = ["anchor", "positive", *[f"negative_{m + 1}" for m in range(cfg.negatives)]]
    ds = datasets.Dataset.from_dict({c: table.column(c).to_pylist() for c in train_cols})
    if cfg.loss == "cached":
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size)
    else:
        loss = MultipleNegativesRankingLoss(model)
    ckpt_dir = out / CHECKPOINTS
    batch = min(cfg.batch_size, len(ds))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps else -1,
        per_device_train_batch_size=batch,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=max(1, min(50, cfg.save_steps)),
        seed=cfg.seed,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        use_cpu=(cfg.device or "cpu") == "cpu",
        disable_tqdm=True,  # kailin's bar and log lines instead (attach_progress)
        report_to="none",
        dataloader_drop_last=len(ds) >= 2 * batch,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss,
                                         callbacks=[_no_final_checkpoint()])
    from kailin.train.common import attach_progress

    attach_progress(trainer, "retriever", enabled=progress)
    last = _last_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        log.info("resuming from %s", last)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    seconds = time.perf_counter() - t0
    model.save(str(out))
    steps = int(trainer.state.global_step)
    meta.update(
        complete=True,
        base_model=base,
        resumed_from=str(last) if last else None,
        steps=steps,
        train_batch_size=batch,
        examples_seen=steps * batch,
        train_seconds=round(seconds, 1),
        train_loss=round(float(result.training_loss), 4),
        log_history=[h for h in trainer.state.log_history if "loss" in h][-20:],
    )
    write_json_atomic(meta_path, meta)
    return meta


class RetrieverConfig(FinetuneConfig):
    """Fine-tune the dense index's encoder on the run's own corpus before indexing it (the
    ``retriever`` stage, ``kailin.retrieval.finetune``: the library call behind ``kailin index
    finetune``, with its settings). Writes ``RUN_DIR/models/retriever``; the index
    (``index.kind`` dense or hybrid, ``index.model`` unset) then uses it. The workset's held-out
    abstracts and the PubMedQA test PMIDs are never trained on."""

    enabled: bool = Field(False, description="run the retriever stage (needs index.kind dense "
                          "or hybrid and index.model unset; rejected at load otherwise)")
