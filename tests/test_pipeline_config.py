"""`kailin run` configs: validation with clear errors, and the bundled demo config parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from kailin.errors import InputError
from kailin.pipeline.config import load_config
from kailin.pipeline.stages import pipeline_stages

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_valid() -> None:
    cfg, base = load_config(ROOT / "configs" / "demo.yaml")
    assert base == (ROOT / "configs").resolve()
    assert cfg.corpus.demo and cfg.index.k == 4
    names = [s.name for s in pipeline_stages(cfg)]
    assert names[:3] == ["corpus", "workset", "index"]
    assert names.index("dpo") < names.index("generator_eval") < names.index("pubmedqa")
    # the SFT data path of the second generator exists in the repository
    assert (base / cfg.generators[1].sft.data).exists()


@pytest.mark.parametrize(("text", "message"), [
    ("corpus: {demo: true, limitt: 3}", r"corpus\.limitt: Extra inputs are not permitted"),
    ("generators: [{name: a}]", "at least two generators"),
    ("generators: [{name: a}, {name: a}]", "must be unique"),
    ("index: {kind: sparse}", r"index\.kind"),
    ("corpus: [1, 2", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_configs(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(p)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_structured_logs(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from kailin.cli.main import _root

    _root(verbose=False, quiet=False, no_progress=False, log_json=True, version=False)
    logging.getLogger("kailin.run").info("[1/2] corpus: done in %.1f s", 1.25)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    rec = json.loads(line)
    assert rec["level"] == "INFO" and rec["logger"] == "kailin.run"
    assert rec["message"] == "[1/2] corpus: done in 1.2 s"
    logging.getLogger().handlers.clear()


def test_set_overrides_keys_before_validation(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("run_dir: r\ncorpus: {demo: true, limit: 8}\n")
    cfg, _ = load_config(cfg_file, ["steering.rounds=3", "corpus.limit=16",
                                    "index.kind=dense", "corpus.select_mesh=[Neoplasms]"])
    assert (cfg.steering.rounds, cfg.corpus.limit, cfg.index.kind) == (3, 16, "dense")
    assert cfg.corpus.select_mesh == ["Neoplasms"]
    for bad in ("steering.rounds", "steering.nonsense=1", "corpus.limit=0", "run_dir.x=1"):
        with pytest.raises(InputError):
            load_config(cfg_file, [bad])
