"""Complete training targets and a publishable dataset card.

* every answer carries the teacher's finish reason (``stop`` / ``length``), from the backend and
  through the response cache; answers cut at the token limit stay out of the SFT export unless
  ``--keep-truncated-answers``, and the export and its card report their share;
* the card has licences, the column schema of every table, a ``load_dataset`` snippet that runs
  from the export folder, limitations, and no absolute local path.

The exports run through ``kailin dataset export`` on real PubMedQA abstracts (the corpus of
``test_dataset_export``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kailin.cli.main import app
from kailin.dataset.answers import AnswerStage
from kailin.dataset.export import export_dataset, type_name
from kailin.engine.executors.local import LocalExecutor
from kailin.llm import CachedBackend, Completion, ResponseCache, SamplingParams
from kailin.llm.base import Backend, apply_stop
from test_dataset_export import make_corpus, make_scores


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _teacher(prompts: list[str]) -> list[Completion]:
    """Quotes the first context sentence; every third answer is cut mid-sentence at the token
    limit, as a teacher with too small a budget does."""
    out = []
    for i, p in enumerate(prompts):
        first = p.split("[1] ", 1)[1].split(". ")[0]
        if i % 3 == 2:
            out.append(Completion(f"The contexts report that {first} and further", 10, 40,
                                  "length"))
        else:
            out.append(Completion(f"The contexts report that {first}.\nDecision: yes", 10, 20,
                                  "stop"))
    return out


def _answers(corpus: tuple[Path, dict], out: Path, teacher=_teacher) -> Path:
    root, info = corpus
    stage = AnswerStage(teacher=teacher, corpus_dir=str(root), grounding="lexical")
    LocalExecutor(rows_per_shard=8, progress=False).run(stage, make_scores(info), out)
    return out


def _export(args: list[str]) -> None:
    res = CliRunner().invoke(app, ["dataset", "export", *args])
    assert res.exit_code == 0, res.output + res.stderr
    return res


def test_truncated_answers_stay_out_of_sft_and_are_counted(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    ans = _answers(corpus, tmp_path / "answers")
    rows = pq.read_table(ans).to_pylist()
    reasons = [r["finish_reason"] for r in rows]
    assert set(reasons) == {"stop", "length"}
    cut = {(r["pmid"], r["question"]) for r in rows if r["finish_reason"] == "length"}

    res = _export([str(ans), str(tmp_path / "ds"), "--corpus", str(root), "--select", "all",
                   "--no-plots"])
    stats = json.loads((tmp_path / "ds" / "export.json").read_text())
    tr = stats["truncated_answers"]
    n_trip = stats["splits"]["triples"]["rows"]
    assert tr["answers"] == n_trip and tr["truncated"] + tr["finished"] == n_trip
    assert tr["truncated"] > 0 and tr["truncated_share"] == pytest.approx(tr["truncated"] / n_trip)
    assert tr["dropped_from_sft"] == tr["truncated"] and tr["unknown"] == 0
    sft = pq.read_table(tmp_path / "ds" / "sft" / "train.parquet").to_pylist()
    assert len(sft) == n_trip - tr["truncated"]
    assert not any(m["messages"][2]["content"].endswith("and further") for m in sft)
    trip = pq.read_table(tmp_path / "ds" / "triples" / "train.parquet")
    assert trip.column("finish_reason").to_pylist().count("length") == tr["truncated"]
    assert {(p, q) for p, q, f in zip(trip.column("pmid").to_pylist(),
                                      trip.column("question").to_pylist(),
                                      trip.column("finish_reason").to_pylist())
            if f == "length"} <= cut
    assert "truncated answers" in res.stdout and "left out of sft" in res.stdout
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "## Truncated answers" in card and f"{tr['truncated_share']:.1%}" in card

    _export([str(ans), str(tmp_path / "keep"), "--corpus", str(root), "--select", "all",
             "--no-plots", "--keep-truncated-answers"])
    kept = json.loads((tmp_path / "keep" / "export.json").read_text())
    assert kept["splits"]["sft"]["rows"] == n_trip
    assert kept["truncated_answers"]["kept_in_sft"] is True


def test_answers_without_a_finish_reason_count_as_unknown(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    # an answers table written before finish_reason existed
    ans = _answers(corpus, tmp_path / "answers")
    old = pq.read_table(ans).drop_columns(["finish_reason"])
    pq.write_table(old, tmp_path / "old.parquet")
    _export([str(tmp_path / "old.parquet"), str(tmp_path / "ds"), "--corpus", str(root),
             "--select", "all", "--no-plots"])
    stats = json.loads((tmp_path / "ds" / "export.json").read_text())
    tr = stats["truncated_answers"]
    assert tr["unknown"] == tr["answers"] > 0 and tr["truncated"] == 0
    assert stats["splits"]["sft"]["rows"] == tr["answers"]  # nothing dropped on no evidence


class _Counting(Backend):
    """Answers ``N words`` prompts with N words and says it stopped at the token limit when N
    exceeds it (a stand-in backend: what is tested is the cache around it)."""

    kind = "counting"
    calls = 0

    @property
    def model_name(self) -> str:
        return "counting"

    def generate(self, requests, params):
        type(self).calls += 1
        out = []
        for r in requests:
            n = int(str(r).split()[0])
            k = min(n, params.max_new_tokens)
            out.append(Completion("w " * k, 1, k, "length" if n > k else "stop"))
        return out


def test_the_response_cache_keeps_the_finish_reason(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")
    params = SamplingParams(max_new_tokens=5)
    first = CachedBackend(_Counting(), cache).generate(["3 words", "9 words"], params)
    assert [c.finish_reason for c in first] == ["stop", "length"]
    again = CachedBackend(_Counting(), ResponseCache(tmp_path / "cache.sqlite")).generate(
        ["3 words", "9 words"], params)
    assert all(c.cached for c in again) and _Counting.calls == 1
    assert [c.finish_reason for c in again] == ["stop", "length"]
    # a row stored without a finish reason (an older cache) reads back as unknown
    con = cache._conn()
    with con:
        con.execute("UPDATE responses SET finish_reason = NULL")
    old = CachedBackend(_Counting(), cache).generate(["9 words"], params)
    assert old[0].cached and old[0].finish_reason is None


@pytest.mark.slow
def test_transformers_backend_says_whether_eos_came_within_the_budget() -> None:
    pytest.importorskip("transformers")
    from kailin.llm import BackendOptions, build_backend

    backend = build_backend("smollm2", BackendOptions(device="cpu", batch_size=2))
    reqs = [[{"role": "user", "content": "Explain in detail how the kidney filters blood."}],
            [{"role": "user", "content": "Reply with one word: is water wet? yes or no"}]]
    out = backend.generate(reqs, SamplingParams(max_new_tokens=24))
    assert out[0].finish_reason == "length" and out[0].completion_tokens == 24
    assert out[1].finish_reason == "stop" and out[1].completion_tokens < 24


def test_card_has_licences_schema_loader_limitations_and_no_absolute_path(
        corpus, tmp_path: Path) -> None:
    root, info = corpus
    ans = _answers(corpus, tmp_path / "answers")
    out = tmp_path / "run" / "export"
    # as the pipeline exports: provenance with absolute paths (models, run folder, corpus)
    export_dataset(ans, out, corpus_dir=root, mesh=info["mesh"], plots=False, provenance={
        "config": {"generators": [{"name": "pqal", "model": "smollm2"},
                                  {"name": "pqaa", "model": str(tmp_path / "run" / "models"
                                                                / "pqaa-sft" / "model")}],
                   "answers": {"teacher": "smollm2", "enabled": True},
                   "corpus": {"dir": str(root)}},
        "run_dir": str(tmp_path / "run")})
    card = (out / "README.md").read_text()
    for section in ("## Schema", "## Load", "## Licence", "## Limitations", "## Provenance"):
        assert section in card, section
    assert str(tmp_path) not in card and str(tmp_path.resolve()) not in card
    assert "/tmp/" not in card and "../models/pqaa-sft/model" in card
    # licences: source data and the models that wrote the text
    assert "NLM" in card and "terms_and_conditions" in card and "MIT" in card
    assert "MeSH" in card and "SmolLM2" in card and "Apache-2.0" in card
    # the schema of every exported table, from the files themselves
    for name in ("cpt", "sft", "triples"):
        for field in pq.read_schema(out / name / "train.parquet"):
            assert f"| {field.name} | `{type_name(field.type)}` |" in card, (name, field.name)
    assert "| messages | `list<struct<role: string, content: string>>` |" in card
    # the load_dataset snippet runs as written, from the export folder
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}
    n_sft = pq.read_metadata(out / "sft" / "train.parquet").num_rows
    n_cpt = pq.read_metadata(out / "cpt" / "train.parquet").num_rows
    check = code + f"\nassert len(sft) == {n_sft} and len(cpt) == {n_cpt}\n"
    res = subprocess.run([sys.executable, "-c", check], cwd=out, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_card_of_a_cli_export_names_no_local_path(corpus, tmp_path: Path) -> None:
    root, info = corpus
    scores = tmp_path / "in" / "scores.parquet"
    scores.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(make_scores(info).to_pylist()), scores)
    _export([str(scores), str(tmp_path / "ds"), "--corpus", str(root), "--no-plots",
             "--formats", "cpt"])
    card = (tmp_path / "ds" / "README.md").read_text()
    assert str(tmp_path) not in card and "scores.parquet" in card
    # the records name their generators (llama, biomistral) but not their models
    assert "## Licence" in card and "| question generator llama | `not recorded` |" in card
    assert "Llama community" not in card  # a generator's name is not its model


@pytest.mark.slow
def test_cli_answers_with_smollm2_record_and_report_cut_answers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from kailin.evaluate import pubmedqa as pqa

    test = set(pqa.test_pmids())
    items = [it for p, it in pqa.load_pqal().items() if p not in test][:2]
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.table({
        "pmid": [int(it.pmid) for it in items], "question": [it.question for it in items],
        "contexts": [[c[:200] for c in it.contexts[:2]] for it in items],
        "score": [0.5, 0.4]}), scores)
    res = CliRunner().invoke(app, ["--no-progress", "dataset", "answers", str(scores),
                                   str(tmp_path / "ans"), "--max-new-tokens", "6",
                                   "--batch-size", "2", "--device", "cpu",
                                   "--cache", str(tmp_path / "cache.sqlite")])
    assert res.exit_code == 0, res.output + res.stderr
    rows = pq.read_table(tmp_path / "ans").to_pylist()
    # two to three sentences never fit in 6 tokens: both answers are cut
    assert [r["finish_reason"] for r in rows] == ["length", "length"]
    assert "finish_reason length): 2 of 2 (100.0%)" in res.stdout
    # again into another folder: the answers come from the response cache, finish reason kept
    again = CliRunner().invoke(app, ["--no-progress", "dataset", "answers", str(scores),
                                     str(tmp_path / "again"), "--max-new-tokens", "6",
                                     "--batch-size", "2", "--device", "cpu",
                                     "--cache", str(tmp_path / "cache.sqlite")])
    assert again.exit_code == 0, again.output + again.stderr
    rows2 = pq.read_table(tmp_path / "again").to_pylist()
    assert [r["raw_answer"] for r in rows2] == [r["raw_answer"] for r in rows]
    assert [r["finish_reason"] for r in rows2] == ["length", "length"]
    assert len(ResponseCache(tmp_path / "cache.sqlite")) == 2


def test_answer_settings_reach_the_teacher_and_yes_no_keeps_its_decision(
        corpus, tmp_path: Path, monkeypatch) -> None:
    """``answers.instruction`` is what the prompt asks; ``answers.stop`` ends open answers at a
    blank line but is not sent with yes/no questions, whose decision line comes after the
    explanation (a blank line before it must not cut the decision off)."""
    import kailin.dataset.answers as answers_mod

    calls: list[tuple[tuple[str, ...], float, list[str]]] = []

    def fake_complete_fn(spec, max_new_tokens=256, batch_size=4, device=None, use_cache=True,
                         cache_path=None, stop=(), repetition_penalty=1.0):
        default_stop = stop

        def complete(prompts: list[str], stop=None) -> list[Completion]:
            used = tuple(default_stop if stop is None else stop)
            calls.append((used, repetition_penalty, prompts))
            text = "It is shown.\n\nDecision: yes"
            return [Completion(apply_stop(text, used)[0] if used else text, 5, 9,
                               "stop") for _ in prompts]
        return complete

    monkeypatch.setattr(answers_mod, "llm_complete_fn", fake_complete_fn)
    root, info = corpus
    scores = make_scores(info)
    qs = scores.column("question").to_pylist()
    qs = [("Does " + q[0].lower() + q[1:]) if i % 2 else q for i, q in enumerate(qs)]
    scores = scores.set_column(scores.column_names.index("question"), "question",
                               pa.array(qs, pa.string()))
    # the scores table's finish_reason is the question generator's: it stays, renamed
    scores = scores.append_column("finish_reason", pa.array(
        ["length" if i % 3 == 0 else "stop" for i in range(scores.num_rows)], pa.string()))
    stage = AnswerStage(teacher="smollm2", corpus_dir=str(root), grounding="lexical",
                        instruction="Answer in one short sentence.", stop=["\n\n"],
                        repetition_penalty=1.1)
    LocalExecutor(rows_per_shard=64, progress=False).run(stage, scores, tmp_path / "a")
    rows = pq.read_table(tmp_path / "a").to_pylist()
    assert {c[0] for c in calls} == {("\n\n",), ()} and {c[1] for c in calls} == {1.1}
    assert all("Answer in one short sentence." in p for c in calls for p in c[2])
    yes_no_prompts = [p for stop, _, ps in calls if not stop for p in ps]
    assert yes_no_prompts and all("Decision: yes" in p for p in yes_no_prompts)
    want = {(p, q): f for p, q, f in zip(scores["pmid"].to_pylist(), qs,
                                          scores["finish_reason"].to_pylist(), strict=True)}
    assert [r["question_finish_reason"] for r in rows] == [want[(r["pmid"], r["question"])]
                                                           for r in rows]
    assert {r["finish_reason"] for r in rows} == {"stop"}
    for r in rows:
        if r["is_yes_no"]:
            assert r["decision"] == "yes"
        else:
            assert r["raw_answer"] == "It is shown." and r["decision"] is None
