"""Quiet by default: third-party bars and warnings only with --verbose; --quiet/--no-progress."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from kailin.cli.main import quiet_third_party

_VARS = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS",
         "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "TOKENIZERS_PARALLELISM")


def _clear(monkeypatch) -> None:
    for v in _VARS:  # set then delete: monkeypatch restores the original state afterwards
        monkeypatch.setenv(v, "x")
        monkeypatch.delenv(v)


def test_quiet_third_party_defaults(monkeypatch) -> None:
    _clear(monkeypatch)
    with warnings.catch_warnings():
        quiet_third_party(verbose=False, progress=True)
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        assert "TQDM_DISABLE" not in os.environ  # kailin's own bars stay
        assert logging.getLogger("transformers").level == logging.ERROR
    _clear(monkeypatch)
    with warnings.catch_warnings():
        quiet_third_party(verbose=True, progress=False)
        assert os.environ["TQDM_DISABLE"] == "1"
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_root_options_exist() -> None:
    out = subprocess.run([sys.executable, "-m", "kailin.cli.main", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for opt in ("--verbose", "--quiet", "--no-progress", "--log-json"):
        assert opt in out
