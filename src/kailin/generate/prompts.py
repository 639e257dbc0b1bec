"""Prompt templates for question generation.

The default is KAILIN's prompt, verbatim from the authors' DPO script (the 「」 are full-width
brackets; note the space and two newlines before ``assistant:``)::

    user:Please analyze the information in the context in the field of bioinformatics:「{abstract}」 from bioinfo and generate a question for it. \\n\\nassistant:

Two modes:

* ``raw``: the rendered template is the whole prompt, completed as plain text. This is what the
  KAILIN generators were fine-tuned on, so it is the right mode for them.
* ``chat``: the instruction (the template without its ``user:`` / ``assistant:`` markers) becomes
  the user message and the model's own chat template wraps it; an optional ``response_prefix``
  starts the assistant's answer (e.g. ``"Question:"``). Instruction-tuned models that were never
  trained on the raw format (SmolLM2-Instruct, Llama-3-Instruct...) do much better this way.

* ``auto`` (the default): ``chat`` for models with a chat template that kailin did not
  fine-tune on the raw prompt, ``raw`` for KAILIN-tuned generators and base models; decided per
  generator by :func:`kailin.generate.mode.resolve_mode` and then made concrete with
  :meth:`PromptTemplate.concrete`.

``response_prefix=None`` means the mode's default: ``"Question:"`` in chat mode, none in raw mode.

Templates are Python format strings with the fields ``{abstract}``, ``{title}`` and ``{pmid}``;
:func:`load_template` reads one from a file when given a path.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kailin.errors import InputError
from kailin.io import read_text_strict
from kailin.llm.base import Request

KAILIN_TEMPLATE = (
    "user:Please analyze the information in the context in the field of bioinformatics:"
    "「{abstract}」 from bioinfo and generate a question for it. \n\nassistant:"
)
#: the prefill that makes small instruct models write a question instead of a summary
DEFAULT_CHAT_PREFIX = "Question:"
FIELDS = frozenset({"abstract", "title", "pmid"})
MODES = ("auto", "raw", "chat")


def load_template(value: str) -> str:
    """``value`` itself, or the contents of the file it names (UTF-8, trailing newline kept
    off)."""
    p = Path(value).expanduser()
    if len(value) < 4096 and "{" not in value and p.is_file():
        text = read_text_strict(p, "prompt template")
        return text[:-1] if text.endswith("\n") and not text.endswith("\n\n") else text
    if "{" not in value and (value.endswith((".txt", ".tmpl", ".j2")) or "/" in value):
        raise InputError(f"{value}: no such template file")
    return value


def template_fields(template: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise InputError(f"prompt template is not a valid format string: {exc}") from exc


def chat_instruction(template: str) -> str:
    """Strip KAILIN's role markers (``user:`` ... ``assistant:``) for use as a chat message."""
    t = template.strip()
    if t.lower().startswith("user:"):
        t = t[len("user:"):]
    if t.lower().endswith("assistant:"):
        t = t[: -len("assistant:")]
    return t.strip()


@dataclass(frozen=True)
class PromptTemplate:
    """How an abstract becomes a request (prompt string or chat messages)."""

    template: str = KAILIN_TEMPLATE
    mode: str = "auto"
    system: str | None = None
    response_prefix: str | None = None
    max_abstract_chars: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"prompt mode must be one of {MODES}, got {self.mode!r}")
        fields = template_fields(self.template)
        unknown = fields - FIELDS
        if unknown:
            raise InputError(
                f"prompt template uses unknown field(s) {sorted(unknown)}; available: "
                f"{sorted(FIELDS)} (write literal braces as {{{{ and }}}})"
            )
        if "abstract" not in fields and "title" not in fields:
            raise InputError("prompt template must contain {abstract} (or {title})")
        if self.mode == "raw" and self.system:
            raise InputError("a system message needs --mode chat")
        if self.response_prefix is None and self.mode != "auto":
            object.__setattr__(self, "response_prefix",
                               DEFAULT_CHAT_PREFIX if self.mode == "chat" else "")

    def concrete(self, mode: str) -> PromptTemplate:
        """This template in ``mode`` (``raw`` or ``chat``); an ``auto`` template's unset response
        prefix becomes that mode's default, and a system message is dropped in raw mode."""
        if self.mode != "auto":
            return self
        if mode not in ("raw", "chat"):
            raise InputError(f"concrete prompt mode must be raw or chat, got {mode!r}")
        return replace(self, mode=mode, system=self.system if mode == "chat" else None)

    def _check_concrete(self) -> None:
        if self.mode == "auto":
            raise InputError("an auto-mode template must be made concrete first "
                             "(PromptTemplate.concrete(resolve_mode(generator)[0]))")

    def _values(self, pmid: Any, title: str | None, abstract: str | None) -> dict[str, str]:
        a = abstract or ""
        if self.max_abstract_chars is not None and len(a) > self.max_abstract_chars:
            a = a[: self.max_abstract_chars].rsplit(" ", 1)[0]
        return {"abstract": a, "title": title or "", "pmid": "" if pmid is None else str(pmid)}

    def prompt_text(self, pmid: Any, title: str | None, abstract: str | None) -> str:
        """The text recorded in the ``prompt`` column: the full prompt in raw mode, the user
        instruction in chat mode."""
        self._check_concrete()
        v = self._values(pmid, title, abstract)
        if self.mode == "raw":
            return self.template.format(**v) + (self.response_prefix or "")
        return chat_instruction(self.template).format(**v)

    def render(self, pmid: Any, title: str | None, abstract: str | None) -> Request:
        text = self.prompt_text(pmid, title, abstract)
        if self.mode == "raw":
            return text
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": text})
        if self.response_prefix:
            msgs.append({"role": "assistant", "content": self.response_prefix})
        return msgs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
