"""The MeSH engine on real data: the packaged MeSH 2024 build, NLM's XML sample, real pairs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kailin.cli.main import app
from kailin.errors import InputError
from kailin.mesh import build_mesh, load_mesh
from kailin.mesh.reference import ReferenceKailin
from kailin.mesh.vocabulary import load_vocabulary, read_descriptor_xml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
XML_SAMPLE = SAMPLES / "mesh2024" / "xml_format_sample" / "xml2006sample.xml"
FREQ = SAMPLES / "mesh_frequency_pmc_oa" / "mesh_heading_doc_freq_with_ui.tsv"
TSV = SAMPLES / "mesh2024" / "mesh_id_label_mappings.tsv"
runner = CliRunner()


@pytest.fixture(scope="module")
def mesh():
    return load_mesh()


def test_packaged_build(mesh) -> None:
    assert len(mesh.vocab) == 30764
    assert int((mesh.hierarchy.tn_desc >= 0).sum()) == 64457
    assert len(mesh.hierarchy.categories) == 115
    assert mesh.meta["frequency_source"]["kind"] == "table"
    # lookups: UI, preferred name, entry term, PubMed Name/qualifier, case
    assert mesh.lookup("D009369") == "D009369"
    assert mesh.lookup("neoplasms") == "D009369"
    assert mesh.lookup("Neoplasms/drug therapy") == "D009369"
    assert mesh.lookup("LUNG NEOPLASMS") == "D008175"
    assert mesh.lookup("Slaughterhouses") == "D000003"  # entry term of Abattoirs
    assert mesh.lookup("no such heading") is None
    h = mesh.hierarchy
    assert h.categories_of("D008175") == ["C04", "C08"]
    assert {"D008171", "D012142"} == h.parents("D008175")
    assert "D008175" in h.descendants("D009369")
    assert "D009369" in h.ancestors("D008175")
    assert h.lca("D008175", "D002289") is not None


def test_faithful_matches_reference_on_real_pairs(mesh) -> None:
    v = mesh.vocab
    ref = ReferenceKailin({u: v.tree_numbers(u) for u in v.uis}, dict(zip(v.uis, mesh.df)),
                          precompute=True)
    rng = np.random.default_rng(7)
    seen = np.nonzero(mesh.df > 0)[0]
    a = list(rng.choice(seen, 1500))
    b = list(rng.choice(seen, 1500))
    # related pairs (descendant / ancestor / sibling) exercise the LCA logic
    for u in rng.choice(v.uis, 600):
        anc = sorted(mesh.hierarchy.ancestors(u))
        if anc:
            a.append(v.id_of[u])
            b.append(v.id_of[anc[rng.integers(len(anc))]])
            sib = sorted(mesh.hierarchy.children(anc[-1]))
            a.append(v.id_of[u])
            b.append(v.id_of[sib[rng.integers(len(sib))]])
    a, b = np.array(a), np.array(b)
    got = mesh.scorer(faithful=True).pair_similarities(a, b)
    want = np.array([ref.similarity(v.uis[x], v.uis[y]) for x, y in zip(a, b, strict=True)])
    assert np.abs(got - want).max() < 1e-9
    assert (got > 0).mean() > 0.2  # the related pairs are not all zero
    # document scores agree too
    srcs = [[v.uis[x] for x in a[i : i + 5]] for i in range(0, 200, 5)]
    ctxs = [[[v.uis[y] for y in b[i + j : i + j + 3]] for j in range(4)] for i in range(0, 200, 5)]
    got_doc = mesh.scorer(faithful=True).doc_scores(srcs, ctxs)
    want_doc = [ref.doc_score(s, c) for s, c in zip(srcs, ctxs, strict=True)]
    assert np.allclose(got_doc, want_doc, atol=1e-9)


def test_default_beats_path_on_human_ratings(mesh) -> None:
    from kailin.mesh.human_eval import correlations

    files = sorted((SAMPLES / "term_similarity_dev").glob("*.csv"))
    rows = correlations(mesh, files, {"kailin": mesh.scorer(), "path": mesh.scorer("path"),
                                      "faithful": mesh.scorer(faithful=True)})
    assert len(rows) == 6
    mean = {k: np.mean([r[k] for r in rows]) for k in ("kailin", "path", "faithful")}
    assert mean["kailin"] >= mean["path"]
    assert mean["kailin"] > mean["faithful"]


def test_read_official_xml_record() -> None:
    recs = list(read_descriptor_xml(XML_SAMPLE))
    assert len(recs) == 1
    r = recs[0]
    assert (r.ui, r.name) == ("D000001", "Calcimycin")
    assert r.tree_numbers == ["D03.438.221.173"]
    assert "A-23187" in r.entry_terms


def test_xml_gzip_and_errors(tmp_path: Path) -> None:
    gz = tmp_path / "desc.xml.gz"
    with gzip.open(gz, "wb") as f:
        f.write(XML_SAMPLE.read_bytes())
    assert load_vocabulary(gz).uis == ["D000001"]
    # truncated XML: error names the file and the line
    cut = tmp_path / "cut.xml"
    cut.write_bytes(XML_SAMPLE.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"cut\.xml: malformed or truncated XML at line \d+"):
        load_vocabulary(cut)
    # truncated gzip
    bad_gz = tmp_path / "bad.xml.gz"
    bad_gz.write_bytes(gz.read_bytes()[:400])
    with pytest.raises(InputError, match="bad.xml.gz"):
        load_vocabulary(bad_gz)
    # not a MeSH file at all
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    with pytest.raises(InputError, match="not a MeSH descriptor file"):
        load_vocabulary(junk)


def test_tsv_and_mtrees_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("D000001\tCalcimycin\t\tD03.438\nD000002\tTemefos\t\tD03.43X\n")
    with pytest.raises(InputError, match=r"bad\.tsv:2: malformed tree number"):
        load_vocabulary(bad)
    mt = tmp_path / "mtrees.bin"
    mt.write_text("Body Regions;A01\nAnatomic Landmarks;A01.111\nBreast;A01.236\n"
                  "Breast;A01.236.500\nbroken line\n")
    with pytest.raises(InputError, match=r"mtrees\.bin:5: expected 'Name;TreeNumber'"):
        load_vocabulary(mt)
    mt.write_text("Body Regions;A01\nAnatomic Landmarks;A01.111\nBreast;A01.236\n"
                  "Breast;A01.236.500\n")
    v = load_vocabulary(mt)
    assert len(v) == 3
    assert v.tree_numbers(v.lookup("breast")) == ["A01.236", "A01.236.500"]


def test_build_from_real_tsv_and_frequencies(tmp_path: Path, mesh) -> None:
    out = tmp_path / "mesh"
    res = runner.invoke(app, ["mesh", "build", "--descriptors", str(TSV), "--frequencies",
                              str(FREQ), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "30764 descriptors" in res.output
    built = load_mesh(out)
    assert np.array_equal(built.df, mesh.df)
    assert np.allclose(built.ic_global, mesh.ic_global)
    # the rebuilt folder scores like the packaged one
    res = runner.invoke(app, ["mesh", "similarity", "Heart", "Myocardium", "--mesh", str(out)])
    assert res.exit_code == 0
    assert float(res.stdout) == pytest.approx(mesh.scorer().similarity("Heart", "Myocardium"),
                                              abs=1e-6)


def test_build_from_corpus(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    (corpus / "data").mkdir(parents=True)
    pq.write_table(pa.table({"pmid": [1, 2, 3],
                             "mesh_uis": [["D009369", "D006801"], ["D008175"], ["D006801"]]}),
                   corpus / "data" / "part-0.parquet")
    small = tmp_path / "small.tsv"
    lines = [ln for ln in TSV.read_text(encoding="utf-8").splitlines()
             if ln.split("\t")[0] in {"D009369", "D006801", "D008175", "D012142", "D008171"}]
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    m = build_mesh(small, tmp_path / "m", corpus=corpus)
    assert m.df[m.vocab.id_of["D006801"]] == 2
    assert m.df[m.vocab.id_of["D008175"]] == 1
    assert m.meta["frequency_source"]["documents"] == 3


def test_cli_similarity_and_pairs(tmp_path: Path, mesh) -> None:
    res = runner.invoke(app, ["mesh", "similarity", "D006321", "Myocardium", "--faithful"])
    assert res.exit_code == 0
    assert float(res.stdout) == pytest.approx(
        mesh.scorer(faithful=True).similarity("D006321", "D009206"), abs=1e-6)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("Heart\tMyocardium\nD009369\tLung Neoplasms\nNeoplasms/drug therapy\tD009369\n"
                     "Anemia\tAppendicitis\n")
    res = runner.invoke(app, ["mesh", "similarity", "--pairs", str(pairs), "--measure", "path"])
    assert res.exit_code == 0
    vals = [float(x) for x in res.stdout.splitlines()]
    sc = mesh.scorer("path")
    assert vals == pytest.approx([sc.similarity("Heart", "Myocardium"),
                                  sc.similarity("D009369", "D008175"), 1.0,
                                  sc.similarity("Anemia", "Appendicitis")], abs=1e-6)
    for measure in ("kailin", "lin", "resnik", "jiang", "wu-palmer", "leacock-chodorow"):
        res = runner.invoke(app, ["mesh", "similarity", "Heart", "Myocardium", "--measure",
                                  measure])
        assert res.exit_code == 0, (measure, res.output)
        assert np.isfinite(float(res.stdout))


def test_cli_similarity_says_which_measure_it_used(mesh) -> None:
    """Issue 28: `kailin mesh similarity` defaults to another measure than `kailin score`
    without saying so."""
    from kailin.mesh.score import DEFAULT_SCORING

    res = runner.invoke(app, ["mesh", "similarity", "Heart", "Myocardium"])
    assert res.exit_code == 0, res.output
    assert float(res.stdout) == pytest.approx(
        mesh.scorer("kailin").similarity("Heart", "Myocardium"), abs=1e-6)
    assert DEFAULT_SCORING["measure"] == "embedding"
    assert res.stderr.strip() == ("measure: kailin; `kailin score` defaults to embedding: "
                                  "--measure embedding to match it")
    res = runner.invoke(app, ["mesh", "similarity", "--help"])
    shown = " ".join(res.stdout.replace("│", " ").split())  # rich's help panel wraps
    assert "Not `kailin score`'s default, which is embedding" in shown


def test_cli_unknown_descriptor_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "kailin.cli.main", "mesh", "similarity", "Heart", "Blorf"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2
    assert "unknown MeSH descriptor 'Blorf'" in p.stderr
    pairs = tmp_path / "p.tsv"
    pairs.write_text("Heart\tMyocardium\nHeart\tBlorf\n")
    p = subprocess.run([sys.executable, "-m", "kailin.cli.main", "mesh", "similarity",
                        "--pairs", str(pairs)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "p.tsv:2" in p.stderr and p.stdout == ""


def test_mesh_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a MeSH build"):
        load_mesh(tmp_path)
    shutil.copytree(Path(load_mesh().root), tmp_path / "copy")
    assert len(load_mesh(tmp_path / "copy").vocab) == 30764


@pytest.mark.parametrize("faithful", [True, False])
@pytest.mark.parametrize("aggregate", ["mean", "bma"])
def test_compiled_and_numpy_paths_agree(mesh, faithful: bool, aggregate: str) -> None:
    """The numba kernels and the vectorised numpy code give the same scores."""
    pytest.importorskip("numba")
    v = mesh.vocab
    rng = np.random.default_rng(3)
    seen = np.nonzero(mesh.df > 0)[0]
    srcs = [[v.uis[i] for i in rng.choice(seen, rng.integers(0, 15))] for _ in range(300)]
    ctxs = [[[v.uis[i] for i in rng.choice(seen, rng.integers(0, 15))] for _ in range(4)]
            for _ in range(300)]
    fast = mesh.scorer(faithful=faithful, aggregate=aggregate)
    slow = mesh.scorer(faithful=faithful, aggregate=aggregate)
    slow.use_compiled = False
    a = fast.doc_scores(srcs, ctxs)
    b = slow.doc_scores(srcs, ctxs)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=1e-12)
    pa_, pb_ = rng.choice(seen, 5000), rng.choice(seen, 5000)
    assert np.allclose(fast.pair_similarities(pa_, pb_), slow.pair_similarities(pa_, pb_),
                       atol=1e-12)
