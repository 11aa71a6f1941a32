"""``octrain deploy modal``: the Modal app built for real from its generated file, offline.

The dry run imports the app file the way ``modal deploy`` would and reads the GPU, the volumes,
the web server's port and the image's Dockerfile back from Modal's own objects, with every
network connection of the process refused, so a dry run provably sends nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import patience
from octrain.cli import deploy as deploy_cli
from octrain.core.errors import ConfigError
from octrain.core.records import ModelRef
from octrain.use.modal import GPUS, VLLM_VERSION, plan_deployment
from octrain.use.model_choice import choose_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Refuse every outgoing connection of this process (and record the attempts)."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise ConnectionRefusedError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("MODAL_SERVER_URL", "http://127.0.0.1:9")  # and were it to try, nothing listens there
    return attempts


def test_dry_run_builds_the_app_with_the_chosen_gpu(
    trained_tiny_root: Path, tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("modal")
    out = tmp_path / "deploy"
    argv = ["modal", "pirate_tiny/sft", "--gpu", "H100", "--dry-run", "--json", "--out", str(out)]
    assert deploy_cli.main([*argv, "--run-root", str(trained_tiny_root)]) == 0
    description = json.loads(capsys.readouterr().out)
    adapter = Path(choose_model("pirate_tiny/sft", run_root=trained_tiny_root).ref.adapter or "")
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"]

    assert description["gpu"] == "H100" and description["app"] == "octrain-pirate"
    assert description["web_server_port"] == 8000
    assert description["volumes"] == {"/vol": "octrain-characters", "/root/.cache/huggingface": "octrain-hf-cache"}
    command = description["vllm_command"]
    assert command[:2] == ["vllm", "serve"] and "--enable-lora" in command
    assert command[command.index("--lora-modules") + 1] == "pirate=/vol/octrain-pirate/adapter"
    assert command[command.index("--max-lora-rank") + 1] == str(rank)
    # The builtin tiny base is not on the Hub, so it travels to the volume with the adapter.
    assert command[2] == "/vol/octrain-pirate/base"
    assert {upload["path"] for upload in description["uploads"]} == {"/octrain-pirate/adapter", "/octrain-pirate/base"}
    dockerfile = description["image_dockerfile"]
    assert dockerfile and dockerfile[0].startswith("FROM python:3.12-slim")
    assert any(f"vllm=={VLLM_VERSION}" in line for line in dockerfile)
    assert no_network == []  # not even an attempt

    app_file = out / "modal_app.py"
    tree = ast.parse(app_file.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported == {"json", "subprocess", "modal"}  # Modal imports it again in a container without octrain
    assert json.loads((out / "deployment.json").read_text())["gpu"] == "H100"


def test_a_hub_base_is_downloaded_not_uploaded(trained_tiny_root: Path) -> None:
    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    on_hub = dataclasses.replace(chosen, ref=ModelRef(base="Qwen/Qwen3-0.6B", adapter=chosen.ref.adapter))
    plan = plan_deployment(on_hub, gpu="L4", model_name="captain", secrets=("huggingface",))
    assert plan.vllm_command[2] == "Qwen/Qwen3-0.6B" and plan.base == "Qwen/Qwen3-0.6B"
    assert [remote for _, remote in plan.uploads] == ["/octrain-captain/adapter"]
    assert "captain=/vol/octrain-captain/adapter" in plan.vllm_command and plan.secrets == ("huggingface",)
    with pytest.raises(ConfigError, match="expected one of A10G, L4, A100, H100"):
        plan_deployment(chosen, gpu="T4")


def test_the_image_runs_the_vllm_the_extra_pins() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["vllm"] == [f"vllm=={VLLM_VERSION}"]
    assert deploy_cli.GPU_CHOICES == GPUS


def test_help_and_errors(trained_tiny_root: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in (["--help"], ["modal", "--help"]):
        assert deploy_cli.main(argv) == 0
        assert "examples:" in capsys.readouterr().out
    assert deploy_cli.main(
        ["modal", "pirate_tiny/nope", "--gpu", "L4", "--dry-run", "--run-root", str(trained_tiny_root)]
    ) == (2)
    err = capsys.readouterr().err
    if "octrain[modal]" not in err:  # with modal installed, the name is what is wrong
        assert err.startswith("octrain: error:") and "did you mean" in err
    assert err.count("\n") == 1


def test_without_modal_the_module_imports_and_names_the_extra(trained_tiny_root: Path) -> None:
    root = str(trained_tiny_root)
    code = (
        "import sys; sys.modules['modal'] = None\n"  # as if modal were not installed: `import modal` fails
        "import octrain.use.modal, octrain.cli.deploy\n"
        "from octrain.cli.deploy import main\n"
        f"raise SystemExit(main(['modal', 'pirate_tiny/sft', '--gpu', 'L4', '--dry-run', '--run-root', {root!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=patience(120))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "octrain: error: deploy modal needs the Modal client: pip install 'octrain[modal]' (then `modal setup`)"
    )
