"""A step reads only the settings it declares: the view hands out declared values, refuses any
other with the setting's path, picks named items out of lists, and its dump is what the key
holds."""

from __future__ import annotations

import pytest

from kailin.engine.view import ConfigView, UndeclaredSetting, settings_view
from kailin.pipeline.config import RunConfig

CFG = RunConfig.model_validate({
    "corpus": {"limit": 5, "heldout": 2},
    "generators": [{"name": "dom", "model": "smollm2", "sft": {"max_steps": 3}},
                   {"name": "gen", "model": "smollm2", "question_type": "yesno"}]})


def test_declared_settings_are_read_and_others_refused() -> None:
    v = ConfigView(CFG, ["corpus.limit", "mesh"], step="workset")
    assert v.corpus.limit == 5
    assert v.mesh is CFG.mesh  # a section declared whole is the section itself
    with pytest.raises(UndeclaredSetting, match=r"step workset reads setting corpus\.heldout"):
        _ = v.corpus.heldout
    with pytest.raises(UndeclaredSetting, match="reads setting index"):
        _ = v.index
    with pytest.raises(UndeclaredSetting, match="read-only"):
        v.corpus = None  # type: ignore[misc]


def test_named_items_of_a_list() -> None:
    v = ConfigView(CFG, ["generators.dom.sft", "generators.dom.model"], step="sft:dom")
    gens = v.generators
    assert [g.name for g in gens] == ["dom"]  # only the declared generator
    assert gens[0].sft.max_steps == 3 and gens[0].model == "smollm2"
    with pytest.raises(UndeclaredSetting, match=r"generators\.dom\.question_type"):
        _ = gens[0].question_type
    whole = ConfigView(CFG, ["generators.gen"]).generators
    assert whole == [CFG.generators[1]]


def test_the_key_holds_exactly_the_declared_values() -> None:
    view = settings_view(CFG, ["corpus.limit", "generators.gen.question_type"])
    assert view == {"corpus.limit": 5, "generators.gen.question_type": "yesno"}
    other = RunConfig.model_validate({**CFG.model_dump(), "corpus": {"limit": 5, "heldout": 9}})
    assert settings_view(other, ["corpus.limit"]) == settings_view(CFG, ["corpus.limit"])
    dumped = ConfigView(CFG, ["corpus.limit", "corpus.heldout", "index.k"]).model_dump()
    assert dumped == {"corpus": {"limit": 5, "heldout": 2}, "index": {"k": 4}}
