"""Serving trained characters behind an OpenAI-compatible HTTP API.

octrain prefers maintained servers and adds only what they lack. :func:`plan_serving` turns the
chosen models into the command line of one:

* **vLLM** (a CUDA box with the ``[vllm]`` extra): ``vllm serve BASE --enable-lora
  --lora-modules NAME=ADAPTER ... --max-lora-rank R``. Several characters trained on one base
  are served at once, each under its own model name, and the base under its path. vLLM batches
  requests continuously, caps ``max_tokens`` by ``--max-model-len`` with a 400, answers
  malformed requests with 4xx and stops a request whose client has gone: nothing to add.
* **transformers** (anywhere, the ``[serve]`` extra): octrain's own thin HTTP front,
  :mod:`octrain.use.serving_gateway`, over transformers' continuous-batching engine. It replaced
  ``transformers serve``, which (in 5.24) generates one request at a time, or with
  ``--continuous-batching`` keeps the first request's sampling settings for every later one,
  and neither caps ``max_tokens`` nor cancels a non-streaming request whose client has gone
  (that module's docstring lists what it guarantees). It serves one model: the adapter is folded
  into the base first (exactly, in float32, by :func:`octrain.trainers.merge.merge_into_weights`)
  into a cache directory keyed by the adapter's contents, and a base model is read from its own
  folder, untouched. The name requests carry is the registry name (``pirate_mini/sft``), the same
  on both backends.

Both servers ask the chat template to think or not as the model's config says
(``ModelConfig.enable_thinking``: the run's setting, or the user's ``--thinking`` choice through
:func:`octrain.use.model_choice.with_thinking`): the gateway with ``--thinking/--no-thinking``, vLLM
with ``--default-chat-template-kwargs``. It is a server-wide default; a request's own
``chat_template_kwargs`` still wins on both.

:func:`run_server` starts the command in its own process group, waits for its health check,
says where it listens, and on Ctrl-C (or SIGTERM) stops it cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from octrain.core.errors import ConfigError, OctrainError
from octrain.use.model_choice import ChosenModel

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "vllm", "transformers")
MERGED_MARKER = "octrain_merged.json"  # written last: a merged folder without it is incomplete
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/=]*$")


class ServerError(OctrainError, RuntimeError):
    """The server process would not start or died."""


@dataclasses.dataclass(frozen=True)
class ServePlan:
    """What to run: the command, where, and the names and URL clients use."""

    backend: str
    argv: list[str]
    cwd: Path
    model_names: list[str]
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.port}/health"

    def command_line(self) -> str:
        import shlex

        return shlex.join(self.argv)


def model_name(chosen: ChosenModel, given: str | None = None) -> str:
    """The name requests use: ``given``, else the registry name, else the adapter's folder name."""
    name = given or (chosen.checkpoint.name if chosen.checkpoint is not None else None)
    if name is None:
        source = Path(chosen.ref.adapter or chosen.ref.base)
        name = source.name if source.name not in ("adapter", "final_adapter") else source.parent.name
    if not _NAME.match(name) or ".." in name.split("/"):
        raise ConfigError(f"model name {name!r}: use letters, digits and _ . - / = (pass --name)")
    return name


def _vllm_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    from octrain.core.devices import gpu_usable

    return gpu_usable()


def choose_backend(backend: str) -> str:
    """``auto``: vLLM where it is installed and a CUDA GPU is visible, else transformers."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "vllm" if _vllm_available() else "transformers"
    return backend


def _script(name: str) -> str:
    """A console script of this Python's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"the '{name}' command is not installed in this environment")
    return found


def _vllm_plan(chosen: Sequence[ChosenModel], names: list[str], host: str, port: int) -> ServePlan:
    from octrain.models.builtin import resolve_model_path
    from octrain.trainers.merge import lora_rank, serving_rank

    bases = {model.ref.base for model in chosen}
    if len(bases) > 1:
        raise ConfigError(f"one vLLM server serves one base model; these have {', '.join(sorted(bases))}")
    model = chosen[0].model_config()
    thinking = {m.model_config().enable_thinking for m in chosen}
    if len(thinking) > 1:
        raise ConfigError(
            "these models differ in whether they think before answering, and one vLLM server asks all of them "
            "the same way: pass --thinking or --no-thinking"
        )
    argv = [_script("vllm"), "serve", resolve_model_path(model.path), "--host", host, "--port", str(port)]
    argv += ["--served-model-name", model.path, "--max-model-len", str(model.max_model_len)]
    argv += ["--default-chat-template-kwargs", json.dumps({"enable_thinking": model.enable_thinking})]
    if model.dtype.value != "auto":
        argv += ["--dtype", model.dtype.value]
    adapters = [(name, m.ref.adapter) for name, m in zip(names, chosen, strict=True) if m.ref.adapter]
    if adapters:
        rank = serving_rank(max(lora_rank(path) for _, path in adapters if path))
        argv += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(rank), "--lora-modules"]
        argv += [f"{name}={path}" for name, path in adapters]
    return ServePlan("vllm", argv, Path.cwd(), [model.path, *[name for name, _ in adapters]], host, port)


def merged_weights(chosen: ChosenModel, name: str, cache: Path) -> Path:
    """The base with ``chosen``'s adapter folded in, at ``cache/<digest>/<name>`` (made once)."""
    from octrain.trainers.merge import merge_into_weights

    assert chosen.ref.adapter is not None
    adapter = Path(chosen.ref.adapter)
    digest = hashlib.sha256(chosen.ref.base.encode())
    for part in sorted(adapter.iterdir()):
        if part.is_file():
            digest.update(part.name.encode() + part.read_bytes())
    root = cache / digest.hexdigest()[:16]
    target = root / name
    if (target / MERGED_MARKER).is_file():
        return target
    logger.info("serve: folding %s into %s for the transformers backend (once)", adapter, chosen.ref.base)
    merge_into_weights(chosen.ref.base, adapter, target)
    (target / MERGED_MARKER).write_text(json.dumps({"base": chosen.ref.base, "adapter": str(adapter)}) + "\n")
    return target


def _transformers_plan(
    chosen: ChosenModel, name: str, host: str, port: int, *, device: str, dtype: str, cache: Path
) -> ServePlan:
    import importlib.util

    missing = [module for module in ("starlette", "uvicorn") if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"the transformers backend needs {' and '.join(missing)}: pip install 'octrain[serve]'")
    if chosen.ref.adapter is None:
        from octrain.models.builtin import resolve_model_path

        # The user's own folder, read as it is: the gateway samples per request, so nothing in it
        # (a generation_config without do_sample, say) needs rewriting.
        weights = str(resolve_model_path(chosen.ref.base))
    else:
        weights = str(merged_weights(chosen, name, cache))
    model = chosen.model_config()
    argv = [sys.executable, "-m", "octrain.use.serving_gateway", weights, "--name", name]
    argv += ["--host", host, "--port", str(port), "--device", device, "--dtype", dtype]
    argv += ["--context", str(model.max_model_len), "--thinking" if model.enable_thinking else "--no-thinking"]
    return ServePlan("transformers", argv, Path.cwd(), [name], host, port)


def plan_serving(
    chosen: Sequence[ChosenModel],
    *,
    names: Sequence[str | None] = (),
    backend: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    dtype: str = "auto",
    cache: Path | None = None,
) -> ServePlan:
    """The server command for ``chosen`` (one model, or several on one base with vLLM)."""
    if not chosen:
        raise ConfigError("name at least one model to serve")
    for model in chosen:
        if model.ref.remote:
            raise ConfigError(f"{model.label} is a remote model: download it first (`octrain checkpoints download`)")
    given = list(names) + [None] * (len(chosen) - len(names))
    model_names = [model_name(model, name) for model, name in zip(chosen, given, strict=True)]
    if len(set(model_names)) != len(model_names):
        raise ConfigError(f"two models would share a name: {', '.join(model_names)} (pass --name for each)")
    backend = choose_backend(backend)
    if backend == "vllm":
        return _vllm_plan(chosen, model_names, host, port)
    if len(chosen) > 1:
        raise ConfigError("transformers serve pins one model per server: serve several characters with --backend vllm")
    from octrain.models.tiny import cache_root

    return _transformers_plan(
        chosen[0], model_names[0], host, port, device=device, dtype=dtype, cache=cache or cache_root() / "serve"
    )


def served_names(plan: ServePlan, chosen: Sequence[ChosenModel], given: Sequence[str | None] = ()) -> list[str]:
    """The name each of ``chosen`` answers to on ``plan``'s server (vLLM serves a base model under its path)."""
    names = list(given) + [None] * (len(chosen) - len(given))
    return [
        model.model_config().path if plan.backend == "vllm" and not model.ref.adapter else model_name(model, name)
        for model, name in zip(chosen, names, strict=True)
    ]


def healthy(url: str, timeout: float = 2.0) -> bool:
    with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status == 200
    return False


def wait_until_healthy(process: subprocess.Popen, url: str, *, timeout: float) -> None:
    """Poll ``url`` until it answers 200; ServerError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if process.poll() is not None:
            raise ServerError(f"the server exited with status {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise ServerError(f"the server did not answer {url} within {timeout:.0f} s")
        time.sleep(0.25)


def stop(process: subprocess.Popen, *, grace: float = 15.0) -> int:
    """SIGTERM the server's process group, then SIGKILL after ``grace`` seconds; its exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _say(text: str) -> None:
    print(text, flush=True)  # a pipe would hold the line back, and a caller waits for it


def run_server(
    plan: ServePlan,
    *,
    ready_timeout: float = 600.0,
    say: Callable[[str], None] = _say,
    log_file: Path | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run ``plan`` until Ctrl-C or SIGTERM; 0 after a clean stop, 1 when the server died on its own.

    The server runs in its own session, so a Ctrl-C in the terminal reaches octrain only, and
    octrain stops the server's whole process group (a server's workers included).
    """
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            output = open(log_file, "ab")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"--log {log_file}: cannot write the server's log there ({exc})") from exc
    else:
        output = None
    process = subprocess.Popen(
        plan.argv, cwd=plan.cwd, start_new_session=True, stdout=output, stderr=subprocess.STDOUT if output else None
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            wait_until_healthy(process, plan.health_url, timeout=ready_timeout)
            if on_ready is not None:
                on_ready()  # the parity check (octrain.use.serving_parity): a server that differs is stopped
        except OctrainError:
            stop(process)
            raise
        say(f"serving {', '.join(plan.model_names)} at {plan.base_url} ({plan.backend}); Ctrl-C stops")
        status = process.wait()
        say(f"the server exited with status {status}")
        return 1
    except KeyboardInterrupt:
        stopping = True
        return 0
    finally:
        if stopping or process.poll() is None:
            stop(process)
            say("server stopped")
        signal.signal(signal.SIGTERM, previous)
        if output is not None:
            output.close()
