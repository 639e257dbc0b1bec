"""The bundled demo corpus: real PubMed abstracts with MeSH, built from the repository's data.

Sources (about 2,250 live records): the PubMed/MEDLINE XML samples
(``data/samples/pubmed_xml_samples``), NLM's 1,400 MeSH-indexed abstracts
(``data/samples/mesh_indexed_abstracts_nlm``) and PubMedQA PQA-L (packaged
``kailin/data/pubmedqa/ori_pqal.json``) minus its 500 test PMIDs (the default exclusion list).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from kailin.corpus.store import IngestReport, ingest
from kailin.errors import InputError

#: the NLM sets (TEST's 90 abstracts are also in the other sets)
NLM_SETS = ("L1000/L1000.TiAbMe", "NLM2007/NLM2007.TiAbMe", "SMALL200/S200.TiAbMe")


def samples_dir() -> Path:
    """``data/samples`` of the repository checkout (``$KAILIN_SAMPLES`` overrides)."""
    import os

    env = os.environ.get("KAILIN_SAMPLES")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "data" / "samples"
        if (cand / "pubmed_xml_samples").is_dir():
            return cand
    raise InputError(
        "the demo corpus needs the repository's data/samples folder (set KAILIN_SAMPLES to it)"
    )


def demo_inputs() -> list[Path]:
    s = samples_dir()
    xml = sorted((s / "pubmed_xml_samples").glob("*.xml*"))
    nlm = [s / "mesh_indexed_abstracts_nlm" / p for p in NLM_SETS]
    pqa = Path(str(resources.files("kailin").joinpath("data/pubmedqa/ori_pqal.json")))
    missing = [p for p in [*xml, *nlm, pqa] if not p.exists()]
    if missing:
        raise InputError(f"demo corpus inputs missing: {', '.join(map(str, missing))}")
    return [*xml, *nlm, pqa]


def build_demo_corpus(
    out_dir: str | Path, *, resolver: Any = "auto", workers: int = 1, progress: bool = False
) -> IngestReport:
    """Build (or, when already built, re-use) the demo corpus in ``out_dir``."""
    return ingest(demo_inputs(), out_dir, workers=workers, resolver=resolver, progress=progress)
