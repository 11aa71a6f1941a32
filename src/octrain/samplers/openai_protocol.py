"""The chat-completions protocol on the wire: one HTTP request, how it failed, and the answers it holds.

:func:`send_json` makes one request with the standard library's ``urllib`` and turns every way it
can fail into an :class:`AttemptFailed` that says whether trying again could help (a timeout, a
dropped connection, HTTP 429 or 5xx) or not (another 4xx, a reply that is not JSON), and how long
the server asked us to wait. :func:`parse_completions` reads the choices of a response. The
retries, the concurrency and the API key are the sampler's
(:class:`~octrain.samplers.openai_http.OpenAIChatSampler`): nothing here sees the key except the
header it is handed, and server text quoted in a failure goes through the caller's ``scrub`` first.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from octrain.core.errors import OctrainError
from octrain.samplers.base import Completion

# Quoting a little of an error body helps (it often says which field was wrong); quoting all of it
# would bury the one-line message.
_BODY_SNIPPET = 200


class JudgeRequestError(OctrainError, RuntimeError):
    """A chat-completions request failed for good: a non-retryable status, or retries used up."""


class AttemptFailed(Exception):
    """One failed attempt, described without the key; ``retryable`` says whether to try again."""

    def __init__(
        self,
        kind: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        malformed: bool = False,
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status  # the HTTP status of an error response, None for network failures
        self.malformed = malformed  # the server answered, but not with a JSON object


def send_json(
    url: str, data: bytes | None, headers: Mapping[str, str], timeout: float, scrub: Callable[[str], str]
) -> dict[str, Any]:
    """One HTTP request (a POST of ``data``, or a GET without it); the decoded JSON object.

    ``headers`` go out as given (the caller's ``Authorization`` among them); ``scrub`` cleans any
    server text quoted in a failure.

    Raises:
        AttemptFailed: the request failed, or the reply is not a JSON object.
    """
    method = "GET" if data is None else "POST"
    request = urllib.request.Request(url, data=data, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        status = error.code
        snippet = scrub(read_snippet(error))
        kind = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        retryable = status == 429 or 500 <= status < 600
        raise AttemptFailed(kind, retryable=retryable, retry_after=retry_after(error.headers), status=status) from None
    except urllib.error.URLError as error:
        # urlopen wraps connect-time failures, a connect timeout among them, in URLError.
        if isinstance(error.reason, TimeoutError):
            raise AttemptFailed(f"timeout after {timeout:g}s", retryable=True) from None
        raise AttemptFailed(f"connection error: {scrub(str(error.reason))}", retryable=True) from None
    except TimeoutError:
        raise AttemptFailed(f"timeout after {timeout:g}s", retryable=True) from None
    except (OSError, http.client.HTTPException) as error:
        # A dropped connection or a truncated reply: the network's fault, worth another try.
        raise AttemptFailed(f"connection error: {type(error).__name__}", retryable=True) from None
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AttemptFailed("the response is not JSON", retryable=False, malformed=True) from None
    if not isinstance(decoded, dict):
        raise AttemptFailed("the response is not a JSON object", retryable=False, malformed=True)
    return decoded


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@`` part, which must not reach a message."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def read_snippet(error: urllib.error.HTTPError) -> str:
    """The start of an error response's body on one line, or "" if it cannot be read."""
    try:
        body = error.read(_BODY_SNIPPET * 4).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return ""
    # JSON error bodies usually carry the useful part under error.message.
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            body = str(parsed["error"].get("message", body))
    except json.JSONDecodeError:
        pass
    line = " ".join(body.split())
    return line if len(line) <= _BODY_SNIPPET else line[: _BODY_SNIPPET - 3] + "..."


def retry_after(headers: Any) -> float | None:
    """The numeric ``Retry-After`` value in seconds; None when absent or an HTTP date."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


def parse_completions(response: dict[str, Any], *, where: str = "chat-completions response") -> list[Completion]:
    """The completions in a chat-completions response, in choice order.

    ``finish_reason`` ``"length"`` means the token limit cut the answer (``finished=False``);
    anything else, ``"stop"`` above all, counts as the model ending its turn. Token counts come
    from ``usage.completion_tokens`` shared evenly over the choices (the API reports only the
    total); without usage, whitespace-separated words stand in for tokens.

    Raises:
        JudgeRequestError: the response has no ``choices`` list or a choice has no message.
    """
    choices = response.get("choices")
    if not isinstance(choices, list):
        raise JudgeRequestError(f"{where}: the response has no 'choices' list")
    if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
    texts: list[str] = []
    finished: list[bool] = []
    for position, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise JudgeRequestError(f"{where}: choices[{position}] has no 'message' object")
        content = message.get("content")
        # A null content (a refusal field or a tool call instead) is an empty answer, not a crash.
        texts.append(content if isinstance(content, str) else "")
        finished.append(choice.get("finish_reason") != "length")
    usage = response.get("usage")
    total = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and total >= 0 and texts:
        share, extra = divmod(total, len(texts))
        # The remainder goes to the first choices, so the counts still add up to the reported total.
        counts = [share + (1 if i < extra else 0) for i in range(len(texts))]
    else:
        counts = [len(text.split()) for text in texts]
    return [Completion(text, count, done) for text, count, done in zip(texts, counts, finished, strict=True)]
