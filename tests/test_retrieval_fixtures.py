"""Small real corpora for the retrieval tests (and the retrieval benchmark).

A corpus directory in the CORPUS_SCHEMA layout is written from repository data only:
PubMedQA's 1,000 labelled abstracts (``src/kailin/data/pubmedqa/ori_pqal.json``: title unknown,
abstract = joined CONTEXTS, MeSH names, year) plus the 1,400 MeSH-indexed NLM benchmark abstracts
(``data/samples/mesh_indexed_abstracts_nlm``). MeSH names are mapped to UIs with
``kailin.mesh.load_mesh`` when it is available; otherwise the names themselves are stored.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kailin.corpus.schema import CORPUS_SCHEMA

REPO = Path(__file__).resolve().parents[1]
PQAL = REPO / "src" / "kailin" / "data" / "pubmedqa" / "ori_pqal.json"
NLM = REPO / "data" / "samples" / "mesh_indexed_abstracts_nlm"


@lru_cache(maxsize=1)
def _mesh_lookup():
    try:
        from kailin.mesh import load_mesh

        mesh = load_mesh()
        return mesh.lookup
    except Exception:  # the MeSH engine is optional here: keep the names
        return None


def _to_uis(names: list[str]) -> list[str]:
    lookup = _mesh_lookup()
    out: list[str] = []
    for name in names:
        ui = lookup(name) if lookup is not None else None
        ui = ui or name
        if ui not in out:
            out.append(ui)
    return out


def pubmedqa_records(limit: int | None = None) -> list[dict]:
    data = json.loads(PQAL.read_text(encoding="utf-8"))
    recs = []
    for pmid, d in list(data.items())[:limit]:
        contexts = d["CONTEXTS"]
        recs.append(
            {
                "pmid": int(pmid),
                "title": "",
                "abstract": " ".join(contexts),
                "mesh_names": list(d.get("MESHES") or []),
                "year": int(d["YEAR"]) if d.get("YEAR") else None,
                "question": d["QUESTION"],
            }
        )
    return recs


def nlm_records(limit: int | None = None) -> list[dict]:
    docs: dict[str, dict] = defaultdict(dict)
    for f in sorted(NLM.glob("*/*.TiAbMe")):
        for line in f.read_text(encoding="ascii", errors="replace").splitlines():
            if line.count("|") < 2:
                continue
            pmid, kind, rest = line.split("|", 2)
            docs[pmid].setdefault(kind, rest)
    recs = []
    for pmid, d in docs.items():
        if "a" not in d:
            continue
        entries = [e for e in d.get("m", "").split("|") if e]
        names = sorted({e.split("!")[0].rstrip("*") for e in entries})
        recs.append(
            {
                "pmid": int(pmid),
                "title": d.get("t", ""),
                "abstract": d["a"],
                "mesh_names": names,
                "year": None,
            }
        )
    recs.sort(key=lambda r: r["pmid"])
    return recs[:limit]


def write_corpus(out_dir: Path, records: list[dict], shards: int = 2) -> Path:
    """Write ``records`` as a corpus directory (``data/part-*.parquet`` + manifest)."""
    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    rows = []
    for r in records:
        if r["pmid"] in seen:
            continue
        seen.add(r["pmid"])
        uis = _to_uis(r["mesh_names"])
        rows.append(
            {
                "pmid": r["pmid"],
                "version": 1,
                "title": r["title"],
                "abstract": r["abstract"],
                "mesh_uis": uis,
                "mesh_major": [False] * len(uis),
                "year": r["year"],
                "journal": None,
                "language": "eng",
                "source_file": "test-fixture",
            }
        )
    per = -(-len(rows) // shards)
    for i in range(shards):
        part = rows[i * per : (i + 1) * per]
        if not part:
            continue
        cols = {f.name: [row.get(f.name) for row in part] for f in CORPUS_SCHEMA}
        table = pa.table(cols, schema=CORPUS_SCHEMA)
        pq.write_table(table, out_dir / "data" / f"part-{i:05d}.parquet")
    (out_dir / "manifest.json").write_text(
        json.dumps({"records": len(rows), "source": "kailin retrieval test fixture"})
    )
    return out_dir


def build_test_corpus(
    out_dir: Path, n_pubmedqa: int | None = None, n_nlm: int | None = None, shards: int = 2
) -> Path:
    """PubMedQA abstracts (first ``n_pubmedqa``) among NLM abstracts (first ``n_nlm``)."""
    return write_corpus(out_dir, pubmedqa_records(n_pubmedqa) + nlm_records(n_nlm), shards)


# -- tests of the fixture itself ---------------------------------------------------------------


def test_fixture_corpus_is_readable(tmp_path: Path) -> None:
    from kailin.corpus.reader import open_corpus

    c = open_corpus(build_test_corpus(tmp_path / "c", n_pubmedqa=20, n_nlm=30))
    assert c.num_rows == 50
    t = c.read(["pmid", "abstract", "mesh_uis", "year"])
    assert len(set(t.column("pmid").to_pylist())) == 50
    assert all(a for a in t.column("abstract").to_pylist())
    assert any(m for m in t.column("mesh_uis").to_pylist())


def test_nlm_records_are_real() -> None:
    recs = nlm_records()
    assert len(recs) == 1400
    assert all(r["abstract"] and r["mesh_names"] for r in recs[:50])
