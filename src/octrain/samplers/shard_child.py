"""The engine process of a sharded sampler: one engine on its own devices, answering the parent.

The parent (:mod:`octrain.samplers.sharded`) starts ``python -c`` calling :func:`serve` with
``CUDA_VISIBLE_DEVICES`` already set to this shard's GPUs, so torch and vLLM see only those from
their first import. The child builds its sampler with the ordinary
:func:`~octrain.samplers.build_sampler` and answers requests over its pipes
(:mod:`octrain.samplers.shard_wire`) until it is told to stop, or its parent is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from octrain.samplers import build_sampler, release_engines
from octrain.samplers.shard_wire import ShardSpec, one_line, receive_message, send_message


def _watch_parent(parent: int) -> None:
    """End this child when its parent is gone, even in the middle of a long generation."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def serve(read_fd: int, write_fd: int, parent: int) -> None:
    """The loop of a shard process: build the sampler, then answer requests until told to stop.

    Messages in: the :class:`ShardSpec` first, then ``("chat", adapter, conversations, params,
    seeds)`` or ``("close",)``. Messages out: ``("ready", None)`` once the engine is loaded, then
    one ``("result", completions)`` or ``("error", class path, one line)`` per request.
    """
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    reader, writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    spec: ShardSpec = receive_message(reader)
    logging.basicConfig(level=logging.INFO, format=f"[shard {spec.index}] %(name)s: %(message)s")
    views: dict[str | None, Any] = {}

    def view(adapter: str | None) -> Any:
        # One view per adapter on this child's pooled engine: vLLM serves them all from one engine.
        if adapter not in views:
            views[adapter] = build_sampler(
                spec.sampler, spec.model, adapter=adapter, serves=spec.serves, show_progress=False
            )
        return views[adapter]

    def failure(error: BaseException) -> tuple[str, str, str]:
        return ("error", f"{type(error).__module__}.{type(error).__qualname__}", one_line(error))

    try:
        view(spec.adapter)
    except Exception as error:
        send_message(writer, failure(error))
        return
    send_message(writer, ("ready", None))
    try:
        while True:
            try:
                message = receive_message(reader)
            except EOFError:
                break  # the parent is gone
            if message[0] == "close":
                break
            _, adapter, conversations, params, seeds = message
            try:
                reply: tuple[Any, ...] = ("result", view(adapter).chat(conversations, params, seeds=seeds))
            except Exception as error:
                reply = failure(error)
            send_message(writer, reply)
    finally:
        release_engines()
