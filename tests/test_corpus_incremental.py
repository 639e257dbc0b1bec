"""Incremental ingestion on real PubMed records: only touched shards are rewritten, new keys go
to new shards, (PMID, Version) keys, deletions, compaction, crashes, idempotence.

The store is NLM's 177-record 2018 sample cut into 20-row shards (9 shards); update files are
written in the real format from its own records (titles edited, PMIDs/Versions changed)."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import kailin.corpus.layout as layout
import kailin.corpus.store as store
from kailin.corpus import open_corpus
from kailin.corpus.sources import DictMesh

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "data" / "samples" / "pubmed_xml_samples" / "pubmedsample18n0001.xml.gz"
TEXT = gzip.decompress(BASE.read_bytes()).decode("utf-8")
HEAD = TEXT.partition("<PubmedArticle>")[0]
ARTS = {
    int(re.search(r"<PMID Version=\"1\">(\d+)</PMID>", a).group(1)): "<PubmedArticle>"
    + a.split("</PubmedArticle>")[0]
    + "</PubmedArticle>"
    for a in TEXT.split("<PubmedArticle>")[1:]
}
RPS = 20
NO_COMPACT = {"compact_max_small": 1000}


def _ingest(files, out, **kw):
    kw.setdefault("resolver", DictMesh({}))
    kw.setdefault("progress", False)
    kw.setdefault("rows_per_shard", RPS)
    return store.ingest(files, out, **kw)


def _retitle(pmid: int, tag: str = "REVISED", version: int = 1, new_pmid: int | None = None) -> str:
    a = ARTS[pmid]
    a = re.sub(r"<ArticleTitle>", f"<ArticleTitle>{tag} ", a, count=1)
    return a.replace(
        f'<PMID Version="1">{pmid}</PMID>',
        f'<PMID Version="{version}">{new_pmid or pmid}</PMID>',
        1,
    )


def _update(path: Path, articles: list[str], deletes: list[tuple[int, int]] = ()) -> Path:
    body = "".join(articles)
    if deletes:
        body += (
            "<DeleteCitation>"
            + "".join(f'<PMID Version="{v}">{p}</PMID>' for p, v in deletes)
            + "</DeleteCitation>"
        )
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(HEAD + body + "\n</PubmedArticleSet>\n")
    return path


def _files(out: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in (out / "data").glob("*.parquet")
    }


def _keys_by_file(out: Path) -> dict[str, set[tuple[int, int]]]:
    return {
        p.name: set(zip(*pq.read_table(p, columns=["pmid", "version"]).to_pydict().values()))
        for p in sorted((out / "data").glob("*.parquet"))
    }


def _rows(out: Path) -> dict[tuple[int, int], dict]:
    rows = open_corpus(out).read().to_pylist()
    keys = [(r["pmid"], r["version"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (pmid, version) in two rows"
    return dict(zip(keys, rows))


@pytest.fixture()
def base(tmp_path: Path) -> Path:
    out = tmp_path / "c"
    _ingest([BASE], out, **NO_COMPACT)
    assert len(_files(out)) == 9 and len(_rows(out)) == 177
    return out


def test_update_rewrites_only_the_shards_it_touches(base: Path, tmp_path: Path) -> None:
    before, owner = _files(base), {}
    for name, keys in _keys_by_file(base).items():
        for k in keys:
            owner[k] = name
    pmids = sorted(p for p, _ in owner)
    revised, gone = [pmids[3], pmids[5]], pmids[150]  # shards 0 and 7
    touched = {owner[(p, 1)] for p in [*revised, gone]}
    assert len(touched) == 2
    new_ids = [90_000_001, 90_000_002, 90_000_003]
    upd = _update(
        tmp_path / "pubmedsample18n0002.xml.gz",
        [_retitle(p) for p in revised]
        + [
            _retitle(pmids[i], "NEW", new_pmid=n)
            for i, n in zip((10, 60, 120), new_ids, strict=True)
        ],
        [(gone, 1)],
    )
    rep = _ingest([upd], base, **NO_COMPACT)
    after = _files(base)
    # untouched shards: the very same files (inode, mtime, bytes)
    for name in set(before) - touched:
        assert after[name] == before[name], name
    assert not touched & set(after)  # the touched ones were replaced (new names)
    created = set(after) - set(before)
    keys = _keys_by_file(base)
    new_shards = [n for n in created if keys[n] == {(p, 1) for p in new_ids}]
    assert len(new_shards) == 1 and len(created) == 3  # 2 rewritten + 1 new
    c = rep.commit
    assert (c["mode"], c["shards_kept"], c["shards_rewritten"], c["shards_new"]) == (
        "incremental",
        7,
        2,
        1,
    )
    assert (c["keys_replaced"], c["keys_removed"]) == (2, 1)
    assert c["bytes_written"] == sum(after[n][2] for n in created)
    assert c["rows_written"] == 20 + 19 + 3
    rows = _rows(base)
    assert len(rows) == 177 - 1 + 3 and (gone, 1) not in rows
    assert all(rows[(p, 1)]["title"].startswith("REVISED") for p in revised)
    # the same corpus as a full rewrite of baseline + update
    full = tmp_path / "full"
    _ingest([BASE, upd], full, incremental=False)
    assert _rows(full) == rows
    m = json.loads((base / "manifest.json").read_text())
    assert m["records"] == 179 and m["generation"] == 2 and m["key"] == ["pmid", "version"]


def test_version_2_is_another_article_and_deletions_name_versions(
    base: Path, tmp_path: Path
) -> None:
    p = sorted(ARTS)[7]
    u1 = _update(tmp_path / "pubmedsample18n0002.xml.gz", [_retitle(p, "SECOND", version=2)])
    _ingest([u1], base, **NO_COMPACT)
    rows = _rows(base)
    assert rows[(p, 2)]["title"].startswith("SECOND") and (p, 1) in rows
    assert not rows[(p, 1)]["title"].startswith("SECOND") and len(rows) == 178
    # deleting Version 2 leaves Version 1; deleting Version 1 later leaves nothing of p
    _ingest([_update(tmp_path / "pubmedsample18n0003.xml.gz", [], [(p, 2)])], base, **NO_COMPACT)
    rows = _rows(base)
    assert (p, 2) not in rows and (p, 1) in rows and len(rows) == 177
    _ingest([_update(tmp_path / "pubmedsample18n0004.xml.gz", [], [(p, 1)])], base, **NO_COMPACT)
    assert not {k for k in _rows(base) if k[0] == p}
    # re-ingesting the baseline does not bring the deleted Version 1 back
    tombs = pq.read_table(base / "tombstones.parquet").to_pylist()
    assert {(t["pmid"], t["version"]) for t in tombs} == {(p, 1), (p, 2)}


def test_compaction_merges_small_shards_and_keeps_every_record(base: Path, tmp_path: Path) -> None:
    kw = {"compact_max_small": 3, "compact_small_fraction": 0.5}
    expected_new = set()
    for day in range(4):  # each update adds one 2-record shard (small: < 10 rows)
        ids = [91_000_000 + 10 * day, 91_000_001 + 10 * day]
        expected_new |= {(i, 1) for i in ids}
        arts = [_retitle(sorted(ARTS)[day * 2 + j], "NEW", new_pmid=i) for j, i in enumerate(ids)]
        rep = _ingest(
            [_update(tmp_path / f"pubmedsample18n{day + 2:04d}.xml.gz", arts)], base, **kw
        )
        n_files = len(_files(base))
        if day < 3:  # 9 baseline shards (the last one has 17 rows: not small) + day+1 small ones
            assert rep.commit["shards_compacted"] == 0 and n_files == 10 + day
    # day 3 made a 4th small shard (> 3): the four were merged into one 8-row shard
    assert rep.commit["shards_compacted"] == 4 and n_files == 10
    assert expected_new in list(_keys_by_file(base).values())
    rows = _rows(base)
    assert len(rows) == 177 + 8 and expected_new <= set(rows)
    m = json.loads((base / "manifest.json").read_text())
    assert m["records"] == 185
    full = tmp_path / "full"
    _ingest([*sorted(tmp_path.glob("pubmedsample18n000*.xml.gz")), BASE], full, incremental=False)
    assert _rows(full) == rows


def test_compaction_is_recorded(base: Path, tmp_path: Path) -> None:
    arts = [_retitle(sorted(ARTS)[0], "NEW", new_pmid=92_000_000)]
    rep = _ingest(
        [_update(tmp_path / "pubmedsample18n0002.xml.gz", arts)],
        base,
        compact_max_small=0,
        compact_small_fraction=0.9,
    )
    # the 17-row last shard and the new 1-row shard are small (< 18 rows): merged into one
    assert rep.commit["shards_compacted"] == 2 and len(_files(base)) == 9
    assert len(_rows(base)) == 178


CRASH = [
    "rewritten",
    "compacted",
    "merged",
    "commit-marker",
    "swap",
    "after-swap",
    "after-manifest",
]


@pytest.mark.parametrize("point", CRASH)
def test_failed_update_leaves_the_store_consistent(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    p = sorted(ARTS)
    upd = _update(
        tmp_path / "pubmedsample18n0002.xml.gz",
        [_retitle(p[1]), _retitle(p[100], "NEW", new_pmid=93_000_000)],
        [(p[170], 1)],
    )
    old_rows = _rows(base)
    ref = tmp_path / "ref"
    _ingest([BASE, upd], ref, incremental=False)

    class Crash(Exception):
        pass

    def cp(name: str) -> None:
        if name == point:
            raise Crash

    kw = {"compact_max_small": 0, "compact_small_fraction": 0.9}  # compacts the 2 small shards
    monkeypatch.setattr(layout, "checkpoint", cp)
    with pytest.raises(Crash):
        _ingest([upd], base, **kw)
    monkeypatch.setattr(layout, "checkpoint", lambda name: None)
    if point in ("rewritten", "compacted", "merged", "commit-marker"):
        assert _rows(base) == old_rows  # before the swap: readers see the old generation
    elif point in ("after-swap", "after-manifest"):
        assert _rows(base) == _rows(ref)  # swapped: the new generation, complete
    # "swap" (between the two renames) leaves no data/ until the next run rolls forward
    rep = _ingest([upd], base, **kw)
    assert _rows(base) == _rows(ref) and len(_rows(base)) == 177
    assert not (base / ".next").exists() and not (base / ".old").exists()
    assert not list((base / "staging").glob("*.parquet"))
    m = json.loads((base / "manifest.json").read_text())
    assert m["records"] == 177 and [e["name"] for e in m["files"]] == [BASE.name, upd.name]
    assert rep.records == 177


def test_reapplying_an_update_is_a_noop_and_a_renamed_copy_changes_nothing(
    base: Path, tmp_path: Path
) -> None:
    p = sorted(ARTS)
    upd = _update(tmp_path / "pubmedsample18n0002.xml.gz", [_retitle(p[40])], [(p[90], 1)])
    _ingest([upd], base, **NO_COMPACT)
    files, rows = _files(base), _rows(base)
    rep = _ingest([upd], base, **NO_COMPACT)
    assert {f["status"] for f in rep.files} == {"unchanged"} and _files(base) == files
    # the same bytes under another name: the same SHA-256, so also unchanged
    copy = tmp_path / "pubmedsample18n0003.xml.gz"
    copy.write_bytes(upd.read_bytes())
    rep = _ingest([copy], base, **NO_COMPACT)
    assert {f["status"] for f in rep.files} == {"unchanged"} and _files(base) == files
    # the same records in a re-compressed file (another SHA-256): applied again, same records
    copy.write_bytes(gzip.compress(gzip.decompress(upd.read_bytes()), compresslevel=1))
    rep = _ingest([copy], base, **NO_COMPACT)
    assert rep.commit["shards_rewritten"] == 1 and _rows(base).keys() == rows.keys()
    assert {k: r["title"] for k, r in _rows(base).items()} == {
        k: r["title"] for k, r in rows.items()
    }
    # re-ingesting the baseline (ordered before the update) rewrites nothing and loses nothing
    files = _files(base)
    rep = _ingest([BASE], base, **NO_COMPACT)
    assert {f["status"] for f in rep.files} == {"unchanged"} and _files(base) == files


def test_old_baseline_file_under_a_new_name_loses_to_the_update(base: Path, tmp_path: Path) -> None:
    """A file ordered before the update (an older baseline copy) touches keys but changes none:
    no shard is rewritten."""
    p = sorted(ARTS)
    upd = _update(tmp_path / "pubmedsample18n0002.xml.gz", [_retitle(p[40])])
    _ingest([upd], base, **NO_COMPACT)
    files = _files(base)
    older = tmp_path / "pubmedsample18n0001b.xml.gz"
    _update(older, [ARTS[p[40]]])  # the original record again, in a file ordered before 0002
    rep = _ingest([older], base, **NO_COMPACT)
    assert rep.commit["shards_rewritten"] == 0 and rep.commit["shards_new"] == 0
    assert _files(base) == files
    assert _rows(base)[(p[40], 1)]["title"].startswith("REVISED")


def test_hard_links_not_copies(base: Path, tmp_path: Path) -> None:
    p = sorted(ARTS)
    before = {n: v[0] for n, v in _files(base).items()}
    _ingest(
        [_update(tmp_path / "pubmedsample18n0002.xml.gz", [_retitle(p[0])])], base, **NO_COMPACT
    )
    after = {n: v[0] for n, v in _files(base).items()}
    same = set(before) & set(after)
    assert len(same) == 8 and all(before[n] == after[n] for n in same)
    assert all(os.stat(base / "data" / n).st_nlink == 1 for n in same)  # .old links are gone


def test_a_file_that_revises_and_deletes_a_record_deletes_it(base: Path, tmp_path: Path) -> None:
    """As in a full merge, a deletion wins over a record of the same file."""
    p = sorted(ARTS)
    upd = _update(tmp_path / "pubmedsample18n0002.xml.gz", [_retitle(p[30])], [(p[30], 1)])
    rep = _ingest([upd], base, **NO_COMPACT)
    assert (p[30], 1) not in _rows(base) and rep.commit["keys_removed"] == 1
    full = tmp_path / "full"
    _ingest([BASE, upd], full, incremental=False)
    assert _rows(full) == _rows(base)


def test_new_exclusions_remove_live_records_from_their_shards_only(base: Path) -> None:
    p = sorted(ARTS)
    before = _files(base)
    rep = _ingest([BASE], base, exclude_pmids=[p[65]], **NO_COMPACT)
    assert {f["status"] for f in rep.files} == {"unchanged"}  # nothing new: no commit yet
    upd = _update(base.parent / "pubmedsample18n0002.xml.gz", [_retitle(p[66])])
    rep = _ingest([upd], base, exclude_pmids=[p[65]], **NO_COMPACT)
    assert (p[65], 1) not in _rows(base) and len(_rows(base)) == 176
    assert rep.commit["shards_rewritten"] == 1  # p[65] and p[66] share shard 3
    assert sum(v in before.values() for v in _files(base).values()) == 8


def _sha_by_file(out: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "data").glob("*.parquet"))}


def test_full_merge_of_files_in_pmid_order_streams_to_the_same_shards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first ingest of files that each hold a PMID range of their own, in order (MEDLINE's
    baseline), merges without sorting: every record filtered and de-duplicated as the sorted
    merge does (a record given twice in a file: the later wins; a deletion from a later file;
    an excluded PMID), into the same shards (byte-identical here, where a shard is one row
    group; bench_scale compares 1M records). Files out of order, or overlapping, are sorted as
    before."""
    import kailin.corpus.merge as merge

    pmids = sorted(ARTS)
    a, b = pmids[:60], pmids[60:120]
    sorted_files = [
        _update(tmp_path / "a.xml.gz", [ARTS[p] for p in a[:30]] + [_retitle(a[29], "LATER")]
                + [ARTS[p] for p in a[30:]]),
        _update(tmp_path / "b.xml.gz", [ARTS[p] for p in b]),
        _update(tmp_path / "c.xml.gz", [], deletes=[(a[5], 1)]),
    ]
    backwards = [_update(tmp_path / "d.xml.gz", [ARTS[p] for p in reversed(a)])]
    interleaved = [_update(tmp_path / "e.xml.gz", [ARTS[p] for p in pmids[0:120:2]]),
                   _update(tmp_path / "f.xml.gz", [ARTS[p] for p in pmids[1:120:2]])]

    def both(files: list[Path], name: str) -> tuple[dict, dict]:
        outs = {}
        for how in ("default", "sorted"):
            out = tmp_path / f"{name}-{how}"
            with monkeypatch.context() as m:
                if how == "sorted":
                    m.setattr(merge, "files_in_pmid_order", lambda files: None)
                _ingest(files, out, exclude_pmids=[b[7]], **NO_COMPACT)
            manifest = json.loads((out / "manifest.json").read_text())
            rows = open_corpus(out).read(["pmid", "version", "title"]).to_pylist()
            outs[how] = (manifest["last_commit"]["merge"], _sha_by_file(out), rows)
        assert outs["default"][1] == outs["sorted"][1]  # the same shards, byte for byte
        return outs["default"], outs["sorted"]

    (how, shas, rows), _ = both(sorted_files, "ordered")
    assert how == "streamed" and len(shas) == 6  # 118 records in shards of 20
    by_pmid = {r["pmid"]: r for r in rows}
    assert len(rows) == 118 and a[5] not in by_pmid and b[7] not in by_pmid
    assert by_pmid[a[29]]["title"].startswith("LATER ")
    assert [r["pmid"] for r in rows] == sorted(by_pmid)
    assert both(backwards, "backwards")[0][0] == "sorted"  # found out of order, then sorted
    assert both(interleaved, "interleaved")[0][0] == "sorted"  # overlapping ranges


def test_last_record_per_key_across_batch_boundaries() -> None:
    """The streamed merge's de-duplication sees a key's records split over two batches, and
    its re-chunking cuts row groups of a fixed size whatever the batches."""
    import pyarrow as pa

    from kailin.corpus.merge import _last_per_key, _NotInOrder, _rechunk

    def t(rows):
        return pa.table({"pmid": [r[0] for r in rows], "version": [r[1] for r in rows],
                         "_seq": [r[2] for r in rows], "title": [r[3] for r in rows]})

    batches = [t([(1, 1, 0, "a"), (2, 1, 1, "b")]), t([(2, 1, 2, "b later"), (2, 2, 3, "v2")]),
               t([]), t([(2, 2, 4, "v2 later")]), t([(3, 1, 5, "c")])]
    out = pa.concat_tables(list(_last_per_key(batches)))
    assert out.select(["pmid", "version", "title"]).to_pylist() == [
        {"pmid": 1, "version": 1, "title": "a"}, {"pmid": 2, "version": 1, "title": "b later"},
        {"pmid": 2, "version": 2, "title": "v2 later"}, {"pmid": 3, "version": 1, "title": "c"}]
    for bad in ([t([(2, 1, 0, "x"), (1, 1, 1, "y")])],            # PMID goes back
                [t([(1, 1, 0, "x")]), t([(1, 1, 0, "y")])],       # a repeated key, _seq not after
                [t([(1, 2, 0, "x")]), t([(1, 1, 1, "y")])]):      # Version goes back
        with pytest.raises(_NotInOrder):
            list(_last_per_key(bad))
    chunks = list(_rechunk([out.slice(0, 1), out.slice(1, 2), out.slice(3)], 3))
    assert [c.num_rows for c in chunks] == [3, 1]
    assert pa.Table.from_batches(chunks).equals(out)
