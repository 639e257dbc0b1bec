"""OpenAI-compatible HTTP backend (vLLM server, llama.cpp server, TGI, Ollama, OpenAI).

Chat requests go to ``POST {base_url}/chat/completions``; plain prompt strings go to
``POST {base_url}/completions`` (the raw KAILIN template is a completion prompt). Requests run
concurrently on an ``httpx.AsyncClient`` bounded by a semaphore. 429, 5xx, timeouts and
connection errors are retried with exponential backoff and jitter; a ``Retry-After`` header
(seconds or an HTTP date) overrides the computed delay. The API key is read from an environment
variable and sent as a bearer token; it never appears in logs, errors or cache keys.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from kailin.errors import KailinError
from kailin.llm.base import (
    Backend,
    Completion,
    Request,
    SamplingParams,
    continues_final_message,
    is_chat,
    validate_request,
)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class HTTPBackendError(KailinError):
    """The server refused a request (non-retryable status, or retries exhausted)."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (now if now is not None else time.time()))


class OpenAIBackend(Backend):
    """Generate through an OpenAI-compatible server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (the part before ``/chat/completions``).
        model: the served model name.
        api_key_env: name of the environment variable holding the API key (may be unset for
            local servers that need none).
        concurrency: requests in flight at once.
        timeout: seconds per HTTP request.
        max_retries: retries per request after the first attempt.
        backoff: base delay in seconds; attempt ``n`` waits ``backoff * 2**n`` (+ jitter),
            capped at ``max_backoff``.
        extra_body: extra JSON fields sent with every request (server-specific options).
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise KailinError(f"{base_url}: the endpoint must start with http:// or https://")
        if concurrency < 1:
            raise KailinError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.extra_body = dict(extra_body or {})
        #: counters for tests and stats: HTTP attempts made and retries among them
        self.attempts = 0
        self.retries = 0

    @property
    def model_name(self) -> str:
        return self.model

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model, "base_url": self.base_url}

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _body(self, req: Request, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "n": 1,
        }
        if not params.greedy:
            body["top_p"] = params.top_p
            if params.seed is not None:
                body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty  # vLLM / llama.cpp extension
        if is_chat(req):
            body["messages"] = req
            if continues_final_message(req):
                # vLLM needs these to continue a trailing assistant message; llama.cpp's server
                # continues it by default and ignores unknown fields
                body.setdefault("continue_final_message", True)
                body.setdefault("add_generation_prompt", False)
            path = "/chat/completions"
        else:
            body["prompt"] = req
            path = "/completions"
        body.update(self.extra_body)
        return path, body

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, req: Request,
                   params: SamplingParams, index: int,
                   on_result: Callable[[int, Completion], None] | None = None) -> Completion:
        path, body = self._body(req, params)
        url = self.base_url + path
        last_error = ""
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            async with sem:
                self.attempts += 1
                try:
                    resp = await client.post(url, json=body, headers=self._headers())
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    last_error = f"{type(exc).__name__}"
                    log.debug("request #%d to %s: %s (attempt %d)", index, url, last_error,
                              attempt + 1)
                else:
                    if resp.status_code == 200:
                        c = _parse(resp, url, index, is_chat(req))
                        if on_result is not None:  # e.g. the response cache: kept at once
                            on_result(index, c)
                        return c
                    last_error = f"HTTP {resp.status_code}: {_error_text(resp)}"
                    if resp.status_code not in RETRY_STATUS:
                        raise HTTPBackendError(f"{url}: request #{index} failed: {last_error}")
                    wait = parse_retry_after(resp.headers.get("retry-after"))
                    log.debug("request #%d to %s: %s (attempt %d)", index, url, last_error,
                              attempt + 1)
            if attempt == self.max_retries:
                break
            self.retries += 1
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2**attempt)
                wait += random.uniform(0, wait * 0.1)
            await asyncio.sleep(min(wait, self.max_backoff))
        raise HTTPBackendError(
            f"{url}: request #{index} failed after {self.max_retries + 1} attempts: {last_error}"
        )

    async def agenerate(self, requests: Sequence[Request], params: SamplingParams,
                        on_result: Callable[[int, Completion], None] | None = None
                        ) -> list[Completion]:
        reqs = [validate_request(r, i) for i, r in enumerate(requests)]
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            return list(await asyncio.gather(
                *(self._one(client, sem, r, params, i, on_result) for i, r in enumerate(reqs))
            ))

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        return self.generate_each(requests, params, None)

    def generate_each(self, requests: Sequence[Request], params: SamplingParams,
                      on_result: Callable[[int, Completion], None] | None
                      ) -> list[Completion]:
        """Every completion is handed to ``on_result`` the moment its response arrives (before
        the rest of the batch finishes or fails)."""
        if not requests:
            return []
        coro_fn = lambda: self.agenerate(requests, params, on_result)  # noqa: E731
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro_fn())
        # called from inside an event loop (e.g. a notebook): run in a helper thread
        result: list[list[Completion]] = []
        error: list[BaseException] = []

        def runner() -> None:
            try:
                result.append(asyncio.run(coro_fn()))
            except BaseException as exc:  # re-raised in the caller's thread
                error.append(exc)

        t = threading.Thread(target=runner)
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return resp.text[:300]


def _parse(resp: httpx.Response, url: str, index: int, chat: bool) -> Completion:
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = (choice["message"].get("content") if chat else choice.get("text")) or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise HTTPBackendError(
            f"{url}: request #{index}: the answer does not follow the OpenAI schema "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        finish_reason=choice.get("finish_reason"),
    )
