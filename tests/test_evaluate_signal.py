"""`kailin evaluate signal` and the pieces the document score rests on: contexts without MeSH
passed over, NLM's check tags, weights; on real PubMedQA + NLM abstracts with the packaged
MeSH build."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kailin.errors import InputError
from kailin.evaluate import signal as sg


def test_paired_auc_ties_and_nan_rules() -> None:
    pos = np.array([0.5, 0.5, 0.2, np.nan, 0.3, np.nan])
    neg = np.array([0.4, 0.5 + 1e-9, 0.3, 0.1, np.nan, np.nan])
    assert sg.paired_auc(pos, neg).tolist() == [1.0, 0.5, 0.0, 0.0, 1.0, 0.0]
    assert sg.pooled_auc(np.array([0.9, 0.8]), np.array([0.1, np.nan])) == 1.0


def test_derangement_has_no_fixed_point() -> None:
    for n in (2, 3, 17, 500):
        p = sg._derangement(n, seed=n)
        assert sorted(p.tolist()) == list(range(n))
        assert not (p == np.arange(n)).any()


def test_load_questions_formats(tmp_path: Path) -> None:
    from importlib import resources

    pqal = Path(str(resources.files("kailin") / "data" / "pubmedqa" / "ori_pqal.json"))
    dev, test, every = (sg.load_questions(pqal, split=s) for s in ("dev", "test", "all"))
    assert len(dev.pmids) == 500 and len(test.pmids) == 500 and len(every.pmids) == 1000
    assert not set(dev.pmids) & set(test.pmids)
    assert dev.file_mesh and all(isinstance(v, list) for v in dev.file_mesh.values())
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"pmid": 1, "question": "Is A B?"}\n\n{"pmid": "2", "question": "Why C?"}\n')
    q = sg.load_questions(jl)
    assert q.pmids == [1, 2] and q.questions == ["Is A B?", "Why C?"]
    pq.write_table(pa.table({"pmid": [3], "question": ["How D?"]}), tmp_path / "q.parquet")
    assert sg.load_questions(tmp_path / "q.parquet").pmids == [3]
    (tmp_path / "bad.jsonl").write_text('{"pmid": 1, "question": "x"}\n{oops\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        sg.load_questions(tmp_path / "bad.jsonl")
    pq.write_table(pa.table({"id": [3]}), tmp_path / "nocol.parquet")
    with pytest.raises(InputError, match="pmid"):
        sg.load_questions(tmp_path / "nocol.parquet")


def test_check_tags_are_known_to_the_packaged_mesh_and_left_out() -> None:
    from kailin.mesh import load_mesh
    from kailin.mesh.checktags import CHECK_TAGS, check_tag_uis

    mesh = load_mesh()
    uis = check_tag_uis(mesh)
    assert len(uis) == len(CHECK_TAGS)
    assert {"D006801", "D008297", "D005260"} <= set(uis)
    for ui, name in CHECK_TAGS:
        assert mesh.name(ui) == name
    sc = mesh.scorer("resnik", aggregate="bma", exclude="check-tags")
    # two records that share only check tags: undefined (no topical descriptor left)
    assert math.isnan(sc.set_similarity(["D006801", "D008297"], ["D006801", "D005260"]))
    both = ["D006801", "D009369"]
    assert sc.set_similarity(both, ["D008297", "D009369"]) == pytest.approx(
        sc.set_similarity(["D009369"], ["D009369"]))


def test_weighted_scores_agree_between_compiled_and_numpy() -> None:
    from kailin.mesh import load_mesh
    from kailin.mesh._kernels import HAVE_NUMBA

    if not HAVE_NUMBA:
        pytest.skip("numba not installed: only the numpy path exists")
    mesh = load_mesh()
    rng = np.random.default_rng(0)
    common = np.array(mesh.uis)[np.flatnonzero(mesh.df > 0)[:2000]]
    src = [list(rng.choice(common, rng.integers(0, 10))) for _ in range(60)]
    ctx = [[list(rng.choice(common, rng.integers(0, 10))) for _ in range(rng.integers(0, 5))]
           for _ in range(60)]
    smaj = [list(rng.random(len(s)) < 0.3) for s in src]
    cmaj = [[list(rng.random(len(c)) < 0.3) for c in cs] for cs in ctx]
    for measure in ("kailin", "resnik", "lin", "jiang"):
        for kw in ({"aggregate": "mean"},
                   {"aggregate": "bma", "exclude": "check-tags", "ic_power": 2.0,
                    "major_weight": 3.0, "rank_weighting": "reciprocal"}):
            sc = mesh.scorer(measure, **kw)
            a = sc.doc_scores(src, ctx, smaj, cmaj)
            sc.use_compiled = False
            b = sc.doc_scores(src, ctx, smaj, cmaj)
            np.testing.assert_allclose(a, b, atol=1e-9, err_msg=f"{measure} {kw}")
    # the embedding kinds (cosine blocks by BLAS in the kernel) on random unit vectors
    from kailin.mesh.embeddings import MeshEmbeddingSimilarity

    vecs = rng.standard_normal((len(mesh.uis), 24)).astype(np.float32)
    emb = MeshEmbeddingSimilarity(vecs, mesh.uis)
    for measure in ("embedding", "hybrid"):
        for kw in ({"aggregate": "mean"},
                   {"aggregate": "bma", "exclude": "check-tags", "ic_power": 3.0,
                    "major_weight": 2.0, "rank_weighting": "reciprocal"}):
            sc = mesh.scorer(measure, embeddings=emb, **kw)
            assert sc._compiled is not None
            a = sc.doc_scores(src, ctx, smaj, cmaj)
            sc.use_compiled = False
            b = sc.doc_scores(src, ctx, smaj, cmaj)
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{measure} {kw}")
            assert np.isfinite(a).sum() > 20
    # a weight changes the score; weight 1 is the unweighted score
    sc = mesh.scorer("resnik", aggregate="bma")
    plain = sc.doc_scores(src, ctx)
    np.testing.assert_allclose(sc.doc_scores(src, ctx, smaj, cmaj), plain)
    heavy = mesh.scorer("resnik", aggregate="bma", major_weight=4.0)
    assert not np.allclose(np.nan_to_num(heavy.doc_scores(src, ctx, smaj, cmaj)),
                           np.nan_to_num(plain))


# -- on real data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("bm25s")
    from kailin.retrieval import build_index
    from test_retrieval_fixtures import nlm_records, pubmedqa_records, write_corpus

    root = tmp_path_factory.mktemp("signal")
    pqa = pubmedqa_records(120)
    nlm = nlm_records(400)
    # every third NLM record carries no MeSH yet (like recent, not yet indexed records)
    for i, r in enumerate(nlm):
        if i % 3 == 0:
            r["mesh_names"] = []
    corpus = write_corpus(root / "corpus", pqa + nlm)
    build_index(corpus, root / "index", kind="bm25", progress=False)
    qfile = root / "questions.jsonl"
    qfile.write_text("".join(json.dumps({"pmid": r["pmid"], "question": r["question"]}) + "\n"
                             for r in pqa))
    return {"root": root, "corpus": corpus, "index": root / "index", "questions": qfile}


def test_search_with_mesh_passes_over_records_without_mesh(real: dict) -> None:
    from kailin.retrieval import load_index

    index = load_index(real["index"])
    assert not index.docstore.has_mesh.all()
    queries = ["randomized trial of treatment in patients", "gene expression in tumour cells"]
    plain = index.search(queries, k=40)
    hits, passed = index.search_with_mesh(queries, k=4, max_passed_over=30)
    for h, p, base in zip(hits, passed, plain, strict=True):
        assert len(h) == 4 and all(x.mesh_uis for x in h)
        # the kept hits are the first four with MeSH, in rank order; the passed-over count is
        # the MeSH-less hits ranked above the last one kept
        with_mesh = [i for i, x in enumerate(base) if x.mesh_uis][:4]
        assert [x.pmid for x in h] == [base[i].pmid for i in with_mesh]
        assert p == sum(1 for x in base[: with_mesh[-1]] if not x.mesh_uis)
    assert sum(passed) > 0
    # the bound: with none allowed, only the top 4 are looked at
    few, _ = index.search_with_mesh(queries, k=4, max_passed_over=0)
    for h, base in zip(few, plain, strict=True):
        assert [x.pmid for x in h] == [x.pmid for x in base[:4] if x.mesh_uis]
    with pytest.raises(InputError):
        index.search_with_mesh(queries, k=4, max_passed_over=-1)


@pytest.mark.slow
def test_signal_tells_real_questions_from_negatives(real: dict, tmp_path: Path) -> None:
    configs = [sg.SignalConfig("resnik", "bma", "check-tags", k=4),
               sg.SignalConfig("kailin", "mean", "none", k=4)]
    rep = sg.evaluate_signal(real["corpus"], real["index"], real["questions"], configs=configs,
                             k_sweep=1, n_boot=200, progress=False)
    assert rep["items"] == 120
    rows = {r["name"]: r for r in rep["configs"]}
    assert len(rows) == 2 + 7  # the k sweep of the best adds k = 1..8 except the one given
    best = rows["resnik bma no-check-tags k4"]
    assert best["auc_other"] > 0.7 and best["auc_generic"] > 0.7
    lo, hi = best["auc_other_ci"]
    assert lo <= best["auc_other"] <= hi
    assert best["nan_share"] <= 0.05
    assert rep["passed_over_mean"] > 0
    md = sg.format_markdown(rep)
    assert "| resnik bma no-check-tags k4 |" in md
    jp, mp = sg.write_report(rep, tmp_path / "out")
    saved = json.loads(jp.read_text())
    assert saved["items"] == 120 and len(saved["configs"]) == len(rep["configs"])
    assert mp.read_text().startswith("# MeSH document signal")


@pytest.mark.slow
def test_cli_signal_and_title_selfcheck(real: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kailin.cli.main import app
    from kailin.retrieval import load_index

    res = CliRunner().invoke(app, [
        "evaluate", "signal", str(real["corpus"]), "--index", str(real["index"]),
        "--questions", str(real["questions"]), "--measure", "resnik", "--measure", "path",
        "--aggregate", "bma", "--exclude", "check-tags", "--major-weight", "1",
        "--rank-weighting", "none", "--ic-power", "0", "--k-sweep", "0", "--n-boot", "100",
        "--out", str(tmp_path / "sig"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "AUC vs other" in res.output
    assert {r["name"] for r in json.loads((tmp_path / "sig" / "signal.json").read_text())
            ["configs"]} == {"resnik bma no-check-tags k4", "path bma no-check-tags k4"}
    chk = sg.title_selfcheck(real["corpus"], load_index(real["index"]), sample=60, n_boot=100,
                             scoring={"measure": "resnik", "faithful": False, "aggregate": "bma",
                                      "exclude": "check-tags", "ic_power": 3.0,
                                      "major_weight": 1.0, "rank_weighting": "none",
                                      "hybrid_alpha": 0.5})
    assert chk["sample"] == 60 and chk["auc_other"] > 0.6
    assert "paper_form" in chk and "verdict" in chk
