"""Every measure against values computed by hand on a seven-descriptor tree.

    A01 (D1)                          B01 (D6)
    ├── A01.100 (D2)                  └── B01.100 (D7)
    │   ├── A01.100.100 (D4)
    │   └── A01.100.200 (D5)
    └── A01.200 (D3)
        └── A01.200.100 (D5 again: D5 has two tree numbers)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kailin.mesh.build import Mesh
from kailin.mesh.reference import ReferenceKailin
from kailin.mesh.vocabulary import DescriptorRecord, MeshVocabulary

TREES = {
    "D000001": ["A01"],
    "D000002": ["A01.100"],
    "D000003": ["A01.200"],
    "D000004": ["A01.100.100"],
    "D000005": ["A01.100.200", "A01.200.100"],
    "D000006": ["B01"],
    "D000007": ["B01.100"],
}
DF = {"D000001": 10, "D000002": 20, "D000003": 30, "D000004": 5, "D000005": 15,
      "D000006": 50, "D000007": 50}
L10 = math.log10


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    vocab = MeshVocabulary(
        DescriptorRecord(u, f"Term {u[-1]}", [f"Alias {u[-1]}"], t) for u, t in TREES.items()
    )
    df = np.array([DF[u] for u in vocab.uis], dtype=float)
    return Mesh(vocab, df)


def sim(mesh: Mesh, a: str, b: str, measure: str = "kailin", faithful: bool = False) -> float:
    return mesh.scorer(measure, faithful=faithful).similarity(a, b)


def test_hierarchy(mesh: Mesh) -> None:
    h = mesh.hierarchy
    assert h.parents("D000005") == {"D000002", "D000003"}
    assert h.children("D000001") == {"D000002", "D000003"}
    assert h.ancestors("D000004") == {"D000001", "D000002"}
    assert h.descendants("D000001") == {"D000002", "D000003", "D000004", "D000005"}
    assert h.descendants("D000002") == {"D000004", "D000005"}
    assert h.descendants("D000004") == set()
    assert h.depth("D000005") == 3 and h.depth("D000006") == 1
    assert h.lca("D000004", "D000005") == "D000002"
    assert h.lca("D000002", "D000003") == "D000001"
    assert h.lca("D000004", "D000007") is None
    assert h.categories_of("D000005") == ["A01"]
    # per category
    assert h.descendants("D000001", category="B01") == set()
    assert h.children("D000006", category="B01") == {"D000007"}


def test_faithful_ic(mesh: Mesh) -> None:
    cic = mesh.ic_faithful
    h = mesh.hierarchy
    a01, b01 = h.cat_id["A01"], h.cat_id["B01"]
    i = mesh.vocab.id_of
    assert cic.ic[i["D000001"], a01] == pytest.approx(-L10(70 / 80))
    assert cic.ic[i["D000002"], a01] == pytest.approx(-L10(20 / 80))
    assert cic.ic[i["D000003"], a01] == pytest.approx(-L10(15 / 80))
    assert cic.ic[i["D000004"], a01] == 0  # leaves: the authors' quirk
    assert cic.ic[i["D000006"], b01] == pytest.approx(-L10(0.5))
    assert math.isnan(cic.ic[i["D000006"], a01])
    assert cic.max_ic[a01] == pytest.approx(-L10(15 / 80))
    assert cic.max_ic[b01] == pytest.approx(-L10(0.5))


def test_kailin_faithful_by_hand(mesh: Mesh) -> None:
    mx = -L10(15 / 80)
    ic1, ic2, ic3 = -L10(70 / 80), -L10(20 / 80), -L10(15 / 80)
    # D2 vs D3: LCA D1
    ictmp = ic1 / mx
    s = ic2 + ic3
    lin = 2 * ictmp / s
    jiang = 1 - min(1, s - 2 * ictmp)
    rel = lin * (1 - 10 ** (-ictmp * mx))
    expect = sum(min(max(v, 0), 1) for v in (lin, jiang, rel)) / 3
    assert sim(mesh, "D000002", "D000003", faithful=True) == pytest.approx(expect, abs=1e-12)
    # two leaves: S = 0, no values -> 0
    assert sim(mesh, "D000004", "D000005", faithful=True) == 0.0
    # D2 vs its child D5: every value clips to 1
    assert sim(mesh, "D000002", "D000005", faithful=True) == pytest.approx(1.0)
    # no shared first part
    assert sim(mesh, "D000004", "D000007", faithful=True) == 0.0
    assert sim(mesh, "D000004", "D000004", faithful=True) == 1.0


def _global_ic() -> dict[str, float]:
    c = {u: DF[u] + 1 for u in DF}
    total = sum(c.values())
    below = {"D000001": ["D000001", "D000002", "D000003", "D000004", "D000005"],
             "D000002": ["D000002", "D000004", "D000005"], "D000003": ["D000003", "D000005"],
             "D000004": ["D000004"], "D000005": ["D000005"],
             "D000006": ["D000006", "D000007"], "D000007": ["D000007"]}
    return {u: -L10(sum(c[x] for x in xs) / total) for u, xs in below.items()}


def test_global_ic(mesh: Mesh) -> None:
    ic = _global_ic()
    for u, v in ic.items():
        assert mesh.ic_global[mesh.vocab.id_of[u]] == pytest.approx(v)


def test_kailin_default_by_hand(mesh: Mesh) -> None:
    ic = _global_ic()
    mx = max(ic.values())
    m = ic["D000002"]  # MICA of D4 and D5
    s = ic["D000004"] + ic["D000005"]
    lin = 2 * m / s
    jiang = 1 - (s - 2 * m) / (2 * mx)
    rel = lin * (1 - 10 ** (-m))
    assert sim(mesh, "D000004", "D000005") == pytest.approx((lin + jiang + rel) / 3)
    # different categories: MICA is the root (IC 0) -> Lin 0, Rel 0
    s2 = ic["D000004"] + ic["D000007"]
    assert sim(mesh, "D000004", "D000007") == pytest.approx((1 - s2 / (2 * mx)) / 3)
    assert sim(mesh, "D000003", "D000003") == 1.0


def test_classical_by_hand(mesh: Mesh) -> None:
    ic = _global_ic()
    mx = max(ic.values())
    m = ic["D000002"]
    s = ic["D000004"] + ic["D000005"]
    assert sim(mesh, "D000004", "D000005", "resnik") == pytest.approx(m / mx)
    assert sim(mesh, "D000004", "D000005", "lin") == pytest.approx(2 * m / s)
    assert sim(mesh, "D000004", "D000005", "jiang") == pytest.approx(1 - (s - 2 * m) / (2 * mx))
    # node depths below a virtual root: letter 1, A01 2, A01.100 3, A01.100.100 4
    assert sim(mesh, "D000004", "D000005", "path") == pytest.approx(1 / 3)
    assert sim(mesh, "D000004", "D000005", "wu-palmer") == pytest.approx(2 * 3 / 8)
    assert sim(mesh, "D000004", "D000005", "leacock-chodorow") == pytest.approx(-math.log(3 / 8))
    assert sim(mesh, "D000002", "D000003", "path") == pytest.approx(1 / 3)
    assert sim(mesh, "D000004", "D000007", "path") == pytest.approx(1 / 8)  # via the root
    assert sim(mesh, "D000004", "D000007", "wu-palmer") == 0.0
    assert sim(mesh, "D000004", "D000004", "path") == 1.0
    # D5 is reached through A01.200 too: its shortest path to D3 is 1 edge
    assert sim(mesh, "D000005", "D000003", "path") == pytest.approx(1 / 2)


def test_set_and_document_scores(mesh: Mesh) -> None:
    sc = mesh.scorer()
    pair = sc.similarity
    src = ["D000004", "D000005"]
    ctx1 = ["D000005"]
    ctx2 = ["D000002", "D999999"]  # unknown UI: dropped and counted
    s1 = (pair("D000004", "D000005") + 1.0) / 2
    s2 = (pair("D000004", "D000002") + pair("D000005", "D000002")) / 2
    got = sc.doc_scores([src], [[ctx1, ctx2, []]])
    assert got[0] == pytest.approx((s1 + s2) / 2)
    assert sc.last_stats.unknown_descriptors == 1
    assert sc.last_stats.empty_contexts == 1
    # best-match average
    bma = mesh.scorer(aggregate="bma")
    # rows: D4's best match is D5, D5's is itself; column: D5's best match is itself
    expect = ((pair("D000004", "D000005") + 1.0) / 2 + 1.0) / 2
    assert bma.set_similarity(src, ctx1) == pytest.approx(expect)
    # undefined scores are NaN, never an exception
    out = sc.doc_scores([[], src, ["D999999"]], [[ctx1], [[], []], [ctx1]])
    assert np.isnan(out).all()
    assert sc.last_stats.undefined_records == 3


def test_reference_agrees(mesh: Mesh) -> None:
    ref = ReferenceKailin(TREES, DF)
    sc = mesh.scorer(faithful=True)
    for a in TREES:
        for b in TREES:
            assert sc.similarity(a, b) == pytest.approx(ref.similarity(a, b), abs=1e-12)


def test_lookup(mesh: Mesh) -> None:
    assert mesh.lookup("term 4") == "D000004"
    assert mesh.lookup("  ALIAS 5 ") == "D000005"
    assert mesh.lookup("Term 2/drug therapy") == "D000002"
    assert mesh.lookup("Term 2*") == "D000002"
    assert mesh.lookup("nothing") is None
    with pytest.raises(Exception, match="unknown MeSH descriptor"):
        mesh.scorer().similarity("nothing", "D000001")
