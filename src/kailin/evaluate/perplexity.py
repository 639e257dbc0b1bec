"""Held-out perplexity of a causal LM on a table of texts (``kailin evaluate perplexity``).

Every token of every text is scored, conditioned on a prefix token (the tokenizer's BOS token,
its EOS token when it has none, as lm-evaluation-harness's rolling log-likelihood does) and on
the text before it. Texts longer than ``max_length`` tokens are either

* scored in sliding windows (default): windows of at most ``max_length`` tokens whose scored
  parts are disjoint and consecutive, each new window moving ``stride`` tokens on (default
  ``max_length // 2``), so every token after the first window sees at least
  ``max_length - stride`` tokens of context; or
* truncated (``truncate=True``): only the first ``max_length - 1`` tokens are scored; the texts
  and tokens left out are counted in the report.

Figures: ``mean_nll`` is the token-weighted mean negative log-likelihood in nats per token,
``sum over texts of NLL sum / sum over texts of tokens`` (``perplexity = exp(mean_nll)``), with
a percentile bootstrap CI over texts (the texts are resampled, the ratio recomputed). The
per-text mean NLL (``per_text_mean_nll``: the mean over texts of each text's NLL per token,
every text weighing the same) is reported too. The per-text figures go to a Parquet file
(``id``, ``pmid``, ``tokens``, ``nll_sum``, ``nll``, ``windows``, ``truncated``,
``tokens_dropped``) so that two models are compared text by text with
:func:`kailin.evaluate.stats.paired_delta` (metric ``mean_nll`` or ``nll``). NLLs of models
with different tokenizers are per different tokens and not comparable; the kailin arms share
the base model's tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field

from kailin.config import StageConfig
from kailin.errors import InputError
from kailin.evaluate.stats import bootstrap_mean, bootstrap_ratio
from kailin.io import read_parquet, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

PER_TEXT_SCHEMA = pa.schema([
    ("id", pa.string()), ("pmid", pa.int64()), ("tokens", pa.int64()), ("nll_sum", pa.float64()),
    ("nll", pa.float64()), ("windows", pa.int32()), ("truncated", pa.bool_()),
    ("tokens_dropped", pa.int64()),
])


def load_texts(path: str | os.PathLike[str], limit: int | None = None) -> pa.Table:
    """``id`` (str), ``pmid`` (int64, null when absent) and ``text`` of a Parquet file/folder or
    JSONL file with a ``text`` column (and optional ``pmid`` / ``id``); ``limit``: the first N.
    The id is ``id`` when given, else ``pmid``, else the row number."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--texts {p}: no such file or folder")
    if p.suffix in (".jsonl", ".json") and p.is_file():
        rows: list[Any] = []
        raw = p.read_text(encoding="utf-8")
        if p.suffix == ".json" and raw.lstrip().startswith("["):  # a JSON list of rows
            try:
                rows = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}: not valid JSON ({exc})") from None
        else:
            for i, line in enumerate(raw.splitlines()):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p}: line {i + 1} is not valid JSON ({exc})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{p}: expected one JSON object per row (with a 'text' field)")
        table = pa.Table.from_pylist(rows) if rows else pa.table({"text": pa.array([], pa.string())})
    else:
        try:
            table = read_parquet(p)
        except (FileNotFoundError, pa.ArrowInvalid) as exc:
            raise InputError(f"--texts {p}: not a Parquet file/folder or a .jsonl file ({exc})"
                             ) from None
    if "text" not in table.column_names:
        raise InputError(f"{p}: no 'text' column (columns: {', '.join(table.column_names)}); "
                         "give a table with one text per row")
    if limit is not None:
        if limit <= 0:
            raise InputError(f"--limit must be positive, got {limit}")
        table = table.slice(0, limit)
    texts = table.column("text").to_pylist()
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InputError(f"{p}: row(s) {', '.join(map(str, bad[:5]))} have no text (null or not "
                         "a string)")
    pmids: list[int | None]
    if "pmid" in table.column_names:
        try:
            pmids = [None if x is None else int(x) for x in table.column("pmid").to_pylist()]
        except (TypeError, ValueError):
            raise InputError(f"{p}: the 'pmid' column holds non-integer values") from None
    else:
        pmids = [None] * len(texts)
    if "id" in table.column_names:
        ids = [str(x) for x in table.column("id").to_pylist()]
    else:
        ids = [str(pm) if pm is not None else str(i) for i, pm in enumerate(pmids)]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise InputError(f"{p}: duplicate ids {', '.join(dup)}; per-text NLLs are paired by id")
    return pa.table({"id": pa.array(ids, pa.string()), "pmid": pa.array(pmids, pa.int64()),
                     "text": pa.array(texts, pa.string())})


def windows(n_tokens: int, max_length: int, stride: int | None = None, truncate: bool = False
            ) -> list[tuple[int, int, int]]:
    """The scoring windows of a sequence ``[prefix] + tokens`` (length ``n_tokens + 1``):
    ``(start, end, n_scored)``: the model reads positions ``start..end-1`` and scores the last
    ``n_scored`` of them (each predicted from the ones before). The scored spans are disjoint and
    cover positions ``1..n_tokens`` (all tokens), or the first ``max_length - 1`` with
    ``truncate``."""
    if max_length < 2:
        raise InputError(f"--max-length must be at least 2, got {max_length}")
    stride = max_length // 2 if stride is None else stride
    if not 1 <= stride <= max_length - 1:
        raise InputError(f"--stride must be between 1 and max_length - 1 = {max_length - 1}, "
                         f"got {stride}")
    total = n_tokens + 1
    end = min(total, max_length)
    out = [(0, end, end - 1)]
    if truncate:
        return out
    while end < total:
        new_end = min(end + stride, total)
        out.append((max(0, new_end - max_length), new_end, new_end - end))
        end = new_end
    return out


class TextScorer:
    """Per-text summed NLL of a causal LM, windows batched (left padding, only the scored
    positions' logits materialised)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 1024,
                 stride: int | None = None, batch_size: int = 8, truncate: bool = False) -> None:
        if batch_size < 1:
            raise InputError(f"--batch-size must be positive, got {batch_size}")
        self.model = model.eval()
        self.tok = tokenizer
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        if prefix is None:
            raise InputError("the tokenizer has neither a BOS nor an EOS token to condition the "
                             "first token on")
        self.prefix = int(prefix)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.prefix
        self.max_length, self.batch_size, self.truncate = max_length, batch_size, truncate
        self.stride = max_length // 2 if stride is None else stride
        windows(1, max_length, self.stride)  # validate

    def score(self, texts: Sequence[str], progress: bool = True) -> list[dict[str, Any]]:
        """``{"tokens", "nll_sum", "windows", "truncated", "tokens_dropped"}`` per text
        (``tokens``: the tokens scored; empty texts score 0 tokens)."""
        import torch
        from tqdm.auto import tqdm

        seqs = [[self.prefix] + self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        jobs = []  # (text index, input ids, n scored)
        res: list[dict[str, Any]] = []
        for i, s in enumerate(seqs):
            n = len(s) - 1
            ws = windows(n, self.max_length, self.stride, self.truncate) if n else []
            scored = sum(w[2] for w in ws)
            res.append({"tokens": scored, "nll_sum": 0.0, "windows": len(ws),
                        "truncated": scored < n, "tokens_dropped": n - scored})
            jobs += [(i, s[a:b], k) for a, b, k in ws]
        jobs.sort(key=lambda j: -len(j[1]))
        bar = tqdm(total=len(jobs), desc="nll", unit="window", disable=not progress, leave=False)
        dev = self.model.device
        with torch.inference_mode():
            for s0 in range(0, len(jobs), self.batch_size):
                chunk = jobs[s0:s0 + self.batch_size]
                width = max(len(j[1]) for j in chunk)
                ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (_, s, _) in enumerate(chunk):  # left padding: rows end together
                    ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                    mask[r, width - len(s):] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                keep = max(j[2] for j in chunk) + 1
                kw = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev),
                      "position_ids": pos.to(dev), "use_cache": False}
                try:
                    logits = self.model(**kw, logits_to_keep=keep).logits
                except TypeError:  # a model without logits_to_keep
                    logits = self.model(**kw).logits
                logits = logits[:, -keep:, :]
                for r, (i, s, k) in enumerate(chunk):
                    # logits at position t predict token t+1: the last k tokens are predicted by
                    # the k positions before the last
                    pred = logits[r, keep - 1 - k: keep - 1, :].float()
                    target = torch.tensor(s[-k:], dtype=torch.long, device=pred.device)
                    res[i]["nll_sum"] += float(torch.nn.functional.cross_entropy(
                        pred, target, reduction="sum"))
                bar.update(len(chunk))
        bar.close()
        return res


def per_text_path(json_out: str | os.PathLike[str]) -> Path:
    """Where the per-text NLLs go beside ``--json OUT``: OUT's stem + ``.per_text.parquet``."""
    p = Path(json_out)
    return p.with_name(p.stem + ".per_text.parquet")


class ScoringWindows(StageConfig):
    """How texts are cut into windows and batched for scoring (the command's and the run
    step's settings share them)."""

    max_length: int = Field(1024, ge=2, description="tokens per forward pass (longer texts: "
                            "sliding windows)")
    stride: int | None = Field(None, ge=1, description="tokens each sliding window moves on "
                               "(default max-length / 2)")
    batch_size: int = Field(8, ge=1, description="windows per forward pass")


class PerplexityConfig(ScoringWindows):
    """Settings of :func:`evaluate_perplexity` (``kailin evaluate perplexity``)."""

    truncate: bool = Field(False, description="score only the first max-length tokens of long "
                           "texts (default: sliding windows)")
    limit: int | None = Field(None, description="only the first N texts")
    n_boot: int = Field(1000, description="bootstrap resamples (over texts)")
    seed: int = Field(0, description="seed of the bootstrap")
    device: str | None = Field(None, description="cpu, cuda, ... (default: cpu)")


def evaluate_perplexity(
    model: str | os.PathLike[str],
    texts: str | os.PathLike[str],
    max_length: int = 1024,
    stride: int | None = None,
    truncate: bool = False,
    batch_size: int = 8,
    limit: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str | None = None,
    json_out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    scorer: TextScorer | None = None,
) -> dict[str, Any]:
    """Held-out NLL of ``model`` (a kailin model spec) on the texts of ``texts``.

    Returns (and with ``json_out`` writes there, the per-text NLLs beside it, see
    :func:`per_text_path`) ``{"model", "texts", "n", "tokens", "mean_nll", "ci_low", "ci_high",
    "perplexity", "per_text_mean_nll": {"mean", "ci_low", "ci_high", "n"}, "max_length",
    "stride", "long_texts", "windows", "truncated_texts", "tokens_dropped", "empty_texts",
    "limit", "n_boot", "seed", "per_text_file", "seconds"}``. Empty texts are left out of the
    figures (``empty_texts``) and of the per-text file.
    """
    t0 = time.perf_counter()
    table = load_texts(texts, limit)
    if scorer is None:
        from kailin.train.common import load_model, load_tokenizer

        scorer = TextScorer(load_model(model, device=device), load_tokenizer(model),
                            max_length=max_length, stride=stride, batch_size=batch_size,
                            truncate=truncate)
    scores = scorer.score(table.column("text").to_pylist(), progress=progress)
    ids, pmids = table.column("id").to_pylist(), table.column("pmid").to_pylist()
    rows = [{"id": i, "pmid": pm, **sc, "nll": sc["nll_sum"] / sc["tokens"]}
            for i, pm, sc in zip(ids, pmids, scores, strict=True) if sc["tokens"] > 0]
    if not rows:
        raise InputError(f"{texts}: no non-empty text to score")
    ratio = bootstrap_ratio([r["nll_sum"] for r in rows], [r["tokens"] for r in rows],
                            n_boot=n_boot, seed=seed)
    result: dict[str, Any] = {
        "model": str(model), "texts": str(texts), "n": len(rows),
        "tokens": int(sum(r["tokens"] for r in rows)),
        "mean_nll": ratio["value"], "ci_low": ratio["ci_low"], "ci_high": ratio["ci_high"],
        "perplexity": math.exp(ratio["value"]),
        "per_text_mean_nll": bootstrap_mean([r["nll"] for r in rows], n_boot=n_boot, seed=seed),
        "max_length": scorer.max_length, "stride": scorer.stride,
        "long_texts": "truncate" if scorer.truncate else "window",
        "windows": int(sum(r["windows"] for r in rows)),
        "truncated_texts": int(sum(bool(r["truncated"]) for r in rows)),
        "tokens_dropped": int(sum(r["tokens_dropped"] for r in rows)),
        "empty_texts": len(scores) - len(rows), "limit": limit, "n_boot": n_boot, "seed": seed,
        "per_text_file": None,
    }
    if json_out is not None:
        pt = per_text_path(json_out)
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=PER_TEXT_SCHEMA), pt)
        result["per_text_file"] = str(pt)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if json_out is not None:
        write_json_atomic(json_out, result)
    log.info("mean NLL %.4f [%.4f, %.4f] nats/token over %d tokens of %d texts",
             result["mean_nll"], result["ci_low"], result["ci_high"], result["tokens"],
             result["n"])
    return result


class PerplexityStageConfig(ScoringWindows):
    """The pipeline's ``perplexity`` step: held-out NLL of every downstream model on texts no
    arm trained on (the run's held-out abstracts and the PubMedQA test items' contexts), after
    the contamination check of every arm's training data (:mod:`kailin.evaluate.contamination`)."""

    enabled: bool = Field(False, description="run the perplexity step")
    heldout_limit: int | None = Field(None, ge=1, description="score the first N held-out "
                                      "abstracts only (default: all of corpus.heldout)")
    pubmedqa: bool = Field(True, description="also score the PubMedQA test items' contexts")
    pubmedqa_limit: int | None = Field(None, ge=1, description="N PubMedQA test items evenly "
                                       "spaced (default: all 500)")
    span_words: int = Field(25, ge=5, description="contamination: shared word span that marks "
                            "an evaluation text as trained on")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples of the CIs")
