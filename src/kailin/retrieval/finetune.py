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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kailin.errors import InputError, require

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.parquet"
META_FILE = "finetune.json"
CHECKPOINTS = "checkpoints"


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (all recorded in ``OUT/finetune.json``)."""

    base: str | None = None  # encoder: local path or hub id; None = packaged MiniLM
    pairs: str = "title"  # title | question
    questions: str | None = None  # pairs="question": questions Parquet file/folder
    holdout: float = 0.0  # fraction of PMIDs held out by hash (see is_held_out)
    exclude_pmids: list[int] = field(default_factory=list)
    max_records: int | None = None  # random sample of the corpus used as pool (and base index)
    min_title_words: int = 4
    base_index: str | None = None  # existing kailin index used for filter and mining
    mine_max_seq_length: int = 128  # base encoding of the candidate abstracts
    filter_top_n: int = 10  # 0 = no consistency filter
    negatives: int = 1  # hard negatives per pair (0 = in-batch negatives only)
    neg_start: int = 3  # first base rank (1-based) a negative may come from
    neg_depth: int = 30  # last base rank searched for negatives
    false_negative_overlap: float = 0.5
    loss: str = "mnrl"  # mnrl | cached
    mini_batch_size: int = 32  # cached loss: GradCache chunk size
    batch_size: int = 32
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 128  # training (and the saved model's) token limit
    save_steps: int = 100
    save_total_limit: int = 2
    seed: int = 13
    device: str | None = None
    bf16: bool = False
    fp16: bool = False
    encode_batch_size: int = 64

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
        d = asdict(self)
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    if cfg.loss not in ("mnrl", "cached"):
        raise InputError(f"unknown loss {cfg.loss!r}: use mnrl or cached")
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
        pq.write_table(table, pairs_path)
        ckpts = out / CHECKPOINTS
        if ckpts.exists():  # checkpoints of other pairs cannot be resumed
            import shutil

            shutil.rmtree(ckpts)
    meta: dict[str, Any] = {
        "config": asdict(cfg),
        "mining_key": key,
        "mining": stats,
        "complete": False,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
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
        disable_tqdm=not progress,
        report_to="none",
        dataloader_drop_last=len(ds) >= 2 * batch,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
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
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta
