"""AdaptLLM reading comprehension (arXiv 2309.09530) on real abstracts from data/samples, and the
equal-token budget across CPT arms on real tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kailin.dataset.adaptllm import CONTRADICT as CONTRA
from kailin.dataset.adaptllm import (
    ENTAIL,
    NEUTRAL,
    mine,
    reading_comprehension,
    source_documents,
    split_sentences,
    write_adaptllm,
)
from kailin.errors import InputError

NLM = Path(__file__).resolve().parents[1] / "data" / "samples" / "mesh_indexed_abstracts_nlm"


def _abstracts(n: int | None = None) -> list[dict]:
    recs: list[dict] = []
    cur: dict = {}
    for f in sorted(NLM.glob("*/*.TiAbMe")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("|", 2)
            if len(parts) < 3:
                continue
            if parts[1] == "t":
                cur = {"pmid": int(parts[0]), "title": parts[2]}
            elif parts[1] == "a" and cur.get("pmid") == int(parts[0]) and parts[2].strip():
                recs.append({**cur, "abstract": parts[2]})
    return recs[:n] if n else recs


def _norm(s: str) -> str:
    return " ".join(s.split())


def test_tasks_are_grounded_deterministic_and_follow_the_raw_text() -> None:
    recs = _abstracts(300)
    kinds: set[str] = set()
    for r in recs:
        rc = mine(r)
        text = rc.text
        assert text == reading_comprehension(r) == mine(dict(r)).text  # deterministic
        assert rc.tasks, r["pmid"]  # every record: the raw text plus at least one task
        # the raw text is all there, in order (a completion prompt may sit between sentences)
        pos = 0
        for s in split_sentences(r["abstract"]):
            pos = text.index(s, pos) + len(s)
        src = _norm(r["title"]) + " " + r["abstract"]
        for t in rc.tasks:
            kinds.add(f"{t.family}.{t.kind}")
            assert t.sources and all(s in src for s in t.sources), (r["pmid"], t)
            assert t.render() in text or t.family in ("completion", "summarize")
            if t.family in ("completion", "paraphrase", "commonsense"):
                assert t.answer in src or t.answer[1:] in src  # (first letter capitalised)
            if t.family == "nli" and t.answer in ("Yes", "No", "Maybe"):
                conn = {"Yes": ENTAIL, "No": CONTRA, "Maybe": NEUTRAL}[t.answer]
                assert re.match(rf"({'|'.join(map(re.escape, conn))})\b", t.sources[1])
            if t.kind == "word2text":
                words = t.question.split("\n")[0].split(": ", 1)[1] if t.question.startswith((
                    "Concepts", "Keywords")) else t.answer
                assert all(w in t.sources[0] for w in words.split(", "))
            if t.kind == "title_generation":
                assert t.answer == _norm(r["title"]) and t.render() in text
            if t.kind == "article_from_title":
                assert text.startswith(t.question) and _norm(r["title"]) in t.question
    # over 300 real abstracts every family of the paper is mined
    for k in ("summarize.title_generation", "summarize.article_from_title",
              "completion.text_completion", "word2text.word2text", "nli.contradict",
              "nli.neutral", "commonsense.cause_effect", "commonsense.effect_cause",
              "paraphrase.contradict"):
        assert k in kinds, k


def test_connective_pairs_become_questions() -> None:
    r = {"pmid": 1, "title": "A short study title here", "abstract": (
        "Serum ferritin concentrations were measured in all of the enrolled haemodialysis "
        "patients. However, transferrin saturation did not differ between the two treatment "
        "groups at any time point. Therefore, the iron status of these patients cannot be "
        "judged from ferritin concentrations alone in routine practice. Mortality increased "
        "in the second year of follow-up because of cardiovascular events in older patients.")}
    kinds = {(t.family, t.kind): t for t in mine(r).tasks}
    assert ("nli", "contradict") in kinds and ("nli", "entail") in kinds
    assert ("paraphrase", "contradict") in kinds and ("commonsense", "cause_effect") in kinds
    ce = kinds[("commonsense", "effect_cause")]
    assert ce.answer == "cardiovascular events in older patients"
    eff = kinds[("commonsense", "cause_effect")]
    assert eff.answer.startswith("The iron status") and "transferrin" in eff.question


def test_split_sentences_keeps_abbreviations() -> None:
    s = ("Growth of R. oryzae was measured, e.g. in flasks vs. fermentors. It rose 2-fold. "
         "Results (Fig. 2) agree.")
    assert split_sentences(s) == ["Growth of R. oryzae was measured, e.g. in flasks vs. "
                                  "fermentors.", "It rose 2-fold.", "Results (Fig. 2) agree."]


def test_write_adaptllm_table(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    recs = [*_abstracts(40), {"pmid": 9, "title": "No abstract", "abstract": ""}]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    docs = source_documents(src)
    assert [d["pmid"] for d in docs] == [r["pmid"] for r in recs]
    stats = write_adaptllm(docs, tmp_path / "ad")
    assert stats["skipped_no_abstract"] == 1  # the empty abstract has nothing to read
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "ad" / "cpt" / "train.parquet")
    assert t.schema.names == ["pmid", "text"] and t.schema.field("pmid").type == pa.int64()
    assert t.num_rows == stats["records"] == 40 and stats["records_without_task"] == 0
    assert t["text"].to_pylist()[0] == reading_comprehension(recs[0])
    assert stats["tasks"] == sum(stats["tasks_by_kind"].values()) >= 40
    saved = json.loads((tmp_path / "ad" / "adaptllm.json").read_text())
    assert saved["records"] == 40 and "2309.09530" in saved["method"]
    assert len((tmp_path / "ad" / "cpt" / "train.jsonl").read_text().splitlines()) == 40


def test_equal_token_budget_on_real_tables(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("transformers")
    from kailin.dataset.budget import count_tokens, write_budgeted
    from kailin.dataset.export import RAW_TEMPLATE, cpt_text
    from kailin.train.common import load_tokenizer

    recs = _abstracts(30)
    ctx = [r["abstract"] for r in recs]
    kailin = [cpt_text(r["title"], r["abstract"], ctx[i + 1: i + 5], "Is it so?")
              for i, r in enumerate(recs)]
    raw = [cpt_text(r["title"], r["abstract"], ctx[i + 1: i + 5], "", RAW_TEMPLATE)
           for i, r in enumerate(recs)]
    adapt = [reading_comprehension(r) for r in recs]
    pmids = pa.array([r["pmid"] for r in recs], pa.int64())
    arms = {name: pa.table({"pmid": pmids, "text": texts}) for name, texts in (
        ("kailin", kailin), ("raw_abstracts", raw), ("adaptllm", adapt))}
    tok = load_tokenizer("smollm2")
    totals = {a: sum(count_tokens(tok, t["text"].to_pylist())) for a, t in arms.items()}
    assert len(set(totals.values())) == 3  # the formats differ in size
    block = 256
    plan = write_budgeted(arms, tok, tmp_path / "b", block_size=block)
    assert plan["budget_tokens"] == min(totals.values())
    import pyarrow.parquet as pq

    for arm in arms:
        kept = pq.read_table(tmp_path / "b" / arm / "cpt" / "train.parquet")
        tokens = sum(count_tokens(tok, kept["text"].to_pylist()))
        assert tokens == plan["arms"][arm]["tokens_kept"]
        assert abs(tokens - plan["budget_tokens"]) < block  # equal within one block
        assert abs(plan["arms"][arm]["blocks"] - plan["blocks"]) <= 1
        assert kept["pmid"].to_pylist() == arms[arm]["pmid"].to_pylist()[: kept.num_rows]
    smallest = min(totals, key=totals.get)
    assert plan["arms"][smallest]["records_kept"] == 30
    assert not plan["arms"][smallest]["last_cut"]
    assert json.loads((tmp_path / "b" / "budget.json").read_text()) == plan
    # a given budget: same steps for every arm
    from kailin.dataset.budget import equal_token_budget

    p2, kept = equal_token_budget({a: t["text"].to_pylist() for a, t in arms.items()}, tok,
                                  block, budget_tokens=5000)
    assert {a.blocks for a in p2.arms.values()} <= {p2.blocks - 1, p2.blocks, p2.blocks + 1}
    assert p2.max_steps(batch_size=2, grad_accum=2) == -(-20 // 4)  # ceil(5000/256)=20 blocks
    assert all(abs(a.tokens_kept - 5000) < block for a in p2.arms.values())


def test_adaptllm_command(tmp_path) -> None:
    from typer.testing import CliRunner

    from kailin.cli.main import app

    recs = _abstracts(5)
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = CliRunner().invoke(app, ["dataset", "adaptllm", str(src), str(tmp_path / "ad")])
    assert res.exit_code == 0, res.output
    assert "5 AdaptLLM texts" in res.output
    rows = [json.loads(x) for x in
            (tmp_path / "ad" / "cpt" / "train.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [reading_comprehension(r) for r in recs]
    res = CliRunner().invoke(app, ["dataset", "adaptllm", str(src), str(tmp_path / "x"),
                                   "--with-contexts"])
    assert isinstance(res.exception, InputError) and "context_pmids" in str(res.exception)
