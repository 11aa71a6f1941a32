"""Preflight checks the HTTP judge (key, endpoint, model) before any model loads.

A real server on 127.0.0.1 answers ``GET /v1/models`` the way the test sets it up; a port
nothing listens on stands for an unreachable judge. The command-line tests run the whole
pipeline (every stage) and show that a bad judge stops it before the first stage starts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from octrain.core.compose import compose_config
from octrain.core.config import validate
from octrain.core.errors import ConfigError
from octrain.evaluation.judge_check import check_judge, http_judge
from octrain.run.pipeline import preflight

KEY_ENV = "OCTRAIN_TEST_JUDGE_KEY"
SECRET = "sk-judge-secret-42"


@dataclass
class ModelsServer:
    """Answers GET /v1/models with ``status`` and ``body``; records the Authorization headers it saw."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"object": "list", "data": [{"id": "judge-model"}, {"id": "small"}]})
    seen: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def models_server() -> Iterator[ModelsServer]:
    state = ModelsServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.seen.append(self.headers.get("Authorization"))
            found = self.path == "/v1/models"
            data = json.dumps(state.body if found else {"error": {"message": "no such route"}}).encode()
            self.send_response(state.status if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def judge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment must not intercept requests to the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, SECRET)


def free_port() -> int:
    """A port nothing listens on: bind one, note it, close it."""
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    return port


def judge_overrides(url: str, model: str = "judge-model") -> list[str]:
    return [
        "eval.judge=http",
        f"eval.judge_base_url={url}",
        f"eval.judge_model={model}",
        f"eval.judge_api_key_env={KEY_ENV}",
    ]


def config_for(url: str, model: str = "judge-model", *extra: str):
    config = compose_config("pirate_tiny", ["sampler=fake", *judge_overrides(url, model), *extra])
    validate(config)
    return config


def test_a_listed_model_passes_with_the_key_sent(models_server: ModelsServer) -> None:
    preflight(config_for(models_server.url))
    assert models_server.seen == [f"Bearer {SECRET}"]


def test_a_model_the_endpoint_does_not_list(models_server: ModelsServer) -> None:
    with pytest.raises(ConfigError) as caught:
        check_judge(config_for(models_server.url, "Qwen/Qwen3-32B"))
    assert str(caught.value) == (
        "eval.judge_model: 'Qwen/Qwen3-32B' is not among the models the judge endpoint lists (judge-model, small)"
    )


def test_a_server_without_a_model_list_warns(models_server: ModelsServer, caplog: pytest.LogCaptureFixture) -> None:
    models_server.status = 404
    check_judge(config_for(models_server.url))
    assert caplog.messages == [
        f"eval: the judge endpoint {models_server.url} keeps no model list (GET /models), so "
        "eval.judge_model=judge-model cannot be checked before the run; a wrong name shows at the first judge request"
    ]


def test_a_rejected_key(models_server: ModelsServer) -> None:
    models_server.status, models_server.body = 401, {"error": {"message": "invalid api key"}}
    with pytest.raises(ConfigError) as caught:
        check_judge(config_for(models_server.url))
    assert str(caught.value) == (
        f"eval.judge_base_url: the judge endpoint does not answer: {models_server.url}/models: HTTP 401: "
        "invalid api key"
    )


def test_no_check_without_the_eval_stage_or_with_the_teacher_as_judge(models_server: ModelsServer) -> None:
    check_judge(config_for(models_server.url, "unknown", "stages=[prompts,pairs]"))
    check_judge(config_for(models_server.url, "unknown", "eval.judge=teacher"))
    assert models_server.seen == []


def test_the_judge_gets_the_timeout_and_retries_settings(models_server: ModelsServer) -> None:
    config = config_for(models_server.url, "judge-model", "eval.judge_timeout=7.5", "eval.judge_retries=1")
    judge = http_judge(config.eval)
    assert (judge.timeout, judge.max_retries, judge.model) == (7.5, 1, "judge-model")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("eval.judge_timeout=0", "eval.judge_timeout: expected a number more than zero, got 0.0"),
        ("eval.judge_retries=-1", "eval.judge_retries: expected a number zero or more, got -1"),
        ("eval.judge_parse_retries=-1", "eval.judge_parse_retries: expected a number zero or more, got -1"),
        ("eval.chunk_size=0", "eval.chunk_size: expected a number more than zero, got 0"),
    ],
)
def test_the_new_settings_are_validated(key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(compose_config("pirate_tiny", [key]))
    assert str(caught.value) == message


def test_cli_unreachable_judge_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    result = run_cli("+recipe=pirate_tiny", "sampler=fake", f"run_root={tmp_path}", *judge_overrides(url))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"octrain: error: eval.judge_base_url: the judge endpoint does not answer: {url}/models: "
        "connection error: [Errno 111] Connection refused"
    )
    assert not (tmp_path / "pirate_tiny" / "prompts").exists()  # no stage started, no model loaded


def test_cli_missing_key_stops_the_run_before_any_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_cli("+recipe=pirate_tiny", "sampler=fake", f"run_root={tmp_path}", *judge_overrides(url))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"octrain: error: eval.judge_api_key_env: environment variable {KEY_ENV} is not set; it must hold the API "
        f"key for {url} (eval.judge_api_key_env='' for a server that takes no key)"
    )
    assert not (tmp_path / "pirate_tiny" / "prompts").exists()


def test_cli_a_good_judge_lets_the_run_go_on(tmp_path: Path, models_server: ModelsServer) -> None:
    # Only the eval stage, in an empty run: past preflight, it stops at its missing inputs.
    result = run_cli(
        "+recipe=pirate_tiny",
        "sampler=fake",
        "stages=[eval]",
        f"run_root={tmp_path}",
        *judge_overrides(models_server.url),
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("octrain: error: stage eval needs the current output of stage ")
    assert models_server.seen == [f"Bearer {SECRET}"]
    assert SECRET not in result.stdout + result.stderr
