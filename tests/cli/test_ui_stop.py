"""``octrain ui`` stops its Streamlit server when it is stopped: SIGTERM (or SIGHUP, or Ctrl-C) to
octrain leaves no server answering on the port and no process of it behind.

A real ``octrain ui`` on a free port, in a working directory of its own; Linux only (the processes
are read from ``/proc``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, patience

pytest.importorskip("streamlit")
pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads processes from /proc (Linux)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    """Whether anything accepts a connection on the port (the server, at any stage of its life)."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    """Every process started under ``pid``, its children's children included."""
    found: set[int] = set()
    waiting = [pid]
    while waiting:
        parent = waiting.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(child) for child in (task / "children").read_text().split()}
            except OSError:  # the task ended meanwhile
                continue
            waiting.extend(children - found)
            found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def _wait(what: str, check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + patience(seconds)
    while not check():
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f}s waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "signum",
    [
        pytest.param(signal.SIGTERM, id="SIGTERM"),
        # The same path for the other two; Streamlit's start (a few seconds each) puts them in the slow lane.
        pytest.param(signal.SIGHUP, id="SIGHUP", marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow),
    ],
)
def test_stopping_octrain_ui_stops_its_streamlit_server(tmp_path: Path, signum: signal.Signals) -> None:
    port = _free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as output:
        ui = subprocess.Popen(
            [sys.executable, "-m", "octrain", "ui", "--port", str(port), "--run-root", str(tmp_path / "runs")],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
    started: set[int] = set()
    try:
        _wait("the studio's health check", lambda: ui.poll() is not None or _healthy(port), 90)
        assert ui.poll() is None, log.read_text(errors="replace")[-3000:]
        started = _descendants(ui.pid)
        assert started, "octrain ui started no server process"
        ui.send_signal(signum)
        assert ui.wait(timeout=patience(30)) == 0, log.read_text(errors="replace")[-3000:]
        _wait("the port to stop answering", lambda: not _answers(port), 20)
        _wait("the server's processes to end", lambda: not any(_alive(pid) for pid in started), 20)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
        for pid in started:  # whatever a failed test left, so that it does not outlive the test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
