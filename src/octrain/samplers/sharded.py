"""Data-parallel sampling: one ``chat`` call shared by several independent engines.

A sampling call of a generation stage is thousands of independent requests, and every request
carries its own seed (:func:`~octrain.samplers.base.request_seeds`), so a sample depends only on
its conversation and its seed, not on which engine answers it or what else shares its batch.
That makes sharding exact: :class:`ShardedEngine` starts ``sampler.data_parallel_size`` engine
processes, each on its own devices (one GPU, or a group of ``sampler.vllm.tensor_parallel_size``
GPUs for a tensor-parallel vLLM engine), and :meth:`ShardedEngine.chat` cuts a call into one
contiguous part per engine, with each request's seed fixed up front exactly as one engine would
have fixed it, runs the parts concurrently and returns the answers in input order. Whatever sits
above (the chunk ledger of :mod:`octrain.samplers.generation`, committed by record id) sees one sampler:
exact-once and resume hold unchanged.

Each engine lives in a child process started with :mod:`subprocess` (``python -c`` calling
:func:`octrain.samplers.shard_child.serve`), with ``CUDA_VISIBLE_DEVICES`` set to its device group
in its environment, so the child's torch and vLLM see only their own GPUs from their first import,
and the parent never touches CUDA (it counts GPUs from ``CUDA_VISIBLE_DEVICES`` or NVML, see
:mod:`octrain.samplers.shard_devices`). The child builds its sampler with the ordinary
:func:`~octrain.samplers.build_sampler` (the config dataclasses pickle) and serves requests over a
pair of pipes of its own (:mod:`octrain.samplers.shard_wire`; stdout stays free for vLLM's
logging): each request names its LoRA adapter, so the views of one sharded vLLM engine for the
base and for every adapter share the same children, as they share one engine unsharded.

Without GPUs (the transformers backend on the CPU, or vLLM's CPU build) the shards are CPU
processes, as many as asked for, each given its share of the cores: useful for tests, and for
a many-core machine where one process does not use every core.

A child that dies (killed, out of memory) makes the engine unusable: the call that finds it
raises :class:`ShardError` naming the shard, its devices and its exit status, and the next
:func:`~octrain.samplers.build_sampler` starts fresh children. An exception inside a child comes
back as one line (an :class:`~octrain.core.errors.OctrainError` keeps its class, so the CLI still
prints it as a user error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from octrain.core import errors
from octrain.core.config import ModelConfig, SamplerBackend, SamplerConfig
from octrain.core.records import Message
from octrain.samplers.base import Completion, SamplingParams, request_seeds
from octrain.samplers.shard_devices import child_environment, split_evenly
from octrain.samplers.shard_wire import ShardSpec, one_line, receive_message, send_message

__all__ = ["ShardDied", "ShardError", "ShardedEngine", "ShardedSampler"]

logger = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """A shard's process died, or a request failed inside it."""


class ShardDied(ShardError):
    """A shard's process is gone: its engine with it."""


# --- the parent ---------------------------------------------------------------------------------


class _Shard:
    """One child process and the two pipes to it."""

    def __init__(self, spec: ShardSpec, devices: list[str] | None, shards: int) -> None:
        self.index, self.devices, self.model = spec.index, devices, spec.model.path
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        command = (
            "import sys; from octrain.samplers.shard_child import serve; "
            "serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))"
        )
        # os.pipe() descriptors are not inherited: each child holds only its own two ends, so the
        # parent sees EOF the moment that child dies, whatever other shards are running.
        self.process = subprocess.Popen(
            [sys.executable, "-c", command, str(to_child_read), str(from_child_write), str(os.getpid())],
            env=child_environment(devices, spec.index, shards),
            pass_fds=(to_child_read, from_child_write),
        )
        os.close(to_child_read)
        os.close(from_child_write)
        self.writer = os.fdopen(to_child_write, "wb")
        self.reader = os.fdopen(from_child_read, "rb")
        send_message(self.writer, spec)

    @property
    def where(self) -> str:
        return f"{self.model}: shard {self.index} ({'GPU ' + ','.join(self.devices) if self.devices else 'CPU'})"

    def died(self) -> ShardDied:
        """The error for a child that is gone, with its exit status."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            status = "stopped answering"
        elif code < 0:
            status = f"was killed by {signal.Signals(-code).name}"
        else:
            status = f"exited with status {code}"
        return ShardDied(f"{self.where} {status}: its engine is gone (its log is above); rebuild the sampler")

    def request(self, message: tuple[Any, ...]) -> Any:
        """Send one message and wait for the reply; a dead child raises :class:`ShardError`."""
        if self.process.poll() is not None:
            raise self.died()
        try:
            send_message(self.writer, message)
            reply = receive_message(self.reader)
        except (BrokenPipeError, EOFError, OSError):
            raise self.died() from None
        if reply[0] == "error":
            _, kind, line = reply
            raise _rebuild_error(kind, f"{self.where}: {line}")
        return reply[1]

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the child to release its engine and end; kill it if it does not in time."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                send_message(self.writer, ("close",))
        for stream in (self.writer, self.reader):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _rebuild_error(kind: str, message: str) -> Exception:
    """A child's error in the parent: a user error keeps its class (the CLI prints it as one line)."""
    module, _, name = kind.rpartition(".")
    cls = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, errors.OctrainError):
        return cls(message)
    return ShardError(message)


class ShardedEngine:
    """``len(devices)`` engine processes behind one ``chat``; the object the engine pool holds.

    Args:
        sampler: the run's sampler config; each child gets it with ``data_parallel_size=1``.
        model, adapter, serves: as for :func:`~octrain.samplers.build_sampler`.
        devices: each shard's GPUs (None: a CPU shard), from :func:`plan_devices`.
    """

    def __init__(
        self,
        sampler: SamplerConfig,
        model: ModelConfig,
        *,
        devices: Sequence[list[str] | None],
        adapter: str | None = None,
        serves: Sequence[str | None] = (),
    ) -> None:
        single = dataclasses.replace(sampler, data_parallel_size=1)
        if sampler.backend is SamplerBackend.hf and sampler.hf.device.startswith("cuda"):
            # A child sees only its own GPU, as cuda:0, whatever index the parent config named.
            single = dataclasses.replace(single, hf=dataclasses.replace(sampler.hf, device="cuda"))
        self.name = model.path
        self.shards: list[_Shard] = []
        self.closed = False
        self.broken: str | None = None  # why this engine can no longer answer, once it cannot
        self._lock = threading.Lock()  # one call at a time: each pipe carries one request and its reply
        try:
            for index, group in enumerate(devices):
                spec = ShardSpec(index, single, model, adapter, tuple(serves))
                self.shards.append(_Shard(spec, group, len(devices)))
            # The children load their engines at the same time; wait for every one of them.
            self._pool = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="octrain-shard")
            for future in [self._pool.submit(self._ready, shard) for shard in self.shards]:
                future.result()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ready(shard: _Shard) -> None:
        try:
            reply = receive_message(shard.reader)
        except (EOFError, OSError):
            raise shard.died() from None
        if reply[0] == "error":
            raise _rebuild_error(reply[1], f"{shard.where}: {reply[2]}")

    @property
    def usable(self) -> bool:
        """Whether every shard is alive and in step: else the pool should start a fresh engine."""
        return not self.closed and self.broken is None

    def chat(
        self,
        adapter: str | None,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        """The answers to ``conversations`` from ``adapter`` (None: the base), as one engine would give them."""
        from tqdm.auto import tqdm

        if self.closed and self.broken is None:
            raise RuntimeError(f"{self.name}: its engine was closed (another model was loaded since)")
        if self.broken is not None:
            raise ShardError(f"this sharded engine cannot answer any more: {self.broken}")
        if not conversations:
            return []
        batch = [list(conversation) for conversation in conversations]
        # The seeds of the whole call, fixed here: shard k's requests get the seeds they would have
        # had at their positions in one engine's call, not those of positions 0.. of a smaller call.
        # Unseeded calls (every seed None) stay unseeded: no engine would reproduce them anyway.
        request = request_seeds(params, len(batch), seeds)
        explicit = None if request[0] is None else [int(seed) for seed in request if seed is not None]
        parts = [(start, stop) for start, stop in split_evenly(len(batch), len(self.shards)) if stop > start]
        bar = tqdm(total=len(batch), desc=desc or "sampling", unit="conv", disable=not progress, leave=False)
        bar.set_postfix_str(f"{len(parts)} engines")
        results: list[list[Completion]] = []
        with self._lock:
            try:
                futures: dict[Future[Any], tuple[int, int]] = {}
                for shard, (start, stop) in zip(self.shards, parts, strict=False):
                    part_seeds = None if explicit is None else explicit[start:stop]
                    message = ("chat", adapter, batch[start:stop], params, part_seeds)
                    futures[self._pool.submit(shard.request, message)] = (start, stop)
                answers: dict[int, list[list[Completion]]] = {}
                errors: list[Exception] = []
                for future in as_completed(futures):
                    start, stop = futures[future]
                    try:
                        answers[start] = future.result()
                    except Exception as error:
                        errors.append(error)
                    bar.update(stop - start)
            except BaseException as error:
                # Interrupted with answers still in flight: the pipes are out of step with the requests.
                self.broken = f"{self.name}: a call was interrupted ({one_line(error)})"
                self.close()
                raise
            finally:
                bar.close()
            if errors:
                died = [error for error in errors if isinstance(error, ShardDied)]
                if died:
                    # The surviving shards hold devices for nothing now: end them at once.
                    self.broken = str(died[0])
                    self.close()
                raise (died or errors)[0]
            for start, _ in parts:
                results.extend(answers[start])
        return results

    def close(self) -> None:
        """End every child (each releases its engine first); safe to call twice."""
        self.closed = True
        shards, self.shards = self.shards, []
        for shard in shards:
            shard.stop()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


class ShardedSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` as one model (the base or an adapter) on a
    :class:`ShardedEngine`.

    Closing the sampler leaves the engine's processes running for the other samplers on it (the
    engine pool ends them), unless ``owns_engine``.
    """

    def __init__(
        self,
        engine: ShardedEngine,
        *,
        adapter: str | None = None,
        name: str | None = None,
        show_progress: bool = True,
        owns_engine: bool = False,
    ) -> None:
        self.engine = engine
        self.adapter = adapter
        self.name = name or (f"{engine.name}+{adapter}" if adapter else engine.name)
        self.show_progress = show_progress
        self.owns_engine = owns_engine

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        return self.engine.chat(
            self.adapter, conversations, params, seeds=seeds, desc=desc, progress=self.show_progress and progress
        )

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()
