"""Turn a generator's raw text into one clean question, or a reason to reject it.

Small or untuned models rarely answer with just a question: they add "Here is a question:",
"**Question 1:**", quotes, markdown, an answer after the question, or a second question. The
extractor drops the chatter and keeps the first interrogative sentence.

Reject reasons (the ``reject_reason`` column; ``None`` = accepted):

* ``empty``: nothing but whitespace/markup;
* ``no_question``: no sentence ending in '?' (e.g. a summary, or cut off by max_new_tokens);
* ``too_short``: fewer than ``min_words`` words;
* ``too_long``: more than ``max_words`` words;
* ``copies_prompt``: the "question" repeats the instruction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REJECT_REASONS = ("empty", "no_question", "too_short", "too_long", "copies_prompt")

_FENCE = re.compile(r"```[a-zA-Z]*")
_MD = re.compile(r"(\*\*|__|\*|`|^#+\s*|^>\s*)", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s+", re.MULTILINE)
_LABEL = re.compile(
    r"^\s*(?:(?:generated|possible|sample|example|research|biomedical|final|my|the|a|one)\s+)*"
    r"(?:question|q)(?:\s*\d+)?\s*[:：.\-–]\s*",
    re.IGNORECASE,
)
_CHATTER = re.compile(
    r"^\s*(?:sure|okay|ok|certainly|of course|absolutely|great)\b[^:\n?]*?[.!:,]\s*"
    r"|^\s*(?:here\s+is|here's|here\s+are|below\s+is|this\s+is)\b[^:\n?]*:\s*"
    r"|^\s*(?:based\s+on|according\s+to|in\s+the\s+context\s+of)\b[^:\n?]*?(?:,|:)\s*(?=[A-Z])",
    re.IGNORECASE,
)
# text before a colon that marks a label, not part of the question
_LABEL_HEAD = re.compile(r"(?:\bquestions?\s*\d*|^\s*(?:here\s+is|here's|here\s+are)\b.*)$",
                         re.IGNORECASE)
_QUOTES = "\"'“”‘’«»「」"
# sentence start: text start, a newline, or [.!?] + space + capital/quote/digit
_BOUNDARY = re.compile(r"(?:\n|[.!?:](?=\s+[\"'“(A-Z0-9]))")


@dataclass(frozen=True)
class Extraction:
    question: str
    reject_reason: str | None

    @property
    def ok(self) -> bool:
        return self.reject_reason is None


def _clean(text: str) -> str:
    t = _FENCE.sub("", text)
    t = _MD.sub("", t)
    t = _BULLET.sub("", t)
    return t.replace("\r", "")


def _strip_prefixes(s: str) -> str:
    prev = None
    while prev != s:
        prev = s
        s = _CHATTER.sub("", s, count=1)
        s = _LABEL.sub("", s, count=1)
        s = s.strip().strip(_QUOTES).strip()
    return s


def extract_question(raw: str | None, min_words: int = 3, max_words: int = 80) -> Extraction:
    """Extract the first question from ``raw``; see the module docstring for reject reasons."""
    if raw is None or not raw.strip():
        return Extraction("", "empty")
    text = _clean(raw)
    if not text.strip(" \n\t" + _QUOTES):
        return Extraction("", "empty")
    q_end = text.find("?")
    if q_end == -1:
        return Extraction("", "no_question")
    # walk back from the first '?' to the start of its sentence
    start = 0
    for m in _BOUNDARY.finditer(text, 0, q_end):
        start = m.end()
    sentence = " ".join(text[start : q_end + 1].split())
    sentence = _strip_prefixes(sentence)
    # a label such as "Question 2:" may leave a fragment ending in ':' inside the sentence
    if ":" in sentence:
        head, _, tail = sentence.rpartition(":")
        if _LABEL_HEAD.search(head) and tail.strip():
            sentence = _strip_prefixes(tail)
    sentence = sentence.strip().strip(_QUOTES).strip()
    words = sentence[:-1].split()
    if not sentence.endswith("?") or not words:
        return Extraction("", "no_question")
    if "analyze the information in the context" in sentence.lower():
        return Extraction("", "copies_prompt")
    if len(words) < min_words:
        return Extraction("", "too_short")
    if len(words) > max_words:
        return Extraction("", "too_long")
    return Extraction(sentence[0].upper() + sentence[1:], None)
