"""Suite-wide fixtures."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _free_module_temp_dirs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Delete the folders a test module made under the session's base temp folder once the
    module is done, unless one of its tests failed (then they stay for a look). pytest keeps
    module-scoped ``tmp_path_factory`` folders until the session ends; with trained models in
    them (hundreds of MB each) a full run needs tens of GB of disk otherwise."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failed_before:
        return
    for path in set(base.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
