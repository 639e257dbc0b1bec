"""Before/after measurement of ``kailin index finetune`` (the table in docs/retrieval.md).

    python benchmarks/bench_finetune.py train --corpus /work/sig/corpus --work /work/ft
    python benchmarks/bench_finetune.py eval  --corpus /work/sig/corpus --work /work/ft
    python benchmarks/bench_finetune.py signal --corpus /work/sig/corpus --work /work/ft

``train`` fine-tunes the packaged MiniLM on the corpus with a hash hold-out (``--holdout``) and
every PubMedQA PQA-L PMID excluded; ``eval`` writes a corpus of held-out records only (titles
blanked, so a title query must find the abstract alone: up to ``--eval-titles`` held-out records
with title and abstract, plus the PQA-L abstracts that the corpus holds), builds a dense index of
it with the base and with the fine-tuned encoder, and reports title -> abstract and PubMedQA
question -> abstract recall@1/4/10 and MRR as JSON and as a Markdown table.

``signal`` measures what the retriever is for in kailin: issue 9's document-signal AUC (``kailin
evaluate signal``: the 500 PQA-L development questions against another item's question and
against generic questions) over the *whole* corpus, with contexts from BM25, from dense and
hybrid indexes of the base encoder, and from dense and hybrid indexes of the fine-tuned one,
under kailin's default document score and the paper's form. Writes ``WORK/signal.json``.

``throughput`` compares the training speed of ``kailin.retrieval.finetune`` with a plain
sentence-transformers loop (``SentenceTransformerTrainer`` with its defaults: no checkpoints, the
default batch sampler) on the same mined pairs, model (the packaged MiniLM), batch size, sequence
length and steps, in one process, runs alternating kailin / plain / plain / kailin. It prints
pairs/s of each run and the ratio kailin / plain of the summed rates (>= 0.9 passes); with no
``--corpus`` folder it writes a small corpus of the repository's NLM abstracts (their titles are
the queries)::

    python benchmarks/bench_finetune.py throughput --work /tmp/ft_tp
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PQAL = REPO / "src" / "kailin" / "data" / "pubmedqa" / "ori_pqal.json"


def pqal() -> dict:
    return json.loads(PQAL.read_text(encoding="utf-8"))


def train_config(args: argparse.Namespace):
    from kailin.retrieval.finetune import FinetuneConfig

    return FinetuneConfig(
        holdout=args.holdout,
        exclude_pmids=sorted(int(k) for k in pqal()),
        max_records=args.max_records,
        mine_max_seq_length=args.mine_max_seq_length,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        save_steps=args.save_steps,
        negatives=args.negatives,
        filter_top_n=args.filter_top_n,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from kailin.retrieval.finetune import finetune

    t0 = time.perf_counter()
    meta = finetune(args.corpus, args.work / "model", train_config(args), progress=True)
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (args.work / "train.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps({k: meta[k] for k in ("mining", "steps", "train_seconds")}, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("phase", choices=["train", "eval", "signal", "throughput"])
    p.add_argument("--corpus", type=Path, default=Path("/work/sig/corpus"))
    p.add_argument("--work", type=Path, default=Path("/work/ft"))
    p.add_argument("--holdout", type=float, default=0.04)
    p.add_argument("--max-records", type=int, default=9000)
    p.add_argument("--mine-max-seq-length", type=int, default=64)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--save-steps", type=int, default=20)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--filter-top-n", type=int, default=10)
    p.add_argument("--eval-titles", type=int, default=1000)
    p.add_argument("--eval-max-seq-length", type=int, default=128)
    p.add_argument("--model", type=Path, default=None, help="eval: fine-tuned model folder")
    p.add_argument("--n-boot", type=int, default=1000, help="signal: bootstrap resamples")
    p.add_argument("--tp-records", type=int, default=600, help="throughput: corpus records")
    p.add_argument("--tp-steps", type=int, default=20, help="throughput: steps per run")
    p.add_argument("--tp-batch-size", type=int, default=16, help="throughput: pairs per step")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    {"train": cmd_train, "eval": cmd_eval, "signal": cmd_signal,
     "throughput": cmd_throughput}[args.phase](args)


def write_eval_corpus(args: argparse.Namespace) -> tuple[Path, list, list]:
    """Held-out records only, titles blanked; the title and PubMedQA labelled queries."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kailin.corpus.reader import open_corpus
    from kailin.corpus.schema import CORPUS_SCHEMA
    from kailin.retrieval.evaluate import LabelledQuery
    from kailin.retrieval.finetune import is_held_out

    cfg = train_config(args)
    table = open_corpus(args.corpus).read()
    pmids = np.asarray(table.column("pmid").to_pylist(), dtype=np.int64)
    titles = [t or "" for t in table.column("title").to_pylist()]
    abstracts = [a or "" for a in table.column("abstract").to_pylist()]
    held = is_held_out(pmids, cfg.holdout, cfg.seed)
    qa = pqal()
    title_rows = [
        i
        for i in np.flatnonzero(held)
        if abstracts[i].strip()
        and len(titles[i].split()) >= cfg.min_title_words
        and str(pmids[i]) not in qa
    ][: args.eval_titles]
    qa_rows = [i for i, p in enumerate(pmids) if str(p) in qa and abstracts[i].strip()]
    rows = sorted(set(title_rows) | set(qa_rows))
    sub = table.take(pa.array(rows))
    sub = sub.set_column(
        sub.schema.get_field_index("title"), "title", pa.array([""] * sub.num_rows, pa.string())
    )
    out = args.work / "eval_corpus"
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        sub.select(CORPUS_SCHEMA.names).cast(CORPUS_SCHEMA), out / "data" / "part-00000.parquet"
    )
    (out / "manifest.json").write_text(json.dumps({"records": sub.num_rows, "source": "held-out"}))
    tq = [LabelledQuery(titles[i].strip(), frozenset({int(pmids[i])})) for i in title_rows]
    qq = [LabelledQuery(qa[str(pmids[i])]["QUESTION"], frozenset({int(pmids[i])})) for i in qa_rows]
    return out, tq, qq


def cmd_eval(args: argparse.Namespace) -> None:
    from kailin.retrieval import build_index
    from kailin.retrieval.evaluate import evaluate

    corpus, tq, qq = write_eval_corpus(args)
    model = args.model or args.work / "model"
    train = (
        json.loads((args.work / "train.json").read_text())
        if (args.work / "train.json").exists()
        else {}
    )
    rows = []
    for name, kind, opts in [
        ("BM25", "bm25", {}),
        ("MiniLM (base)", "dense", {"model": None}),
        ("MiniLM fine-tuned", "dense", {"model": str(model)}),
    ]:
        if kind == "dense":
            opts = {**opts, "max_seq_length": args.eval_max_seq_length, "faiss_index": "flat"}
        t0 = time.perf_counter()
        index = build_index(
            corpus,
            args.work / f"index_{len(rows)}",
            kind=kind,
            overwrite=True,
            progress=False,
            **opts,
        )
        build_s = time.perf_counter() - t0
        res = {"name": name, "documents": len(index), "build_seconds": round(build_s, 1)}
        for label, qs in (("title", tq), ("pubmedqa", qq)):
            r = evaluate(index, qs)
            res[label] = {
                k: round(float(r[k]), 4) for k in ("recall@1", "recall@4", "recall@10", "mrr")
            }
            res[label]["n"] = len(qs)
        index.close()
        rows.append(res)
        print(json.dumps(res), flush=True)
    report = {
        "rows": rows,
        "train": {
            k: train.get(k)
            for k in (
                "mining",
                "steps",
                "train_batch_size",
                "train_seconds",
                "wall_seconds",
                "config",
            )
        },
    }
    (args.work / "eval.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n{len(tq)} held-out title queries, {len(qq)} PubMedQA PQA-L questions, "
        f"{rows[0]['documents']} held-out documents (titles blanked)\n"
    )
    print("| index | title R@1 | R@4 | R@10 | MRR | PubMedQA R@1 | R@4 | R@10 | MRR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, q = r["title"], r["pubmedqa"]
        cells = [
            f"{d[k]:.3f}" for d in (t, q) for k in ("recall@1", "recall@4", "recall@10", "mrr")
        ]
        print(f"| {r['name']} | " + " | ".join(cells) + " |")


def cmd_signal(args: argparse.Namespace) -> None:
    from kailin.evaluate.signal import SignalConfig, evaluate_signal
    from kailin.mesh import load_mesh
    from kailin.mesh.score import DEFAULT_SCORE_K, DEFAULT_SCORING, PAPER_SCORE_K
    from kailin.retrieval import build_index

    model = args.model or args.work / "model"
    d = DEFAULT_SCORING
    configs = [
        SignalConfig(d["measure"], d["aggregate"], d["exclude"], d["major_weight"],
                     d["rank_weighting"], d["ic_power"], DEFAULT_SCORE_K),
        SignalConfig("faithful", "mean", "none", 1.0, "none", 0.0, PAPER_SCORE_K),
    ]
    mesh = load_mesh(None)
    dense = {"max_seq_length": args.eval_max_seq_length, "faiss_index": "flat"}
    ix = args.work / "signal_indexes"
    plans = [
        ("BM25", "bm25", "bm25", {}),
        ("MiniLM (base), dense", "dense", "dense_base", {**dense, "model": None}),
        ("MiniLM (base), hybrid", "hybrid", "hybrid_base",
         {**dense, "model": None, "reuse_dense": str(ix / "dense_base")}),
        ("MiniLM fine-tuned, dense", "dense", "dense_ft", {**dense, "model": str(model)}),
        ("MiniLM fine-tuned, hybrid", "hybrid", "hybrid_ft",
         {**dense, "model": str(model), "reuse_dense": str(ix / "dense_ft")}),
    ]
    rows = []
    for name, kind, folder, opts in plans:
        t0 = time.perf_counter()
        out = ix / folder
        if (out / "meta.json").exists():  # built by an earlier call: reuse it
            from kailin.retrieval import load_index

            index = load_index(out)
        else:
            index = build_index(args.corpus, out, kind=kind, overwrite=True, progress=False,
                                **opts)
        build_s = time.perf_counter() - t0
        rep = evaluate_signal(args.corpus, None, PQAL, configs=configs, index=index, mesh=mesh,
                              split="dev", k_sweep=0, n_boot=args.n_boot, seed=0,
                              progress=False)
        index.close()
        for r in rep["configs"]:
            row = {"index": name, "config": r["name"], "items": rep["items"],
                   "documents": len(index), "build_seconds": round(build_s, 1),
                   **{k: r[k] for k in ("auc_other", "auc_other_ci", "auc_generic",
                                        "auc_generic_ci", "nan_share")}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.work / "signal.json").write_text(json.dumps({"rows": rows}, indent=2))
    print("\n| contexts from | document score | AUC vs other [95% CI] | AUC vs generic "
          "[95% CI] | NaN |")
    print("|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["auc_other_ci"]
        glo, ghi = r["auc_generic_ci"]
        print(f"| {r['index']} | {r['config']} | {r['auc_other']:.3f} [{lo:.3f}, {hi:.3f}] | "
              f"{r['auc_generic']:.3f} [{glo:.3f}, {ghi:.3f}] | {r['nan_share']:.1%} |")


def _plain_train(pairs, steps: int, batch: int, max_seq_length: int, work: Path) -> float:
    """Seconds of ``trainer.train()`` for a plain sentence-transformers run on ``pairs``."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from kailin.retrieval.dense import resolve_model

    model = SentenceTransformer(resolve_model(None), device="cpu")
    model.max_seq_length = max_seq_length
    cols = [c for c in pairs.column_names if c != "pmid"]
    ds = datasets.Dataset.from_dict({c: pairs.column(c).to_pylist() for c in cols})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "plain"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=2e-5, warmup_steps=0.1, save_strategy="no", seed=13, use_cpu=True,
        disable_tqdm=True, report_to="none")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    assert trainer.state.global_step == steps
    return seconds


def cmd_throughput(args: argparse.Namespace) -> None:
    import shutil

    import pyarrow.parquet as pq

    from kailin.retrieval.finetune import CHECKPOINTS, PAIRS_FILE, FinetuneConfig, finetune

    corpus = args.corpus
    if not (corpus / "manifest.json").exists():
        sys.path.insert(0, str(REPO / "tests"))
        from test_retrieval_fixtures import build_test_corpus

        corpus = args.work / "tp_corpus"
        if not (corpus / "manifest.json").exists():
            build_test_corpus(corpus, n_pubmedqa=0, n_nlm=args.tp_records)
    batch, seq = args.tp_batch_size, args.max_seq_length
    out = args.work / "tp_kailin"
    shutil.rmtree(out, ignore_errors=True)

    def cfg(steps: int) -> FinetuneConfig:
        return FinetuneConfig(max_records=args.tp_records, mine_max_seq_length=seq,
                              max_seq_length=seq, batch_size=batch, max_steps=steps)

    # mine once (kept in OUT/pairs.parquet and reused by every kailin run below)
    meta = finetune(corpus, out, cfg(1), progress=False)
    pairs = pq.read_table(out / PAIRS_FILE)
    steps = min(args.tp_steps, pairs.num_rows // batch)
    runs: list[dict] = []
    for who in ("kailin", "plain", "plain", "kailin"):
        if who == "kailin":
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # train afresh, same pairs
            meta = finetune(corpus, out, cfg(steps), progress=False)
            assert meta["steps"] == steps and meta["train_batch_size"] == batch
            seconds = float(meta["train_seconds"])
        else:
            seconds = _plain_train(pairs, steps, batch, seq, args.work)
        runs.append({"who": who, "seconds": round(seconds, 2),
                     "pairs_per_s": round(steps * batch / seconds, 2)})
        print(json.dumps(runs[-1]), flush=True)
    rate = {w: sum(r["pairs_per_s"] for r in runs if r["who"] == w) / 2
            for w in ("kailin", "plain")}
    report = {"pairs": pairs.num_rows, "steps": steps, "batch_size": batch,
              "max_seq_length": seq, "negatives": pairs.num_columns - 3, "runs": runs,
              "kailin_pairs_per_s": round(rate["kailin"], 2),
              "plain_pairs_per_s": round(rate["plain"], 2),
              "ratio": round(rate["kailin"] / rate["plain"], 3)}
    (args.work / "throughput.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"kailin / plain sentence-transformers: {report['ratio']:.3f} "
          f"({'within 10 %' if report['ratio'] >= 0.9 else 'SLOWER than 10 %'})")


if __name__ == "__main__":
    sys.exit(main())
