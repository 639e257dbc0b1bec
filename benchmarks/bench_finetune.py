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
    p.add_argument("phase", choices=["train", "eval", "signal"])
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    {"train": cmd_train, "eval": cmd_eval, "signal": cmd_signal}[args.phase](args)


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


if __name__ == "__main__":
    sys.exit(main())
