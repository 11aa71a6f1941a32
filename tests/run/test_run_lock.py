"""One process per run directory: a second one stops with the holder's pid; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from octrain.core.errors import StageError
from octrain.core.layout import LOCK_FILE
from octrain.run.lock import run_lock

ARGS = [
    "+recipe=pirate_tiny",
    "sampler=fake",
    "prompts.expansion_rounds=0",
    "scale.prompts_per_trait=1",
    "stages=[prompts,pairs]",
    "pairs.chunk_size=4",
]
# Run as ``python -c HELD ARGS``: octrain's CLI, its fake sampler stopped for good once the file
# named by OCTRAIN_TEST_HOLD_AFTER exists, so that the second process surely meets a live holder.
HELD = """
import os, sys, time
from octrain.samplers.fake import FakeSampler

original = FakeSampler.chat

def held(self, *args, **kwargs):
    if os.path.exists(os.environ["OCTRAIN_TEST_HOLD_AFTER"]):
        time.sleep(600)
    return original(self, *args, **kwargs)

FakeSampler.chat = held
from octrain.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_second_process_stops_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    args = [*ARGS, f"run_root={tmp_path}"]
    run_dir = tmp_path / "pirate_tiny"
    hold_after = run_dir / "pairs" / "teacher" / "chunk-00001.jsonl"
    first = subprocess.Popen(
        [sys.executable, "-c", HELD, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OCTRAIN_TEST_HOLD_AFTER": str(hold_after)},
    )
    try:
        deadline = time.monotonic() + 120
        while not hold_after.exists():
            assert first.poll() is None, "the first run ended before its pairs stage began"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli(*args)
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("octrain: error:")]
        assert errors == [
            f"octrain: error: run directory {run_dir} is in use by another octrain process (pid {first.pid}): "
            "wait for it to end, or stop it, and run again"
        ]
        assert first.poll() is None  # the second process left the first one's work alone
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()

    # Killed: the kernel dropped its lock; its pid is still in the file, and the next run takes over.
    assert (run_dir / LOCK_FILE).read_text().strip() == str(first.pid)
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"run {run_dir}: taking over the lock left by pid {first.pid}, which has ended" in rerun.stderr
    assert "pairs: resuming an interrupted run" in rerun.stderr
    assert "resuming: 2 of 4 chunks" in rerun.stderr


def test_lock_is_released_and_reported_in_process(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(os.getpid())
        # flock belongs to the open file, so a second open conflicts even in the same process.
        busy = rf"in use by another octrain process \(pid {os.getpid()}\)"
        with pytest.raises(StageError, match=busy), run_lock(tmp_path / "run"):
            pass
    with run_lock(tmp_path / "run"):  # released when the first block ended
        pass
