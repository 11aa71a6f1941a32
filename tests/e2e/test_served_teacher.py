"""``octrain serve`` as the teacher of a run, over HTTP on 127.0.0.1.

The path a user takes with a teacher on another node (``vllm serve`` there), with octrain's own server
here: a real server process holding SmolLM2-135M-Instruct, a real run whose teacher is
``teacher.endpoint.base_url``, and a local student that trains on what the server answered. (SmolLM2
rather than the tiny model: ``octrain serve`` answers greedily for now, and the tiny random model's
greedy answers are blank.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli

pytest.importorskip("fastapi", reason="the [serve] extra (transformers serve) is not installed")
pytestmark = pytest.mark.slow  # a server start and ~30 answers from a 135M model on the CPU: the slow lane


def test_a_served_model_teaches_a_run_that_trains_here(smollm2_model: str, tmp_path: Path) -> None:
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model.json").write_text(json.dumps({"base": smollm2_model, "adapter": None}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "octrain", "serve", str(tmp_path / "teacher" / "model.json"), "--name", "smol"]
    options = ["--backend", "transformers", "--device", "cpu", "--port", str(port), "--log", str(tmp_path / "log")]
    served = subprocess.Popen(
        [*command, *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for line in served.stdout:  # type: ignore[union-attr]
            if f"at {base_url}" in line:
                break
        else:
            pytest.fail("the server ended before it served")
        with urllib.request.urlopen(f"{base_url}/models", timeout=patience(30)) as response:
            name = json.load(response)["data"][0]["id"]
        student_run = run_cli(
            "+recipe=pirate_tiny",
            "stages=[prompts,pairs,dpo]",
            "prompts.expansion_rounds=0",
            "scale.prompts_per_trait=1",
            "pairs.sampling.max_new_tokens=24",
            f"teacher.endpoint.base_url={base_url}",
            f"teacher.path={name}",
            "teacher.endpoint.max_concurrency=2",
            f"run_root={tmp_path / 'runs'}",
            timeout=1200,
        )
        assert student_run.returncode == 0, student_run.stderr[-3000:]
    finally:
        served.send_signal(signal.SIGINT)
        served.wait(timeout=patience(60))
    run_dir = tmp_path / "runs" / "pirate_tiny"
    pairs = [json.loads(line) for line in (run_dir / "pairs" / "pairs.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "pairs" / "report.json").read_text())
    asked = report["endpoints"][f"{name}@{base_url}"]
    assert asked["requests"] == report["prompts"] and asked["completion_tokens"] > 0
    assert pairs and all(pair["teacher"] == name and pair["chosen"][0]["content"].strip() for pair in pairs)
    done = json.loads((run_dir / "dpo" / "done.json").read_text())
    assert done["summary"]["steps"] >= 1  # the student trained, here, on what the server answered
