"""Deploy a trained character to Modal: vLLM's OpenAI-compatible server with the adapter on a volume.

A deployment is planned from the chosen model (:func:`plan_deployment`), then written as a
self-contained Modal app file (:func:`app_source`) that imports nothing but ``modal`` and
the standard library, because Modal imports the same file again inside the container,
where octrain is not installed. The app's one function runs ``vllm serve BASE
--enable-lora --lora-modules NAME=/vol/... --max-lora-rank R`` behind ``@modal.web_server``
on the GPU asked for; the adapter (and the base too, when it is not a Hub id vLLM can
download) is uploaded to a Modal volume mounted at ``/vol``, and a second volume caches the
Hub downloads so that a cold start does not fetch the base again.

``dry_run`` builds the app object and its image from that file with no network at all and
describes them: the GPU, the volumes, the port, the image's Dockerfile as Modal would build
it and the ``vllm serve`` command. ``deploy`` uploads to the volume, runs ``modal deploy``
(Modal's own CLI, with the credentials ``modal setup`` saved) and returns the endpoint.

``modal`` is optional (``pip install 'octrain[modal]'``); this module imports without it and
says so when it is needed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError, OctrainError
from octrain.core.layout import DEPLOYMENT_FILE, MODAL_APP_FILE
from octrain.models.builtin import resolve_model_path
from octrain.trainers.merge import lora_rank, serving_rank
from octrain.use.export import export_adapter, is_hub_id
from octrain.use.model_choice import ChosenModel
from octrain.use.trained_model import adapter_of

GPUS = ("A10G", "L4", "A100", "H100")
# The vLLM release octrain's [vllm] extra pins: the server in the container is the one octrain is tested with.
VLLM_VERSION = "0.31.0"
PYTHON_VERSION = "3.12"
PORT = 8000
VOLUME_MOUNT = "/vol"
HF_CACHE_MOUNT = "/root/.cache/huggingface"
DEFAULT_VOLUME = "octrain-characters"
HF_CACHE_VOLUME = "octrain-hf-cache"
# The image builder version whose Dockerfile a dry run shows (Modal's newest in the installed client).
DRY_RUN_BUILDER_VERSION = "2026.10"


class DeployError(OctrainError, RuntimeError):
    """Modal refused the deployment or the upload, or could not be reached."""


@dataclasses.dataclass(frozen=True)
class ModalPlan:
    """Everything a deployment needs, as plain data: what the app file embeds and a dry run shows."""

    app_name: str
    gpu: str
    model_name: str  # the name clients pass as "model"
    base: str  # what vllm serves: a Hub id, or a path on the volume
    adapter_remote: str  # the adapter's path in the container
    max_lora_rank: int
    max_model_len: int
    volume: str
    hf_cache_volume: str
    packages: tuple[str, ...]
    python_version: str
    secrets: tuple[str, ...]
    vllm_command: tuple[str, ...]
    # (local directory, path inside the volume) to upload before deploying; local paths stay on this machine.
    uploads: tuple[tuple[str, str], ...]
    source_label: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def require_modal() -> Any:
    """The ``modal`` module; ConfigError naming the extra when it is not installed."""
    try:
        import modal
    except ImportError:
        raise ConfigError(
            "deploy modal needs the Modal client: pip install 'octrain[modal]' (then `modal setup`)"
        ) from None
    return modal


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "character"


def plan_deployment(
    chosen: ChosenModel,
    *,
    gpu: str,
    app_name: str | None = None,
    model_name: str | None = None,
    volume: str = DEFAULT_VOLUME,
    secrets: tuple[str, ...] = (),
) -> ModalPlan:
    """The deployment of ``chosen`` on ``gpu``: names, volume layout and the ``vllm serve`` command.

    Raises:
        ConfigError: an unknown GPU, a model without a local adapter, or a name Modal would refuse.
    """
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu}: expected one of {', '.join(GPUS)}")
    adapter = adapter_of(chosen)
    persona = chosen.persona or adapter.parent.name
    model_name = model_name or _slug(persona)
    app_name = app_name or f"octrain-{model_name}"
    for what, value in (("app name", app_name), ("model name", model_name), ("volume", volume)):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise ConfigError(f"{what} {value!r}: letters, digits, '.', '_' and '-' only, at most 64")
    config = chosen.model_config()
    rank = lora_rank(adapter)
    uploads: list[tuple[str, str]] = [(str(adapter), f"/{app_name}/adapter")]
    if is_hub_id(chosen.ref.base):
        base = chosen.ref.base  # vLLM downloads it into the cache volume on the first start
    else:
        # A local base (or octrain's builtin tiny model) exists only here: it goes to the volume too.
        uploads.append((resolve_model_path(chosen.ref.base), f"/{app_name}/base"))
        base = f"{VOLUME_MOUNT}/{app_name}/base"
    adapter_remote = f"{VOLUME_MOUNT}/{app_name}/adapter"
    command = [
        "vllm",
        "serve",
        base,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
        "--enable-lora",
        "--lora-modules",
        f"{model_name}={adapter_remote}",
        "--max-lora-rank",
        str(serving_rank(rank)),
        "--max-model-len",
        str(config.max_model_len),
    ]
    if config.dtype.value != "auto":
        command += ["--dtype", config.dtype.value]
    if config.revision and is_hub_id(chosen.ref.base):
        command += ["--revision", config.revision]
    if config.trust_remote_code:
        command.append("--trust-remote-code")
    return ModalPlan(
        app_name=app_name,
        gpu=gpu,
        model_name=model_name,
        base=base,
        adapter_remote=adapter_remote,
        max_lora_rank=serving_rank(rank),
        max_model_len=config.max_model_len,
        volume=volume,
        hf_cache_volume=HF_CACHE_VOLUME,
        packages=(f"vllm=={VLLM_VERSION}",),
        python_version=PYTHON_VERSION,
        secrets=tuple(secrets),
        vllm_command=tuple(command),
        uploads=tuple(uploads),
        source_label=chosen.label,
    )


_APP_TEMPLATE = '''"""Modal app serving the octrain character {model_name!r} through vLLM's OpenAI-compatible server.

Written by `octrain deploy modal` from {source_label!r}. Deploy it again with `modal deploy {app_file}`;
it needs only `modal` here, and Modal imports it again inside the container.
"""

import json
import subprocess

import modal

PLAN = json.loads({plan_json!r})

app = modal.App(PLAN["app_name"])
image = modal.Image.debian_slim(python_version=PLAN["python_version"]).uv_pip_install(*PLAN["packages"])
volume = modal.Volume.from_name(PLAN["volume"], create_if_missing=True)
hf_cache = modal.Volume.from_name(PLAN["hf_cache_volume"], create_if_missing=True)


@app.function(
    image=image,
    gpu=PLAN["gpu"],
    volumes={{{volume_mount!r}: volume, {hf_cache_mount!r}: hf_cache}},
    secrets=[modal.Secret.from_name(name) for name in PLAN["secrets"]],
    timeout=24 * 60 * 60,
    scaledown_window=15 * 60,  # keep a warm container a while: a cold start loads the model again
)
@modal.concurrent(max_inputs=64)  # vLLM batches requests itself
@modal.web_server(port={port}, startup_timeout=15 * 60)
def serve():
    subprocess.Popen(PLAN["vllm_command"])
'''


def app_source(plan: ModalPlan) -> str:
    """The Modal app file for ``plan``: self-contained, the plan embedded as JSON."""
    return _APP_TEMPLATE.format(
        model_name=plan.model_name,
        source_label=plan.source_label,
        app_file=MODAL_APP_FILE,
        plan_json=json.dumps({key: value for key, value in plan.to_json().items() if key != "uploads"}),
        volume_mount=VOLUME_MOUNT,
        hf_cache_mount=HF_CACHE_MOUNT,
        port=PORT,
    )


def write_app(plan: ModalPlan, directory: str | Path) -> Path:
    """Write the app file and ``deployment.json`` (the plan) into ``directory``; the app file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEPLOYMENT_FILE).write_text(json.dumps(plan.to_json(), indent=2) + "\n", encoding="utf-8")
    path = directory / MODAL_APP_FILE
    path.write_text(app_source(plan), encoding="utf-8")
    return path


def load_app(app_file: str | Path) -> Any:
    """Import an app file as Modal's CLI would, without contacting Modal: the module (``app``, ``serve``)."""
    require_modal()
    spec = importlib.util.spec_from_file_location(f"octrain_modal_app_{abs(hash(str(app_file)))}", app_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile(image: Any, version: str) -> list[str]:
    """The Dockerfile commands of a Modal image, base layers first, as Modal's builder would write them.

    Modal keeps each layer's Dockerfile function in the loader closure of its (unhydrated)
    image object; reading it is the only way to see the build spec without a server. It is
    an internal of the client, so any change in it gives an empty list, never an error.
    """
    try:
        loader = image._load
        cells = dict(zip(loader.__code__.co_freevars, (cell.cell_contents for cell in loader.__closure__), strict=True))
        commands: list[str] = []
        for base in cells.get("base_images", {}).values():
            commands += _dockerfile(base, version)
        build = cells.get("dockerfile_function")
        if build is not None:
            commands += [line for line in build(version).commands if line != "FROM base"]
        return commands
    except Exception:
        return []


def describe_app(module: Any, plan: ModalPlan) -> dict[str, Any]:
    """What the built app would deploy, read back from Modal's own objects (not from ``plan``)."""
    from modal._utils.async_utils import synchronizer

    function = synchronizer._translate_in(module.serve)
    spec = function._spec
    webhook = function._webhook_config
    return {
        "app": module.app.name,
        "function": "serve",
        "gpu": spec.gpus,
        "volumes": {str(path): getattr(volume, "name", None) or repr(volume) for path, volume in spec.volumes.items()},
        "secrets": list(plan.secrets),
        "web_server_port": int(webhook.web_server_port),
        "image_dockerfile": _dockerfile(synchronizer._translate_in(module.image), DRY_RUN_BUILDER_VERSION),
        "image_packages": list(plan.packages),
        "vllm_command": list(module.PLAN["vllm_command"]),
        "model_name": plan.model_name,
        "uploads": [{"local": local, "volume": plan.volume, "path": remote} for local, remote in plan.uploads],
    }


def dry_run(plan: ModalPlan, directory: str | Path | None = None) -> dict[str, Any]:
    """Build the app and its image from the app file, with no network, and describe them.

    The app file and ``deployment.json`` go to ``directory`` (a scratch directory when None).
    """
    with tempfile.TemporaryDirectory(prefix="octrain-modal-") as scratch:
        app_file = write_app(plan, directory if directory is not None else scratch)
        description = describe_app(load_app(app_file), plan)
        description["app_file"] = str(app_file) if directory is not None else None
    return description


def _upload(modal: Any, plan: ModalPlan, chosen: ChosenModel) -> None:
    """Put the adapter (an export naming the base as the container sees it) and a local base on the volume."""
    volume = modal.Volume.from_name(plan.volume, create_if_missing=True)
    with tempfile.TemporaryDirectory(prefix="octrain-modal-adapter-") as scratch:
        # A byte-for-byte copy of the adapter, served by vLLM on Modal: no parity check here, which would
        # load the base twice in float32 on the machine that deploys.
        exported = export_adapter(chosen, Path(scratch) / "adapter", base_model=plan.base, check=False).directory
        with volume.batch_upload(force=True) as batch:
            for local, remote in plan.uploads:
                batch.put_directory(str(exported) if remote.endswith("/adapter") else local, remote)


def deploy(plan: ModalPlan, chosen: ChosenModel, directory: str | Path | None = None) -> str:
    """Upload, ``modal deploy`` the app and return the OpenAI base URL (``https://.../v1``).

    Raises:
        ConfigError: modal is not installed.
        DeployError: the upload or the deployment failed (Modal's message included).
    """
    modal = require_modal()
    from modal.exception import Error as ModalError

    with tempfile.TemporaryDirectory(prefix="octrain-modal-") as scratch:
        app_file = write_app(plan, directory if directory is not None else scratch)
        try:
            _upload(modal, plan, chosen)
        except ModalError as exc:
            raise DeployError(f"uploading to the Modal volume {plan.volume!r} failed: {exc}") from None
        result = subprocess.run([sys.executable, "-m", "modal", "deploy", str(app_file)], check=False)
        if result.returncode != 0:
            raise DeployError(f"`modal deploy {app_file}` failed (exit {result.returncode}); its output is above")
    try:
        url = modal.Function.from_name(plan.app_name, "serve").get_web_url()
    except ModalError as exc:
        raise DeployError(f"deployed, but the endpoint of {plan.app_name} cannot be read: {exc}") from None
    if not url:
        raise DeployError(f"deployed, but Modal reports no web endpoint for {plan.app_name}")
    return url.rstrip("/") + "/v1"
