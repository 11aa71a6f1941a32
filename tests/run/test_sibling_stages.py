"""Sibling runs started at once (the jobs of a local_gpus sweep) make a shared stage once, not in parallel.

Two real ``python -m octrain`` processes, side by side under one run root, with settings that
differ only downstream of pairs (``dpo.beta``). Job A is held inside its pairs stage until job B
says it is waiting for it; B then copies A's pairs instead of sampling its own. A claim whose
holder dies is taken over by the next job, which makes the stage itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, patience
from octrain.run.stage_share import claim_path, stage_claim

ARGS = ["+recipe=pirate_tiny", "sampler=fake", "stages=[prompts,pairs]", "prompts.expansion_rounds=0"]

# ``python -c HELD ARGS``: octrain's CLI with the pairs stage held at its start (before any sampling)
# until the file OCTRAIN_TEST_RELEASE exists; OCTRAIN_TEST_MAKING says it got there.
HELD = """
import os, sys, time
from pathlib import Path
import octrain.stages.pairs as pairs

original = pairs.generate_in_chunks

def held(*args, **kwargs):
    Path(os.environ["OCTRAIN_TEST_MAKING"]).write_text("making pairs")
    while not Path(os.environ["OCTRAIN_TEST_RELEASE"]).exists():
        time.sleep(0.05)
    return original(*args, **kwargs)

pairs.generate_in_chunks = held
from octrain.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 240) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + patience(timeout)
    while not condition():
        assert process.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:  # type: ignore[type-arg]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"), env={**os.environ, **env}
    )


def test_a_sibling_job_waits_for_the_pairs_another_job_is_making_and_reuses_them(tmp_path: Path) -> None:
    making, release = tmp_path / "making", tmp_path / "release"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = start(
        [sys.executable, "-c", HELD, *ARGS, f"run_root={tmp_path}", "name=job-a", "dpo.beta=0.1"],
        a_log,
        OCTRAIN_TEST_MAKING=str(making),
        OCTRAIN_TEST_RELEASE=str(release),
    )
    b = None
    try:
        wait_for(making.exists, "pairs stage in job A", a)
        b = start([sys.executable, "-m", "octrain", *ARGS, f"run_root={tmp_path}", "name=job-b", "dpo.beta=0.2"], b_log)
        wait_for(lambda: "is making it with the same settings" in b_log.read_text(), "wait in job B", b)
        assert b.poll() is None  # B waits while A holds the pairs
        release.touch()
        assert a.wait(timeout=patience(240)) == 0, a_log.read_text()[-3000:]
        assert b.wait(timeout=patience(240)) == 0, b_log.read_text()[-3000:]
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    b_text = b_log.read_text()
    job_a, job_b = tmp_path / "job-a", tmp_path / "job-b"
    assert f"pairs: {job_a} (pid {a.pid}) is making it with the same settings and inputs: waiting" in b_text
    assert f"pairs: same settings and inputs as {job_a / 'pairs'}: reusing its output" in b_text
    assert "pairs: running" not in b_text and "teacher answers" not in b_text  # B sampled nothing itself
    assert "prompts: same settings and inputs as" in b_text  # made by A before B started: copied at once
    for name in ("pairs.jsonl", "report.json"):
        assert (job_b / "pairs" / name).read_bytes() == (job_a / "pairs" / name).read_bytes()
    done_a, done_b = (json.loads((job / "pairs" / "done.json").read_text()) for job in (job_a, job_b))
    assert done_a["fingerprint"] == done_b["fingerprint"]
    assert "reused" in (job_b / "summary.txt").read_text().splitlines()[3]  # the pairs line
    assert not list(tmp_path.glob(".*.making"))  # the claim goes with its holder


def test_a_claim_whose_holder_was_killed_is_taken_over(tmp_path: Path) -> None:
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    # A holder in another process, killed while making the stage: the kernel lets go of its lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom octrain.run.stage_share import stage_claim\n"
            "with stage_claim(Path(sys.argv[1]), 'pairs', 'f' * 64):\n"
            "    Path(sys.argv[2]).touch()\n    time.sleep(600)\n",
            str(run_a),
            str(tmp_path / "holding"),
        ],
        cwd=REPO,
    )
    try:
        wait_for((tmp_path / "holding").exists, "claim by the holder", holder)
        with stage_claim(run_b, "pairs", "f" * 64, wait=False) as claim:
            assert claim.path is None  # held by a live process: a forced stage does not wait for it
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.wait()
    assert claim_path(run_b, "pairs", "f" * 64).exists()  # a kill -9 leaves the file, not the lock
    with stage_claim(run_b, "pairs", "f" * 64) as claim:
        assert claim.path == claim_path(run_b, "pairs", "f" * 64) and claim.waited_for is None
        assert claim.path.read_text().startswith(f"{run_b} (pid {os.getpid()})")
    assert not claim_path(run_b, "pairs", "f" * 64).exists()
