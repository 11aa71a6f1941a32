"""``octrain serve`` under load (slow lane): a runaway request does not hold the others back.

A real server process on 127.0.0.1 (the transformers backend on the tiny offline model), one
client streaming an answer with no ``max_tokens`` (the rest of a 4,096-token context: minutes of
work) and eight clients asking short questions at once. The facts checked are of order and
completion, never of speed: every short request is answered while the runaway one still
streams, and the server answers again once the runaway's client has gone (that the engine then
drops the request is checked in test_serve_gateway.py, where the engine can be seen).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import patience

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
pytestmark = pytest.mark.slow

NAME = "tiny-load"
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ask(base: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=patience(300)) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_short_requests_are_answered_while_a_runaway_one_streams(tiny_model_path: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in finally
    command = [sys.executable, "-m", "octrain.use.serving_gateway", tiny_model_path, "--name", NAME]
    command += ["--port", str(port), "--device", "cpu", "--context", "4096"]
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + patience(240)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.25)
        hi = [{"role": "user", "content": "Ahoy?"}]
        # What stalled the old server outright is refused at once.
        status, reply = ask(base, {"model": NAME, "messages": hi, "max_tokens": 10**9})
        assert status == 400 and reply["error"]["code"] == "context_length_exceeded"

        # The runaway: no max_tokens, streamed, read on its own thread until told to stop.
        runaway = socket.create_connection(("127.0.0.1", port), timeout=patience(300))
        body = json.dumps({"model": NAME, "messages": hi, "stream": True, "temperature": 1.0}).encode()
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        runaway.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = bytearray()
        first_tokens = threading.Event()
        stop_reading = threading.Event()

        def read_runaway() -> None:
            while not stop_reading.is_set():
                try:
                    data = runaway.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                received.extend(data)
                if received.count(b'"content"') >= 3:
                    first_tokens.set()

        reader = threading.Thread(target=read_runaway, daemon=True)
        reader.start()
        assert first_tokens.wait(patience(120)), "the runaway request never started streaming"

        def short(index: int) -> tuple[int, dict]:
            return ask(base, {"model": NAME, "messages": hi, "max_tokens": 8, "seed": index})

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(short, range(CLIENTS)))
        assert [status for status, _ in answers] == [200] * CLIENTS, answers
        assert all(reply["usage"]["completion_tokens"] <= 8 for _, reply in answers)
        # Every short answer came back while the runaway one was still generating.
        assert b"[DONE]" not in received and b'"finish_reason": "length"' not in received

        # Its client goes; the server lets go of it and carries on.
        stop_reading.set()
        runaway.close()
        reader.join(timeout=patience(30))
        with ThreadPoolExecutor(CLIENTS) as pool:
            again = list(pool.map(short, range(CLIENTS)))
        assert [status for status, _ in again] == [200] * CLIENTS
        server_log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in server_log, server_log
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=patience(30))
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
        log.close()
