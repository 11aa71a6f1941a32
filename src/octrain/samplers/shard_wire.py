"""What a sharded sampler's parent and its engine processes say to each other over their pipes.

Each message is a pickle preceded by its length (:func:`send_message`, :func:`receive_message`).
The parent first sends the child its :class:`ShardSpec`; then requests and replies alternate, as
:func:`octrain.samplers.shard_child.serve` describes. Both sides import this module and nothing of
the other's, so the parent (:mod:`octrain.samplers.sharded`) never imports the child's sampler factory.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
from typing import IO, Any

from octrain.core.config import ModelConfig, SamplerConfig

_HEADER = struct.Struct(">Q")  # the byte length of the pickled message that follows


def send_message(stream: IO[bytes], message: object) -> None:
    """Write one message: its pickled length, then the pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def receive_message(stream: IO[bytes]) -> Any:
    """The next message; EOFError when the other side closed its end (or died)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return pickle.loads(payload)


def one_line(error: BaseException) -> str:
    """An exception as one line: its class and its message, whitespace folded."""
    return " ".join(f"{type(error).__name__}: {error}".split())


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What a child needs to build its engine: the config with ``data_parallel_size=1``."""

    index: int
    sampler: SamplerConfig
    model: ModelConfig
    adapter: str | None
    serves: tuple[str | None, ...]
