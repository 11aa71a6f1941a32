"""octrain's transformers-backend server: request checks, the context cap, streams, sampling, disconnects.

One real server for the module: the tiny offline model's own folder (a base model, no adapter),
loaded into transformers' continuous-batching engine and served by Uvicorn on 127.0.0.1 in a
thread, queried over real HTTP. The engine is in this process, so a test can see whether a
request is still in it after its client has gone.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import patience

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")

from octrain.use.serving_engine import BatchingEngine
from octrain.use.serving_gateway import build_app
from octrain.use.serving_requests import RequestError, Sampling, completion_budget, parse_chat_request

NAME = "tiny-base"
CONTEXT = 4096
HI = [{"role": "user", "content": "Ahoy?"}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tiny_model_path: str) -> Iterator[tuple[str, BatchingEngine]]:
    import uvicorn

    engine = BatchingEngine(Path(tiny_model_path), device="cpu")
    app = build_app(engine, name=NAME, context=CONTEXT, template_kwargs={})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + patience(60)
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=patience(30))
        engine.stop()


def post(url: str, body: object) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=patience(120)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def chat(base: str, **fields: object) -> tuple[int, dict]:
    status, raw = post(f"{base}/v1/chat/completions", {"model": NAME, "messages": HI, **fields})
    return status, json.loads(raw)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": NAME}, 400, "messages"),
        ({"model": NAME, "messages": "Ahoy?"}, 400, "messages"),
        ({"model": NAME, "messages": []}, 400, "messages"),
        ({"model": NAME, "messages": [{"role": "pirate", "content": "Ahoy?"}]}, 400, "messages[0].role"),
        ({"model": NAME, "messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
        ({"model": NAME, "messages": HI, "max_tokens": -5}, 400, "max_tokens"),
        ({"model": NAME, "messages": HI, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": NAME, "messages": HI, "max_tokens": 2.5}, 400, "max_tokens"),
        ({"model": NAME, "messages": HI, "max_tokens": "10"}, 400, "max_tokens"),
        ({"model": NAME, "messages": HI, "temperature": -0.1}, 400, "temperature"),
        ({"model": NAME, "messages": HI, "temperature": "hot"}, 400, "temperature"),
        ({"model": NAME, "messages": HI, "top_p": 0}, 400, "top_p"),
        ({"model": NAME, "messages": HI, "seed": "seven"}, 400, "seed"),
        ({"model": NAME, "messages": HI, "n": 0}, 400, "n"),
        ({"model": NAME, "messages": HI, "stop": ["\n"]}, 400, "stop"),
        ({"model": "someone-else", "messages": HI}, 404, "model"),
        (["not", "an", "object"], 400, None),
    ],
)
def test_malformed_requests_get_4xx_in_openais_error_shape(
    gateway: tuple[str, BatchingEngine], body: object, status: int, param: str | None
) -> None:
    base, _ = gateway
    got, raw = post(f"{base}/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert got == status, error
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]


def test_a_body_that_is_not_json_is_a_400(gateway: tuple[str, BatchingEngine]) -> None:
    base, _ = gateway
    status, raw = post(f"{base}/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(raw)["error"]["message"]


def test_max_tokens_past_the_context_is_a_400_that_gives_the_numbers(gateway: tuple[str, BatchingEngine]) -> None:
    base, _ = gateway
    status, reply = chat(base, max_tokens=10**9)
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert f"maximum context length is {CONTEXT} tokens" in reply["error"]["message"]
    # Just inside the context is fine: the prompt's length is what the server counted.
    prompt_tokens = chat(base, max_tokens=1)[1]["usage"]["prompt_tokens"]
    status, reply = chat(base, max_tokens=CONTEXT - prompt_tokens + 1)
    assert status == 400, reply


def test_without_max_tokens_an_answer_gets_the_rest_of_the_context(gateway: tuple[str, BatchingEngine]) -> None:
    base, _ = gateway
    # A prompt that leaves 12 tokens of context: the answer may take those, and no more.
    filler = "a " * 4000
    status, probe = chat(base, messages=[{"role": "user", "content": filler}], max_tokens=1)
    assert status == 200, probe
    words = 4000 - (probe["usage"]["prompt_tokens"] + 12 - CONTEXT)
    status, reply = chat(base, messages=[{"role": "user", "content": "a " * words}], temperature=0)
    assert status == 200, reply
    usage = reply["usage"]
    assert usage["prompt_tokens"] == CONTEXT - 12
    assert 1 <= usage["completion_tokens"] <= 12
    assert (usage["completion_tokens"] == 12) == (reply["choices"][0]["finish_reason"] == "length")
    # A prompt that fills the context alone leaves nothing to answer with.
    status, reply = chat(base, messages=[{"role": "user", "content": "a " * (words + 20)}])
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"


def test_streams_end_with_done_after_the_finish_reason(gateway: tuple[str, BatchingEngine]) -> None:
    base, _ = gateway
    status, raw = post(
        f"{base}/v1/chat/completions",
        {"model": NAME, "messages": HI, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = [event for event in raw.decode().split("\n\n") if event]
    assert status == 200 and events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]].count("length") == 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    # A greedy stream says what the same request says without streaming.
    status, raw = post(
        f"{base}/v1/chat/completions",
        {"model": NAME, "messages": HI, "max_tokens": 8, "stream": True, "temperature": 0},
    )
    deltas = [json.loads(e.removeprefix("data: ")) for e in raw.decode().split("\n\n") if e.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in deltas)
    assert streamed == chat(base, max_tokens=8, temperature=0)[1]["choices"][0]["message"]["content"]


def test_a_base_model_samples_per_request_and_its_folder_is_left_alone(
    gateway: tuple[str, BatchingEngine], tiny_model_path: str
) -> None:
    base, _ = gateway
    # The tiny model's own generation config does not ask to sample: the bug was greedy answers at
    # any temperature for a base model served as it is.
    config = json.loads((Path(tiny_model_path) / "generation_config.json").read_text())
    assert "do_sample" not in config

    def text(**settings: object) -> str:
        status, reply = chat(base, max_tokens=12, **settings)
        assert status == 200, reply
        return reply["choices"][0]["message"]["content"]

    hot = [text(temperature=1.5, seed=seed) for seed in (1, 2, 3, 4)]
    assert len(set(hot)) >= 3, hot
    assert len({text(temperature=0, seed=seed) for seed in (1, 2, 3)}) == 1
    assert [text(temperature=1.5, seed=seed) for seed in (1, 2)] == hot[:2]
    # n choices at one seed are as distinct as separate requests, and each seeded the same way again.
    status, reply = chat(base, max_tokens=12, temperature=1.5, seed=1, n=3)
    assert status == 200 and [c["message"]["content"] for c in reply["choices"]] == hot[:3]
    assert json.loads((Path(tiny_model_path) / "generation_config.json").read_text()) == config


def test_a_seed_gives_the_same_answer_whatever_else_is_in_the_batch(gateway: tuple[str, BatchingEngine]) -> None:
    base, _ = gateway
    alone = chat(base, max_tokens=16, temperature=1.0, seed=11)[1]["choices"][0]["message"]["content"]
    answers: dict[int, str] = {}

    def ask(seed: int) -> None:
        answers[seed] = chat(base, max_tokens=16, temperature=1.0, seed=seed)[1]["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (11, 12, 13, 14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=patience(120))
    assert answers[11] == alone


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_stops_generating_when_its_client_goes(gateway: tuple[str, BatchingEngine], stream: bool) -> None:
    base, engine = gateway
    assert wait_until(lambda: engine.running() == 0, 60)
    cancelled = engine.cancelled
    port = int(base.rsplit(":", 1)[1])
    # 4,000 tokens: far longer than the test waits, so an empty engine means it was cancelled.
    # Greedy, so the answer is the same every time: a sampled one could end early at a random end-of-turn.
    body = json.dumps({"model": NAME, "messages": HI, "max_tokens": 4000, "stream": stream, "temperature": 0})
    body = body.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=patience(30)) as client:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        client.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert wait_until(lambda: engine.running() == 1, 30), "the request never reached the engine"
        if stream:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")  # the stream has begun
    assert wait_until(lambda: engine.running() == 0, 30), "the request kept generating after its client left"
    assert engine.cancelled == cancelled + 1
    # The server carries on.
    assert chat(base, max_tokens=3)[0] == 200


def test_request_checks_without_a_server() -> None:
    defaults = Sampling(temperature=0.7, top_p=0.9, top_k=0, seed=None)
    parsed = parse_chat_request({"messages": HI}, served=NAME, defaults=defaults)  # no model: the one served
    assert parsed.sampling == defaults and parsed.max_tokens is None and parsed.n == 1
    newer = parse_chat_request(
        {"model": NAME, "messages": HI, "max_tokens": 9, "max_completion_tokens": 4, "temperature": 0},
        served=NAME,
        defaults=defaults,
    )
    assert newer.max_tokens == 4 and newer.sampling.temperature == 0.0
    # Parts of text are joined; an assistant turn with no content is an empty one.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Ah"}, {"type": "text", "text": "oy"}]}]
    assert parse_chat_request(
        {"messages": [*parts, {"role": "assistant", "content": None}]}, served=NAME, defaults=defaults
    ).messages == [
        {"role": "user", "content": "Ahoy"},
        {"role": "assistant", "content": ""},
    ]
    # Clients that always send the neutral value of an unsupported parameter still get through.
    assert parse_chat_request(
        {"messages": HI, "stop": None, "logprobs": False, "presence_penalty": 0}, served=NAME, defaults=defaults
    )
    assert completion_budget(100, None, 4096) == 3996
    assert completion_budget(100, 3996, 4096) == 3996
    with pytest.raises(RequestError) as refused:
        completion_budget(100, 3997, 4096)
    assert (
        refused.value.code == "context_length_exceeded" and "4097 tokens (100 in the messages" in refused.value.message
    )
