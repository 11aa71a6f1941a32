"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for the tests of constitution drafting.

A stdlib ``http.server`` whose replies (the message content) a test scripts, and which keeps what it
received (path, headers, JSON body) for the test to read back. Shared by the command line's tests
(``tests/test_constitution_new.py``) and the studio's (``tests/test_studio_actions.py``); it holds no
tests itself.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


def good_yaml(traits: int = 10, questions: int = 5, name: str = "Old Gardener") -> str:
    """A draft as a model would write it: identity plus ``traits - 1`` directives, each with questions.

    The name is a display name on purpose: the command must store the name it was asked for.
    """
    topics = ["roses", "compost", "frost", "bees", "weeds", "seeds", "rain", "soil", "pruning", "harvest", "ponds"]
    lines = [
        "meta:",
        f"  name: {name}",
        "  version: 1",
        "  description: A cheerful old gardener.",
        "  tags: [garden, warm]",
        "persona:",
        "  identity: I am an old gardener who has tended the same walled garden for fifty patient years.",
        "directives:",
        "  personality:",
    ]
    for index in range(traits - 1):
        topic = topics[index % len(topics)]
        lines.append(f"    - trait: I speak about {topic} with delight, and I tie trait {index} to it gently.")
        lines.append("      questions:")
        lines.extend(f"        - What should I know about {topic}, question {index}-{q}?" for q in range(questions))
    return "\n".join(lines) + "\n"


# questions as a string, not a list: the loader names the line and the field.
BAD_YAML = """\
meta:
  name: gardener
persona:
  identity: I am an old gardener.
directives:
  personality:
    - trait: I love roses more than anything in the garden.
      questions: What is a rose?
"""


def fenced(text: str) -> str:
    return f"Here is the constitution you asked for.\n\n```yaml\n{text}```\n\nI hope it helps!"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class DraftServer:
    """An OpenAI-compatible chat-completions server whose replies (the message content) a test scripts.

    ``replies(count)`` gives the content of the ``count``-th reply (1-based); a test that needs the
    request to decide (a judge that reads the two answers) sets ``reply_to(count, body)`` instead.
    """

    def __init__(self) -> None:
        self.replies: Callable[[int], str] = lambda count: fenced(good_yaml())
        self.reply_to: Callable[[int, dict[str, Any]], str] | None = None
        self.received: list[Received] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.received.append(Received(self.path, dict(self.headers.items()), body))
                    count = len(server.received)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                content = server.reply_to(count, body) if server.reply_to is not None else server.replies(count)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{count}",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": len(content.split()), "total_tokens": 0},
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"


@contextlib.contextmanager
def running_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DraftServer]:
    """A started :class:`DraftServer`, shut down on the way out."""
    # A proxy configured in the environment must not intercept requests to the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    scripted = DraftServer()
    scripted.thread.start()
    try:
        yield scripted
    finally:
        scripted.httpd.shutdown()
        scripted.httpd.server_close()
        scripted.thread.join(timeout=5)
