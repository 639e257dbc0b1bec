"""Equal-token budget across downstream arms.

Arms whose records differ in format (KAILIN's text with 4 contexts, raw abstracts, AdaptLLM's
reading-comprehension text) hold different numbers of tokens for the same abstracts. Trained for
the same steps with packing, every arm sees ``steps x batch x grad_accum x max_length`` tokens,
but a small arm repeats its data and a large one sees part of it, so the arms differ in how much
*distinct* text they learn from. :func:`equal_token_budget` caps every arm at the same number of
tokens (the smallest arm's, or a given budget): each arm keeps its records in table order up to
the budget, the last one cut at the token where the budget ends. Packed into ``block_size``
sequences (trl's ``wrapped`` packing: concatenate ``text + EOS`` and cut), every arm then fills
the same number of blocks (within one) and :meth:`BudgetPlan.max_steps` is the same for all.

Tokens are counted as trl's CPT sees them: the tokenizer's ids of ``text`` (with its special
tokens, as trl tokenizes) plus EOS when the text does not end with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.errors import InputError
from kailin.io import read_parquet, write_json_atomic, write_parquet_atomic


@dataclass
class ArmBudget:
    """One arm under the budget."""

    records: int  #: records in the arm
    tokens: int  #: tokens in the arm
    records_kept: int  #: records kept (the last one possibly cut)
    tokens_kept: int  #: tokens kept, recounted after the cut
    last_cut: bool  #: whether the last kept record was cut
    blocks: int  #: packed sequences of ``block_size`` the kept tokens fill


@dataclass
class BudgetPlan:
    budget_tokens: int
    block_size: int
    blocks: int  #: blocks of the budget (every arm within one of it)
    arms: dict[str, ArmBudget] = field(default_factory=dict)

    def max_steps(self, batch_size: int, grad_accum: int = 1, epochs: float = 1.0) -> int:
        """Optimizer steps that pass ``epochs`` times over the budget's blocks."""
        return max(1, math.ceil(self.blocks * epochs / (batch_size * grad_accum)))

    def to_dict(self) -> dict[str, Any]:
        return {"budget_tokens": self.budget_tokens, "block_size": self.block_size,
                "blocks": self.blocks, "arms": {k: asdict(v) for k, v in self.arms.items()}}


def _ids(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens of each text as trl's CPT trains on it (``text + EOS``)."""
    return [len(_ids(tokenizer, t)) for t in texts]


def _cut(tokenizer: Any, text: str, n_tokens: int) -> str:
    """``text`` cut to about its first ``n_tokens`` tokens (EOS included)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: max(0, n_tokens - 1)], skip_special_tokens=True)


def equal_token_budget(arms: Mapping[str, Sequence[str]], tokenizer: Any, block_size: int,
                       budget_tokens: int | None = None
                       ) -> tuple[BudgetPlan, dict[str, list[str]]]:
    """Cap every arm at the same number of training tokens.

    ``arms``: ``{arm: [text, ...]}`` in training order. ``budget_tokens`` defaults to the
    smallest arm's token count; a larger budget than an arm holds is an error (it would have to
    repeat records). Returns the plan and each arm's kept texts (the last one possibly cut)."""
    if not arms:
        raise InputError("equal_token_budget: no arms given")
    if block_size < 1:
        raise InputError(f"block_size must be positive, got {block_size}")
    counts = {a: count_tokens(tokenizer, list(t)) for a, t in arms.items()}
    totals = {a: sum(c) for a, c in counts.items()}
    smallest = min(totals, key=lambda a: totals[a])
    budget = totals[smallest] if budget_tokens is None else int(budget_tokens)
    if budget < 1:
        raise InputError(f"arm {smallest!r} holds no tokens; every arm needs text")
    if totals[smallest] < budget:
        raise InputError(f"arm {smallest!r} holds {totals[smallest]} tokens, fewer than the "
                         f"budget of {budget}: lower the budget or give it more records")
    plan = BudgetPlan(budget, block_size, math.ceil(budget / block_size))
    kept_all: dict[str, list[str]] = {}
    for arm, texts in arms.items():
        kept: list[str] = []
        used = 0
        last_cut = False
        for text, n in zip(texts, counts[arm], strict=True):
            if used >= budget:
                break
            if used + n > budget:
                piece = _cut(tokenizer, text, budget - used)
                if piece.strip():
                    kept.append(piece)
                    last_cut = True
                break
            kept.append(text)
            used += n
        tokens_kept = sum(count_tokens(tokenizer, kept))
        plan.arms[arm] = ArmBudget(len(texts), totals[arm], len(kept), tokens_kept, last_cut,
                                   math.ceil(tokens_kept / block_size))
        kept_all[arm] = kept
    return plan, kept_all


def _cpt_table(source: str | os.PathLike[str] | pa.Table) -> pa.Table:
    if isinstance(source, pa.Table):
        table = source
    else:
        p = Path(source)
        p = p / "cpt" if (p / "cpt").is_dir() else p
        try:
            table = read_parquet(p)
        except FileNotFoundError as exc:
            raise InputError(f"{source}: {exc}") from None
    if "text" not in table.column_names:
        raise InputError(f"{source}: lacks the column 'text' (give a CPT table or export "
                         "directory)")
    return table


def write_budgeted(arms: Mapping[str, str | os.PathLike[str] | pa.Table], tokenizer: Any,
                   out_dir: str | os.PathLike[str], block_size: int,
                   budget_tokens: int | None = None) -> dict[str, Any]:
    """Cap CPT tables (export directories, ``cpt`` folders or tables with ``text`` and
    ``pmid``) at an equal token budget; write ``OUT/<arm>/cpt/train.parquet`` for each arm and
    ``OUT/budget.json`` (the plan). Returns the plan as a dict."""
    tables = {a: _cpt_table(s) for a, s in arms.items()}
    texts = {a: [t or "" for t in tb["text"].to_pylist()] for a, tb in tables.items()}
    plan, kept = equal_token_budget(texts, tokenizer, block_size, budget_tokens)
    out = Path(out_dir)
    for arm, tb in tables.items():
        n = len(kept[arm])
        pmids = (tb["pmid"].to_pylist()[:n] if "pmid" in tb.column_names else [None] * n)
        write_parquet_atomic(pa.table({"pmid": pa.array(pmids, pa.int64()),
                                       "text": pa.array(kept[arm], pa.string())}),
                             out / arm / "cpt" / "train.parquet")
    result = plan.to_dict()
    write_json_atomic(out / "budget.json", result)
    return result
