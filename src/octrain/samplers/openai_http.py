"""A sampler that talks to any OpenAI-compatible chat-completions endpoint over HTTP.

OpenAI itself, vLLM's ``vllm serve``, llama.cpp's server, LiteLLM and most hosted inference
providers speak the same ``POST {base_url}/chat/completions`` protocol, so one small client
covers them all: a judge model behind an API, or a local server on a GPU box.

Only the standard library is used (``urllib.request`` and a thread pool): the requests are
plain JSON and the work is waiting on the network, which threads do well. One request on the
wire, its failures and the answers in its response are :mod:`octrain.samplers.openai_protocol`;
this module adds the retries, the concurrency and the key.

The API key is read once from an environment variable and kept in a private attribute. It
goes out in the ``Authorization`` header and nowhere else: error messages, log lines, the
sampler's ``repr`` and its ``name`` are built without it, and any server text quoted in an
error is scrubbed of it first, in case a proxy echoes the request back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from octrain.core.errors import ConfigError
from octrain.core.records import Message
from octrain.samplers.base import Completion, SamplingParams, request_seeds
from octrain.samplers.openai_protocol import (
    AttemptFailed,
    JudgeRequestError,
    parse_completions,
    send_json,
    without_userinfo,
)

# JudgeRequestError and without_userinfo live in openai_protocol; evaluation and drafting import
# them from here, with the sampler they go with.
__all__ = [
    "CHECK_TIMEOUT",
    "MAX_RETRY_AFTER",
    "JudgeRequestError",
    "OpenAIChatSampler",
    "parse_completions",
    "shown_models",
    "without_userinfo",
]

logger = logging.getLogger(__name__)

# A server may ask for a long pause in Retry-After; past this many seconds we wait no longer, so one
# unfriendly header cannot stall a whole run.
MAX_RETRY_AFTER = 60.0
# One quick attempt at GET /models before a run: a check that the server answers, not sampling.
CHECK_TIMEOUT = 10.0
# How many of a server's models an error line names before "and N more".
SHOWN_MODELS = 8
# Statuses with which a server says it keeps no model list (GET /models is optional in practice).
_NO_MODEL_LIST = (404, 405, 501)


def shown_models(listed: Sequence[str]) -> str:
    """A server's model list for an error line: the first :data:`SHOWN_MODELS` names, then how many more."""
    more = f" and {len(listed) - SHOWN_MODELS} more" if len(listed) > SHOWN_MODELS else ""
    return (", ".join(listed[:SHOWN_MODELS]) + more) or "none"


class OpenAIChatSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` against an OpenAI-compatible HTTP endpoint.

    Each conversation becomes one request asking for ``params.n`` choices; conversations are
    sent concurrently (at most ``max_concurrency`` in flight) and the answers come back in
    input order.

    Args:
        base_url: the API root, such as ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            ``/chat/completions`` is appended.
        model: the model name sent in every request.
        api_key_env: the environment variable holding the API key, read now. Use ``""`` for a
            local server that takes no key: then no ``Authorization`` header is sent.
        timeout: seconds to wait for each HTTP request before counting it as a timeout.
        max_retries: extra attempts after the first for timeouts, connection errors, HTTP 429
            and 5xx. Other 4xx statuses fail at once, since repeating the same request cannot help.
        backoff: the first retry's delay in seconds; each later retry waits twice as long,
            unless the server's numeric ``Retry-After`` header asks for a (capped) wait.
        max_concurrency: the most requests in flight at once.
        name: the sampler's name in logs and reports; ``openai:MODEL`` by default.
        extra_params: also send ``min_p`` and ``repetition_penalty``. They are not OpenAI fields
            (OpenAI rejects them) but vLLM's server accepts them.
        chat_template_kwargs: sent as vLLM's (and SGLang's) ``chat_template_kwargs`` with
            ``extra_params``: ``{"enable_thinking": False}`` keeps a reasoning model from thinking
            before it answers, as octrain's local engines are told through the chat template.

    Raises:
        ConfigError: the key's environment variable is unset or empty, or a setting is out of range.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_concurrency: int = 8,
        name: str | None = None,
        extra_params: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not base_url.strip():
            raise ConfigError("OpenAIChatSampler: base_url is empty")
        if not model.strip():
            raise ConfigError("OpenAIChatSampler: model is empty")
        if timeout <= 0:
            raise ConfigError(f"OpenAIChatSampler: timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"OpenAIChatSampler: max_retries must be >= 0, got {max_retries}")
        if backoff < 0:
            raise ConfigError(f"OpenAIChatSampler: backoff must be >= 0, got {backoff}")
        if max_concurrency < 1:
            raise ConfigError(f"OpenAIChatSampler: max_concurrency must be >= 1, got {max_concurrency}")
        self._api_key: str | None = None
        if api_key_env:
            key = os.environ.get(api_key_env, "").strip()
            if not key:
                raise ConfigError(
                    f"environment variable {api_key_env} is not set: it must hold the API key for {base_url} "
                    "(use api_key_env='' for a local server that needs no key)"
                )
            self._api_key = key
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_concurrency = max_concurrency
        self.extra_params = extra_params
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.name = name or f"openai:{model}"
        # What this sampler has asked the server for, from the responses' own usage: requests
        # answered, prompt and completion tokens (a server that reports no usage leaves those at 0).
        self.usage: dict[str, int] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        # Per million prompt and completion tokens, for a cost next to the usage (None: unknown).
        self.prices: tuple[float | None, float | None] = (None, None)
        self._usage_lock = threading.Lock()
        # Messages name the endpoint by this, never by a URL that might carry a key in it.
        self._display_url = self._scrub(without_userinfo(self.url))
        self._where = f"{self._display_url} (model {model})"

    def __repr__(self) -> str:
        # Spelled out by hand so that no future attribute (the key above all) can slip into it.
        return (
            f"OpenAIChatSampler(url={self._display_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

    @property
    def display_base_url(self) -> str:
        """The API root as messages show it: without any ``user:password@`` part, or the key."""
        return self._scrub(without_userinfo(self.base_url))

    # --- the Sampler interface ----------------------------------------------------------------

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        """Return ``params.n`` completions for each conversation, in input order.

        Each request carries its own ``seed`` (``seeds``, or one derived per position from
        ``params.seed``), for servers that honour it.

        Raises:
            JudgeRequestError: a request failed for good; the requests still waiting are cancelled.
        """
        from tqdm.auto import tqdm

        batch = [list(conversation) for conversation in conversations]
        if not batch:
            return []
        results: list[list[Completion] | None] = [None] * len(batch)
        bar = tqdm(total=len(batch), desc=desc or self.name, unit="conv", disable=not progress, leave=False)
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batch)), thread_name_prefix="openai")
        try:
            futures: dict[Future[list[Completion]], int] = {
                pool.submit(self._complete, conversation, dataclasses.replace(params, seed=seed), stop): index
                for index, (conversation, seed) in enumerate(
                    zip(batch, request_seeds(params, len(batch), seeds), strict=True)
                )
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    # result() re-raises a worker's error here, in the caller's thread.
                    results[futures[future]] = future.result()
                    bar.update(1)
        finally:
            stop.set()
            # On an error, drop the queued requests rather than let them run (and retry) for nothing.
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return [row for row in results if row is not None]

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    # --- a check before any work ----------------------------------------------------------------

    def list_models(self, *, timeout: float | None = None) -> list[str] | None:
        """The model ids the endpoint lists at ``GET {base_url}/models`` (the OpenAI model list).

        One attempt, no retries: this is a check that the endpoint answers before a run
        spends hours on other work, and it should fail fast. ``timeout`` defaults to the
        sampler's own.

        Returns:
            The listed ids, or None when the server keeps no model list (HTTP 404, 405 or 501,
            or a reply that is not an OpenAI-style list): many compatible servers skip it.

        Raises:
            JudgeRequestError: the endpoint cannot be reached, times out, or answers with
                another error status (a rejected key among them).
        """
        url = f"{self.base_url}/models"
        where = self._scrub(without_userinfo(url))
        try:
            listing = self._attempt(None, url=url, timeout=timeout)
        except AttemptFailed as failure:
            if failure.malformed or failure.status in _NO_MODEL_LIST:
                return None
            raise JudgeRequestError(f"{where}: {failure.kind}") from None
        entries = listing.get("data")
        if not isinstance(entries, list):
            return None
        return [entry["id"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"), str)]

    # --- one conversation -----------------------------------------------------------------------

    def payload(self, conversation: Sequence[Message], params: SamplingParams, n: int | None = None) -> dict[str, Any]:
        """The JSON body for one conversation (``n`` overrides ``params.n``)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in conversation],
            "n": params.n if n is None else n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.extra_params:
            body["min_p"] = params.min_p
            body["repetition_penalty"] = params.repetition_penalty
            if self.chat_template_kwargs:
                body["chat_template_kwargs"] = self.chat_template_kwargs
        return body

    def _complete(
        self, conversation: Sequence[Message], params: SamplingParams, stop: threading.Event
    ) -> list[Completion]:
        """``params.n`` completions for one conversation; ``stop`` set means the batch already failed."""
        completions: list[Completion] = []
        # Some OpenAI-compatible servers ignore n and always answer with one choice; ask again for
        # the rest, at most n times in all, so the caller still gets the n samples it asked for.
        for _ in range(params.n):
            missing = params.n - len(completions)
            if missing <= 0:
                break
            # A fixed seed would make every top-up request repeat the first answer; shift it.
            seed = None if params.seed is None else params.seed + len(completions)
            top_up = dataclasses.replace(params, seed=seed)
            response = self._post(self.payload(conversation, top_up, n=missing), stop)
            self._count(response)
            got = parse_completions(response, where=self._where)
            if not got:
                raise JudgeRequestError(f"{self._where}: the response holds no choices")
            completions.extend(got[:missing])
        return completions

    def _count(self, response: dict[str, Any]) -> None:
        usage = response.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        with self._usage_lock:
            self.usage["requests"] += 1
            for key in ("prompt_tokens", "completion_tokens"):
                value = usage.get(key)
                if isinstance(value, int) and value >= 0:
                    self.usage[key] += value

    def _post(self, body: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
        """POST ``body`` with retries; the decoded JSON response."""
        data = json.dumps(body).encode("utf-8")
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(data)
            except AttemptFailed as failure:
                if not failure.retryable:
                    raise JudgeRequestError(
                        f"{self._where}: {failure.kind}; not retried (attempt {attempt} of {attempts})"
                    ) from None
                if attempt == attempts:
                    raise JudgeRequestError(
                        f"{self._where}: failed after {attempts} attempts; last error: {failure.kind}"
                    ) from None
                delay = self.backoff * 2 ** (attempt - 1)
                if failure.retry_after is not None:
                    delay = min(failure.retry_after, MAX_RETRY_AFTER)
                logger.warning(
                    "%s: attempt %d of %d failed (%s); retrying in %.2fs",
                    self._where,
                    attempt,
                    attempts,
                    failure.kind,
                    delay,
                )
                # Waiting on the event rather than sleeping lets a failed batch call off its other retries.
                if stop.wait(delay):
                    raise JudgeRequestError(f"{self._where}: cancelled after another request failed") from None
        raise AssertionError("unreachable: the loop above returns or raises")  # pragma: no cover

    def _attempt(self, data: bytes | None, *, url: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """One HTTP request (a POST of ``data``, or a GET without it); raises :class:`AttemptFailed`."""
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        seconds = self.timeout if timeout is None else timeout
        return send_json(url or self.url, data, headers, seconds, self._scrub)

    def _scrub(self, text: str) -> str:
        """``text`` with the API key blanked out, should a server or proxy have echoed it."""
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return text
