"""A causal LM that answers multiple-choice prompts in batches by the log-likelihood of each
label (PubMedQA's yes / no / maybe by default); the PubMedQA evaluation and the answers' LLM
grounding judge both use it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kailin.errors import InputError

#: PubMedQA's labels, the default choices
LABELS = ("yes", "no", "maybe")


class LMAnswerer:
    """A causal LM (plus tokenizer) that answers PubMedQA prompts in batches."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 8,
        max_length: int = 1024,
        chat: str = "auto",
        max_new_tokens: int = 32,
    ) -> None:
        if chat not in ("auto", "always", "never"):
            raise InputError(f"chat must be auto, always or never, got {chat!r}")
        self.model = model.eval()
        self.tok = tokenizer
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat == "always" and not has_template:
            raise InputError("chat='always' but the tokenizer has no chat template")
        self.use_chat = chat == "always" or (chat == "auto" and has_template)

    # --- prompt handling ----------------------------------------------------------------------

    def _prompt_ids(self, prompt: str) -> list[int]:
        if self.use_chat:
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tok(prompt)["input_ids"]
        return ids

    def _choice_ids(self, choices: Sequence[str]) -> dict[str, list[int]]:
        sep = "" if self.use_chat else " "
        return {lab: self.tok(sep + lab, add_special_tokens=False)["input_ids"] for lab in choices}

    def _truncate(self, ids: list[int], room: int) -> list[int]:
        # keep the end (question and answer cue); contexts come first and lose their beginning
        limit = self.max_length - room
        return ids[-limit:] if len(ids) > limit else ids

    def _batch(self, seqs: Sequence[list[int]]) -> tuple[Any, Any, Any]:
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: every row ends at the last column
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.model.device
        return ids.to(dev), mask.to(dev), pos.to(dev)

    def _last_logits(self, ids: Any, mask: Any, pos: Any, keep: int) -> Any:
        """Log-softmax of the last ``keep`` positions' logits, shape [B, keep, V]."""
        import torch

        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                             logits_to_keep=keep, use_cache=False)
        except TypeError:  # a model without logits_to_keep
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        return torch.log_softmax(out.logits[:, -keep:, :].float(), dim=-1)

    # --- answering ----------------------------------------------------------------------------

    def loglik(
        self, prompts: Sequence[str], labels: Sequence[str] = LABELS, progress: bool = True
    ) -> list[dict[str, float]]:
        """Summed log-probability of each label (default yes/no/maybe) after each prompt."""
        import torch
        from tqdm.auto import tqdm

        from kailin.progress import enabled as progress_enabled

        labels = tuple(labels)
        choices = self._choice_ids(labels)
        room = max(len(c) for c in choices.values())
        prompt_ids = [self._truncate(self._prompt_ids(p), room) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))
        out: list[dict[str, float]] = [{} for _ in prompts]
        single = all(len(c) == 1 for c in choices.values())
        bar = tqdm(total=len(prompts), desc="loglik", unit="q",
                   disable=not progress_enabled(progress), leave=False)
        with torch.inference_mode():
            if single:
                label_ids = [choices[lab][0] for lab in labels]
                for s in range(0, len(order), self.batch_size):
                    idx = order[s:s + self.batch_size]
                    lp = self._last_logits(*self._batch([prompt_ids[i] for i in idx]), keep=1)
                    for row, i in enumerate(idx):
                        out[i] = {lab: float(lp[row, 0, t]) for lab, t in zip(labels, label_ids, strict=True)}
                    bar.update(len(idx))
            else:
                pairs = [(i, lab) for i in order for lab in labels]
                step = max(1, self.batch_size)
                for s in range(0, len(pairs), step):
                    chunk = pairs[s:s + step]
                    seqs = [prompt_ids[i] + choices[lab] for i, lab in chunk]
                    keep = room + 1
                    lp = self._last_logits(*self._batch(seqs), keep=keep)
                    for row, (i, lab) in enumerate(chunk):
                        c = choices[lab]
                        # logits at position t predict token t+1; the label's tokens are the
                        # last len(c) tokens, predicted by the len(c) positions before the end
                        total = 0.0
                        for j, tok in enumerate(c):
                            total += float(lp[row, keep - 1 - len(c) + j, tok])
                        out[i][lab] = total
                    bar.update(len(chunk) / len(labels))
        bar.close()
        return out

    def generate(self, prompts: Sequence[str], progress: bool = True) -> list[str]:
        """Greedy completions of the prompts."""
        import torch
        from tqdm.auto import tqdm

        from kailin.progress import enabled as progress_enabled

        prompt_ids = [self._truncate(self._prompt_ids(p), self.max_new_tokens) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))
        out = [""] * len(prompts)
        bar = tqdm(total=len(prompts), desc="generate", unit="q",
                   disable=not progress_enabled(progress), leave=False)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                ids, mask, _ = self._batch([prompt_ids[i] for i in idx])
                gen = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                    do_sample=False, pad_token_id=self.tok.pad_token_id,
                )
                for row, i in enumerate(idx):
                    out[i] = self.tok.decode(gen[row, ids.shape[1]:], skip_special_tokens=True)
                bar.update(len(idx))
        bar.close()
        return out
