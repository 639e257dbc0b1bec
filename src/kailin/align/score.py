"""Questions -> MeSH scores (KAILIN step 2-3): retrieve contexts for every question, then score
how well the contexts' MeSH terms match the source abstract's in the MeSH hierarchy.

:class:`ScoreStage` maps a batch of the questions table (``pmid``, ``generator``, ``prompt``,
``question``, ...) to the same rows plus

* ``context_pmids`` (list<int64>): the top-k retrieved PMIDs, best first;
* ``context_titles`` (list<string>): their titles, or the first 200 characters of the abstract
  for a record without a title (what the evaluator agent reads);
* ``contexts_passed_over`` (int32): retrieved hits without MeSH (records NLM has not indexed
  yet) passed over to find ``k`` contexts that carry MeSH, at most ``max_passed_over``;
* ``score`` (float64): the document score of the source MeSH against the contexts' MeSH, with
  :data:`kailin.mesh.score.DEFAULT_SCORING` (or the paper's form with ``faithful``). NaN only
  when the question is empty, or the source has no known MeSH, or no context within the bound
  has any.

The source abstract's MeSH UIs come from the questions table's ``mesh_uis`` column when it has
one, else from the corpus (``corpus_dir``) looked up per batch with DuckDB. By default the source
PMID is excluded from its own retrieval results (``exclude_source``; the authors' code does not
exclude it: with it in the index the score mostly rewards re-finding the source itself).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from kailin.config import StageConfig
from kailin.engine.stage import Stage
from kailin.errors import InputError

log = logging.getLogger(__name__)

QUESTION_COLUMNS = ("pmid", "question")


class ScoreConfig(StageConfig):
    """The document score: the options of ``kailin score`` and the scoring keys of the
    pipeline's ``mesh`` section. Unset keys take :data:`kailin.mesh.score.DEFAULT_SCORING`
    (chosen by ``kailin evaluate signal``), or the paper's form with ``faithful``."""

    added_fields: ClassVar[tuple[str, ...]] = ("hybrid_alpha",)

    measure: str | None = Field(None, description="descriptor similarity (default embedding; "
                                "hybrid, resnik, lin, jiang, kailin, path, ...)")
    faithful: bool = Field(False, description="the paper's form: the authors' measure, "
                           "all-pairs mean, every descriptor, k=4")
    aggregate: Literal["mean", "bma"] | None = Field(None, description="default bma")
    exclude: Literal["check-tags", "none"] | None = Field(None, description="default: NLM's "
                                                          "check tags left out")
    ic_power: float | None = Field(None, ge=0, description="descriptor weights (IC/MaxIC)^p "
                                   "(default 3)")
    major_weight: float | None = Field(None, gt=0, description="weight of MajorTopicYN "
                                       "descriptors (default 1; needs the corpus)")
    rank_weighting: Literal["none", "reciprocal"] | None = Field(
        None, description="none (default) or reciprocal (the context at rank r weighs 1/r)")
    hybrid_alpha: float | None = Field(None, ge=0, le=1, description="measure hybrid: the "
                                       "embedding's share (default 0.5)")
    k: int | None = Field(None, ge=1, description="contexts the score looks at (default 6, "
                          "faithful 4; kailin run: at least index.k, which the dataset keeps)")
    max_passed_over: int = Field(16, ge=0, description="hits without MeSH passed over per "
                                 "question to find k contexts with MeSH")

    def scoring(self) -> dict[str, Any]:
        """The keyword arguments of :class:`ScoreStage` these settings give."""
        return {k: getattr(self, k) for k in ScoreConfig.model_fields}


class ScoreStage(Stage):
    """Retrieve top-k contexts per question and MeSH-score them against the source."""

    name: ClassVar[str] = "score"
    stateful: ClassVar[bool] = True

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        corpus_dir: str | os.PathLike[str] | None = None,
        mesh_dir: str | os.PathLike[str] | None = None,
        k: int | None = None,
        measure: str | None = None,
        faithful: bool = False,
        exclude_source: bool = True,
        aggregate: str | None = None,
        index: Any = None,
        mesh: Any = None,
        *,
        exclude: str | None = None,
        ic_power: float | None = None,
        major_weight: float | None = None,
        rank_weighting: str | None = None,
        hybrid_alpha: float | None = None,
        max_passed_over: int = 16,
    ) -> None:
        super().__init__()
        from kailin.mesh.score import DEFAULT_SCORE_K, PAPER_SCORE_K, resolve_scoring

        if k is None:
            k = PAPER_SCORE_K if faithful else DEFAULT_SCORE_K
        if k < 1:
            raise InputError(f"k={k}: retrieve at least one context")
        if max_passed_over < 0:
            raise InputError(f"max_passed_over={max_passed_over}: must be >= 0")
        self.index_dir = str(index_dir)
        self.corpus_dir = str(corpus_dir) if corpus_dir else None
        self.mesh_dir = str(mesh_dir) if mesh_dir else None
        self.k = k
        #: the scorer's settings: the default document score, or the paper's with ``faithful``
        self.scoring = resolve_scoring(
            faithful, measure=measure, aggregate=aggregate, exclude=exclude, ic_power=ic_power,
            major_weight=major_weight, rank_weighting=rank_weighting, hybrid_alpha=hybrid_alpha)
        self.measure = self.scoring["measure"]
        self.faithful = self.scoring["faithful"]
        self.aggregate = self.scoring["aggregate"]
        self.exclude_source = exclude_source
        self.max_passed_over = max_passed_over
        if self.scoring["major_weight"] != 1.0 and not self.corpus_dir:
            raise InputError("major_weight needs the corpus (--corpus DIR): MajorTopicYN flags "
                             "are read from it")
        # prebuilt resources (tests, notebooks); otherwise loaded in setup()
        self._index = index
        self._mesh = mesh
        self._scorer: Any = None
        self._lookup: CorpusMeshLookup | None = None

    @classmethod
    def from_config(cls, index_dir: str | os.PathLike[str], config: ScoreConfig,
                    corpus_dir: str | os.PathLike[str] | None = None,
                    mesh_dir: str | os.PathLike[str] | None = None,
                    exclude_source: bool = True) -> ScoreStage:
        """The stage with the settings of a :class:`ScoreConfig` (what ``kailin score`` and the
        pipeline's score stage build)."""
        return cls(index_dir, corpus_dir=corpus_dir, mesh_dir=mesh_dir,
                   exclude_source=exclude_source, **config.scoring())

    def fingerprint_config(self) -> dict[str, Any]:
        from kailin.corpus.reader import corpus_identity
        from kailin.retrieval.base import index_identity

        return {
            "index": index_identity(self.index_dir),
            "corpus": corpus_identity(self.corpus_dir) if self.corpus_dir else None,
            "mesh": content_dir_identity(self.mesh_dir) if self.mesh_dir else None,
            "k": self.k,
            **self.scoring,
            "exclude_source": self.exclude_source,
            "max_passed_over": self.max_passed_over,
        }

    def __getstate__(self) -> dict[str, Any]:
        # heavy resources are rebuilt by setup() in the worker
        state = dict(self.__dict__)
        state.update(_index=None, _mesh=None, _scorer=None, _lookup=None, _ready=False)
        return state

    def setup(self) -> None:
        if self._index is None:
            from kailin.retrieval import load_index

            self._index = load_index(self.index_dir)
        if self._mesh is None:
            from kailin.mesh import load_mesh

            self._mesh = load_mesh(self.mesh_dir)
        self._scorer = self._mesh.scorer(**self.scoring)
        if self.corpus_dir:
            self._lookup = CorpusMeshLookup(self.corpus_dir)

    # -- the work -------------------------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in QUESTION_COLUMNS if c not in batch.column_names]
        if missing:
            raise InputError(
                f"questions table: missing column(s) {missing}; give the output of "
                "`kailin generate questions`"
            )
        pmids = [int(p) for p in batch["pmid"].to_pylist()]
        questions = [q if isinstance(q, str) else "" for q in batch["question"].to_pylist()]
        if self._lookup is not None:
            self._lookup.clear()  # one batch at a time: memory stays bounded
        sources = self._source_mesh(batch, pmids)

        live = [i for i, q in enumerate(questions) if q.strip()]
        context_pmids: list[list[int]] = [[] for _ in pmids]
        context_titles: list[list[str]] = [[] for _ in pmids]
        context_mesh: list[list[list[str]]] = [[] for _ in pmids]
        passed_over = np.zeros(len(pmids), dtype=np.int32)
        if live:
            excl = [pmids[i] if self.exclude_source else None for i in live]
            qs = [questions[i] for i in live]
            if hasattr(self._index, "search_with_mesh"):
                hits, passed = self._index.search_with_mesh(
                    qs, k=self.k, exclude_pmids=excl, max_passed_over=self.max_passed_over)
            else:  # a custom index with only search(): no passing over
                hits = self._index.search(qs, k=self.k, exclude_pmids=excl)
                passed = [0] * len(hits)
            if len(hits) != len(live):
                raise RuntimeError(f"index returned {len(hits)} result lists for {len(live)} queries")
            for i, hs, p in zip(live, hits, passed, strict=True):
                context_pmids[i] = [int(h.pmid) for h in hs]
                context_titles[i] = [_short_text(h) for h in hs]
                context_mesh[i] = [list(h.mesh_uis or []) for h in hs]
                passed_over[i] = p

        scores = np.full(len(pmids), np.nan, dtype=np.float64)
        todo = [i for i in live if context_mesh[i]]
        if todo:
            src_major = ctx_major = None
            if self._lookup is not None and self.scoring["major_weight"] != 1.0:
                # the sources are cached from _source_mesh: only the contexts are read here
                found = self._lookup.get([pmids[i] for i in todo]
                                         + [p for i in todo for p in context_pmids[i]])
                src_major = [_flags(sources[i], found.get(pmids[i])) for i in todo]
                ctx_major = [[_flags(m, found.get(p)) for m, p in
                              zip(context_mesh[i], context_pmids[i], strict=True)] for i in todo]
            s = np.asarray(
                self._scorer.doc_scores([sources[i] for i in todo], [context_mesh[i] for i in todo],
                                        src_major, ctx_major),
                dtype=np.float64,
            )
            scores[todo] = s
        out = batch
        for name, col in (
            ("context_pmids", pa.array(context_pmids, type=pa.list_(pa.int64()))),
            ("context_titles", pa.array(context_titles, type=pa.list_(pa.string()))),
            ("contexts_passed_over", pa.array(passed_over, type=pa.int32())),
            ("score", pa.array(scores, type=pa.float64())),
        ):
            if name in out.column_names:
                out = out.drop_columns([name])
            out = out.append_column(name, col)
        return out

    def _source_mesh(self, batch: pa.Table, pmids: list[int]) -> list[list[str]]:
        if "mesh_uis" in batch.column_names:
            return [list(m or []) for m in batch["mesh_uis"].to_pylist()]
        if self._lookup is None:
            found = _docstore_mesh(self._index, pmids)
            if found is None:
                raise InputError(
                    "questions table has no mesh_uis column and the index has no docstore: give "
                    "the corpus (--corpus DIR) so the source abstracts' MeSH can be looked up"
                )
            return _report_lost(found, pmids)
        found = self._lookup.get(pmids)
        return _report_lost({p: uis for p, (uis, _) in found.items()}, pmids)


class CorpusMeshLookup:
    """MeSH UIs and MajorTopicYN flags of corpus records, looked up by PMID."""

    def __init__(self, corpus_dir: str | Path) -> None:
        from kailin.corpus.reader import open_corpus

        self.files = [str(f) for f in open_corpus(corpus_dir).files()]
        self._cache: dict[int, tuple[list[str], list[bool]] | None] = {}

    def clear(self) -> None:
        self._cache.clear()

    def get(self, pmids: Iterable[int]) -> dict[int, tuple[list[str], list[bool]]]:
        """``{pmid: (mesh_uis, mesh_major)}`` of the PMIDs found in the corpus (one DuckDB
        query for those not looked up before)."""
        pmids = [int(p) for p in pmids]
        want = sorted(set(pmids) - set(self._cache))
        if want:
            from kailin.io import connect_duckdb

            con = connect_duckdb()
            con.register("want", pa.table({"pmid": pa.array(want, pa.int64())}))
            rows = con.execute(
                "SELECT c.pmid, c.mesh_uis, c.mesh_major FROM read_parquet($files) c "
                "JOIN want w ON c.pmid = w.pmid", {"files": self.files}).fetchall()
            con.close()
            for p, uis, major in rows:
                uis = list(uis or [])
                major = list(major or [False] * len(uis))
                if len(major) != len(uis):
                    major = [False] * len(uis)
                self._cache[int(p)] = (uis, [bool(x) for x in major])
            for p in want:
                self._cache.setdefault(p, None)  # not in the corpus
        return {p: self._cache[p] for p in pmids if self._cache[p] is not None}


def _flags(uis: list[str], found: tuple[list[str], list[bool]] | None) -> list[bool]:
    """MajorTopicYN flags for ``uis`` from a corpus lookup (False where unknown)."""
    if not found:
        return [False] * len(uis)
    major = dict(zip(*found, strict=True))
    return [bool(major.get(u, False)) for u in uis]


def _short_text(hit: Any, limit: int = 200) -> str:
    """A context's title, or the start of its abstract when it has none."""
    title = str(getattr(hit, "title", "") or "").strip()
    if title:
        return title
    ab = str(getattr(hit, "abstract", "") or "").strip()
    return ab if len(ab) <= limit else ab[:limit].rsplit(" ", 1)[0]


def _report_lost(found: dict[int, list[str]], pmids: list[int]) -> list[list[str]]:
    lost = [p for p in pmids if p not in found]
    if lost:
        log.warning("%d source PMID(s) not found (e.g. %s): their score is NaN",
                    len(set(lost)), lost[0])
    return [found.get(p, []) for p in pmids]


def _docstore_mesh(index: Any, pmids: list[int]) -> dict[int, list[str]] | None:
    """Source MeSH from the index's own docstore (when the sources are indexed documents)."""
    store = getattr(index, "docstore", None)
    if store is None or not hasattr(store, "pmids") or not hasattr(store, "table"):
        return None
    want = np.asarray(sorted(set(pmids)), dtype=np.int64)
    rows = np.flatnonzero(np.isin(store.pmids, want))
    if len(rows) == 0:
        return {}
    sub = store.table.take(pa.array(rows, type=pa.int64())).select(["pmid", "mesh_uis"])
    return {int(p): list(m or []) for p, m in zip(sub["pmid"].to_pylist(),
                                                   sub["mesh_uis"].to_pylist(), strict=True)}


def content_dir_identity(path: str | os.PathLike[str]) -> str | None:
    """The content digest of a small folder (a MeSH build), not its path."""
    from kailin.io import content_fingerprint

    return content_fingerprint(path) if Path(path).exists() else None


def score_questions(
    questions: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    corpus_dir: str | os.PathLike[str] | None = None,
    mesh_dir: str | os.PathLike[str] | None = None,
    k: int | None = None,
    measure: str | None = None,
    faithful: bool = False,
    exclude_source: bool = True,
    aggregate: str | None = None,
    rows_per_shard: int = 256,
    progress: bool = True,
    config: ScoreConfig | None = None,
    **scoring: Any,
) -> dict[str, Any]:
    """Run :class:`ScoreStage` locally over a questions Parquet file/directory into ``out_dir``,
    with the settings of ``config`` (or, for short calls, the same settings as keywords)."""
    from kailin.engine.executors.local import LocalExecutor

    qpath = Path(questions)
    if not qpath.exists():
        raise InputError(f"{qpath}: no such questions file or directory")
    if config is None:
        config = ScoreConfig(k=k, measure=measure, faithful=faithful, aggregate=aggregate,
                             **scoring)
    elif scoring or k is not None or measure is not None or faithful or aggregate is not None:
        raise TypeError("score_questions: give the settings as config or as keywords, not both")
    stage = ScoreStage.from_config(index_dir, config, corpus_dir=corpus_dir, mesh_dir=mesh_dir,
                                   exclude_source=exclude_source)
    stats = LocalExecutor(rows_per_shard=rows_per_shard, progress=progress).run(
        stage, qpath, out_dir
    )
    return stats


def summarize_scores(table: pa.Table | Iterable[pa.RecordBatch]) -> dict[str, Any]:
    """Per-generator count, NaN count and mean score (for the CLI table), of a table or of a
    stream of record batches (``kailin.io.iter_parquet_batches``: bounded memory)."""
    out: dict[str, dict[str, Any]] = {}
    for batch in (table.to_batches() if isinstance(table, pa.Table) else table):
        names = batch.schema.names
        scores = batch.column(names.index("score")).to_pylist()
        gens = (batch.column(names.index("generator")).to_pylist() if "generator" in names
                else [""] * len(scores))
        for g, s in zip(gens, scores, strict=True):
            d = out.setdefault(str(g), {"n": 0, "nan": 0, "sum": 0.0})
            d["n"] += 1
            if s is None or math.isnan(s):
                d["nan"] += 1
            else:
                d["sum"] += s
    return {
        g: {"n": d["n"], "nan": d["nan"],
            "mean": (d["sum"] / (d["n"] - d["nan"])) if d["n"] > d["nan"] else float("nan")}
        for g, d in out.items()
    }


class MeshConfig(ScoreConfig):
    """The MeSH build and the document score (the settings of ``kailin score``,
    ``kailin.align.score.ScoreConfig``; defaults: kailin.mesh.score.DEFAULT_SCORING, chosen by
    ``kailin evaluate signal``; ``faithful: true`` is the paper's form)."""

    dir: str | None = Field(None, description="MeSH build folder; default: the packaged one")
    selfcheck_sample: int = Field(200, ge=0, description="records whose titles stand in for "
                                  "expert questions in reports/signal_selfcheck.json (0: off)")
