"""One settings class per stage (issue 14.3): the library function, the CLI command and the
``kailin run`` stage take the same pydantic object, so the three cannot drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kailin.align.dpo import DPOConfig
from kailin.align.prefer import PREFERENCES_FILE, STATS_FILE, PreferConfig, prefer
from kailin.align.sft import SFTConfig
from kailin.cli.main import app
from kailin.config import StageConfig
from kailin.engine.run import RunContext
from kailin.errors import InputError
from kailin.pipeline.config import RunConfig


def test_run_config_sections_are_the_library_classes() -> None:
    cfg = RunConfig()
    assert type(cfg.preferences) is PreferConfig
    assert isinstance(cfg.dpo, DPOConfig)
    # the pipeline's dpo section only adds what the pipeline alone knows
    extra = set(type(cfg.dpo).model_fields) - set(DPOConfig.model_fields)
    assert extra == {"enabled", "generator"}
    assert isinstance(cfg.generators[0].sft, SFTConfig)
    assert set(type(cfg.generators[0].sft).model_fields) - set(SFTConfig.model_fields) == {
        "enabled", "data"}
    from kailin.align.score import ScoreConfig
    from kailin.dataset.export import ExportConfig
    from kailin.dataset.train import DownstreamTrainConfig
    from kailin.retrieval.finetune import FinetuneConfig

    for section, cls in [("mesh", ScoreConfig), ("export", ExportConfig),
                         ("downstream", DownstreamTrainConfig), ("retriever", FinetuneConfig)]:
        assert isinstance(getattr(cfg, section), cls)
    for cls in (PreferConfig, DPOConfig, SFTConfig, ScoreConfig, ExportConfig,
                DownstreamTrainConfig, FinetuneConfig):
        assert issubclass(cls, StageConfig) and cls.model_config["extra"] == "forbid"
        assert all(f.description for f in cls.model_fields.values()), cls


def test_added_fields_stay_out_of_the_dump_until_set() -> None:
    """Settings the dpo section gained keep the keys of runs made before them."""
    dump = RunConfig().dpo.model_dump()
    assert set(dump) == {"enabled", "generator", "max_steps", "batch_size", "learning_rate",
                         "warmup_steps", "beta", "max_length", "epochs", "lora_r"}
    cfg = RunConfig.model_validate({"dpo": {"seed": 3, "grad_accum": 2}})
    assert cfg.dpo.model_dump()["seed"] == 3 and cfg.dpo.model_dump()["grad_accum"] == 2
    assert RunConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def _scores(path: Path) -> Path:
    rows = [(1, "a", "q1a?", 0.3), (1, "b", "q1b?", 0.1), (2, "a", "q2a?", 0.9),
            (2, "b", "q2b?", 0.1), (3, "a", "q3a?", 0.3), (3, "b", "q3b?", 0.29),
            (4, "a", "q4a?", 0.6), (4, "b", "q4b?", 0.2)]
    pq.write_table(pa.table({"pmid": [r[0] for r in rows], "generator": [r[1] for r in rows],
                             "prompt": [f"abstract {r[0]}" for r in rows],
                             "question": [r[2] for r in rows],
                             "score": [r[3] for r in rows]}), path)
    return path


def test_prefer_library_cli_and_pipeline_give_the_same_output(tmp_path: Path) -> None:
    scores = _scores(tmp_path / "scores.parquet")
    c = PreferConfig(band=(0.05, 0.95), min_margin=0.05, max_pairs=2)
    lib = prefer(scores, tmp_path / "lib", c)
    res = CliRunner().invoke(app, ["prefer", str(scores), "--out", str(tmp_path / "cli"),
                                   "--band", "0.05", "0.95", "--min-margin", "0.05",
                                   "--max-pairs", "2"])
    assert res.exit_code == 0, res.output
    # the pipeline's section from YAML values, through the stage function
    cfg = RunConfig.model_validate({"preferences": {"band": [0.05, 0.95], "min_margin": 0.05,
                                                    "max_pairs": 2}})
    assert cfg.preferences == c
    run = tmp_path / "run"
    (run / "scores").mkdir(parents=True)
    pq.write_table(pq.read_table(scores), run / "scores" / "part-00000.parquet")
    from kailin.pipeline.stages.prefer import run as prefer_stage

    prefer_stage(RunContext(cfg, run, tmp_path))
    for out in (tmp_path / "cli", run / "preferences"):
        assert pq.read_table(out / PREFERENCES_FILE).equals(
            pq.read_table(tmp_path / "lib" / PREFERENCES_FILE))
        stats = json.loads((out / STATS_FILE).read_text())
        assert stats["settings"] == lib["settings"] and stats["dropped"] == lib["dropped"]
    assert lib["kept"] == 2 and lib["settings"]["labeller"] == "mesh"


def test_prefer_cli_rejects_what_the_schema_rejects(tmp_path: Path) -> None:
    scores = _scores(tmp_path / "scores.parquet")
    res = CliRunner().invoke(app, ["prefer", str(scores), "--out", str(tmp_path / "o"),
                                   "--band", "0.9", "0.1"])
    assert isinstance(res.exception, InputError)
    assert str(res.exception) == "--band: band 0.9 0.1: LOW must be smaller than HIGH"


def test_dpo_cli_and_pipeline_call_train_dpo_with_the_config(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import kailin.align.dpo as dpo

    calls: list[dict[str, Any]] = []

    def fake(pairs: Any, out_dir: Any, config: Any = None, callbacks: Any = None,
             model: str = "smollm2", **kwargs: Any) -> dict:
        calls.append({"config": config, "model": model, "out": Path(out_dir)})
        return {"train_loss": 0.5, "global_step": 1, "steps": 1, "seconds": 0.1}

    monkeypatch.setattr(dpo, "train_dpo", fake)
    res = CliRunner().invoke(app, ["train", "dpo", str(tmp_path / "pairs"), "--out",
                                   str(tmp_path / "o"), "--model", "m", "--max-steps", "7",
                                   "--batch-size", "3", "--lora-r", "4", "--seed", "5"])
    assert res.exit_code == 0, res.output
    cli = calls[-1]["config"]
    assert type(cli) is DPOConfig and calls[-1]["model"] == "m"
    assert cli == DPOConfig.authors(max_steps=7, epochs=None, batch_size=3, lora_r=4, seed=5)

    # the same values as a YAML section: the library fields are the same object's
    section = cli.model_dump()
    cfg = RunConfig.model_validate({
        "dpo": section | {"warmup_steps": 1},
        "generators": [{"name": "g", "sft": {"enabled": False}, "model": "m"},
                       {"name": "h", "sft": {"enabled": False}}]})
    assert cfg.dpo.model_dump(exclude={"enabled", "generator", "warmup_steps"}) == \
        cli.model_dump(exclude={"warmup_steps"})
    run = tmp_path / "run"
    prefs = run / "preferences" / PREFERENCES_FILE
    prefs.parent.mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["a?"], "rejected": ["b?"]}), prefs)
    from kailin.pipeline.stages.dpo import run as dpo_stage

    out = dpo_stage(RunContext(cfg, run, tmp_path))
    assert calls[-1]["config"] is cfg.dpo and calls[-1]["model"] == "m"
    assert calls[-1]["out"] == run / "models" / "g-dpo" and out["pairs"] == 1


def test_sft_section_dump_and_training_identity_are_those_of_earlier_runs() -> None:
    """The sft section gained the library's settings without changing the keys of earlier runs
    or the record their finished trainings are recognised by (the experiment's pqal-sft)."""
    g = RunConfig.model_validate({"generators": [
        {"name": "a", "sft": {"max_steps": 60, "batch_size": 4, "learning_rate": 0.0005,
                              "max_length": 192}}, {"name": "b"}]}).generators[0]
    assert set(g.sft.model_dump()) == {"enabled", "data", "limit", "max_steps", "batch_size",
                                       "learning_rate", "max_length", "lora"}
    template = ("user:Please analyze the information in the context in the field of "
                "bioinformatics:\u300c{abstract}\u300d from bioinfo and generate a question for "
                "it. \n\nassistant:")
    assert g.sft.identity("smollm2", "any") == {
        "model": "smollm2", "question_type": "any", "use_lora": True,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                 "target_modules": ["q_proj", "k_proj", "v_proj"], "bias": "none"},
        "learning_rate": 0.0005, "epochs": 6.0, "max_steps": 60, "batch_size": 4,
        "grad_accum": 1, "max_length": 192, "warmup": 0.03, "lr_scheduler": "cosine",
        "weight_decay": 0.0, "save_steps": 60, "save_total_limit": 3, "logging_steps": 12,
        "seed": 0, "template": template, "max_examples": None}
    assert RunConfig.model_validate({"generators": [
        {"name": "a", "sft": {"seed": 2}}, {"name": "b"}]}).generators[0].sft.model_dump()[
        "seed"] == 2


def test_sft_cli_and_pipeline_call_train_sft_with_the_config(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import kailin.align.sft as sft

    calls: list[dict[str, Any]] = []

    def fake(data: Any, out_dir: Any, settings: Any = None, callbacks: Any = None,
             exclude_test: bool = True, model: str = "smollm2", question_type: str = "any"
             ) -> dict:
        calls.append({"config": settings, "model": model, "qt": question_type,
                      "data": list(data), "out": Path(out_dir)})
        return {"train_loss": 0.5, "global_step": 1, "steps": 1, "seconds": 0.1,
                "n_examples": 3}

    monkeypatch.setattr(sft, "train_sft", fake)
    res = CliRunner().invoke(app, ["train", "sft", "pubmedqa", "--out", str(tmp_path / "o"),
                                   "--model", "m", "--question-type", "yesno", "--max-steps",
                                   "7", "--batch-size", "3", "--lora-r", "4", "--seed", "5",
                                   "--max-examples", "9", "--full"])
    assert res.exit_code == 0, res.output
    cli = calls[-1]["config"]
    assert type(cli) is SFTConfig and (calls[-1]["model"], calls[-1]["qt"]) == ("m", "yesno")
    assert cli == SFTConfig.authors(max_steps=7, batch_size=3, lora_r=4, seed=5, limit=9,
                                    lora=False)
    cfg = RunConfig.model_validate({"generators": [
        {"name": "g", "model": "m", "question_type": "yesno",
         "sft": cli.model_dump() | {"data": "pubmedqa"}}, {"name": "h"}]})
    assert cfg.generators[0].sft.model_dump(exclude={"enabled", "data"}) == cli.model_dump()
    from kailin.pipeline.stages.sft import run_for as sft_stage

    out = sft_stage("g")(RunContext(cfg, tmp_path / "run", tmp_path))
    assert calls[-1]["config"] is cfg.generators[0].sft
    assert (calls[-1]["model"], calls[-1]["qt"], calls[-1]["data"]) == ("m", "yesno",
                                                                        ["pubmedqa"])
    assert calls[-1]["out"] == tmp_path / "run" / "models" / "g-sft" and out["n_examples"] == 3
    bad = CliRunner().invoke(app, ["train", "sft", "pubmedqa", "--out", str(tmp_path / "o"),
                                   "--max-steps", "-3"])
    assert isinstance(bad.exception, InputError) and "--max-steps" in str(bad.exception)


def test_export_cli_and_pipeline_call_export_dataset_with_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kailin.dataset.export as export
    from kailin.dataset.export import CPT_TEMPLATE, ExportConfig

    calls: list[Any] = []

    def fake(records: Any, out_dir: Any, corpus_dir: Any = None, config: Any = None,
             mesh: Any = None, provenance: Any = None, plots: bool = True) -> dict:
        calls.append(config)
        return {"records": 0, "splits": {}, "decontamination": {"enabled": False}}

    monkeypatch.setattr(export, "export_dataset", fake)
    res = CliRunner().invoke(app, ["dataset", "export", str(tmp_path / "in"),
                                   str(tmp_path / "out"), "--formats", "cpt", "--select", "all",
                                   "--min-score", "0.2", "--no-decontaminate"])
    assert res.exit_code == 0, res.output
    cli = calls[-1]
    assert type(cli) is ExportConfig and cli.formats == ["cpt"] and cli.n_contexts == 4
    assert cli.to_dict() == {"n_contexts": 4, "template": CPT_TEMPLATE, "cpt_with_answer": False,
                             "select": "all", "min_score": 0.2, "max_score": None,
                             "require_grounded": False, "decontaminate": False,
                             "formats": ["cpt"], "extra_exclude_pmids": 0,
                             "keep_truncated_answers": False}
    # the same settings as a YAML section (kailin run fills n_contexts from index.k)
    section = cli.model_dump(exclude={"n_contexts"})
    cfg = RunConfig.model_validate({"export": section, "index": {"k": 3}})
    assert set(RunConfig().export.model_dump()) == {"template", "exclude_pubmedqa_test",
                                                    "questions_from", "policy_round"}
    from kailin.pipeline.stages.export import write_export as _write_export

    monkeypatch.setattr("kailin.mesh.load_mesh", lambda _p: None)
    _write_export(RunContext(cfg, tmp_path / "run", tmp_path), pa.table({"pmid": [1]}),
                  tmp_path / "o")
    assert calls[-1].to_dict() == {**cli.to_dict(), "n_contexts": 3}
    bad = CliRunner().invoke(app, ["dataset", "export", str(tmp_path / "in"),
                                   str(tmp_path / "out"), "--select", "some"])
    # the option's choices come from the settings class: the command line refuses the value
    # before any work, naming the option (a usage error, exit 2)
    assert bad.exit_code == 2 and "--select" in bad.output and "'best'" in bad.output


def test_downstream_section_is_the_training_config_with_cpt_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kailin.dataset.train import CPT_LORA_TARGETS, DownstreamTrainConfig

    raw = {"cpt_steps": 100, "batch_size": 4, "max_length": 384, "learning_rate": 0.0002,
           "controls": True}
    d = RunConfig.model_validate({"downstream": raw}).downstream
    assert isinstance(d, DownstreamTrainConfig) and d.max_steps == 100
    # the section's dump (the stage key) and the training record are those of earlier runs
    assert d.model_dump() == {"enabled": True, "model": "smollm2", "cpt_steps": 100,
                              "sft_steps": 0, "batch_size": 4, "max_length": 384,
                              "learning_rate": 0.0002, "controls": True}
    assert RunConfig.model_validate({"downstream": d.model_dump()}).downstream == d
    assert d.identity() == {
        "model": "smollm2", "use_lora": True,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": list(CPT_LORA_TARGETS),
                 "bias": "none"},
        "learning_rate": 0.0002, "max_steps": 100, "epochs": 1.0, "batch_size": 4,
        "grad_accum": 1, "max_length": 384, "packing": True, "warmup": 0.1,
        "lr_scheduler": "cosine", "weight_decay": 0.0, "save_steps": 100,
        "save_total_limit": 10, "logging_steps": 20, "seed": 3407, "max_examples": None}
    with pytest.raises(InputError, match="cpt_steps and max_steps name one setting"):
        p = tmp_path / "c.yaml"
        p.write_text("downstream: {cpt_steps: 3, max_steps: 4}")
        from kailin.pipeline.config import load_config

        load_config(p)
    # the SFT after CPT: the same settings from the CPT model, for sft_steps
    s2 = d.model_copy(update={"sft_steps": 6}).sft_settings("cpt/model")
    assert (s2.model, s2.max_steps, s2.resolved().save_steps, s2.batch_size) == (
        "cpt/model", 6, 6, 4)

    import kailin.dataset.train as train

    calls: list[Any] = []
    monkeypatch.setattr(train, "train_cpt", lambda data, out, settings=None, callbacks=None: (
        calls.append(settings) or {"train_loss": 1.0, "global_step": 1, "seconds": 0.1}))
    res = CliRunner().invoke(app, ["train", "cpt", str(tmp_path / "x"), "--out",
                                   str(tmp_path / "o"), "--max-steps", "7", "--lora-r", "4"])
    assert res.exit_code == 0, res.output
    assert calls[-1] == DownstreamTrainConfig.authors(max_steps=7, lora_r=4)
    bad = CliRunner().invoke(app, ["train", "cpt", str(tmp_path / "x"), "--out",
                                   str(tmp_path / "o"), "--lr", "0"])
    # the error names the option the user typed, not the field
    assert isinstance(bad.exception, InputError) and "--lr:" in str(bad.exception)
    assert "learning-rate" not in str(bad.exception)


def test_retriever_section_is_the_finetune_config(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import kailin.retrieval.finetune as ft
    from kailin.retrieval.finetune import FinetuneConfig

    calls: list[Any] = []
    meta = {"steps": 1, "train_seconds": 0.1, "mining": {
        "pairs": 2, "consistent_pairs": 2, "candidate_pairs": 3, "false_negatives_skipped": 0}}
    monkeypatch.setattr(ft, "finetune", lambda corpus, out, cfg=None, resume=True,
                        progress=True: calls.append(cfg) or meta)
    res = CliRunner().invoke(app, ["index", "finetune", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--negatives", "2", "--bf16",
                                   "--max-steps", "5"])
    assert res.exit_code == 0, res.output
    cli = calls[-1]
    assert type(cli) is FinetuneConfig and (cli.negatives, cli.dtype, cli.max_steps) == (
        2, "bfloat16", 5)
    assert cli.identity()["bf16"] is True and "dtype" not in cli.identity()
    # the same values as the run's retriever section: the pipeline adds only `enabled`
    cfg = RunConfig.model_validate({"index": {"kind": "dense"}, "retriever": {
        "enabled": True, **cli.model_dump(exclude={"exclude_pmids"}),
        "exclude_pmids": [7]}})
    assert isinstance(cfg.retriever, FinetuneConfig)
    assert set(type(cfg.retriever).model_fields) - set(FinetuneConfig.model_fields) == {
        "enabled"}
    from kailin.pipeline.stages.retriever import finetune_config as _finetune_config

    lib = _finetune_config(RunContext(cfg, tmp_path / "run", tmp_path))
    assert type(lib) is FinetuneConfig
    # the run's exclusions (PubMedQA test PMIDs) are added to the section's own
    assert 7 in lib.exclude_pmids and len(lib.exclude_pmids) > 100
    assert lib.model_dump(exclude={"exclude_pmids"}) == cli.model_dump(
        exclude={"exclude_pmids"})
    bad = CliRunner().invoke(app, ["index", "finetune", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--loss", "other"])
    # the choices come from the settings class: a usage error naming the option (exit 2)
    assert bad.exit_code == 2 and "--loss" in bad.output


def test_mesh_section_is_the_score_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    import kailin.align.score as score
    from kailin.align.score import ScoreConfig, ScoreStage

    calls: list[Any] = []

    def fake(questions: Any, index_dir: Any, out_dir: Any, **kw: Any) -> dict:
        calls.append(kw)
        return {"rows_out": 0, "skipped": 0, "shards": 0}

    monkeypatch.setattr(score, "score_questions", fake)
    monkeypatch.setattr("kailin.io.read_parquet", lambda *a, **k: pa.table(
        {"generator": pa.array([], pa.string()), "score": pa.array([], pa.float64())}))
    res = CliRunner().invoke(app, ["score", str(tmp_path), "--index", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--measure", "resnik", "--aggregate",
                                   "mean", "--ic-power", "1", "-k", "5"])
    assert res.exit_code == 0, res.output
    cli = calls[-1]["config"]
    assert type(cli) is ScoreConfig
    assert cli == ScoreConfig(measure="resnik", aggregate="mean", ic_power=1.0, k=5)
    cfg = RunConfig.model_validate({"mesh": cli.model_dump()})
    assert isinstance(cfg.mesh, ScoreConfig) and cfg.mesh.scoring() == cli.scoring()
    assert set(type(cfg.mesh).model_fields) - set(ScoreConfig.model_fields) == {
        "dir", "selfcheck_sample"}
    # the pipeline's stage and the CLI's are built from the same settings
    from kailin.pipeline.stages.common import scorer as _score_stage

    stage = _score_stage(RunContext(cfg, tmp_path / "run", tmp_path))
    lib = ScoreStage.from_config(tmp_path / "run" / "index", cli)
    assert (stage.scoring, stage.k, stage.max_passed_over) == (lib.scoring, 5, 16)
    bad = CliRunner().invoke(app, ["score", str(tmp_path), "--index", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--aggregate", "max"])
    # the choices come from the settings class: a usage error naming the option (exit 2)
    assert bad.exit_code == 2 and "--aggregate" in bad.output
