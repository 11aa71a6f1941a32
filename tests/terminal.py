"""A real terminal for the chat tests: ``python -m octrain ARGS`` in a pseudo-terminal, typed into and read."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

from conftest import REPO, patience


class Terminal:
    """``python -m octrain ARGS`` in a pseudo-terminal: type into it, read its screen."""

    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the program, with the pty as its terminal
            os.chdir(REPO)
            os.execvpe(sys.executable, [sys.executable, "-m", "octrain", *args], {**os.environ, "TERM": "dumb"})
        self.screen = b""

    def read(self, timeout: float = 0.2) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the program ended and closed the terminal
            return False
        self.screen += data
        return bool(data)

    def wait_for(self, text: str, *, start: int = 0, timeout: float = 120) -> int:
        """Read until ``text`` is on the screen after byte ``start``; where it begins."""
        needle = text.encode()
        deadline = time.monotonic() + patience(timeout)
        while (where := self.screen.find(needle, start)) < 0:
            assert time.monotonic() < deadline, f"{text!r} never appeared; screen ends {self.screen[-800:]!r}"
            self.read()
        return where

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def command(self, line: str, expect: str) -> None:
        """Type ``line`` at the prompt and wait for ``expect`` and the next prompt."""
        start = len(self.screen)
        self.type(line + "\r")
        where = self.wait_for(expect, start=start)
        self.wait_for("you> ", start=where)

    def text(self) -> str:
        return self.screen.decode("utf-8", errors="replace").replace("\r\n", "\n")

    def exit_status(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self.read(0.1):  # whatever it wrote last
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self.read()
        os.kill(self.pid, 9)
        raise AssertionError(f"the chat did not exit; screen ends {self.screen[-800:]!r}")
