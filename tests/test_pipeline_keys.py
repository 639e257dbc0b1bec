"""Stage keys without running anything: every config key either changes the key of the stages
that read it and of every stage downstream, or is rejected at load; the run lock; --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from kailin.engine.keys import FileDigests, table_digest
from kailin.engine.lock import RunLockedError, read_lock, run_lock
from kailin.engine.run import plan_run
from kailin.errors import InputError
from kailin.pipeline.config import RunConfig, load_config
from kailin.pipeline.stages import pipeline_stages

#: every stage on (nothing runs here: keys only)
FULL = {
    "run_dir": "run",
    "corpus": {"demo": True, "limit": 8, "heldout": 3},
    "index": {"kind": "dense"},
    "retriever": {"enabled": True},
    "generators": [{"name": "a", "model": "smollm2"},
                   {"name": "b", "model": "smollm2", "temperature": 0.6, "seed": 1}],
    "evaluator": {"enabled": True},
    "dpo": {"max_steps": 4},
    "steering": {"enabled": True},
    "export": {"questions_from": "policy"},
    "perplexity": {"enabled": True},
    "pubmedqa_finetune": {"enabled": True},
}
#: keys that say where or how a run goes, not what it makes
NO_OUTPUT_CHANGE = {"run_dir", "corpus.workers"}
#: values the generic rule cannot guess
OTHER = {"dpo.generator": "b", "export.extra_exclude_pmids": [123],
         "retriever.exclude_pmids": [123], "index.kind": "hybrid",  # (bm25: no encoder for the retriever)
         "steering.second_index": {"kind": "bm25", "method": "lucene"}}


def _leaves(model: type[BaseModel], value: Any, prefix: str = "") -> list[str]:
    """The config's keys as the YAML spells them."""
    out = []
    for field in model.model_fields:
        v = getattr(value, field)
        name = getattr(model, "renamed", {}).get(field, field)
        if isinstance(v, BaseModel):
            out += _leaves(type(v), v, f"{prefix}{name}.")
        elif isinstance(v, list) and v and isinstance(v[0], BaseModel):
            out += _leaves(type(v[0]), v[0], f"{prefix}{name}.0.")
        else:
            out.append(f"{prefix}{name}")
    return out


BASE = RunConfig.model_validate(FULL)
KEYS = [k for k in _leaves(RunConfig, BASE) if not k.startswith("executor.")]


def _annotation(path: str) -> Any:
    model: Any = RunConfig
    ann: Any = None
    for part in path.split("."):
        if part.isdigit():
            continue
        ann = model.model_fields[_field(model, part)].annotation
        inner = [a for a in typing.get_args(ann) if isinstance(a, type)
                 and issubclass(a, BaseModel)]
        model = inner[0] if inner else ann
    return ann


def _other(value: Any, ann: Any) -> Any:
    """A different value of the same type."""
    if isinstance(value, list):
        return value[:-1] if len(value) > 1 else ["D000001"]
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    lits = [x for a in [ann, *args] if typing.get_origin(a) is typing.Literal
            for x in typing.get_args(a)]
    if lits:
        return next(x for x in lits if x != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        kinds = {typing.get_origin(a) or a for a in args}
        if tuple in kinds:
            return [0.1, 0.9]
        if bool in kinds:
            return True
        if int in kinds:
            return 2
        if float in kinds:
            return 0.3
        return "other"
    raise AssertionError(f"no other value for {value!r}")


def _set(raw: dict, path: str, value: Any) -> dict:
    raw = json.loads(json.dumps(raw))
    node: Any = raw
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    node[parts[-1]] = value
    return raw


@pytest.fixture(scope="module")
def digests(tmp_path_factory: pytest.TempPathFactory) -> FileDigests:
    return FileDigests(tmp_path_factory.mktemp("digests") / "d.json")


def _keys(cfg: RunConfig, run_dir: Path, digests: FileDigests) -> dict[str, str]:
    plans = plan_run(cfg, run_dir, run_dir, pipeline_stages(cfg), digests=digests)
    return {p.spec.name: p.key for p in plans if p.enabled}


def test_every_key_is_listed() -> None:
    assert {"corpus.limit", "mesh.aggregate", "answers.grounding", "answers.grounding_model",
            "downstream.sft_steps", "export.template", "generators.0.sft.max_steps",
            "dpo.warmup_steps"} <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_config_key_changes_its_stages_and_downstream(key: str, tmp_path: Path,
                                                      digests: FileDigests) -> None:
    raw = BASE.model_dump(mode="json")
    value = OTHER[key] if key in OTHER else _other(_get(BASE, key), _annotation(key))
    try:
        cfg = RunConfig.model_validate(_set(raw, key, value))
    except ValidationError:
        return  # rejected at load
    before = _keys(BASE, tmp_path, digests)
    after = _keys(cfg, tmp_path, digests)
    # a stage switched off counts as changed (its readers must not see its old outputs)
    changed = {s for s in after if before.get(s) != after[s]} | (set(before) - set(after))
    if key in NO_OUTPUT_CHANGE:
        assert not changed, f"{key} changes {changed}"
        return
    assert changed, f"{key}={value!r} changes no stage key"
    for spec in pipeline_stages(cfg):  # downstream-closed: a reader of a changed stage changes
        if spec.name in after and any(d in changed for d in spec.inputs):
            assert spec.name in changed, f"{key}: {spec.name} reads a changed stage"


def _field(model: Any, key: str) -> str:
    """The field a YAML key names (``downstream.cpt_steps`` is the field ``max_steps``)."""
    back = {v: k for k, v in getattr(model, "renamed", {}).items()}
    return back.get(key, key)


def _get(cfg: RunConfig, path: str) -> Any:
    node: Any = cfg
    for p in path.split("."):
        node = node[int(p)] if p.isdigit() else getattr(node, _field(type(node), p))
    return node


@pytest.mark.parametrize(("key", "value", "first"), [
    ("corpus.limit", 9, {"workset"}),          # the index is not rebuilt for a larger sample
    ("mesh.aggregate", "mean", {"score", "signal"}),  # signal: the per-run self-check
    ("export.template", "Q: {question}\nA: {answer}", {"export"}),
    ("dpo.max_steps", 6, {"dpo"}),
    ("answers.grounding", "llm-judge", {"answers"}),
    ("downstream.sft_steps", 3, {"downstream"}),
    ("pubmedqa.limit", 7, {"pubmedqa"}),
    ("generators.1.temperature", 0.7, {"questions"}),
    # the policy's budget: its samples, the held-out arms and its export questions
    ("steering.max_new_tokens", 64, {"steering"}),  # policy_questions reads steering
])
def test_stages_that_read_a_key(key: str, value: Any, first: set[str], tmp_path: Path,
                                digests: FileDigests) -> None:
    cfg = RunConfig.model_validate(_set(BASE.model_dump(mode="json"), key, value))
    before, after = _keys(BASE, tmp_path, digests), _keys(cfg, tmp_path, digests)
    changed = {s for s in after if before.get(s) != after[s]}
    specs = {s.name: s for s in pipeline_stages(cfg)}
    # the stages that read the key directly are those whose inputs did not change
    direct = {s for s in changed if not any(d in changed for d in specs[s].inputs)}
    assert direct == first, (key, changed)


@pytest.mark.parametrize(("text", "message"), [
    ("dpo: {max_steps: 10, warmup_steps: 100}", "warmup_steps 100 must be below max_steps"),
    ("answers: {grounding: llm}", r"answers\.grounding"),
    ("answers: {grounding: nli}", "grounding nli needs grounding_model"),
    ("answers: {enabled: false}\ndownstream: {sft_steps: 2}", "sft_steps trains on the answered"),
    ("dpo: {generator: nope}", "dpo.generator 'nope' is not one of"),
    ("steering: {validity_share: 0.2}", "set preferences.invalid_rejected true"),
])
def test_keys_rejected_at_load(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(p)


def test_dpo_warmup_default_is_below_max_steps() -> None:
    assert RunConfig().dpo.warmup() < RunConfig().dpo.max_steps
    cfg = RunConfig.model_validate({"dpo": {"max_steps": 1}})
    assert cfg.dpo.warmup() == 0


def test_force_changes_the_stage_and_its_readers(tmp_path: Path, digests: FileDigests) -> None:
    specs = pipeline_stages(BASE)
    before = {p.spec.name: p.key for p in plan_run(BASE, tmp_path, tmp_path, specs,
                                                   digests=digests) if p.enabled}
    forced = {p.spec.name: p.key for p in plan_run(BASE, tmp_path, tmp_path, specs,
                                                   force={"prefer"}, digests=digests)
              if p.enabled}
    changed = {s for s in before if before[s] != forced[s]}
    # the policy (dpo, then the steering rounds) writes the export: everything after it re-runs
    assert changed == {"prefer", "dpo", "generator_eval", "steering", "policy_questions",
                       "answers", "export", "downstream", "perplexity", "pubmedqa",
                       "pubmedqa_finetune", "downstream_results"}


def test_input_files_keyed_by_content(tmp_path: Path) -> None:
    f = tmp_path / "a.xml"
    f.write_text("<x/>")
    d = FileDigests(tmp_path / "cache.json")
    k1 = d.paths([f])
    d.save()
    os.utime(f, ns=(1, 1))  # touched: the digest is recomputed, the key is the same
    d2 = FileDigests(tmp_path / "cache.json")
    assert d2.paths([f]) == k1 and d2.hashed == [str(f.resolve())]
    assert FileDigests(tmp_path / "cache.json").paths([f]) == k1
    f.write_text("<y/>")
    assert FileDigests(tmp_path / "cache.json").paths([f]) != k1


def test_table_digest_ignores_layout() -> None:
    import pyarrow as pa

    big = pa.table({"a": [1, 2, 3, 4], "s": ["w", "x", None, "z"]})
    assert table_digest(big.slice(2, 2)) == table_digest(pa.table({"a": [3, 4],
                                                                   "s": [None, "z"]}))
    assert table_digest(big.slice(1, 2)) != table_digest(big.slice(2, 2))


# --- the run lock -----------------------------------------------------------------------------
def test_second_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with run_lock(tmp_path) as me:
        second = run_lock(tmp_path)
        with pytest.raises(RunLockedError, match=f"pid {me['pid']} on"):
            second.__enter__()
    assert read_lock(tmp_path) is None  # released


def test_lock_of_a_dead_run_is_taken_over(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    import socket

    (tmp_path / "run.lock").write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(),
                                                   "started": "2026-01-01T00:00:00Z"}))
    assert read_lock(tmp_path)["alive"] is False
    with run_lock(tmp_path) as me:
        assert read_lock(tmp_path)["pid"] == me["pid"]


def test_cli_run_exits_at_once_when_locked(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"run_dir": "run", "corpus": {"demo": True}}))
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "run.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-12-04T10:00:00Z"}))
        r = subprocess.run([sys.executable, "-m", "kailin.cli.main", "run", str(cfg),
                            "--no-progress"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert f"pid {holder.pid} on {socket.gethostname()}, started 2026-12-04T10:00:00Z" in (
            r.stdout + r.stderr)
        assert not (tmp_path / "run" / "state").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()


def test_corpus_input_files_key_the_corpus_stage(tmp_path: Path) -> None:
    f = tmp_path / "a.xml"
    f.write_text("<PubmedArticleSet/>")
    cfg = RunConfig.model_validate({"corpus": {"inputs": ["a.xml"], "limit": 2}})
    d = FileDigests(tmp_path / "d.json")

    def key() -> dict[str, str]:
        return {p.spec.name: p.key for p in plan_run(cfg, tmp_path, tmp_path / "run",
                                                     pipeline_stages(cfg), digests=d)
                if p.enabled}

    k1 = key()
    os.utime(f, ns=(10**18, 10**18))  # touched, same content: same keys
    assert key() == k1
    f.write_text("<PubmedArticleSet></PubmedArticleSet>")
    k2 = key()
    assert k2["corpus"] != k1["corpus"] and k2["index"] != k1["index"]


def test_keys_do_not_depend_on_where_the_inputs_live(tmp_path: Path) -> None:
    """The same input files read from another place (a moved checkout, the packaged samples of
    another install, a copied run) give the same keys: nothing is recomputed."""
    here, there = tmp_path / "here", tmp_path / "there" / "deeper"
    for d in (here, there):
        d.mkdir(parents=True)
        (d / "a.xml").write_text("<PubmedArticleSet/>")
        (d / "b.xml").write_text("<PubmedArticleSet></PubmedArticleSet>")
    cfg = RunConfig.model_validate({"corpus": {"inputs": ["a.xml", "b.xml"], "limit": 2}})
    d = FileDigests(tmp_path / "d.json")

    def keys(base: Path) -> dict[str, str]:
        return {p.spec.name: p.key for p in plan_run(cfg, base, tmp_path / "run",
                                                     pipeline_stages(cfg), digests=d)
                if p.enabled}

    assert keys(here) == keys(there)
    (there / "b.xml").write_text("<PubmedArticleSet> </PubmedArticleSet>")
    assert keys(here)["corpus"] != keys(there)["corpus"]
    # two inputs with one base name are both keyed
    (there / "sub").mkdir()
    (there / "sub" / "a.xml").write_text("<x/>")
    named = d.labelled([there / "a.xml", there / "sub" / "a.xml"])
    assert list(named) == ["a.xml", "a.xml#2"] and len({sha for _p, sha in named.values()}) == 2


def test_select_years_without_mesh(tmp_path: Path) -> None:
    from kailin.corpus.query import select
    from kailin.corpus.reader import open_corpus
    from kailin.corpus.store import ingest

    pqal = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"
    ingest([pqal], tmp_path / "c", progress=False)
    r = select(tmp_path / "c", [], tmp_path / "sel", years="2010-2012")
    yrs = open_corpus(tmp_path / "sel").read(["year"]).column("year").to_pylist()
    assert yrs and all(2010 <= y <= 2012 for y in yrs) and r["records"] == len(yrs)
    with pytest.raises(InputError, match="or --years"):
        select(tmp_path / "c", [], tmp_path / "x")


def test_index_model_folder_is_resolved_and_keyed_by_content(tmp_path: Path) -> None:
    """index.model as a folder relative to the config: the index uses that folder, and
    retraining the encoder in place changes the index's key."""
    from kailin.engine.run import RunContext
    from kailin.pipeline.stages.index import index_model

    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "model.safetensors").write_bytes(b"v1")
    cfg = RunConfig.model_validate({"corpus": {"demo": True},
                                    "index": {"kind": "dense", "model": "enc"}})
    assert index_model(RunContext(cfg, tmp_path / "run", tmp_path)) == str(enc)
    d = FileDigests(tmp_path / "d.json")

    def key() -> str:
        return next(p.key for p in plan_run(cfg, tmp_path, tmp_path / "run",
                                            pipeline_stages(cfg), digests=d)
                    if p.spec.name == "index")

    k1 = key()
    (enc / "model.safetensors").write_bytes(b"v2")
    assert key() != k1
    hub = RunConfig.model_validate({"index": {"kind": "dense", "model": "org/encoder"}})
    assert index_model(RunContext(hub, tmp_path / "run", tmp_path)) == "org/encoder"


def test_status_explains_keys_made_when_files_were_keyed_by_path() -> None:
    from kailin.engine.run import _why

    new = {"settings": {}, "inputs": {}, "files": {"a.xml": "s1", "b.xml": "s2"}, "code": "c",
           "salt": ""}
    old = {**new, "files": {"/old/checkout/a.xml": "s1", "/old/checkout/b.xml": "s2"}}
    assert _why({"key": "x", "parts": old}, new) == [
        "input files keyed by name instead of path (same content; once)"]
    old2 = {**new, "files": {"/old/checkout/a.xml": "s1", "/old/checkout/b.xml": "s0"}}
    assert _why({"key": "x", "parts": old2}, new, {"b.xml": "/new/b.xml"}) == [
        "file /new/b.xml changed"]


def test_policy_budget_follows_the_steering_experiment(tmp_path: Path,
                                                      digests: FileDigests) -> None:
    """steering.max_new_tokens is the budget of the policy's export questions too (the budget
    the arms were compared at), and only while the steering experiment runs."""
    from kailin.pipeline.stages.common import policy_budget as _policy_budget

    cfg = RunConfig.model_validate(_set(BASE.model_dump(mode="json"),
                                        "steering.max_new_tokens", 64))
    assert _policy_budget(BASE) is None and _policy_budget(cfg) == 64
    off = {**FULL, "steering": {"enabled": False, "max_new_tokens": 64}}
    plain = {**FULL, "steering": {"enabled": False}}
    k_off = _keys(RunConfig.model_validate(off), tmp_path, digests)
    k_plain = _keys(RunConfig.model_validate(plain), tmp_path, digests)
    assert _policy_budget(RunConfig.model_validate(off)) is None
    assert k_off["policy_questions"] == k_plain["policy_questions"]
