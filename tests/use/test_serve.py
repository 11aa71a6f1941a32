"""``octrain serve``: a real server process on 127.0.0.1, queried over HTTP, stopped with a signal.

The transformers path runs here for real (octrain's server over transformers' continuous batching,
on the merged tiny model); the vLLM path is checked by the command line it would run, since vLLM's
server needs a CUDA GPU. The server's request handling is tested in test_serve_gateway.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import patience
from octrain.samplers.base import SamplingParams
from octrain.samplers.openai_http import OpenAIChatSampler
from octrain.use.model_choice import choose_model

pytest.importorskip("starlette", reason="the [serve] extra (octrain's transformers server) is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def line_with(process: subprocess.Popen, text: str, timeout: float = 240) -> str:
    """The first line of the process's stdout holding ``text``; a failure after ``timeout`` s, never a hang."""
    import threading

    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            seen.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(patience(timeout)), f"no {text!r} from the server within {timeout}s; it said {seen}"
    return seen[-1]


def post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=patience(60)) as response:
        return response.read()


@pytest.mark.slow  # a served process through SIGINT (~25 s); octrain's server is in test_serve_gateway
def test_serve_answers_the_openai_chat_api_and_stops_on_sigint(trained_tiny_root: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OCTRAIN_CACHE_DIR": os.environ["OCTRAIN_CACHE_DIR"], "NO_PROXY": "127.0.0.1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "octrain",
            "serve",
            "pirate_tiny/sft",
            "--run-root",
            str(trained_tiny_root),
            "--backend",
            "transformers",
            "--device",
            "cpu",
            "--port",
            str(port),
            "--log",
            str(tmp_path / "server.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # The parity check passed (it runs before octrain says it serves), then the health check's line.
        line_with(server, "pirate_tiny/sft: parity: answers as the trained model does")
        line_with(server, f"serving pirate_tiny/sft at http://127.0.0.1:{port}/v1")
        base = f"http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(f"{base}/models", timeout=patience(30)) as response:
            assert [m["id"] for m in json.load(response)["data"]] == ["pirate_tiny/sft"]
        body = {"model": "pirate_tiny/sft", "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 6}
        reply = json.loads(post(f"{base}/chat/completions", body))
        assert reply["model"] == "pirate_tiny/sft" and reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["completion_tokens"] == 6
        events = post(f"{base}/chat/completions", {**body, "stream": True}).decode().split("\n\n")
        chunks = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
        assert len(chunks) >= 3 and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert [e for e in events if e][-1] == "data: [DONE]"

        # The client's sampling settings are honoured: distinct answers at a high temperature, one at 0.
        def text(**settings: object) -> str:
            answer = json.loads(post(f"{base}/chat/completions", {**body, "max_tokens": 12, **settings}))
            return answer["choices"][0]["message"]["content"]

        hot = {text(temperature=1.5, seed=seed) for seed in (1, 2, 3, 4)}
        assert len(hot) >= 2, hot
        assert len({text(temperature=0, seed=seed) for seed in (1, 2, 3)}) == 1
        assert text(temperature=1.5, seed=3) == text(temperature=1.5, seed=3)
        # octrain's own HTTP client (the judge's) talks to it too.
        client = OpenAIChatSampler(base, "pirate_tiny/sft", api_key_env="")
        [[answer]] = client.chat([[{"role": "user", "content": "Ahoy?"}]], SamplingParams(max_new_tokens=4))
        assert answer.num_tokens == 4
        client.close()
        server.send_signal(signal.SIGINT)
        line_with(server, "server stopped", timeout=60)
        assert server.wait(timeout=patience(60)) == 0
        # The server's own process went with it: nothing listens on the port any more.
        time.sleep(0.5)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if server.poll() is None:
            server.kill()
    assert "Traceback" not in server.stderr.read()
    # The merged weights are cached once, named after the model, with the marker written last.
    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    merged = list((Path(os.environ["OCTRAIN_CACHE_DIR"]) / "serve").glob("*/pirate_tiny/sft/octrain_merged.json"))
    assert len(merged) == 1 and json.loads(merged[0].read_text())["adapter"] == chosen.ref.adapter


def test_vllm_command_line_serves_every_character_on_one_base(trained_tiny_root: Path) -> None:
    from octrain.use import serving

    chosen = [choose_model(name, run_root=trained_tiny_root) for name in ("pirate_tiny/sft", "pirate_tiny/dpo")]
    original = serving._script
    serving._script = lambda name: f"/env/bin/{name}"  # the plan only names the script; vLLM is not run
    try:
        plan = serving.plan_serving(chosen, backend="vllm", port=9001)
    finally:
        serving._script = original
    argv = plan.argv
    assert argv[:2] == ["/env/bin/vllm", "serve"] and argv[argv.index("--port") + 1] == "9001"
    modules = argv[argv.index("--lora-modules") + 1 :]
    assert modules == [f"pirate_tiny/sft={chosen[0].ref.adapter}", f"pirate_tiny/dpo={chosen[1].ref.adapter}"]
    ranks = [json.loads((Path(m.ref.adapter) / "adapter_config.json").read_text())["r"] for m in chosen]
    assert int(argv[argv.index("--max-lora-rank") + 1]) >= max(ranks)
    assert plan.model_names == ["builtin:tiny-qwen3", "pirate_tiny/sft", "pirate_tiny/dpo"]


def test_serve_errors_are_one_line(trained_tiny_root: Path) -> None:
    def octrain(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "octrain", "serve", *args, "--run-root", str(trained_tiny_root)],
            capture_output=True,
            text=True,
            timeout=patience(120),
        )

    two = octrain("pirate_tiny/sft", "pirate_tiny/dpo", "--backend", "transformers")
    assert two.returncode == 2 and "pins one model per server" in two.stderr
    unknown = octrain("pirate_tiny/sfx")
    assert unknown.returncode == 2 and "did you mean pirate_tiny/sft" in unknown.stderr
    printed = octrain("pirate_tiny/dpo", "--backend", "transformers", "--print-command", "--port", "8123")
    assert printed.returncode == 0, printed.stderr
    assert "-m octrain.use.serving_gateway " in printed.stdout
    assert "--name pirate_tiny/dpo --host 127.0.0.1 --port 8123" in printed.stdout


def test_a_base_model_is_served_from_its_own_folder_untouched(tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.use.serving import plan_serving

    folder = Path(tiny_model_path)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    chosen = choose_model(tiny_model_path, run_root=tmp_path)
    plan = plan_serving([chosen], backend="transformers", port=8124, cache=tmp_path / "serve")
    argv = plan.argv
    assert argv[1:4] == ["-m", "octrain.use.serving_gateway", str(folder)]
    assert argv[argv.index("--name") + 1] == plan.model_names[0] == folder.name
    assert int(argv[argv.index("--context") + 1]) == chosen.model_config().max_model_len
    # Nothing merged, nothing rewritten: per-request sampling needs no edited generation config.
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
    assert not (tmp_path / "serve").exists()


@pytest.mark.slow
def test_a_server_that_answers_otherwise_is_stopped_and_the_difference_named(
    trained_tiny_root: Path, tmp_path: Path
) -> None:
    """The merged copy the server reads is changed behind octrain's back: serve must refuse to hand it out."""
    import torch
    from safetensors.torch import load_file, save_file

    from octrain.models.tiny import cache_root
    from octrain.use.serving import merged_weights

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    merged = merged_weights(chosen, "pirate_tiny/sft", cache_root() / "serve")
    weights_file = merged / "model.safetensors"
    original = weights_file.read_bytes()
    weights = load_file(str(weights_file))
    generator = torch.Generator().manual_seed(0)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in weights.items()}, str(weights_file))
    port = free_port()
    command = [sys.executable, "-m", "octrain", "serve", "pirate_tiny/sft", "--run-root", str(trained_tiny_root)]
    command += ["--backend", "transformers", "--device", "cpu", "--port", str(port)]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=patience(600),
            env={**os.environ, "NO_PROXY": "127.0.0.1"},
        )
    finally:
        weights_file.write_bytes(original)  # the session's other tests serve the same cached copy
    assert result.returncode != 0
    assert "the server's pirate_tiny/sft does not answer as the trained model does: tokens: answer 1" in result.stderr
    assert "Traceback" not in result.stderr and "serving pirate_tiny/sft at" not in result.stdout
    with socket.socket() as probe:  # the server was stopped, not left running
        assert probe.connect_ex(("127.0.0.1", port)) != 0
