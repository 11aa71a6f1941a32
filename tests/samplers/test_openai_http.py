"""The OpenAI-compatible HTTP sampler against a real local server speaking chat-completions.

Each test scripts the server's answer to every request (status, JSON body, headers, delay);
the server records what it received, so tests can check headers, bodies and request counts.
The server binds 127.0.0.1 only and every delay is bounded, so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from octrain.core.errors import ConfigError, OctrainError
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.openai_http import JudgeRequestError, OpenAIChatSampler

KEY_ENV = "OCTRAIN_TEST_OPENAI_KEY"
SECRET = "sk-test-secret-0123456789"


@dataclass
class Reply:
    """What the scripted server sends back for one request."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def completion_body(texts: list[str], finish: list[str] | None = None, tokens: int | None = None) -> dict[str, Any]:
    """A chat-completions response with one choice per text."""
    finish = finish or ["stop"] * len(texts)
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(texts, finish, strict=True))
        ],
    }
    if tokens is not None:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}
    return body


def echo(request: Received, _count: int) -> Reply:
    """The default script: n choices, each quoting the last user message."""
    last = request.body["messages"][-1]["content"]
    n = request.body.get("n", 1)
    return Reply(body=completion_body([f"re: {last} #{i}" for i in range(n)], tokens=4 * n))


class ScriptedServer:
    """A chat-completions server on 127.0.0.1 whose replies a test scripts."""

    def __init__(self) -> None:
        self.script: Callable[[Received, int], Reply] = echo
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        # Set at teardown so that handlers still sleeping in a delay wake up and exit at once.
        self.stopping = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.scripted = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def handle(self, request: Received) -> Reply:
        with self.lock:
            self.received.append(request)
            count = len(self.received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.script(request, count)
            if reply.delay:
                self.stopping.wait(reply.delay)
            return reply
        finally:
            with self.lock:
                self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Do not join handler threads at close: a handler may still be in a (bounded) delay.
    block_on_close = False
    scripted: ScriptedServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) leaves a broken pipe behind; that is expected here.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b"{}"
        request = Received(self.path, {k: v for k, v in self.headers.items()}, json.loads(raw))
        reply = self.server.scripted.handle(request)
        data = json.dumps(reply.body if reply.body is not None else {"error": {"message": "scripted"}}).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client timed out and closed the connection

    def do_GET(self) -> None:
        # The model list (GET /models) goes through the same script, with an empty body.
        reply = self.server.scripted.handle(Received(self.path, {k: v for k, v in self.headers.items()}, {}))
        data = json.dumps(reply.body if reply.body is not None else {"error": {"message": "scripted"}}).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def bypass_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy configured in the environment must not intercept requests to the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.thread.start()
    try:
        yield scripted
    finally:
        scripted.stopping.set()
        scripted.httpd.shutdown()
        scripted.httpd.server_close()
        scripted.thread.join(timeout=5)


def make_sampler(server: ScriptedServer, **kwargs: Any) -> OpenAIChatSampler:
    settings: dict[str, Any] = {"api_key_env": "", "timeout": 5.0, "max_retries": 3, "backoff": 0.01}
    settings.update(kwargs)
    return OpenAIChatSampler(server.base_url, "test-model", **settings)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_two_choices_parsed_with_tokens_and_finish_reason(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(
        body=completion_body(["Ahoy there.", "Cut off mid"], finish=["stop", "length"], tokens=7)
    )
    sampler = make_sampler(server)
    assert isinstance(sampler, Sampler)
    params = SamplingParams(n=2, temperature=0.5, top_p=0.9, max_new_tokens=32)
    results = sampler.chat([ask("Hello")], params, seeds=[3], progress=False)
    # 7 tokens over two choices: the split adds back up to the reported total.
    assert results == [[Completion("Ahoy there.", 4, True), Completion("Cut off mid", 3, False)]]

    (request,) = server.received
    assert request.path == "/v1/chat/completions"
    assert request.body == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Hello"}],
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 32,
        "seed": 3,
    }


def test_identical_conversations_are_sent_with_their_own_seeds(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(body=completion_body(["Arr."]))
    sampler = make_sampler(server)
    sampler.chat([ask("Hello")] * 3, SamplingParams(seed=7), progress=False)
    seeds = [request.body["seed"] for request in server.received]
    assert len(set(seeds)) == 3  # one shared seed would have the server answer all three alike


def test_extra_params_only_on_request_and_word_count_without_usage(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(body=completion_body(["three little words"]))
    params = SamplingParams(min_p=0.05, repetition_penalty=1.2)
    [[completion]] = make_sampler(server, extra_params=True).chat([ask("Hi")], params, progress=False)
    assert completion == Completion("three little words", 3, True)
    body = server.received[0].body
    assert body["min_p"] == 0.05 and body["repetition_penalty"] == 1.2
    assert "seed" not in body

    make_sampler(server).chat([ask("Hi")], params, progress=False)
    assert "min_p" not in server.received[1].body and "repetition_penalty" not in server.received[1].body

    # The chat template's options go with the extra parameters only (OpenAI would refuse them).
    thinking = {"enable_thinking": False}
    make_sampler(server, extra_params=True, chat_template_kwargs=thinking).chat([ask("Hi")], params, progress=False)
    make_sampler(server, chat_template_kwargs=thinking).chat([ask("Hi")], params, progress=False)
    assert server.received[2].body["chat_template_kwargs"] == thinking
    assert "chat_template_kwargs" not in server.received[3].body


def test_429_twice_then_success(server: ScriptedServer) -> None:
    def script(request: Received, count: int) -> Reply:
        if count <= 2:
            return Reply(status=429, headers={"Retry-After": "0"})
        return echo(request, count)

    server.script = script
    results = make_sampler(server).chat([ask("again")], SamplingParams(n=1), progress=False)
    assert len(server.received) == 3
    assert results[0][0].text == "re: again #0"


def test_retry_after_is_honoured(server: ScriptedServer) -> None:
    server.script = lambda request, count: (
        Reply(status=503, headers={"Retry-After": "0.3"}) if count == 1 else echo(request, count)
    )
    start = time.monotonic()
    make_sampler(server, backoff=0.0).chat([ask("wait")], SamplingParams(), progress=False)
    assert time.monotonic() - start >= 0.3
    assert len(server.received) == 2


def test_500_always_gives_up_after_all_attempts(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    # The body even echoes the key back, as a careless proxy might: it must still not leak.
    server.script = lambda request, count: Reply(status=500, body={"error": {"message": f"boom {SECRET}"}})
    sampler = make_sampler(server, api_key_env=KEY_ENV, max_retries=2)
    with pytest.raises(JudgeRequestError) as caught:
        sampler.chat([ask("x")], SamplingParams(), progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, OctrainError)
    assert len(server.received) == 3
    assert "500" in message and "3 attempts" in message
    assert server.base_url in message and "test-model" in message
    assert "\n" not in message
    assert SECRET not in message
    assert SECRET not in caplog.text and "retrying" in caplog.text
    assert SECRET not in repr(sampler) and SECRET not in sampler.name


def test_slow_server_times_out_with_retries(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(body=completion_body(["late"]), delay=1.0)
    sampler = make_sampler(server, timeout=0.2, max_retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(JudgeRequestError, match=r"timeout") as caught:
        sampler.chat([ask("slow")], SamplingParams(), progress=False)
    assert time.monotonic() - start < 3.0
    assert len(server.received) == 3
    assert "3 attempts" in str(caught.value)


def test_400_fails_at_once(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(status=400, body={"error": {"message": "unknown field 'n'"}})
    with pytest.raises(JudgeRequestError, match=r"HTTP 400: unknown field 'n'; not retried") as caught:
        make_sampler(server).chat([ask("bad")], SamplingParams(), progress=False)
    assert len(server.received) == 1
    assert "attempt 1 of 4" in str(caught.value)


def test_bearer_key_is_sent(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    make_sampler(server, api_key_env=KEY_ENV).chat([ask("auth")], SamplingParams(), progress=False)
    assert server.received[0].headers.get("Authorization") == f"Bearer {SECRET}"


def test_keyless_mode_sends_no_authorization(server: ScriptedServer) -> None:
    make_sampler(server, api_key_env="").chat([ask("open")], SamplingParams(), progress=False)
    assert "Authorization" not in server.received[0].headers


def test_results_keep_input_order_under_concurrency(server: ScriptedServer) -> None:
    count = 12

    def script(request: Received, _count: int) -> Reply:
        # Early conversations answer last, so completion order is the reverse of input order.
        index = int(request.body["messages"][-1]["content"].split()[-1])
        return Reply(body=completion_body([f"answer {index}"]), delay=0.02 * (count - index))

    server.script = script
    conversations = [ask(f"question {i}") for i in range(count)]
    results = make_sampler(server, max_concurrency=6).chat(conversations, SamplingParams(), progress=False)
    assert [row[0].text for row in results] == [f"answer {i}" for i in range(count)]
    assert 1 < server.max_in_flight <= 6


def test_top_up_when_server_ignores_n(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(body=completion_body([f"only one {count}"]))
    results = make_sampler(server).chat([ask("n please")], SamplingParams(n=3), seeds=[10], progress=False)
    assert [c.text for c in results[0]] == ["only one 1", "only one 2", "only one 3"]
    assert [r.body["n"] for r in server.received] == [3, 2, 1]
    assert [r.body["seed"] for r in server.received] == [10, 11, 12]


def test_connection_refused_is_retried_then_reported() -> None:
    # A port nothing listens on: bind one, note it, close it.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    sampler = OpenAIChatSampler(f"http://127.0.0.1:{port}/v1", "m", api_key_env="", max_retries=1, backoff=0.01)
    with pytest.raises(JudgeRequestError, match=r"2 attempts; last error: connection error"):
        sampler.chat([ask("anyone?")], SamplingParams(), progress=False)


def test_missing_key_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        OpenAIChatSampler("http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV)


def test_empty_batch_sends_nothing(server: ScriptedServer) -> None:
    assert make_sampler(server).chat([], SamplingParams(), progress=False) == []
    assert server.received == []


def model_list(*ids: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "test"} for i in ids]}


def test_list_models_sends_the_key_and_reads_the_ids(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = lambda request, count: Reply(body=model_list("test-model", "other"))
    assert make_sampler(server, api_key_env=KEY_ENV).list_models() == ["test-model", "other"]
    (request,) = server.received
    assert request.path == "/v1/models" and request.headers.get("Authorization") == f"Bearer {SECRET}"


@pytest.mark.parametrize("status", [404, 405, 501])
def test_list_models_is_none_when_the_server_keeps_no_list(server: ScriptedServer, status: int) -> None:
    server.script = lambda request, count: Reply(status=status)
    assert make_sampler(server).list_models() is None
    server.script = lambda request, count: Reply(body={"models": "not an OpenAI list"})
    assert make_sampler(server).list_models() is None


def test_list_models_rejected_key_is_one_attempt_and_says_so(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = lambda request, count: Reply(status=401, body={"error": {"message": f"bad key {SECRET}"}})
    with pytest.raises(JudgeRequestError) as caught:
        make_sampler(server, api_key_env=KEY_ENV).list_models()
    assert str(caught.value) == f"{server.base_url}/models: HTTP 401: bad key [redacted]"
    assert len(server.received) == 1


def test_list_models_gives_up_after_its_own_short_timeout(server: ScriptedServer) -> None:
    server.script = lambda request, count: Reply(body=model_list("test-model"), delay=2.0)
    start = time.monotonic()
    with pytest.raises(JudgeRequestError) as caught:
        make_sampler(server, timeout=30.0).list_models(timeout=0.2)
    assert time.monotonic() - start < 1.5
    assert str(caught.value) == f"{server.base_url}/models: timeout after 0.2s"
