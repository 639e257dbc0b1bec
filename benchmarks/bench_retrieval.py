"""Retrieval benchmark: kailin's bm25s index vs rank_bm25, and exact vs approximate FAISS.

Run from the repository root:

    .venv/bin/python benchmarks/bench_retrieval.py [--corpus DIR] [--dense-index DIR]
        [--synthetic 50000] [--queries N]

Corpus: by default the 2,400 real abstracts of the retrieval test fixture (PubMedQA's 1,000
labelled abstracts + 1,400 NLM MeSH-indexing abstracts); queries: PubMedQA's questions.

1. BM25, side by side on the same corpus and the same token lists (bm25s tokenizer with English
   stop words and the PyStemmer stemmer): build time (bm25s index vs rank_bm25 BM25Okapi),
   queries/s (kailin ``Index.search`` batch, which also tokenises and fetches the hits, vs
   rank_bm25 ``get_scores`` + top-k per query), recall@1/4/10 of each and their top-10 overlap.
2. Dense: exact (IndexFlatIP) vs HNSW and IVF on the vectors of a dense index (``--dense-index``,
   built if absent) and, to show the scaling, on ``--synthetic`` vectors (the real vectors plus
   Gaussian noise, re-normalised): build time, queries/s, agreement of the top-10 with exact.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _recalls(ranked: list[list[int]], gold: list[int]) -> dict[str, float]:
    out = {}
    for k in (1, 4, 10):
        out[f"recall@{k}"] = float(np.mean([g in r[:k] for r, g in zip(ranked, gold, strict=True)]))
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, (x >= 0).sum())
                for x, y in zip(a, b, strict=True)
            ]
        )
    )


def bench_bm25(
    corpus: Path, work: Path, questions: list[str], gold: list[int], replicate: int
) -> None:
    import bm25s
    from rank_bm25 import BM25Okapi

    from kailin.corpus.reader import open_corpus
    from kailin.retrieval import build_index
    from kailin.retrieval.base import doc_text
    from kailin.retrieval.bm25 import make_tokenizer

    print("\n== BM25: kailin (bm25s) vs rank_bm25 (BM25Okapi) ==")
    t = time.perf_counter()
    index = build_index(corpus, work / "bm25", kind="bm25", progress=False, overwrite=True)
    t_kailin_build = time.perf_counter() - t

    table = open_corpus(corpus).read(["pmid", "title", "abstract"])
    texts = [
        doc_text(a, b)
        for a, b in zip(
            table.column("title").to_pylist(), table.column("abstract").to_pylist(), strict=True
        )
    ]
    pmids = np.array(table.column("pmid").to_pylist())
    tok = make_tokenizer()
    t = time.perf_counter()
    doc_tokens = tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
    t_tok = time.perf_counter() - t
    q_tokens = tok.tokenize(questions, update_vocab=False, return_as="string", show_progress=False)

    t = time.perf_counter()
    core = bm25s.BM25()
    core.index(doc_tokens, show_progress=False)
    t_bm25s = time.perf_counter() - t
    t = time.perf_counter()
    okapi = BM25Okapi(doc_tokens)
    t_okapi = time.perf_counter() - t

    k = 10
    t = time.perf_counter()
    hits = index.search(questions, k=k)
    t_kailin_q = time.perf_counter() - t
    kailin_ranked = [[h.pmid for h in hs] for hs in hits]

    n_okapi = min(len(questions), 200)  # rank_bm25 scores every document in Python per query
    t = time.perf_counter()
    okapi_rows = []
    for q in q_tokens[:n_okapi]:
        s = okapi.get_scores(q)
        top = np.argpartition(-s, k)[:k]
        okapi_rows.append(top[np.argsort(-s[top])])
    t_okapi_q = time.perf_counter() - t
    okapi_ranked = [list(pmids[r]) for r in okapi_rows]

    qps_k = len(questions) / t_kailin_q
    qps_o = n_okapi / t_okapi_q
    print(f"documents {len(texts)}, queries {len(questions)} (rank_bm25: first {n_okapi})")
    print(f"tokenisation (shared, both)            {t_tok:8.2f} s")
    print(f"index build  bm25s core                {t_bm25s:8.2f} s")
    print(
        f"index build  rank_bm25 BM25Okapi       {t_okapi:8.2f} s   "
        f"ratio rank_bm25/bm25s = {t_okapi / t_bm25s:.1f}x"
    )
    print(
        f"index build  kailin end-to-end         {t_kailin_build:8.2f} s   "
        "(read corpus, tokenise, index, docstore, save)"
    )
    print(f"queries/s    kailin Index.search       {qps_k:8.1f}     (tokenise + top-k + hits)")
    print(
        f"queries/s    rank_bm25 get_scores+topk {qps_o:8.1f}     "
        f"ratio kailin/rank_bm25 = {qps_k / qps_o:.1f}x"
    )
    rk = _recalls(kailin_ranked[:n_okapi], gold[:n_okapi])
    ro = _recalls(okapi_ranked, gold[:n_okapi])
    agree = np.mean(
        [
            len(set(a[:k]) & set(b[:k])) / k
            for a, b in zip(kailin_ranked, okapi_ranked, strict=False)
        ]
    )
    print(
        f"PubMedQA (first {n_okapi}) kailin    " + "  ".join(f"{m} {v:.3f}" for m, v in rk.items())
    )
    print(
        f"PubMedQA (first {n_okapi}) rank_bm25 " + "  ".join(f"{m} {v:.3f}" for m, v in ro.items())
    )
    print(f"top-10 overlap kailin vs rank_bm25: {agree:.3f} (Lucene vs Okapi IDF differ)")

    if replicate > 1:  # the same documents repeated: how each scales with corpus size
        big = doc_tokens * replicate
        print(
            f"\n-- scaling: corpus x{replicate} = {len(big)} documents, bm25s core vs rank_bm25 --"
        )
        t = time.perf_counter()
        core = bm25s.BM25()
        core.index(big, show_progress=False)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        okapi = BM25Okapi(big)
        to = time.perf_counter() - t
        t = time.perf_counter()
        core.retrieve(q_tokens, k=k, show_progress=False)
        qb = len(q_tokens) / (time.perf_counter() - t)
        n_small = min(len(q_tokens), 50)
        t = time.perf_counter()
        for q in q_tokens[:n_small]:
            s = okapi.get_scores(q)
            np.argpartition(-s, k)[:k]
        qo = n_small / (time.perf_counter() - t)
        print(f"index build  bm25s {tb:7.2f} s   rank_bm25 {to:7.2f} s   ratio {to / tb:.1f}x")
        print(f"queries/s    bm25s {qb:7.1f}     rank_bm25 {qo:7.1f}     ratio {qb / qo:.1f}x")


def _time_search(index, queries: np.ndarray, k: int, params) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    _, rows = index.search(queries, k, params=params) if params else index.search(queries, k)
    return time.perf_counter() - t, rows


def bench_faiss(vecs: np.ndarray, qvecs: np.ndarray, label: str, gold_rows: np.ndarray | None):
    from kailin.retrieval.dense import FaissBuilder, search_params

    print(f"\n== dense: exact vs approximate FAISS ({label}: {len(vecs)} x {vecs.shape[1]}) ==")
    k = 10
    results = {}
    for kind in ("flat", "hnsw", "ivf"):
        t = time.perf_counter()
        b = FaissBuilder(kind, vecs.shape[1], len(vecs), {})
        for start in range(0, len(vecs), 4096):
            b.add(vecs[start : start + 4096])
        idx = b.finish()
        t_build = time.perf_counter() - t
        t_q, rows = _time_search(idx, qvecs, k, search_params(idx, b.params, None))
        results[kind] = (t_build, len(qvecs) / t_q, rows, b.params)
    exact = results["flat"][2]
    base_qps = results["flat"][1]
    for kind, (t_build, qps, rows, params) in results.items():
        knobs = {p: params[p] for p in ("nlist", "nprobe", "hnsw_m", "ef_search") if p in params}
        line = (
            f"{kind:5s} build {t_build:7.2f} s  queries/s {qps:9.1f} "
            f"(x{qps / base_qps:5.1f} vs exact)  top-10 agreement with exact "
            f"{_overlap(exact, rows):.3f}"
        )
        if gold_rows is not None:
            hit10 = np.mean([g in r for r, g in zip(rows, gold_rows, strict=True)])
            line += f"  PubMedQA recall@10 {hit10:.3f}"
        print(line + (f"  {knobs}" if knobs else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, help="corpus directory (default: the test fixture)")
    ap.add_argument("--dense-index", type=Path, help="dense index over the same corpus")
    ap.add_argument("--synthetic", type=int, default=50_000, help="synthetic vectors (0: skip)")
    ap.add_argument("--bm25-replicate", type=int, default=10, help="BM25 scaling: corpus x R")
    ap.add_argument("--queries", type=int, default=1000, help="PubMedQA questions used")
    args = ap.parse_args()

    from kailin.retrieval import build_index, load_index
    from test_retrieval_fixtures import build_test_corpus, pubmedqa_records

    work = Path(tempfile.mkdtemp(prefix="kailin-bench-retrieval-"))
    corpus = args.corpus or build_test_corpus(work / "corpus")
    recs = pubmedqa_records(args.queries)
    questions = [r["question"] for r in recs]
    gold = [r["pmid"] for r in recs]
    bench_bm25(corpus, work, questions, gold, args.bm25_replicate)

    dense_dir = args.dense_index
    if dense_dir is None:
        dense_dir = work / "dense"
        print("\n(building a dense index: ~20 documents/s on a laptop CPU)")
        build_index(corpus, dense_dir, kind="dense", faiss_index="flat")
    index = load_index(dense_dir)
    flat = index.dense.index
    vecs = flat.reconstruct_n(0, flat.ntotal)
    t = time.perf_counter()
    qvecs = index.dense.encoder.encode(questions)
    t_enc = time.perf_counter() - t
    print(
        f"\nquery encoding ({index.dense.params['model'].split('/')[-2:]}): "
        f"{len(questions) / t_enc:.1f} queries/s"
    )
    row_of = {int(p): i for i, p in enumerate(index.docstore.pmids)}
    gold_rows = np.array([row_of.get(g, -1) for g in gold])
    bench_faiss(vecs, qvecs, "real vectors", gold_rows)
    if args.synthetic > len(vecs):
        rng = np.random.default_rng(0)
        reps = -(-args.synthetic // len(vecs))
        syn = np.concatenate(
            [vecs]
            + [
                vecs + rng.normal(scale=0.05, size=vecs.shape).astype(np.float32)
                for _ in range(reps - 1)
            ]
        )[: args.synthetic]
        syn /= np.linalg.norm(syn, axis=1, keepdims=True)
        bench_faiss(
            np.ascontiguousarray(syn, dtype=np.float32), qvecs, "synthetic: real + noise", None
        )


if __name__ == "__main__":
    main()
