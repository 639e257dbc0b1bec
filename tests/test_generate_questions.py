"""Prompt templates, question extraction, the question-generation stage and its command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kailin.errors import InputError
from kailin.generate import questions as qmod
from kailin.generate.extract import extract_question
from kailin.generate.prompts import KAILIN_TEMPLATE, PromptTemplate, load_template
from kailin.generate.questions import QUESTIONS_SCHEMA, QuestionGenerationStage
from kailin.io import read_parquet
from kailin.llm.base import Backend, Completion, Request, SamplingParams

PQAL = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"


def make_corpus(root: Path, n: int, blank: Sequence[int] = ()) -> Path:
    """A corpus folder of ``n`` real PubMedQA abstracts (PMID, title, abstract)."""
    from kailin.corpus.schema import CORPUS_SCHEMA

    items = list(json.loads(PQAL.read_text()).items())[:n]
    cols: dict[str, list] = {f.name: [None] * n for f in CORPUS_SCHEMA}
    cols["pmid"] = [int(k) for k, _ in items]
    cols["title"] = [v["QUESTION"] for _, v in items]
    cols["abstract"] = [" ".join(v["CONTEXTS"]) for _, v in items]
    for i in blank:
        cols["abstract"][i] = None
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=CORPUS_SCHEMA), root / "data" / "part-00000.parquet")
    (root / "manifest.json").write_text("{}")
    return root


# -- prompts ----------------------------------------------------------------------------------
def test_kailin_template_is_verbatim() -> None:
    assert KAILIN_TEMPLATE == (
        "user:Please analyze the information in the context in the field of bioinformatics:"
        "\u300c{abstract}\u300d from bioinfo and generate a question for it. \n\nassistant:"
    )
    t = PromptTemplate(mode="raw")
    assert t.render(1, "T", "ABS") == (
        "user:Please analyze the information in the context in the field of bioinformatics:"
        "「ABS」 from bioinfo and generate a question for it. \n\nassistant:"
    )


def test_chat_mode_and_custom_templates(tmp_path: Path) -> None:
    t = PromptTemplate(mode="chat", response_prefix="Question:", system="Be brief.")
    msgs = t.render(1, "T", "ABS")
    assert msgs == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Please analyze the information in the context in the "
         "field of bioinformatics:「ABS」 from bioinfo and generate a question for it."},
        {"role": "assistant", "content": "Question:"},
    ]
    assert t.prompt_text(1, "T", "ABS") == msgs[1]["content"]
    f = tmp_path / "t.txt"
    f.write_text("Title: {title} (PMID {pmid})\n{abstract}\nQuestion:\n")
    custom = PromptTemplate(template=load_template(str(f)), mode="raw", max_abstract_chars=12)
    assert custom.render(7, "Tt", "alpha beta gamma delta") == "Title: Tt (PMID 7)\nalpha beta\nQuestion:"
    with pytest.raises(InputError, match="unknown field"):
        PromptTemplate(template="{abstract} {doi}")
    with pytest.raises(InputError, match="abstract"):
        PromptTemplate(template="no fields")
    with pytest.raises(InputError, match="mode"):
        PromptTemplate(mode="json")
    with pytest.raises(InputError, match="no such template"):
        load_template("missing/template.txt")


# -- extraction -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "question", "reason"),
    [
        (" What is the role of mitochondria in PCD?\n\nThe answer lies in", "What is the role of mitochondria in PCD?", None),
        ("Sure! Here is a question for it:\n\n**Question:** Does IL-6 predict mortality in sepsis?", "Does IL-6 predict mortality in sepsis?", None),
        ('"What is the difference between the Landolt C and the Snellen E?"\n\nAnswer: none', "What is the difference between the Landolt C and the Snellen E?", None),
        ("\nQ: How do statins act on LDL receptors?\nA: They", "How do statins act on LDL receptors?", None),
        ("1. what dose of 2.5 mg/kg works, e.g. in mice? 2. Why?", "What dose of 2.5 mg/kg works, e.g. in mice?", None),
        ("The abstract discusses sepsis. Question 2: How does IL-6 change?", "How does IL-6 change?", None),
        ("Which is better for screening: mammography or MRI?", "Which is better for screening: mammography or MRI?", None),
        ("The study examined wound healing in rats.", "", "no_question"),
        ("   ", "", "empty"),
        ("** **", "", "empty"),
        ("Why?", "", "too_short"),
        ("Can you please analyze the information in the context in the field of bioinfo?", "", "copies_prompt"),
        ("What " + "very " * 90 + "long?", "", "too_long"),
    ],
)
def test_extract_question(raw: str, question: str, reason: str | None) -> None:
    ex = extract_question(raw)
    assert (ex.question, ex.reject_reason) == (question, reason)


# -- stage ------------------------------------------------------------------------------------
class ScriptedBackend(Backend):
    kind = "fake"
    instances: ClassVar[list[ScriptedBackend]] = []

    def __init__(self, model: str) -> None:
        self.model = model
        self.seen: list[Request] = []
        ScriptedBackend.instances.append(self)

    @property
    def model_name(self) -> str:
        return self.model

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        self.seen.extend(requests)
        out = []
        for r in requests:
            text = r if isinstance(r, str) else r[-1]["content"]
            if "Hirschsprung" in text:
                out.append(Completion("This study reviews outcomes.", 50, 5, "stop"))
            else:
                out.append(Completion(f"Here is a question: Is {self.model} useful here?\nYes.",
                                      40, 12, "stop"))
        return out


@pytest.fixture()
def scripted(monkeypatch):
    ScriptedBackend.instances = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # auto mode must not look org/x up on the hub
    monkeypatch.setattr(qmod, "_real_build_backend", qmod.build_backend, raising=False)
    monkeypatch.setattr(qmod, "build_backend",
                        lambda spec, options: ScriptedBackend(spec.model))
    return ScriptedBackend


def test_stage_maps_batch_to_question_rows(scripted, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c", 5, blank=[1])
    table = pq.read_table(corpus / "data" / "part-00000.parquet", columns=["pmid", "title",
                                                                            "abstract"])
    stage = QuestionGenerationStage(["dom=org/dom", "gen=org/gen"],
                                    cache_path=tmp_path / "cache.sqlite")
    out = stage(table)
    assert out.schema == QUESTIONS_SCHEMA
    assert out.num_rows == 10
    rows = out.to_pylist()
    assert [r["generator"] for r in rows[:4]] == ["dom", "gen", "dom", "gen"]
    assert rows[0]["question"] == "Is org/dom useful here?"
    assert rows[1]["question"] == "Is org/gen useful here?"
    assert rows[2]["reject_reason"] == "no_abstract" and rows[2]["raw"] == ""
    hirsch = [r for r in rows if "Hirschsprung" in r["prompt"]]
    assert hirsch and all(r["reject_reason"] == "no_question" and r["question"] == ""
                          for r in hirsch)
    assert all(len(b.seen) == 4 for b in scripted.instances)  # blank abstract never sent
    # a second stage over the same cache sends nothing
    stage2 = QuestionGenerationStage(["dom=org/dom", "gen=org/gen"],
                                     cache_path=tmp_path / "cache.sqlite")
    assert stage2(table).to_pylist() == rows
    assert all(len(b.seen) == 0 for b in scripted.instances[2:])
    assert stage2.counters()["dom"] == {"cache_hits": 4, "cache_misses": 0, "prompts_sent": 0,
                                      "backend_batches": 0}
    # the fingerprint follows settings that change the output
    stage3 = QuestionGenerationStage(["dom=org/dom", "gen=org/gen"],
                                     params=SamplingParams(max_new_tokens=5))
    assert stage3.fingerprint() != stage.fingerprint()
    with pytest.raises(InputError, match="abstract"):
        stage(table.drop_columns(["abstract"]))


def test_generate_questions_resumes_after_a_kill(scripted, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c", 6)
    out = tmp_path / "q"
    kw = {"cache_path": tmp_path / "cache.sqlite", "rows_per_shard": 2, "progress": False}
    stats = qmod.generate_questions(corpus, ["g=org/g"], out, **kw)
    assert stats["rows"] == 6 and stats["this_run"]["shards"] == 3
    assert stats["rejections"]["no_question"] == 1 and stats["accepted"] == 5
    assert stats["generators"]["g"]["completion_tokens"] == 5 * 12 + 5
    # simulate a run killed during shard 1: its part and marker are gone
    (out / "part-00001.parquet").unlink()
    (out / "_done" / "00001.json").unlink()
    scripted.instances.clear()
    stats = qmod.generate_questions(corpus, ["g=org/g"], out, use_cache=False,
                                    rows_per_shard=2, progress=False)
    assert stats["this_run"]["skipped_shards"] == 2
    assert sum(len(b.seen) for b in scripted.instances) == 2  # only the missing shard
    assert stats["rows"] == 6
    assert json.loads((out / "stats.json").read_text())["accepted"] == 5
    # a different input (here --limit) invalidates the finished shards instead of mixing them
    stats = qmod.generate_questions(corpus, ["g=org/g"], out, limit=3, **kw)
    assert stats["rows"] == 3 and stats["this_run"]["skipped_shards"] == 0
    assert sorted(read_parquet(out).column("pmid").to_pylist()) == sorted(
        pq.read_table(corpus / "data").column("pmid").to_pylist()[:3])


def test_cli_stats_count_prompts_sent_and_batches_coherently(scripted, tmp_path: Path) -> None:
    """Issue 28: stats.json said `backend_calls: 4` beside 15 cache misses (4 batches of 15
    prompts). Now the prompts sent and the batches they went in are counted under names that
    say so."""
    from kailin.cli.main import app

    corpus = make_corpus(tmp_path / "c", 15)
    args = ["generate", "questions", str(corpus), "-g", "g=org/g", "--out", str(tmp_path / "q"),
            "--rows-per-shard", "4", "--cache", str(tmp_path / "cache.sqlite"), "--mode", "raw"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "q" / "stats.json").read_text())["this_run"]["generators"]["g"]
    assert run == {"cache_hits": 0, "cache_misses": 15, "prompts_sent": 15, "backend_batches": 4}
    assert sum(len(b.seen) for b in scripted.instances) == 15
    assert "misses 15 (15 prompts sent to the backend in 4 batches)" in res.output


def test_a_failed_run_leaves_nothing_that_looks_finished(scripted, tmp_path: Path) -> None:
    """Issue 28: `kailin generate questions` with a backend that cannot be reached exited with an
    error but left OUT/ with _done/, _stage.json and _input.json: an empty result that looks
    finished. Finished shards of a run that fails later are kept (they are resumed)."""
    from kailin.cli.main import app
    from kailin.errors import KailinError

    corpus = make_corpus(tmp_path / "c", 6)
    qmod.build_backend = qmod._real_build_backend  # the real one: an HTTP backend
    out = tmp_path / "q"
    res = CliRunner().invoke(app, ["generate", "questions", str(corpus), "-g",
                                   "a=openai:http://127.0.0.1:9/v1#m", "--out", str(out),
                                   "--max-retries", "0", "--timeout", "5", "--no-cache"])
    assert isinstance(res.exception, KailinError) and "127.0.0.1:9" in str(res.exception)
    assert not out.exists()

    class FailsOnThird(ScriptedBackend):
        def generate(self, requests, params):
            if len(self.seen) >= 4:
                raise KailinError("backend gone")
            return super().generate(requests, params)

    qmod.build_backend = lambda spec, options: FailsOnThird(spec.model)
    with pytest.raises(KailinError, match="backend gone"):
        qmod.generate_questions(corpus, ["g=org/g"], out, rows_per_shard=2, use_cache=False,
                                progress=False)
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["00000.json", "00001.json"]
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet",
                                                          "part-00001.parquet"]


# -- --mode auto ------------------------------------------------------------------------------
def test_auto_mode_picks_chat_for_instruct_models_and_raw_for_kailin_tuned(tmp_path: Path,
                                                                           monkeypatch) -> None:
    from kailin.generate.mode import resolve_mode
    from kailin.llm.spec import parse_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inst = tmp_path / "instruct"
    inst.mkdir()
    (inst / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer_config.json").write_text("{}")
    sft = tmp_path / "gen-sft"
    (sft / "model").mkdir(parents=True)
    (sft / "model" / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x"}))
    (sft / "kailin_train.json").write_text(json.dumps({"kind": "sft"}))
    assert resolve_mode(parse_spec("smollm2"))[0] == "chat"
    assert resolve_mode(parse_spec(str(inst)))[0] == "chat"
    assert resolve_mode(parse_spec(str(base)))[0] == "raw"
    mode, why = resolve_mode(parse_spec(str(sft / "model")))
    assert mode == "raw" and "kailin_train.json" in why
    assert resolve_mode(parse_spec("openai:http://x/v1#m"))[0] == "chat"
    # the concrete templates: chat gets the 'Question:' prefill, raw none
    t = PromptTemplate()
    assert t.mode == "auto"
    with pytest.raises(InputError, match="concrete"):
        t.render(1, "T", "A")
    assert t.concrete("chat").render(1, "T", "A")[-1] == {"role": "assistant",
                                                          "content": "Question:"}
    assert isinstance(t.concrete("raw").render(1, "T", "A"), str)
    assert PromptTemplate(response_prefix="").concrete("chat").render(1, "T", "A")[-1][
        "role"] == "user"


def test_auto_mode_per_generator_and_warning_when_nearly_all_rejected(scripted,
                                                                      tmp_path: Path) -> None:
    inst = tmp_path / "instruct"
    inst.mkdir()
    (inst / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x"}))
    corpus = make_corpus(tmp_path / "c", 6)
    stats = qmod.generate_questions(corpus, [f"chat={inst}", "raw=org/base"], tmp_path / "q",
                                    cache_path=tmp_path / "cache.sqlite", progress=False)
    assert stats["prompt_modes"]["chat"]["mode"] == "chat"
    assert stats["prompt_modes"]["raw"]["mode"] == "raw"
    rows = read_parquet(tmp_path / "q").to_pylist()
    assert {r["prompt_mode"] for r in rows if r["generator"] == "chat"} == {"chat"}
    chat_req = scripted.instances[0].seen[0]
    assert chat_req[-1] == {"role": "assistant", "content": "Question:"}
    assert isinstance(scripted.instances[1].seen[0], str)
    assert stats["warnings"] == []  # 5/6 accepted each

    class Chatty(ScriptedBackend):
        def generate(self, requests, params):
            self.seen.extend(requests)
            return [Completion("This study reviews outcomes.", 5, 5, "stop") for _ in requests]

    qmod.build_backend = lambda spec, options: Chatty(spec.model)  # restored by monkeypatch
    stats = qmod.generate_questions(corpus, ["raw=org/base"], tmp_path / "q2", use_cache=False,
                                    progress=False)
    (w,) = stats["warnings"]
    assert "0/6" in w and "--mode chat" in w and "no_question 6" in w


# -- the real thing: packaged SmolLM2 through the command line --------------------------------
@pytest.mark.slow
def test_cli_generate_questions_with_smollm2(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from kailin.cli.main import app

    threads = torch.get_num_threads()  # --threads 1 is process-wide: restore it afterwards
    try:
        _run_cli(tmp_path, app, read_parquet)
    finally:
        torch.set_num_threads(threads)


def _run_cli(tmp_path: Path, app, read_parquet) -> None:
    corpus = make_corpus(tmp_path / "c", 3)
    args = ["generate", "questions", str(corpus), "--generator", "smol=smollm2",
            "--out", str(tmp_path / "q"), "--max-new-tokens", "24",
            "--max-abstract-chars", "500", "--device", "cpu", "--threads", "1",
            "--cache", str(tmp_path / "cache.sqlite")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    t = read_parquet(tmp_path / "q")
    assert t.num_rows == 3
    rows = t.to_pylist()
    assert all(r["backend"] == "transformers" and r["generator"] == "smol" for r in rows)
    assert all(r["raw"] and 0 < r["completion_tokens"] <= 24 and r["prompt_tokens"] > 50
               for r in rows)
    accepted = [r for r in rows if r["reject_reason"] is None]
    assert len(accepted) >= 2  # auto -> the chat prompt + "Question:" prefix yields questions
    assert {r["prompt_mode"] for r in rows} == {"chat"}
    assert "prompt mode chat" in res.output
    assert all(r["question"].endswith("?") and "\n" not in r["question"] for r in accepted)
    stats = json.loads((tmp_path / "q" / "stats.json").read_text())
    assert stats["accepted"] == len(accepted)
    assert stats["this_run"]["generators"]["smol"]["cache_misses"] == 3
    res = CliRunner().invoke(app, [a if a != str(tmp_path / "q") else str(tmp_path / "q2")
                                   for a in args])
    assert res.exit_code == 0, res.output
    stats2 = json.loads((tmp_path / "q2" / "stats.json").read_text())
    assert stats2["this_run"]["generators"]["smol"] == {"cache_hits": 3, "cache_misses": 0,
                                                        "prompts_sent": 0, "backend_batches": 0}
    assert read_parquet(tmp_path / "q2").column("question").to_pylist() == \
        t.column("question").to_pylist()
