"""One process per run directory: a second one stops with the holder's pid, leaving the first one's files
(its ``.hydra/`` record of the command line included) as they were; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli
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


HYDRA_RECORD = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")


def _held_run(args: list[str], hold_after: Path) -> subprocess.Popen[bytes]:
    """The CLI run of ``args``, started and followed until it holds its lock and stays in its pairs stage."""
    first = subprocess.Popen(
        [sys.executable, "-c", HELD, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OCTRAIN_TEST_HOLD_AFTER": str(hold_after)},
    )
    deadline = time.monotonic() + patience(120)
    while not hold_after.exists():
        assert first.poll() is None, "the first run ended before its pairs stage began"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return first


def test_second_process_stops_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    args = [*ARGS, f"run_root={tmp_path}"]
    run_dir = tmp_path / "pirate_tiny"
    hold_after = run_dir / "pairs" / "teacher" / "chunk-00001.jsonl"
    first = _held_run(args, hold_after)
    try:
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


def test_a_refused_process_leaves_the_running_ones_record_of_its_command_line(tmp_path: Path) -> None:
    args = [*ARGS, f"run_root={tmp_path}"]
    run_dir = tmp_path / "pirate_tiny"
    first = _held_run(args, run_dir / "pairs" / "teacher" / "chunk-00001.jsonl")
    try:
        recorded = {name: (run_dir / name).read_bytes() for name in HYDRA_RECORD}
        assert b"- pairs.chunk_size=4" in recorded[".hydra/overrides.yaml"]
        # The same run directory, another command line: refused by the lock.
        other = [arg for arg in args if not arg.startswith("pairs.chunk_size=")] + ["pairs.chunk_size=2", "seed=7"]
        second = run_cli(*other)
        assert second.returncode == 2, second.stderr
        assert f"run directory {run_dir} is in use by another octrain process (pid {first.pid})" in second.stderr
        assert {name: (run_dir / name).read_bytes() for name in HYDRA_RECORD} == recorded
        assert first.poll() is None
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()


def test_the_record_of_the_command_line_is_what_hydra_writes(tmp_path: Path) -> None:
    """octrain writes ``.hydra/`` itself (after the lock); Hydra, asked to, writes the same files."""
    quick = ["+recipe=pirate_tiny", "sampler=fake", "prompts.expansion_rounds=0", "stages=[prompts]"]
    ours = run_cli(*quick, f"run_root={tmp_path / 'ours'}")
    assert ours.returncode == 0, ours.stderr
    hydras = run_cli(*quick, f"run_root={tmp_path / 'hydras'}", "hydra.output_subdir=.hydra")
    assert hydras.returncode == 0, hydras.stderr
    for name in HYDRA_RECORD:
        written = (tmp_path / "ours" / "pirate_tiny" / name).read_text().replace(str(tmp_path / "ours"), "ROOT")
        expected = (tmp_path / "hydras" / "pirate_tiny" / name).read_text().replace(str(tmp_path / "hydras"), "ROOT")
        if name == ".hydra/hydra.yaml":  # the one difference: Hydra records the override that asked it to write
            expected = expected.replace("    - hydra.output_subdir=.hydra\n", "")
        assert written == expected, name


def test_lock_is_released_and_reported_in_process(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(os.getpid())
        # flock belongs to the open file, so a second open conflicts even in the same process.
        busy = rf"in use by another octrain process \(pid {os.getpid()}\)"
        with pytest.raises(StageError, match=busy), run_lock(tmp_path / "run"):
            pass
    with run_lock(tmp_path / "run"):  # released when the first block ended
        pass
