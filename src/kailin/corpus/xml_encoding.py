"""The encoding of a PubMed XML file: what it declares, and the first byte that is not UTF-8
in a file declared (or defaulting to) UTF-8, for an error that names the file and offset."""

from __future__ import annotations

import codecs
import gzip
import re
from pathlib import Path
from typing import BinaryIO

_ENCODING_RE = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._\-]+)[\"']")


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading bytes, transparently un-gzipping (by magic number)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")



def declared_encoding(path: Path) -> str | None:
    """The ``encoding`` of the file's XML declaration (lower case), None when it declares none."""
    with open_binary(path) as fh:
        head = fh.read(1024)
    m = _ENCODING_RE.match(head.lstrip(b"\xef\xbb\xbf"))
    return m.group(1).decode("ascii").lower() if m else None


def first_invalid_utf8(path: Path, chunk_size: int = 1 << 20) -> tuple[int, int, bytes] | None:
    """``(byte offset, line, bad bytes)`` of the first byte sequence of ``path`` (un-gzipped)
    that is not UTF-8, or None when the whole file decodes."""

    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes of the stream fed to the decoder before ``chunk``
    line = 1
    with open_binary(path) as fh:
        while True:
            chunk = fh.read(chunk_size)
            final = not chunk
            try:
                dec.decode(chunk, final=final)
            except UnicodeDecodeError as exc:
                # the decoder's buffer may hold the start of a sequence begun in the last chunk
                pending = len(exc.object) - len(chunk)
                at = offset - pending + exc.start
                line += exc.object[: exc.start].count(b"\n")
                return at, line, bytes(exc.object[exc.start : exc.end])
            if final:
                return None
            offset += len(chunk)
            line += chunk.count(b"\n")


def encoding_error(path: Path) -> tuple[int, int, bytes] | None:
    """Where ``path``, read as UTF-8 by the XML parser, stops being UTF-8 (None when it is UTF-8
    throughout, or declares another encoding, which the parser then applies itself)."""
    enc = declared_encoding(path)
    if enc not in (None, "utf-8", "utf8"):
        return None
    return first_invalid_utf8(path)


def _encoding_message(path: Path, where: tuple[int, int, bytes]) -> str:
    at, line, bad = where
    return (
        f"{path}: byte {at} (line {line}) is 0x{bad.hex()}, which is not UTF-8, but the file is "
        "read as UTF-8 (its XML declaration says so, or names no encoding); the file looks "
        "Latin-1/cp1252 encoded. Nothing of it was ingested. Save it as UTF-8 (e.g. `iconv -f "
        "latin1 -t utf-8`), or re-run with --salvage to keep the records before that byte."
    )
