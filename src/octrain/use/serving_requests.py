"""The ``/v1/chat/completions`` request of octrain's transformers server, checked before it reaches the engine.

:func:`parse_chat_request` turns a JSON body into a :class:`ChatRequest` or refuses it with a
:class:`RequestError`: HTTP 4xx in OpenAI's error shape (``{"error": {"message", "type", "param",
"code"}}``) naming the first thing wrong, rather than the HTTP 500 a malformed body got from
``transformers serve``. A parameter OpenAI defines that this server cannot honour is refused too,
unless it carries the value that asks for nothing, so a client never gets a silently ignored option.

:func:`completion_budget` caps a request's ``max_tokens`` by the context: prompt + ``max_tokens``
above it is HTTP 400 ``context_length_exceeded``, and a request without ``max_tokens`` may use the
rest of the context, as on vLLM.

Plain Python, no model and no web framework: :mod:`octrain.use.serving_gateway` serves these
checks over HTTP, and :mod:`octrain.use.serving_engine` takes the :class:`Sampling` they produce.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_CHOICES = 16  # n per request: each choice is one engine request, and n is a client's typo past this
# Parameters OpenAI defines that this server cannot honour, and the value that asks for nothing (so
# clients that always send the neutral value still work). Anything else is a 400, not a silent ignore.
UNSUPPORTED = {
    "stop": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "min_p": 0,
    "repetition_penalty": 1,
}


class RequestError(Exception):
    """A request this server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; ``temperature`` 0 is greedy, ``top_k`` 0 keeps every token."""

    temperature: float
    top_p: float
    top_k: int
    seed: int | None


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body; ``max_tokens`` None means the rest of the context."""

    messages: list[dict[str, str]]
    max_tokens: int | None
    sampling: Sampling
    n: int
    stream: bool
    include_usage: bool
    template_kwargs: dict[str, Any]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _message(index: int, message: object) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
        # Text parts only: the served models read text, and a silently dropped image would mislead.
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(
                    f"{where}.content: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                    param=f"{where}.content",
                )
            texts.append(part["text"])
        content = "".join(texts)
    elif content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise RequestError(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")
    return {"role": role, "content": content}


def parse_chat_request(body: object, *, served: str, defaults: Sampling) -> ChatRequest:
    """Check a request body; a :class:`RequestError` names the first thing wrong with it.

    ``served`` is the one model name this server answers to; ``defaults`` the sampling settings
    of a request that names none (the model's generation config).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served:
        raise RequestError(
            f"the model {model!r} does not exist here; this server serves {served!r}",
            param="model",
            code="model_not_found",
            status=404,
        )
    messages = body.get("messages")
    if messages is None:
        raise RequestError("'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of messages", param="messages")
    parsed = [_message(index, message) for index, message in enumerate(messages)]

    max_tokens = None
    for key in ("max_completion_tokens", "max_tokens"):  # OpenAI's newer name wins, as on vLLM
        value = body.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise RequestError(f"'{key}' must be a positive integer; got {value!r}", param=key)
        max_tokens = value
        break

    temperature = body.get("temperature", defaults.temperature)
    if temperature is None:
        temperature = defaults.temperature
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise RequestError(f"'temperature' must be a number from 0 to 2; got {temperature!r}", param="temperature")
    top_p = body.get("top_p", defaults.top_p)
    top_p = defaults.top_p if top_p is None else top_p
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise RequestError(f"'top_p' must be a number above 0 and at most 1; got {top_p!r}", param="top_p")
    top_k = body.get("top_k", defaults.top_k)  # vLLM's extension; -1 and 0 both mean no limit
    top_k = defaults.top_k if top_k is None else top_k
    if not _is_int(top_k) or top_k < -1:
        raise RequestError(f"'top_k' must be an integer, -1 or 0 for no limit; got {top_k!r}", param="top_k")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError(f"'seed' must be an integer; got {seed!r}", param="seed")
    n = body.get("n", 1)
    n = 1 if n is None else n
    if not _is_int(n) or not 1 <= n <= MAX_CHOICES:
        raise RequestError(f"'n' must be an integer from 1 to {MAX_CHOICES}; got {n!r}", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false; got {stream!r}", param="stream")
    if stream and n > 1:
        raise RequestError("'n' above 1 is supported without streaming only", param="n")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    template_kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(template_kwargs, dict):
        raise RequestError("'chat_template_kwargs' must be an object", param="chat_template_kwargs")
    for key, neutral in UNSUPPORTED.items():
        value = body.get(key)
        if value is not None and value != neutral and value != [] and value != {}:
            raise RequestError(
                f"'{key}' is not supported by octrain's transformers server (vLLM's server has it: --backend vllm)",
                param=key,
                code="unsupported_parameter",
            )
    return ChatRequest(
        messages=parsed,
        max_tokens=max_tokens,
        sampling=Sampling(float(temperature), float(top_p), max(int(top_k), 0), None if seed is None else int(seed)),
        n=n,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        template_kwargs=template_kwargs,
    )


def completion_budget(prompt_tokens: int, max_tokens: int | None, context: int) -> int:
    """How many tokens a request may generate: its ``max_tokens``, else the rest of the context.

    HTTP 400 ``context_length_exceeded`` when the prompt and ``max_tokens`` do not fit, with the
    numbers a user needs to shorten one or the other.
    """
    if max_tokens is None:
        if prompt_tokens >= context:
            raise RequestError(
                f"This model's maximum context length is {context} tokens, and the messages take "
                f"{prompt_tokens}, leaving none for the answer. Please shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        return context - prompt_tokens
    if prompt_tokens + max_tokens > context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens
