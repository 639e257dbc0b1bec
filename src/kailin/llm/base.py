"""The one generation interface every backend implements.

A request is either a plain prompt string (completed as is) or a list of chat messages
(``[{"role": "user", "content": ...}, ...]``), rendered with the model's chat template. A chat
request whose last message has the role ``assistant`` asks the model to *continue* that message
(a response prefix, e.g. ``"Question:"``).

``Backend.generate(requests, params)`` returns one :class:`Completion` per request, in order.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Union

from kailin.errors import InputError

Message = dict[str, str]
Request = Union[str, list[Message]]  # noqa: UP007 - runtime alias, py3.10


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings shared by all backends.

    ``temperature == 0`` means greedy decoding (``top_p`` and ``seed`` are then irrelevant).
    ``seed`` makes sampling reproducible where the backend supports it. ``stop`` strings end a
    completion (the stop string itself is not returned).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        if self.greedy:  # these do not change a greedy completion: keep cache keys equal
            d["top_p"] = 1.0
            d["seed"] = None
        return d


@dataclass
class Completion:
    """One generated text plus token counts (``None`` when the backend does not report them)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop", "length", ...
    cached: bool = field(default=False, compare=False)


def validate_request(req: Any, index: int = 0) -> Request:
    """Check that ``req`` is a prompt string or a list of ``{"role", "content"}`` messages."""
    if isinstance(req, str):
        return req
    if isinstance(req, list) and req and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in req
    ):
        return req
    raise InputError(
        f"request #{index}: expected a prompt string or a non-empty list of "
        f"{{'role': ..., 'content': ...}} messages, got {type(req).__name__}"
    )


def is_chat(req: Request) -> bool:
    return not isinstance(req, str)


def continues_final_message(req: Request) -> bool:
    """True for chat requests that end with an assistant message (a response prefix)."""
    return is_chat(req) and req[-1]["role"] == "assistant"  # type: ignore[index]


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; return the text and whether it was cut."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


class Backend(ABC):
    """A text generator. Subclasses implement :meth:`generate` and :meth:`identity`."""

    #: short backend name used in specs, cache keys and output rows
    kind: ClassVar[str] = "backend"

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model as the user named it (path, hub id, served model name)."""

    def identity(self) -> dict[str, Any]:
        """What makes this backend's output distinct: used in response-cache keys."""
        return {"backend": self.kind, "model": self.model_name}

    @abstractmethod
    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        """One completion per request, in order."""

    def generate_each(self, requests: Sequence[Request], params: SamplingParams,
                      on_result: Callable[[int, Completion], None]) -> list[Completion]:
        """Like :meth:`generate`, calling ``on_result(index, completion)`` as each completion
        arrives, so a caller can keep it even if a later request fails. The default reports
        all of them at the end; backends that finish requests one by one override this."""
        out = self.generate(requests, params)
        for i, c in enumerate(out):
            on_result(i, c)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP clients, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_key(identity: dict[str, Any], request: Request, params: SamplingParams) -> str:
    """Stable hash of (backend identity, request, sampling parameters)."""
    payload = json.dumps(
        {"id": identity, "req": request, "params": params.to_dict()},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
