"""The LLM client: the ``openai`` SDK against any OpenAI-compatible chat-completions endpoint.

Adds what a batch of hundreds of requests needs: an explicit timeout; retries with exponential
backoff and jitter after a 429, a 5xx, a timeout or a dropped connection (``Retry-After`` honoured);
a concurrency limit; the on-disk response cache, which keeps only replies that parse (so a
rerun asks again after a bad one); and usage counters (requests, cache hits, retries, failures by
kind, tokens, cost). A request that still fails, or whose reply is malformed,
comes back as a ``Reply`` with ``error`` set — never an exception — so no feature is lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from sparsegap.autointerp.cache import ResponseCache, request_key
from sparsegap.config import ConfigError

Messages = list[dict[str, str]]
Check = Callable[[str], bool]  # whether a reply's text parses (only those are cached)


@dataclass
class Reply:
    text: str | None  # None when the request failed
    error: str | None = None  # rate_limited | server_error | timeout | connection | malformed | …
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0  # HTTP requests made for this reply (0 when cached)


@dataclass
class Usage:
    """Counters over every request of a run (thread-safe)."""

    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    requests: int = 0  # HTTP requests sent, retries included
    replies: int = 0  # completions asked for
    cached: int = 0  # served from the cache
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # replies that failed, by error
    prompt_tokens: int = 0  # tokens of fresh (not cached) replies
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # tokens the cache hits would have cost
    cached_completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cost(self, prompt: int, completion: int) -> float:
        return (prompt * self.input_usd_per_mtok + completion * self.output_usd_per_mtok) / 1e6

    def add(self, reply: Reply, retries: int) -> None:
        with self._lock:
            self.replies += 1
            self.requests += reply.attempts
            self.retries += retries
            if reply.error is not None:
                self.failures[reply.error] += 1
            elif reply.cached:
                self.cached += 1
                self.cached_prompt_tokens += reply.prompt_tokens
                self.cached_completion_tokens += reply.completion_tokens
            else:
                self.prompt_tokens += reply.prompt_tokens
                self.completion_tokens += reply.completion_tokens

    def summary(self) -> dict[str, Any]:
        return {
            "replies": self.replies,
            "http_requests": self.requests,
            "cache_hits": self.cached,
            "retries": self.retries,
            "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost(self.prompt_tokens, self.completion_tokens),
            "cost_usd_saved_by_cache": self.cost(
                self.cached_prompt_tokens, self.cached_completion_tokens
            ),
        }


# SDK errors worth another try, and the name each failure is counted under.
_TRANSIENT: tuple[tuple[type[Exception], str], ...] = (
    (openai.RateLimitError, "rate_limited"),
    (openai.InternalServerError, "server_error"),
    (openai.APITimeoutError, "timeout"),  # before APIConnectionError, its base class
    (openai.APIConnectionError, "connection"),
)


class LLMClient:
    """Chat completions with retries, a concurrency limit, a response cache and usage counters.

    ``cfg`` is the ``llm`` config node (``sparsegap.autointerp.config.LLMConfig``).
    """

    def __init__(self, cfg: Any, cache: ResponseCache | None = None) -> None:
        api_key = cfg.api_key or os.environ.get(cfg.api_key_env)
        if not api_key:
            if cfg.base_url is None:
                raise ConfigError(
                    f"llm.api_key=None is invalid: set llm.api_key or the environment variable"
                    f" {cfg.api_key_env} (llm.api_key_env), or use explainer=ngram scorer=rule"
                )
            api_key = "unused"  # local OpenAI-compatible servers usually ignore the key
        self.cfg = cfg
        self.cache = cache
        self.usage = Usage(cfg.input_usd_per_mtok, cfg.output_usd_per_mtok)
        # Retries are ours (counted, with backoff); the SDK's own would hide them.
        self.client = openai.OpenAI(
            api_key=api_key, base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=0
        )

    def request(self, messages: Messages) -> dict[str, Any]:
        """What identifies a completion: the cache key is the hash of this."""
        return {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def complete(self, messages: Messages, parses: Check | None = None) -> Reply:
        """One completion, from the cache when it holds one; a fresh reply is cached when it
        succeeded and ``parses`` (when given) accepts it. A cached reply that ``parses`` rejects
        (cached by an older version) is asked for again."""
        request = self.request(messages)
        key = request_key(request)
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is not None and (parses is None or parses(entry["text"])):
            reply = Reply(
                entry["text"],
                cached=True,
                prompt_tokens=entry.get("prompt_tokens", 0),
                completion_tokens=entry.get("completion_tokens", 0),
            )
            self.usage.add(reply, retries=0)
            return reply
        reply, retries = self._send(request)
        if (
            reply.error is None
            and self.cache is not None
            and (parses is None or parses(reply.text))  # type: ignore[arg-type]
        ):
            self.cache.put(
                key,
                {
                    "request": request,
                    "text": reply.text,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                },
            )
        self.usage.add(reply, retries)
        return reply

    def complete_many(
        self, batch: list[Messages], parses: Sequence[Check] | None = None
    ) -> list[Reply]:
        """Replies in the order of ``batch``, at most ``llm.concurrency`` requests in flight;
        ``parses[i]`` checks the reply to ``batch[i]`` (see ``complete``)."""
        if not batch:
            return []
        checks = list(parses) if parses is not None else [None] * len(batch)
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(batch))) as pool:
            return list(pool.map(self.complete, batch, checks))

    def _send(self, request: dict[str, Any]) -> tuple[Reply, int]:
        attempts = 0
        while True:
            attempts += 1
            try:
                response = self.client.chat.completions.create(**request)
            except openai.APIStatusError as error:
                kind = _transient_kind(error) or f"http_{error.status_code}"
                if _transient_kind(error) is None or attempts > self.cfg.max_retries:
                    return Reply(None, kind, attempts=attempts), attempts - 1
                self._wait(attempts, error.response.headers.get("retry-after"))
                continue
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                if attempts > self.cfg.max_retries:
                    return Reply(None, _transient_kind(error), attempts=attempts), attempts - 1
                self._wait(attempts, None)
                continue
            except (openai.APIResponseValidationError, ValueError):
                return Reply(None, "malformed", attempts=attempts), attempts - 1
            return _reply_of(response, attempts), attempts - 1

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.cfg.backoff_s * 2 ** (attempt - 1), self.cfg.max_backoff_s)
        delay *= 0.5 + random.random() / 2
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), self.cfg.max_backoff_s))
        time.sleep(delay)


def _transient_kind(error: Exception) -> str | None:
    for cls, kind in _TRANSIENT:
        if isinstance(error, cls):
            return kind
    return None


def _reply_of(response: Any, attempts: int) -> Reply:
    """A well-formed completion's text and usage, or a ``malformed`` failure."""
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if choices else None
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        return Reply(None, "malformed", attempts=attempts)
    usage = getattr(response, "usage", None)
    return Reply(
        text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        attempts=attempts,
    )


def make_client(cfg: Any) -> LLMClient:
    """The client of the ``llm`` config node, with its response cache when ``llm.cache_dir``."""
    cache = ResponseCache(Path(cfg.cache_dir)) if cfg.cache_dir else None
    return LLMClient(cfg, cache)
