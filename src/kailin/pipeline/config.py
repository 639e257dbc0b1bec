"""The ``kailin run`` configuration: one YAML file, validated with pydantic. Each section is the
settings class that lives beside the code that uses it (``corpus``: :mod:`kailin.corpus.config`,
``dpo``: :class:`kailin.align.dpo.DPOStageConfig`, ...); this module assembles them and checks
what one section asks of another.

Every section has working defaults, so a config only states what differs. Unknown keys are
errors (a typo must not silently fall back to a default). Paths are relative to the config
file's folder unless absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from kailin.align.dpo import DPOStageConfig
from kailin.align.evaluator import EvaluatorConfig
from kailin.align.prefer import PreferConfig
from kailin.align.score import MeshConfig
from kailin.align.sft import GeneratorConfig
from kailin.align.steering import SteeringConfig
from kailin.config import StageConfig, read_yaml_mapping
from kailin.corpus.config import CorpusConfig
from kailin.dataset.answers import AnswerConfig
from kailin.dataset.export import ExportStageConfig
from kailin.dataset.train import DownstreamConfig
from kailin.engine.executors.config import ExecutorConfig
from kailin.errors import InputError
from kailin.evaluate.perplexity import PerplexityStageConfig
from kailin.evaluate.pubmedqa_finetune import PubMedQAFinetuneStageConfig
from kailin.evaluate.pubmedqa_model import PubMedQAConfig
from kailin.generate.questions import GenerationConfig
from kailin.retrieval import IndexConfig
from kailin.retrieval.finetune import RetrieverConfig

__all__ = ["RunConfig", "apply_overrides", "load_config"]


class RunConfig(StageConfig):
    run_dir: str = "runs/kailin"
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [GeneratorConfig(name="general"),
                                 GeneratorConfig(name="yesno", question_type="yesno")])
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    preferences: PreferConfig = Field(default_factory=PreferConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    steering: SteeringConfig = Field(default_factory=SteeringConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    answers: AnswerConfig = Field(default_factory=AnswerConfig)
    export: ExportStageConfig = Field(default_factory=ExportStageConfig)
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)
    pubmedqa: PubMedQAConfig = Field(default_factory=PubMedQAConfig)
    perplexity: PerplexityStageConfig = Field(default_factory=PerplexityStageConfig)
    pubmedqa_finetune: PubMedQAFinetuneStageConfig = Field(
        default_factory=PubMedQAFinetuneStageConfig)

    #: section names that are the step's name (``score``, ``prefer``) for the sections whose
    #: YAML key stays as committed configs spell it (``mesh``, ``preferences``)
    SECTION_ALIASES: ClassVar[dict[str, str]] = {"score": "mesh", "prefer": "preferences"}

    @model_validator(mode="before")
    @classmethod
    def _section_aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for alias, key in cls.SECTION_ALIASES.items():
                if alias in data:
                    if key in data:
                        raise ValueError(f"{alias} and {key} name one section: give one")
                    data[key] = data.pop(alias)
        return data

    @field_validator("generators")
    @classmethod
    def _generators(cls, v: list[GeneratorConfig]) -> list[GeneratorConfig]:
        if len(v) < 2:
            raise ValueError("KAILIN needs at least two generators (chosen vs rejected)")
        names = [g.name for g in v]
        if len(set(names)) != len(names):
            raise ValueError(f"generator names must be unique: {names}")
        return v

    @model_validator(mode="after")
    def _wiring(self) -> RunConfig:
        if self.downstream.enabled and self.downstream.sft_steps and not self.answers.enabled:
            raise ValueError("downstream.sft_steps trains on the answered records: enable "
                             "answers, or set sft_steps: 0")
        if self.steering.enabled and not (self.dpo.enabled and self.corpus.heldout > 0):
            raise ValueError("steering compares DPO arms on held-out abstracts: enable dpo and "
                             "set corpus.heldout")
        if self.steering.validity_share is not None and not self.preferences.invalid_rejected:
            raise ValueError("steering.validity_share shares out validity pairs: set "
                             "preferences.invalid_rejected true")
        if self.export.questions_from == "policy" and not self.dpo.enabled:
            raise ValueError("export.questions_from policy needs the aligned generator: enable "
                             "dpo")
        if (self.export.policy_round is not None and self.steering.enabled
                and self.export.policy_round > self.steering.rounds):
            raise ValueError(f"export.policy_round {self.export.policy_round} is past the last "
                             f"steering round ({self.steering.rounds})")
        if self.retriever.enabled and self.index.kind == "bm25":
            raise ValueError("retriever.enabled fine-tunes the dense encoder, and a bm25 index "
                             "uses none: set index.kind to dense or hybrid, or retriever.enabled "
                             "false")
        if self.retriever.enabled and self.index.model:
            raise ValueError("retriever.enabled: the index uses the fine-tuned encoder "
                             "(RUN_DIR/models/retriever), so leave index.model unset (set "
                             "retriever.base to fine-tune another encoder), or set "
                             "retriever.enabled false")
        if (self.perplexity.enabled or self.pubmedqa_finetune.enabled) and not \
                self.downstream.enabled:
            raise ValueError("perplexity and pubmedqa_finetune evaluate the downstream models: "
                             "enable downstream")
        if self.perplexity.enabled and not (self.corpus.heldout or self.perplexity.pubmedqa):
            raise ValueError("perplexity needs texts: set corpus.heldout or perplexity.pubmedqa")
        if self.dpo.generator and self.dpo.generator not in {g.name for g in self.generators}:
            raise ValueError(f"dpo.generator {self.dpo.generator!r} is not one of the "
                             "generators")
        return self


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Set ``KEY=VALUE`` overrides (``steering.rounds=1``, ``index.kind=dense``) on a raw config
    mapping: the dotted key names nested sections, the value is read as YAML (safe loader), so
    ``1`` is a number, ``[a, b]`` a list and ``null`` unsets. Validation happens afterwards, so an
    unknown key or a bad value is rejected like one in the file."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise InputError(f"--set {item!r}: give KEY=VALUE, e.g. steering.rounds=1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                ) -> tuple[RunConfig, Path]:
    """Parse and validate a config file (safe YAML loader), with ``KEY=VALUE`` overrides
    (:func:`apply_overrides`); returns it and its folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "config file")
    apply_overrides(raw, overrides)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise InputError(f"{path}: invalid config:\n" + "\n".join(lines)) from None
    return cfg, path.parent.resolve()
