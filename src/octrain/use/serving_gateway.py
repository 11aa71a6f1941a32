"""octrain's OpenAI-compatible chat server for the transformers backend, on transformers' continuous batching.

octrain's rule for serving is to prefer maintained servers and add only the gap. On a GPU that is
vLLM, which needs nothing from us. Without one, ``transformers serve`` (5.24) was the server, and
under load it fell short in ways users met:

* it generates one request at a time, so one long answer holds every other request back;
* its ``--continuous-batching`` fixes that, but freezes the *first* request's sampling settings
  for the life of the server (a first request at temperature 0 makes every later one greedy; a
  first one at 1.5 makes temperature-0 requests sample);
* ``max_tokens`` is not checked against the model's context, and a request with none gets 1,024
  tokens at least; malformed bodies get HTTP 500; streams end without ``data: [DONE]``;
* a non-streaming request keeps generating after its client has gone.

So this module keeps the maintained part, transformers' continuous-batching engine
(:class:`~transformers.generation.continuous_batching.ContinuousBatchingManager`, paged attention,
requests joining and leaving the running batch token by token), and writes only the thin layer
that was missing: an HTTP front (Starlette on Uvicorn, the ``[serve]`` extra) that validates each
request, caps ``max_tokens`` by the context, samples per request, and cancels a request in the
engine the moment its client disconnects.

What a client can rely on (``/v1/chat/completions``):

* a request is answered with 4xx, in OpenAI's error shape (``{"error": {"message", "type",
  "param", "code"}}``), when its body is malformed: no ``messages`` or not a list, a bad
  ``max_tokens``, ``temperature``, ``top_p``, ``n`` or ``seed``, a model name this server does
  not serve (404), or a parameter it cannot honour (``stop``, ``tools``, ``logprobs``, ...);
* prompt + ``max_tokens`` above the context (``--context``, the run's ``max_model_len`` capped
  by the model's positions) is HTTP 400 ``context_length_exceeded``; without ``max_tokens`` a
  request may use the rest of the context, as on vLLM;
* temperature, top_p, top_k and seed are the request's own, whatever else is in the batch:
  temperature 0 is greedy, and the same seed gives the same answer (each request draws its
  tokens from its own seeded generator: see ``_seeded_draw_class``). A request that names no sampling
  settings samples at the model's ``generation_config`` values (temperature 1 where it has none),
  as OpenAI's API does, whether or not that config says ``do_sample``;
* a stream ends with ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk;
* a client that disconnects, streaming or not, has its request cancelled in the engine, which
  frees its batch slot at the next step.

Run it as ``python -m octrain.use.serving_gateway MODEL_DIR --name NAME`` (what
:func:`octrain.use.serving.plan_serving` plans for ``--backend transformers``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

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


NO_TOP_K = 2**31 - 1  # a top_k above any vocabulary: keeps every token


def _lazy_truncation(processors: list) -> None:
    """Make the engine's per-request top-k and top-p skip batches where no request asks for them.

    They sort the whole vocabulary for every row at every step (0.3 s for 8 rows of Qwen3's
    152k tokens on a 2-core CPU), which dwarfed a small model's own step. Swapping in a subclass
    that first checks the batch's values keeps their code and their results.
    """
    import torch
    from transformers.generation.continuous_batching import cb_logits_processors as cb

    class LazyTopK(cb.ContinuousBatchingTopKLogitsWarper):
        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if bool((tensor_arg[: scores.size(0)] >= scores.size(-1)).all()):
                return scores
            return super().__call__(scores, tensor_arg)

    class LazyTopP(cb.ContinuousBatchingTopPLogitsWarper):
        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if bool((tensor_arg[: scores.size(0)].view(torch.float32) >= 1.0).all()):
                return scores
            return super().__call__(scores, tensor_arg)

    for processor in processors:
        if type(processor) is cb.ContinuousBatchingTopKLogitsWarper:
            processor.__class__ = LazyTopK
        elif type(processor) is cb.ContinuousBatchingTopPLogitsWarper:
            processor.__class__ = LazyTopP


def _seeded_draw_class() -> type:
    """:class:`SeededDraw`, built on first use: its base class lives in transformers, imported late."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class SeededDrawProcessor(ContinuousBatchingLogitsProcessor):
        """The last logits processor: picks each request's next token with that request's own generator.

        The engine samples a whole batch from one shared random stream, so a request's tokens
        would depend on what else was running. Here each request draws one uniform number per
        token from a ``torch.Generator`` seeded with its ``seed`` (a random one without), picks
        its token by inverse CDF over the already tempered and truncated distribution, and hands
        the engine a distribution with all its mass on that token, which the engine's own
        sampling then returns exactly. A greedy request (temperature 0) takes the argmax instead.
        """

        supported_kwargs: ClassVar[dict[str, type]] = {"draw_seed": int, "greedy": bool}
        ignored_kwargs: ClassVar[tuple[str, ...]] = ()

        def __init__(self) -> None:
            self._generators: dict[str, torch.Generator] = {}
            self._lock = threading.Lock()

        def forget(self, request_id: str) -> None:
            with self._lock:
                self._generators.pop(request_id, None)

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.copy_(torch.full_like(int32_tensor, -1.0, dtype=torch.float32).view(torch.int32))

        def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
            draws = []
            for request in requests_with_new_token:
                options = request.state.logit_processor_kwargs
                if options.get("greedy", False):
                    draws.append(-1.0)  # a negative draw means argmax
                    continue
                with self._lock:
                    generator = self._generators.get(request.state.request_id)
                    if generator is None:
                        seed = options.get("draw_seed", secrets.randbits(63))
                        generator = torch.Generator().manual_seed(seed)
                        self._generators[request.state.request_id] = generator
                draws.append(float(torch.rand((), generator=generator)))
            return torch.tensor(draws, dtype=torch.float32).view(torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            draws = tensor_arg[: scores.size(0)].view(torch.float32).to(scores.device)
            chosen = torch.full_like(scores, float("-inf"))
            if bool((draws < 0).all()):  # all greedy: no distribution to build
                return chosen.scatter(-1, scores.argmax(dim=-1, keepdim=True), 0.0)
            probs = torch.softmax(scores.float(), dim=-1)
            cumulative = probs.cumsum(dim=-1)
            target = (draws.clamp(min=0) * cumulative[:, -1]).unsqueeze(-1)
            sampled = torch.searchsorted(cumulative, target).clamp(max=scores.size(-1) - 1).squeeze(-1)
            tokens = torch.where(draws < 0, scores.argmax(dim=-1), sampled)
            return chosen.scatter(-1, tokens.unsqueeze(-1), 0.0)

    return SeededDrawProcessor


class EngineError(RuntimeError):
    """The engine failed a request (or died)."""


_GONE = object()  # put in a request's queue when its client disconnects


class BatchingEngine:
    """A model behind transformers' continuous-batching manager, one request per :meth:`tokens` call."""

    def __init__(self, model_dir: Path, *, device: str = "auto", dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device).eval()
        own = self.model.generation_config
        eos = own.eos_token_id if own.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_id: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        self.positions = int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 0) or 0)
        self.defaults = Sampling(
            temperature=float(own.temperature) if own.temperature is not None else 1.0,
            top_p=float(own.top_p) if own.top_p is not None else 1.0,
            top_k=int(own.top_k) if own.top_k else 0,
            seed=None,
        )
        # The manager builds its per-request temperature, top-k and top-p processors only for values
        # that change something at start-up; these placeholders make all three exist, and every
        # request then passes its own values.
        shared = GenerationConfig(
            do_sample=True, temperature=0.5, top_k=2, top_p=0.5, max_new_tokens=16, eos_token_id=self.eos_token_id
        )
        self._manager = self._start_manager(shared)
        self.cancelled = 0  # requests cancelled before they finished (their clients left)

    def _start_manager(self, shared: Any) -> Any:
        from transformers import ContinuousBatchingConfig

        manager = self.model.init_continuous_batching(
            generation_config=shared, continuous_batching_config=ContinuousBatchingConfig(per_request_processors=True)
        )
        processors = manager.logit_processor
        if processors.tensors_required != 3:
            raise EngineError(
                "transformers' continuous batching did not set up per-request temperature, top-k and top-p "
                f"(got {processors.logits_processor}); this transformers version is not supported"
            )
        _lazy_truncation(processors.logits_processor)
        # The seeded draw goes last, after the request's temperature and truncation. The engine sizes
        # its argument storage when its loop starts, so adding a processor before start() is safe.
        self.draw = _seeded_draw_class()()
        processors.logits_processor.append(self.draw)
        processors.tensors_required += 1
        processors.supported_keys.update(self.draw.supported_kwargs)
        manager.start()
        return manager

    def running(self) -> int:
        """How many requests the engine holds now, generating or waiting for a batch slot."""
        processor = self._manager.batch_processor
        if processor is None:
            return 0
        scheduler = processor.scheduler
        return len(scheduler.active_requests) + len(scheduler.waiting_requests)

    @property
    def alive(self) -> bool:
        return self._manager.is_running() and self._manager.background_thread_status.fatal_error is None

    def stop(self) -> None:
        self._manager.stop(block=True, timeout=5)

    def prompt_ids(self, messages: Sequence[dict[str, str]], template_kwargs: dict[str, Any]) -> list[int]:
        """The chat template applied to ``messages``; a template's own refusal is the client's 400."""
        try:
            encoded = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True, return_dict=True, **template_kwargs
            )
        except Exception as exc:  # jinja's TemplateError, a template's raise_exception, a bad kwarg
            raise RequestError(f"the chat template refused these messages: {exc}", param="messages") from exc
        return list(encoded["input_ids"])

    async def tokens(
        self, prompt_ids: list[int], *, max_new_tokens: int, sampling: Sampling, queue: asyncio.Queue
    ) -> AsyncIterator[list[int]]:
        """Yield the tokens generated so far, growing, until the request ends.

        ``queue`` is this request's own: the engine puts its outputs there, and the HTTP layer
        puts :data:`_GONE` when the client disconnects. Leaving the loop early (the client gone,
        the consumer closing the generator, a cancelled task) cancels the request in the engine.
        """
        request_id = f"octrain-{uuid.uuid4().hex}"
        greedy = sampling.temperature == 0
        options: dict[str, Any] = {
            "temperature": 1.0 if greedy else sampling.temperature,
            "top_k": sampling.top_k if sampling.top_k > 0 else NO_TOP_K,
            "top_p": sampling.top_p,
            "greedy": greedy,
        }
        if sampling.seed is not None:
            options["draw_seed"] = sampling.seed % 2**63
        # The handler is registered before the request is added, so that no output can come first.
        self._manager.register_result_handler(request_id, queue.put_nowait)
        finished = False
        try:
            added = self._manager.add_request(
                prompt_ids,
                request_id=request_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                eos_token_id=self.eos_token_id,
                **options,
            )
            if added is None:
                raise EngineError("the engine is not accepting requests (it is stopping or has failed)")
            while True:
                output = await queue.get()
                if output is _GONE:
                    return
                if output.error is not None:
                    finished = True
                    raise EngineError(f"generation failed: {output.error}")
                finished = output.is_finished()
                yield list(output.generated_tokens)
                if finished:
                    return
        finally:
            if not finished:
                self.cancelled += 1
                logger.info("serve: cancelled %s, its client is gone", request_id)
                self._manager.cancel_request(request_id)
                # A cancelled request never finishes, so its handler would stay registered for good.
                with self._manager.output_router._lock:
                    self._manager.output_router.result_handlers.pop(request_id, None)
            self.draw.forget(request_id)


@dataclasses.dataclass
class _Choice:
    """One answer being generated: its tokens so far and the text already sent."""

    index: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    sent: str = ""


def _text(engine: BatchingEngine, tokens: list[int]) -> str:
    return engine.tokenizer.decode(tokens, skip_special_tokens=True)


def _finish_reason(tokens: list[int], budget: int) -> str:
    return "length" if len(tokens) >= budget else "stop"


async def _wait_for_disconnect(request: Request, queues: list[asyncio.Queue]) -> None:
    """Tell every choice's loop that the client is gone, once it is.

    The body has been read by now, so the next ASGI message is the disconnect. Uvicorn's ASGI
    2.4 lets a server skip listening for it while a response streams, so this listens itself.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for queue in queues:
        queue.put_nowait(_GONE)


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def build_app(engine: BatchingEngine, *, name: str, context: int, template_kwargs: dict[str, Any]) -> Starlette:
    """The Starlette app: ``/health``, ``/v1/models`` and ``/v1/chat/completions`` for model ``name``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    created = int(time.time())

    def refuse(error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    async def health(_request: Request) -> Response:
        if not engine.alive:
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(_request: Request) -> Response:
        entry = {"id": name, "object": "model", "created": created, "owned_by": "octrain", "max_model_len": context}
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat_completions(request: Request) -> Response:
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(f"the request body is not valid JSON ({exc})") from exc
            chat = parse_chat_request(body, served=name, defaults=engine.defaults)
            prompt = engine.prompt_ids(chat.messages, {**template_kwargs, **chat.template_kwargs})
            budget = completion_budget(len(prompt), chat.max_tokens, context)
        except RequestError as error:
            return refuse(error)
        queues = [asyncio.Queue() for _ in range(chat.n)]
        watcher = asyncio.create_task(_wait_for_disconnect(request, queues))
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"

        def seeded(index: int) -> Sampling:
            seed = chat.sampling.seed
            return dataclasses.replace(chat.sampling, seed=None if seed is None else seed + index)

        if chat.stream:
            return StreamingResponse(
                _stream(engine, chat, prompt, budget, queues[0], watcher, completion_id, name),
                media_type="text/event-stream",
            )
        choices = [_Choice(index) for index in range(chat.n)]

        async def generate(choice: _Choice) -> None:
            async for tokens in engine.tokens(
                prompt, max_new_tokens=budget, sampling=seeded(choice.index), queue=queues[choice.index]
            ):
                choice.tokens = tokens

        try:
            await asyncio.gather(*(generate(choice) for choice in choices))
        except EngineError as exc:
            return JSONResponse(RequestError(str(exc), kind="server_error", status=500).body(), status_code=500)
        finally:
            watcher.cancel()
        if watcher.done() and not watcher.cancelled():
            return JSONResponse({}, status_code=499)  # nobody is listening; the engine has let go
        completion_tokens = sum(len(choice.tokens) for choice in choices)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": choice.index,
                        "message": {"role": "assistant", "content": _text(engine, choice.tokens)},
                        "finish_reason": _finish_reason(choice.tokens, budget),
                    }
                    for choice in choices
                ],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": completion_tokens,
                    "total_tokens": len(prompt) * chat.n + completion_tokens,
                },
            }
        )

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        logger.exception("serve: a request failed", exc_info=exc)
        return JSONResponse(RequestError(f"internal error: {exc}", kind="server_error").body(), status_code=500)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={Exception: on_unexpected},
    )


async def _stream(
    engine: BatchingEngine,
    chat: ChatRequest,
    prompt: list[int],
    budget: int,
    queue: asyncio.Queue,
    watcher: asyncio.Task,
    completion_id: str,
    name: str,
) -> AsyncIterator[str]:
    """The server-sent events of one streamed answer, ``data: [DONE]`` last."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return _sse(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    choice = _Choice(0)
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for tokens in engine.tokens(prompt, max_new_tokens=budget, sampling=chat.sampling, queue=queue):
            choice.tokens = tokens
            text = _text(engine, tokens)
            # A character split across tokens decodes to U+FFFD until its last byte arrives: hold it back.
            if text.endswith("\ufffd") or not text.startswith(choice.sent):
                continue
            if len(text) > len(choice.sent):
                yield chunk({"content": text[len(choice.sent) :]})
                choice.sent = text
        if watcher.done():
            return  # the client left; there is no one to tell
        rest = _text(engine, choice.tokens)[len(choice.sent) :]
        if rest:
            yield chunk({"content": rest})
        yield chunk({}, _finish_reason(choice.tokens, budget))
        if chat.include_usage:
            usage = {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(choice.tokens),
                "total_tokens": len(prompt) + len(choice.tokens),
            }
            yield _sse(
                {"id": completion_id, "object": "chat.completion.chunk", "model": name, "choices": [], "usage": usage}
            )
    except EngineError as exc:
        yield _sse(RequestError(str(exc), kind="server_error", status=500).body())
    finally:
        watcher.cancel()
    yield _sse("[DONE]")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m octrain.use.serving_gateway MODEL_DIR --name NAME [...]``: serve until SIGTERM or Ctrl-C."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m octrain.use.serving_gateway", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a model directory (transformers weights, tokenizer, chat template)")
    parser.add_argument("--name", required=True, help="the model name requests carry")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--context", type=int, default=4096, help="most tokens, prompt and answer together")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())

    engine = BatchingEngine(args.model, device=args.device, dtype=args.dtype)
    context = min(args.context, engine.positions) if engine.positions else args.context
    template_kwargs = {} if args.thinking is None else {"enable_thinking": args.thinking}
    app = build_app(engine, name=args.name, context=context, template_kwargs=template_kwargs)
    try:
        # A short grace: streams still open at shutdown are cut, not waited for (their engine
        # requests are cancelled as their clients see the connection close).
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=3)
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
