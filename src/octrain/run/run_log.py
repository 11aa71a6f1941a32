"""The run's log file: every ``octrain`` logger's lines, for as long as the run holds its directory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RunLogHandler(logging.FileHandler):
    """The run's log file. When it cannot be written (a full disk) it drops the line quietly: the
    logging module would print a traceback for each one, burying the single error line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def run_log(log_file: Path) -> Iterator[None]:
    """Append the lines of the ``octrain`` loggers to ``log_file`` until the block ends."""
    handler = _RunLogHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package_logger = logging.getLogger("octrain")
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        handler.close()
