"""Export of the AI-ready dataset: CPT text exactness, SFT/triples, decontamination, card."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from kailin.cli.dataset import app as dataset_app
from kailin.corpus.schema import CORPUS_SCHEMA
from kailin.dataset.answers import AnswerStage
from kailin.dataset.export import CPT_TEMPLATE, ExportConfig, cpt_text, export_dataset
from kailin.engine.executors.local import LocalExecutor
from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pqa


def make_corpus(root: Path) -> tuple[Path, dict]:
    """A real corpus from PQA-L: title = question, abstract = contexts + conclusion."""
    pqal = pqa.load_pqal()
    test = set(pqa.test_pmids())
    # 12 non-test PMIDs and 3 test PMIDs
    pmids = [p for p in pqal if p not in test][:12] + [p for p in pqal if p in test][:3]
    try:
        from kailin.mesh import load_mesh

        mesh = load_mesh()
    except Exception:  # the MeSH build is optional for these tests
        mesh = None
    rows = []
    for p in pmids:
        it = pqal[p]
        pairs = [(u, m) for m in it.meshes if (u := mesh.lookup(m) if mesh else None)]
        uis = [u for u, _ in pairs]
        rows.append({
            "pmid": int(p), "version": 1, "title": it.question,
            "abstract": "\n".join([*it.contexts, it.long_answer]), "mesh_uis": uis,
            "mesh_major": [False] * len(uis),
            "mesh": [{"ui": u, "name": n, "major": False, "qualifiers": []}
                     for u, n in zip(uis, it.meshes, strict=False)],
            "keywords": [], "chemicals": [], "publication_types": [], "journal": None,
            "year": it.year, "language": "eng", "doi": None, "source_file": "ori_pqal.json",
        })
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA),
                   root / "data" / "part-0.parquet")
    (root / "manifest.json").write_text("{}")
    return root, {"pmids": [int(p) for p in pmids], "mesh": mesh, "pqal": pqal}


def make_scores(info: dict) -> pa.Table:
    """Two generators per source PMID; contexts = other corpus PMIDs; score = MeSH Jaccard."""
    pmids = info["pmids"]
    clean, dirty = pmids[:12], pmids[12:]
    pqal = info["pqal"]
    rows = []
    for i, p in enumerate(pmids):
        if p in dirty:
            ctx = clean[:4]
        elif i == 11:  # a clean source with a test PMID among its contexts
            ctx = [clean[0], dirty[0], clean[1], clean[2]]
        else:
            ctx = [c for c in clean if c != p][i % 5: i % 5 + 5]
        m = set(pqal[str(p)].meshes)
        js = [len(m & set(pqal[str(c)].meshes)) / max(1, len(m | set(pqal[str(c)].meshes)))
              for c in ctx[:4]]
        for g, off in (("llama", 0.0), ("biomistral", 0.05 if i % 2 else -0.05)):
            rows.append({"pmid": p, "generator": g,
                         "question": pqal[str(p)].question if g == "llama"
                         else "What is studied in: " + pqal[str(p)].question,
                         "context_pmids": ctx, "score": sum(js) / len(js) + off})
    return pa.Table.from_pylist(rows)


def test_cpt_text_matches_authors_format() -> None:
    got = cpt_text("T", "line1\nline2", ["c1\nx", "c2", "c3", "c4", "c5"], "Q?")
    assert got == (
        "After reading the paper ```T:line1 line2```, I searched for related materials "
        "```['c1 x', 'c2', 'c3', 'c4']``` and pondered the following scientific question "
        "```Q?```."
    )
    # contexts = Python str() of the list (quotes escaped by repr), newlines -> spaces
    ctx = ["it's", 'say "hi"']
    assert cpt_text("a", "b", ctx, "q") == CPT_TEMPLATE.format(
        title="a", abstract="b", contexts=str(ctx), question="q")
    assert "```[\"it's\", 'say \"hi\"']```" in cpt_text("a", "b", ctx, "q")
    with pytest.raises(InputError, match="placeholder"):
        cpt_text("a", "b", [], "q", template="{nope}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_export_cpt_decontaminates_and_writes_card(corpus, tmp_path) -> None:
    root, info = corpus
    scores = make_scores(info)
    out = tmp_path / "ds"
    stats = export_dataset(scores, out, corpus_dir=root, mesh=info["mesh"])
    dec = stats["decontamination"]
    assert dec["rows_excluded_source_pmid"] == 6  # 3 test PMIDs x 2 generators
    assert dec["rows_excluded_context_pmid"] == 2  # PMID #11, both generators
    test = {int(p) for p in pqa.test_pmids()}
    cpt = pq.read_table(out / "cpt" / "train.parquet")
    assert cpt.column_names == ["pmid", "text"]
    assert cpt.num_rows == 11  # best question per clean PMID (11 left)
    assert not set(cpt.column("pmid").to_pylist()) & test
    jl = [json.loads(x) for x in (out / "cpt" / "train.jsonl").read_text().splitlines()]
    assert jl == cpt.to_pylist()
    # exact text of one record, rebuilt independently from the corpus and scores
    first = scores.filter(pa.compute.equal(scores["pmid"], cpt["pmid"][0]))
    best = max(first.to_pylist(), key=lambda r: r["score"])
    corp = {r["pmid"]: r for r in pq.read_table(root / "data").to_pylist()}
    src = corp[best["pmid"]]
    ctx = [corp[c]["abstract"].replace("\n", " ") for c in best["context_pmids"][:4]]
    expected = ("After reading the paper ```" + src["title"] + ":" + src["abstract"]
                + "```, I searched for related materials ```" + str(ctx)
                + "``` and pondered the following scientific question ```" + best["question"]
                + "```.").replace("\n", " ")
    assert cpt["text"][0].as_py() == expected
    assert "\n" not in "".join(cpt.column("text").to_pylist())
    # no answers: no sft / triples
    assert set(stats["splits"]) == {"cpt"}
    card = (out / "README.md").read_text()
    assert "config_name: cpt" in card and "Decontamination" in card
    assert "6 with a test PMID as source" in card
    assert (out / "plots" / "score_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "category_coverage.png").is_file()
    assert json.loads((out / "export.json").read_text())["records"] == 11
    if info["mesh"] is not None:
        assert stats["mesh_coverage"]["branches"]["B"]["records"] > 0  # Humans etc.


def test_export_without_decontamination_and_select_all(corpus, tmp_path) -> None:
    root, info = corpus
    cfg = ExportConfig(exclude_pubmedqa_test=False, select="all", formats=["cpt"])
    stats = export_dataset(make_scores(info), tmp_path / "ds", corpus_dir=root, config=cfg,
                           mesh=info["mesh"], plots=False)
    assert stats["records"] == 30 and stats["decontamination"] == {"enabled": False}
    assert "**Disabled**" in (tmp_path / "ds" / "README.md").read_text()


def _teacher(prompts: list[str]) -> list[str]:
    """A deterministic teacher that quotes the first context sentence (grounded) or invents."""
    out = []
    for i, p in enumerate(prompts):
        first = p.split("[1] ", 1)[1].split(". ")[0]
        if i % 2 == 0:
            out.append(f"The contexts report that {first}.\nDecision: yes")
        else:
            out.append("Quantum chromodynamics predicts gluon confinement in neutron stars.")
    return out


def test_answers_stage_and_full_export(corpus, tmp_path) -> None:
    root, info = corpus
    stage = AnswerStage(teacher=_teacher, corpus_dir=str(root), grounding="lexical")
    ans_dir = tmp_path / "answers"
    st = LocalExecutor(rows_per_shard=8, progress=False).run(stage, make_scores(info), ans_dir)
    assert st["rows_out"] == 30
    ans = pq.read_table(ans_dir)
    rows = ans.to_pylist()
    assert all(r["grounding_method"] == "lexical" for r in rows)
    g = [r["grounded"] for r in rows]
    assert True in g and False in g
    yn = [r for r in rows if r["is_yes_no"] and r["raw_answer"].endswith("Decision: yes")]
    assert yn and all(r["decision"] == "yes" and "Decision" not in r["answer"] for r in yn)
    out = tmp_path / "ds"
    stats = export_dataset(ans_dir, out, corpus_dir=root, mesh=info["mesh"],
                           config=ExportConfig(select="all", require_grounded=True))
    assert stats["dropped_ungrounded"] > 0
    trip = pq.read_table(out / "triples" / "train.parquet")
    sft = pq.read_table(out / "sft" / "train.parquet")
    assert trip.num_rows == sft.num_rows == stats["records"] > 0
    assert all(trip.column("grounded").to_pylist())
    assert {"pmid", "question", "contexts", "answer"} <= set(trip.column_names)
    m = sft.column("messages")[0].as_py()
    assert [x["role"] for x in m] == ["system", "user", "assistant"]
    assert "Question:" in m[1]["content"] and m[2]["content"].startswith("The contexts report")
    card = (out / "README.md").read_text()
    assert "Grounding check" in card and "grounded rate" in card
    assert stats["grounding"]["grounded_rate"] == 1.0  # after the filter


def test_cli_export_and_errors(corpus, tmp_path) -> None:
    root, info = corpus
    scores = tmp_path / "scores.parquet"
    pq.write_table(make_scores(info), scores)
    app = typer.Typer()
    app.add_typer(dataset_app, name="dataset")
    r = CliRunner().invoke(app, ["dataset", "export", str(scores), str(tmp_path / "o"),
                                 "--corpus", str(root), "--no-plots", "--formats", "cpt"])
    assert r.exit_code == 0, r.output
    assert "excluded 6 rows" in r.output
    r = CliRunner().invoke(app, ["dataset", "export", str(scores), str(tmp_path / "o2")])
    assert isinstance(r.exception, InputError) and "--corpus" in str(r.exception)
    r = CliRunner().invoke(app, ["dataset", "export", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert isinstance(r.exception, InputError)


def test_raw_template_keeps_the_abstracts_without_the_question() -> None:
    from kailin.dataset.export import RAW_TEMPLATE

    got = cpt_text("T", "the abstract", ["c1 text", "c2\nmore", "c3", "c4", "c5"], "Q?",
                   template=RAW_TEMPLATE)
    assert got == "T\nthe abstract\n\nc1 text\n\nc2 more\n\nc3\n\nc4"
    assert "Q?" not in got and "[" not in got
