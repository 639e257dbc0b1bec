"""Held-out evaluation texts and the check that none of them was trained on.

:func:`heldout_eval_texts` builds the texts a held-out perplexity is measured on: the run's
held-out abstracts (``corpus/heldout.parquet``: title and abstract) and the PubMedQA PQA-L test
items' contexts (the abstract without its conclusion, as the ``reasoning_required`` prompt shows
it).

:func:`check_contamination` reports which evaluation texts occur in any arm's training data:

* **by PMID**: the text's PMID is a training row's ``pmid`` or one of its ``context_pmids``;
* **by text**: the training text contains a long span of the evaluation text: ``span_words``
  consecutive words (default 25) after normalisation (lower case, every run of characters other
  than ``a-z0-9`` a single separator, so line breaks, punctuation and the escaping of ``str()``
  of a context list do not hide a copy); an evaluation text shorter than the span counts when
  it is contained whole. The export's CPT text embeds the retrieved contexts, so a held-out
  abstract retrieved as a context of a training question is caught here even when its PMID is
  not recorded.

Training data are read in Parquet batches (bounded memory); the text of a row is its ``text``
column (CPT), the contents of its ``messages`` (SFT), or ``question``, ``contexts`` and
``answer`` (triples).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.errors import InputError
from kailin.io import iter_parquet_batches, read_parquet

_WORD = re.compile(r"[a-z0-9]+")
#: words in a shared span that marks an evaluation text as seen in training
SPAN_WORDS = 25


def normalise_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: what the containment checks compare."""
    return _WORD.findall(text.lower())


def heldout_eval_texts(heldout: str | os.PathLike[str] | pa.Table | None = None,
                       pubmedqa: bool = True, pubmedqa_limit: int | None = None) -> pa.Table:
    """``id``, ``pmid``, ``source`` and ``text`` of the held-out evaluation texts.

    ``heldout``: the run's ``corpus/heldout.parquet`` (or a table with ``pmid``, ``title``,
    ``abstract``): one text per abstract, ``title\\nabstract``, id ``heldout:PMID``.
    ``pubmedqa``: add the PQA-L test items (``pubmedqa_limit``: evenly spaced subset), one text per
    item, its contexts joined by spaces, id ``pubmedqa:PMID``.
    """
    ids: list[str] = []
    pmids: list[int] = []
    sources: list[str] = []
    texts: list[str] = []
    if heldout is not None:
        t = heldout if isinstance(heldout, pa.Table) else read_parquet(heldout)
        for col in ("pmid", "abstract"):
            if col not in t.column_names:
                raise InputError(f"{heldout if not isinstance(heldout, pa.Table) else 'held-out'}"
                                 f": no {col!r} column; give the run's corpus/heldout.parquet")
        titles = (t.column("title").to_pylist() if "title" in t.column_names
                  else [None] * t.num_rows)
        for pm, title, ab in zip(t.column("pmid").to_pylist(), titles,
                                 t.column("abstract").to_pylist(), strict=True):
            text = "\n".join(x.strip() for x in (title, ab) if x and x.strip())
            if text:
                ids.append(f"heldout:{pm}")
                pmids.append(int(pm))
                sources.append("heldout")
                texts.append(text)
    if pubmedqa:
        from kailin.evaluate.pubmedqa import test_items

        for it in test_items(pubmedqa_limit):
            ids.append(f"pubmedqa:{it.pmid}")
            pmids.append(int(it.pmid))
            sources.append("pubmedqa_test")
            texts.append(" ".join(c.strip() for c in it.contexts))
    return pa.table({"id": pa.array(ids, pa.string()), "pmid": pa.array(pmids, pa.int64()),
                     "source": pa.array(sources, pa.string()),
                     "text": pa.array(texts, pa.string())})


def _row_texts(batch: pa.RecordBatch, source: str) -> list[str]:
    cols = batch.schema.names
    if "text" in cols:
        return [t or "" for t in batch.column("text").to_pylist()]
    if "messages" in cols:
        return [" ".join(str(m.get("content") or "") for m in (ms or []))
                for ms in batch.column("messages").to_pylist()]
    if "question" in cols and "contexts" in cols:
        ans = batch.column("answer").to_pylist() if "answer" in cols else [""] * batch.num_rows
        return [" ".join([q or "", *(c or []), a or ""]) for q, c, a in zip(
            batch.column("question").to_pylist(), batch.column("contexts").to_pylist(), ans,
            strict=True)]
    raise InputError(f"{source}: no 'text', 'messages' or 'question'+'contexts' column "
                     f"(columns: {', '.join(cols)}); give an export's cpt/, sft/ or triples/ "
                     "table")


def _batches(table: str | os.PathLike[str] | pa.Table, source: str) -> Iterator[pa.RecordBatch]:
    if isinstance(table, pa.Table):
        yield from table.to_batches()
        return
    try:
        yield from iter_parquet_batches(Path(table), batch_size=2048)
    except FileNotFoundError as exc:
        raise InputError(f"{source}: {exc}") from None


def _eval_rows(eval_texts: pa.Table | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = eval_texts.to_pylist() if isinstance(eval_texts, pa.Table) else list(eval_texts)
    for i, r in enumerate(rows):
        if not isinstance(r.get("text"), str):
            raise InputError(f"evaluation text {i}: no 'text'")
    return rows


def check_contamination(
    eval_texts: pa.Table | Sequence[Mapping[str, Any]],
    training_tables: Mapping[str, str | os.PathLike[str] | pa.Table],
    span_words: int = SPAN_WORDS,
) -> dict[str, Any]:
    """Which evaluation texts appear in which arm's training data (see the module docstring).

    ``eval_texts``: rows with ``text`` and optionally ``id`` and ``pmid`` (e.g.
    :func:`heldout_eval_texts`); ``training_tables``: {arm: a Parquet file/folder or table}.
    Returns ``{"clean", "n_eval", "contaminated", "span_words", "arms": {arm: {"rows",
    "pmid_hits", "text_hits", "items"}}, "items": {id: {"pmid": [arms], "text": [arms],
    "overlap": {arm: share of the text's spans found}}}}`` (``items``: contaminated ones only).
    """
    if span_words < 1:
        raise InputError(f"span_words must be positive, got {span_words}")
    rows = _eval_rows(eval_texts)
    ids = [str(r.get("id") if r.get("id") is not None else r.get("pmid", i))
           for i, r in enumerate(rows)]
    by_pmid: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("pmid") is not None:
            by_pmid.setdefault(int(r["pmid"]), []).append(i)
    spans: dict[int, list[int]] = {}  # hash of a normalised span -> evaluation texts with it
    n_spans: list[int] = []
    short: list[tuple[int, str]] = []  # texts shorter than a span: whole-text containment
    for i, r in enumerate(rows):
        w = normalise_words(r["text"])
        if len(w) < span_words:
            n_spans.append(1)
            if w:
                short.append((i, " " + " ".join(w) + " "))
            continue
        hs = {hash(tuple(w[j:j + span_words])) for j in range(len(w) - span_words + 1)}
        n_spans.append(len(hs))
        for h in hs:
            spans.setdefault(h, []).append(i)
    items: dict[str, dict[str, Any]] = {}
    arms: dict[str, dict[str, Any]] = {}

    def item(i: int) -> dict[str, Any]:
        return items.setdefault(ids[i], {"pmid": [], "text": [], "overlap": {}})

    for arm, table in training_tables.items():
        source = f"training data of {arm} ({table if not isinstance(table, pa.Table) else 'table'})"
        pmid_hit: set[int] = set()
        found: dict[int, set[int]] = {}
        n_rows = 0
        for batch in _batches(table, source):
            n_rows += batch.num_rows
            cols = batch.schema.names
            if by_pmid:
                seen = batch.column("pmid").to_pylist() if "pmid" in cols else []
                if "context_pmids" in cols:
                    for c in batch.column("context_pmids").to_pylist():
                        seen += c or []
                for p in seen:
                    if p is not None and int(p) in by_pmid:
                        pmid_hit.update(by_pmid[int(p)])
            for text in _row_texts(batch, source):
                w = normalise_words(text)
                for j in range(len(w) - span_words + 1):
                    h = hash(tuple(w[j:j + span_words]))
                    for i in spans.get(h, ()):
                        found.setdefault(i, set()).add(h)
                if short:
                    joined = " " + " ".join(w) + " "
                    for i, s in short:
                        if s in joined:
                            found.setdefault(i, set()).add(0)
        for i in sorted(pmid_hit):
            item(i)["pmid"].append(arm)
        for i, hs in found.items():
            it = item(i)
            it["text"].append(arm)
            it["overlap"][arm] = round(len(hs) / n_spans[i], 4)
        hit = sorted(pmid_hit | set(found))
        arms[arm] = {"rows": n_rows, "pmid_hits": len(pmid_hit), "text_hits": len(found),
                     "items": [ids[i] for i in hit]}
    return {"clean": not items, "n_eval": len(rows), "contaminated": len(items),
            "span_words": span_words, "arms": arms, "items": items}
