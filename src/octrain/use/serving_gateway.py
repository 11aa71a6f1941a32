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
  tokens from its own seeded generator: see :mod:`octrain.use.serving_engine`). A request that
  names no sampling settings samples at the model's ``generation_config`` values (temperature 1
  where it has none), as OpenAI's API does, whether or not that config says ``do_sample``;
* a stream ends with ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk;
* a client that disconnects, streaming or not, has its request cancelled in the engine, which
  frees its batch slot at the next step.

The request checks live in :mod:`octrain.use.serving_requests`, the engine in
:mod:`octrain.use.serving_engine`; this module is the HTTP app, its streams and disconnects.

Run it as ``python -m octrain.use.serving_gateway MODEL_DIR --name NAME`` (what
:func:`octrain.use.serving.plan_serving` plans for ``--backend transformers``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octrain.use.serving_engine import CLIENT_GONE, BatchingEngine, EngineError
from octrain.use.serving_requests import ChatRequest, RequestError, Sampling, completion_budget, parse_chat_request

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)


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
        queue.put_nowait(CLIENT_GONE)


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
