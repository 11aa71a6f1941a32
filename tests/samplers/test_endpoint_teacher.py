"""A teacher behind an OpenAI-compatible server (``teacher.endpoint.base_url``) while the student runs here.

A real HTTP server on 127.0.0.1 plays the teacher: it answers from the request (so every answer can be
traced to its prompt), counts what it was asked, and can misbehave (429, 500, malformed JSON, a hang).
The runs are real ``python -m octrain`` processes; one is killed mid-stage and resumed, and must not ask
the server again for an answer it already committed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, patience, run_cli
from octrain.core.compose import compose_config
from octrain.core.config import EndpointConfig, ModelConfig, validate
from octrain.core.errors import ConfigError
from octrain.run.preflight import preflight
from octrain.samplers.endpoint import SEED_PROBE, seed_behaviour

SERVED = "remote-teacher"
# The student answers locally (the fake backend: no model); only the teacher goes over HTTP.
ARGS = ["+recipe=pirate_tiny", "stages=[prompts,pairs]", "prompts.expansion_rounds=0", "sampler=fake"]


class TeacherServer:
    """chat-completions on 127.0.0.1: the answer is "Arr! " and the user's last message."""

    def __init__(self) -> None:
        self.asked: list[str] = []  # each answered request's last user message, in order
        self.probes: list[int | None] = []  # the seeds of the seed check's requests (kept out of `asked`)
        self.seeds = "fixed"  # the seed check's answers: "fixed" (one text), "honour" (by seed), "ignore" (random)
        self.faults: list[str] = []  # the next requests' misbehaviour: "429", "500", "garbage", "hang"
        self.hang_seconds = 3.0
        self.authorization: set[str | None] = set()  # the Authorization headers the requests carried
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": SERVED, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    fault = owner.faults.pop(0) if owner.faults else None
                if fault == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if fault == "garbage":
                    return self._raw(200, b"{not json")
                if fault == "hang":
                    time.sleep(owner.hang_seconds)
                    return None
                if body.get("model") != SERVED:
                    return self._send(404, {"error": {"message": f"no model {body.get('model')}"}})
                prompt = body["messages"][-1]["content"]
                with owner.lock:
                    if prompt == SEED_PROBE:
                        owner.probes.append(body.get("seed"))
                    else:
                        owner.asked.append(prompt)
                    owner.authorization.add(self.headers.get("Authorization"))
                text = f"Arr! {prompt}"
                if prompt == SEED_PROBE and owner.seeds != "fixed":
                    text += f" {body.get('seed') if owner.seeds == 'honour' else len(owner.probes)}"
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    for i in range(body.get("n", 1))
                ]
                usage = {
                    "prompt_tokens": 10,
                    "completion_tokens": 3 * len(choices),
                    "total_tokens": 10 + 3 * len(choices),
                }
                return self._send(200, {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage})

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._raw(status, json.dumps(payload).encode(), headers)

            def _raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # a client that gave up (its timeout)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def endpoint(self, **settings: Any) -> list[str]:
        overrides = [
            f"teacher.endpoint.base_url={self.base_url}",
            f"teacher.path={SERVED}",
            "teacher.endpoint.backoff=0.01",
        ]
        return overrides + [f"teacher.endpoint.{key}={value}" for key, value in settings.items()]


@pytest.fixture
def teacher() -> Iterator[TeacherServer]:
    server = TeacherServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def committed_ids(chunks: Path) -> set[str]:
    """The prompt ids whose teacher answers a run committed to disk."""
    return {json.loads(line)["id"] for path in chunks.glob("chunk-*.jsonl") for line in path.read_text().splitlines()}


def pairs_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "pairs" / "pairs.jsonl").read_text().splitlines()]


def test_the_teacher_answers_over_http_and_the_report_counts_what_it_was_asked(
    teacher: TeacherServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTRAIN_TEST_TEACHER_KEY", "sk-test-4242-secret")
    prices = {"price_per_million_prompt_tokens": 0.5, "price_per_million_completion_tokens": 2.0}
    done = run_cli(*ARGS, *teacher.endpoint(api_key_env="OCTRAIN_TEST_TEACHER_KEY", **prices), f"run_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "pirate_tiny"
    pairs = pairs_of(run_dir)
    prompts = [json.loads(line) for line in (run_dir / "prompts" / "prompts.jsonl").read_text().splitlines()]
    assert len(pairs) == len(prompts) == len(teacher.asked)  # one request a prompt, every one answered once
    for pair in pairs:
        assert pair["chosen"][0]["content"] == "Arr! " + pair["prompt"][-1]["content"]
        assert pair["teacher"] == SERVED
    report = json.loads((run_dir / "pairs" / "report.json").read_text())
    name = f"{SERVED}@{teacher.base_url}"
    n = len(prompts)
    cost = round((10 * n * 0.5 + 3 * n * 2.0) / 1e6, 6)  # the server reports 10 prompt and 3 completion tokens
    assert report["endpoints"] == {
        name: {"requests": n, "prompt_tokens": 10 * n, "completion_tokens": 3 * n, "cost": cost, "seed": "undetermined"}
    }
    assert teacher.probes == [11, 11, 12]  # the seed check: outside the tally, and nothing it asked is a pair
    # The key went to the server, and nowhere else: no file of the run, no line of its output holds it.
    assert teacher.authorization == {"Bearer sk-test-4242-secret"}
    written = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    assert not any(b"4242-secret" in content for content in written) and "4242-secret" not in done.stderr


@pytest.mark.parametrize(
    ("answers", "verdict"), [("honour", "honoured"), ("ignore", "ignored"), ("fixed", "undetermined")]
)
def test_the_seed_check_tells_a_server_that_honours_the_seed_from_one_that_ignores_it(
    teacher: TeacherServer, answers: str, verdict: str
) -> None:
    teacher.seeds = answers
    model = ModelConfig(path=SERVED, endpoint=EndpointConfig(base_url=teacher.base_url))
    assert seed_behaviour(model) == verdict
    assert teacher.probes == [11, 11, 12] and teacher.asked == []
    teacher.faults = ["500"] * 20
    failing = dataclasses.replace(model, endpoint=EndpointConfig(base_url=teacher.base_url, max_retries=0))
    assert seed_behaviour(failing).startswith("not checked")


def test_rate_limits_server_errors_and_a_hang_are_retried(teacher: TeacherServer, tmp_path: Path) -> None:
    teacher.faults = ["429", "500", "hang", "500"]
    done = run_cli(*ARGS, *teacher.endpoint(timeout=1, max_concurrency=1), f"run_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attempt 1 of 6 failed (HTTP 429: slow down)" in done.stderr
    assert "failed (timeout after 1s)" in done.stderr
    pairs = pairs_of(tmp_path / "pirate_tiny")
    assert not teacher.faults and len(teacher.asked) == len(pairs)  # every fault was met, then answered once


@pytest.mark.slow  # two failed runs and their reruns (~12 s): the slow lane, which CI runs
@pytest.mark.parametrize(
    ("faults", "said"),
    [
        (["500"] * 50, "HTTP 500: boom"),  # retried max_retries times, then given up
        (["garbage"], "the response is not JSON; not retried"),  # a 200 that is not JSON: asking again cannot help
    ],
)
def test_a_server_that_fails_for_good_is_one_line_and_the_rerun_resumes(
    teacher: TeacherServer, tmp_path: Path, faults: list[str], said: str
) -> None:
    teacher.faults = list(faults)
    failed = run_cli(*ARGS, *teacher.endpoint(max_retries=2, max_concurrency=1), f"run_root={tmp_path}")
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("octrain: error: ") and said in last and "Traceback" not in failed.stderr
    committed = committed_ids(tmp_path / "pirate_tiny" / "pairs" / "teacher")
    teacher.faults, teacher.asked = [], []
    rerun = run_cli(*ARGS, *teacher.endpoint(max_retries=2, max_concurrency=1), f"run_root={tmp_path}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The rerun asks for exactly what was not committed (an answer in flight when the run stopped is lost).
    assert len(teacher.asked) == len(set(teacher.asked)) == len(pairs_of(tmp_path / "pirate_tiny")) - len(committed)


def test_a_killed_run_resumes_without_asking_the_server_twice(teacher: TeacherServer, tmp_path: Path) -> None:
    settings = ["pairs.chunk_size=4", *teacher.endpoint(max_concurrency=1)]
    command = [sys.executable, "-m", "octrain", *ARGS, *settings, f"run_root={tmp_path}"]
    chunks = tmp_path / "pirate_tiny" / "pairs" / "teacher"
    teacher.hang_seconds = 600  # after the first chunks, the server stalls: the run is killed while it waits
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + patience(120)
        while len(list(chunks.glob("chunk-*.jsonl"))) < 2:
            assert process.poll() is None, "the run ended before two chunks were committed"
            assert time.monotonic() < deadline, "no two committed chunks"
            time.sleep(0.02)
        teacher.faults = ["hang"] * 1000
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    committed = committed_ids(chunks)
    asked_before = list(teacher.asked)
    assert committed and set(asked_before)  # work was committed before the kill
    teacher.faults, teacher.asked = [], []

    rerun = run_cli(*ARGS, *settings, f"run_root={tmp_path}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    pairs = pairs_of(tmp_path / "pirate_tiny")
    answered = {pair["prompt"][-1]["content"] for pair in pairs if pair["prompt_id"] in committed}
    # No prompt whose answer was committed was asked again; every other one was asked exactly once.
    assert not answered & set(teacher.asked)
    assert len(teacher.asked) == len(set(teacher.asked)) == len(pairs) - len(committed)
    report = json.loads((tmp_path / "pirate_tiny" / "pairs" / "report.json").read_text())
    assert next(iter(report["endpoints"].values()))["requests"] == len(teacher.asked)


def test_preflight_names_what_cannot_work_before_any_model_loads(teacher: TeacherServer, tmp_path: Path) -> None:
    def checked(*overrides: str) -> str:
        with pytest.raises(ConfigError) as caught:
            preflight(compose_config("pirate_tiny", [f"run_root={tmp_path}", "sampler=fake", *overrides]))
        return str(caught.value)

    wrong_model = checked(f"teacher.endpoint.base_url={teacher.base_url}", "teacher.path=other-model")
    assert wrong_model == (
        f"teacher.path: 'other-model' is not among the models http://127.0.0.1:{teacher.server.server_address[1]}/v1 "
        f"serves ({SERVED})"
    )
    unset_key = checked(*teacher.endpoint(api_key_env="OCTRAIN_TEST_UNSET_KEY"))
    assert unset_key.startswith("environment variable OCTRAIN_TEST_UNSET_KEY is not set")
    nobody = checked("teacher.endpoint.base_url=http://127.0.0.1:9/v1", f"teacher.path={SERVED}")
    assert nobody.startswith("teacher.endpoint.base_url: the server does not answer: ")
    trained_student = checked(
        f"student.endpoint.base_url={teacher.base_url}",
        f"student.path={SERVED}",
        "stages=[prompts,pairs,dpo,introspect]",
    )
    assert trained_student.startswith("student.endpoint.base_url: the stages introspect sample the trained student")
    prefill = checked(*teacher.endpoint(), "pairs.thinking_prefill=true", "stages=[prompts,pairs]")
    assert prefill.startswith("pairs.thinking_prefill: the teacher is sampled from ")
    with pytest.raises(ConfigError, match=r"teacher.endpoint.base_url: expected an http:// or https:// URL"):
        validate(compose_config("pirate_tiny", ["teacher.endpoint.base_url=127.0.0.1:8000"]))
