"""The corpus table: the contract between ingestion and every later stage.

A corpus directory holds ``CORPUS_DIR/manifest.json`` and Parquet shards under
``CORPUS_DIR/data/`` that contain exactly the live records (one row per NLM key (PMID, Version):
a Version > 1 citation is a distinct article; the last record of a key wins, deletions applied). Later stages read it through :func:`kailin.corpus.reader.open_corpus`.
"""

from __future__ import annotations

import pyarrow as pa

QUALIFIER = pa.struct([("ui", pa.string()), ("name", pa.string()), ("major", pa.bool_())])
MESH_HEADING = pa.struct(
    [
        ("ui", pa.string()),
        ("name", pa.string()),
        ("major", pa.bool_()),
        ("qualifiers", pa.list_(QUALIFIER)),
    ]
)
CHEMICAL = pa.struct([("ui", pa.string()), ("name", pa.string())])

CORPUS_SCHEMA = pa.schema(
    [
        ("pmid", pa.int64()),
        ("version", pa.int32()),
        ("title", pa.string()),
        ("abstract", pa.string()),
        ("mesh_uis", pa.list_(pa.string())),  # descriptor UIs, in record order
        ("mesh_major", pa.list_(pa.bool_())),  # aligned with mesh_uis
        ("mesh", pa.list_(MESH_HEADING)),  # full headings with qualifiers
        ("keywords", pa.list_(pa.string())),
        ("chemicals", pa.list_(CHEMICAL)),
        ("publication_types", pa.list_(pa.string())),
        ("journal", pa.string()),
        ("year", pa.int32()),
        ("language", pa.string()),
        ("doi", pa.string()),
        ("source_file", pa.string()),
    ]
)

#: columns every corpus has; the others may be null
REQUIRED_COLUMNS = ("pmid", "title", "abstract", "mesh_uis", "year")
