"""Broken files, unwritable places and a full disk: one line of error, exit status 2, and a rerun that goes on.

Every fault goes through the real command line, because the promise is about what a user sees:
exactly one ``octrain: error:`` line, no traceback. The tests that need a read-only or a full
file system mount a small tmpfs, so they run only where that is allowed (as root on Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

# The fake sampler answers at once: these tests are about the pipeline's handling of faults.
FAST = ["+recipe=pirate_tiny", "sampler=fake", "prompts.expansion_rounds=0", "scale.prompts_per_trait=1"]
BINARY = bytes(range(128, 256)) * 8  # no newline, and not UTF-8 from its first byte (0x80)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("octrain: error:")]


def assert_one_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [f"octrain: error: {message}"], result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "key", "detail"),
    [
        ("generic.txt", "prompts.generic_source", "not UTF-8 text (byte 0x80) (prompts.generic_source)"),
        ("generic.jsonl", "prompts.generic_source", "not UTF-8 text (byte 0x80); expected one JSON object a line"),
        (
            "reflections.txt",
            "introspect.reflection_prompts",
            "not UTF-8 text (byte 0x80) (introspect.reflection_prompts)",
        ),
    ],
)
def test_binary_input_file_is_one_line(tmp_path: Path, name: str, key: str, detail: str) -> None:
    source = tmp_path / name
    source.write_bytes(BINARY)
    stages = "stages=[introspect]" if key.startswith("introspect") else "stages=[prompts]"
    broken = run_cli(*FAST, stages, f"{key}={source}", f"run_root={tmp_path / 'runs'}")
    assert_one_error(broken, f"{source}:1: {detail}")
    assert not list((tmp_path / "runs").glob("*/*/started.json"))  # checked before any stage began

    if key.startswith("prompts"):  # fixed, the same command runs
        source.write_text('{"prompt": "What time is it?"}\n' if name.endswith(".jsonl") else "What time is it?\n")
        fixed = run_cli(*FAST, stages, f"{key}={source}", f"run_root={tmp_path / 'runs'}")
        assert fixed.returncode == 0, fixed.stderr


def test_binary_pairs_file_is_one_line_and_the_rerun_trains(tmp_path: Path) -> None:
    args = [*FAST, f"run_root={tmp_path}"]
    assert run_cli(*args, "stages=[prompts,pairs]").returncode == 0
    pairs = tmp_path / "pirate_tiny" / "pairs" / "pairs.jsonl"
    good = pairs.read_bytes()
    pairs.write_bytes(good.splitlines(keepends=True)[0] + BINARY)
    broken = run_cli(*args, "stages=[dpo]")
    assert_one_error(broken, f"{pairs}:2: not UTF-8 text (byte 0x80); expected one JSON object a line")
    pairs.write_bytes(good)
    fixed = run_cli(*args, "stages=[dpo]")
    assert fixed.returncode == 0, fixed.stderr
    assert "dpo: resuming an interrupted run" in fixed.stderr


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"[]\n", "a JSON list, not an object"),
        (BINARY, "unreadable (UnicodeDecodeError)"),
        (b'{"fingerprint": "0123456789abcdef"}\n', "without a summary"),
        (b'{"fingerprint": ', "unreadable (JSONDecodeError)"),
    ],
)
def test_damaged_done_marker_means_not_finished(tmp_path: Path, content: bytes, why: str) -> None:
    args = [*FAST, f"run_root={tmp_path}", "stages=[prompts]"]
    assert run_cli(*args).returncode == 0
    done = tmp_path / "pirate_tiny" / "prompts" / "done.json"
    done.write_bytes(content)
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"prompts: {done} is {why}: treating the stage as not finished" in rerun.stderr
    assert "prompts: resuming an interrupted run" in rerun.stderr
    assert json.loads(done.read_text())["summary"]  # finished again, with a good marker


def test_damaged_started_marker_starts_the_stage_afresh(tmp_path: Path) -> None:
    args = [*FAST, f"run_root={tmp_path}", "stages=[prompts,pairs]"]
    assert run_cli(*args).returncode == 0
    stage = tmp_path / "pirate_tiny" / "pairs"
    (stage / "done.json").unlink()
    (stage / "started.json").write_bytes(BINARY)
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert (
        f"pairs: {stage / 'started.json'} is unreadable (UnicodeDecodeError), so its partial work cannot be trusted: "
        f"clearing {stage} and running it afresh"
    ) in rerun.stderr


def test_stray_temporaries_of_a_kill_are_removed(tmp_path: Path) -> None:
    args = [*FAST, f"run_root={tmp_path}", "stages=[prompts,pairs]"]
    assert run_cli(*args).returncode == 0
    run_dir = tmp_path / "pirate_tiny"
    (run_dir / "pairs" / "done.json").unlink()  # killed before the stage finished...
    files = [
        run_dir / ".config.yaml.k3j_9a2b.tmp",  # ...while writing a file (write_text_atomic)
        run_dir / "pairs" / "teacher" / ".chunk-00000.jsonl.2mv0zz_c.tmp",
    ]
    folders = [
        run_dir / ".pairs.x81kd0q.tmp",  # ...while copying a reused stage into place (atomic_directory)
        run_dir / "pairs" / ".adapter.abc123.old",  # ...while retiring the previous adapter
    ]
    for path in files:
        path.write_text("half")
    for path in folders:
        (path / "previous").mkdir(parents=True)
    strays = files + folders
    keep = run_dir / "pairs" / ".notes"  # a hidden file octrain did not write stays
    keep.write_text("mine")
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert not any(stray.exists() for stray in strays), rerun.stderr
    assert keep.exists()
    assert f"removed {strays[0]}, left by an interrupted run" in rerun.stderr
    assert f"pairs: removed {files[1]}, left by the interrupted run" in rerun.stderr


def test_force_checks_inputs_before_clearing(tmp_path: Path) -> None:
    args = [*FAST, f"run_root={tmp_path}"]
    assert run_cli(*args, "stages=[prompts,pairs]").returncode == 0
    run_dir = tmp_path / "pirate_tiny"
    (run_dir / "prompts" / "done.json").unlink()
    before = (run_dir / "pairs" / "pairs.jsonl").read_bytes()
    forced = run_cli(*args, "stages=[pairs]", "force=[pairs]")
    assert_one_error(
        forced,
        f"stage pairs needs the current output of stage prompts, which is missing or out of date in {run_dir}: "
        "add it to stages (stages=[prompts,pairs])",
    )
    assert (run_dir / "pairs" / "pairs.jsonl").read_bytes() == before  # the last good output is still there
    assert (run_dir / "pairs" / "done.json").exists()


# --- file systems that cannot be written ----------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` for the block; the test is skipped where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def test_read_only_run_root_and_run_directory(tmp_path: Path) -> None:
    args = [*FAST, "stages=[prompts]"]
    with tmpfs(tmp_path / "root", "size=4m,ro") as root:
        assert_one_error(
            run_cli(*args, f"run_root={root}"), f"cannot write {root / 'pirate_tiny'}: read-only file system"
        )
        remount(root, "rw")
        assert run_cli(*args, f"run_root={root}").returncode == 0
        # The run directory itself read-only (its stage finished, so only octrain's own writes remain):
        # the lock is the first of them (Hydra's .hydra/ record is written only under it).
        remount(root, "ro")
        again = run_cli(*args, f"run_root={root}", "force=[prompts]")
        assert_one_error(again, f"cannot write {root / 'pirate_tiny' / '.lock'}: read-only file system")


def test_read_only_run_directory_through_the_api(tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.core.errors import OctrainError
    from octrain.run.pipeline import run

    config = compose_config("pirate_tiny", ["sampler=fake", "prompts.expansion_rounds=0", "stages=[prompts]"])
    with tmpfs(tmp_path / "run", "size=4m,ro") as run_dir:
        with pytest.raises(OctrainError) as raised:
            run(config, run_dir)
        assert str(raised.value) == f"cannot write {run_dir / '.lock'}: read-only file system"
        remount(run_dir, "rw")
        assert [o.status for o in run(config, run_dir).outcomes] == ["ran"]


@pytest.mark.slow  # a full DPO run on a full disk and its rerun (~20 s); the other faults stay in the default suite
def test_full_disk_in_dpo_is_one_line_and_the_rerun_recovers(tmp_path: Path) -> None:
    args = [*FAST, "stages=[prompts,pairs,dpo]", "trainer.trl.save_steps=1"]
    # 1 MiB holds the pairs and the first adapter weights (0.6 MB), not the optimizer state after them.
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        full = run_cli(*args, f"run_root={disk}")
        run_dir = disk / "pirate_tiny"
        assert_one_error(
            full, f"no space left on device writing {run_dir / 'dpo'}: free some space and run the same command again"
        )
        assert (run_dir / "dpo" / "checkpoints" / "checkpoint-1").is_dir()  # half-written
        remount(disk, "size=32m")  # space freed
        rerun = run_cli(*args, f"run_root={disk}")
        assert rerun.returncode == 0, rerun.stderr
        assert f"{run_dir / 'dpo' / 'checkpoints' / 'checkpoint-1'} is incomplete" in rerun.stderr
        assert json.loads((run_dir / "dpo" / "done.json").read_text())["summary"]["steps"] == 2


def test_write_failures_are_worded_by_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from octrain.core import storage_errors
    from octrain.core.storage_errors import StorageError, describe_write_failure, write_failures_reported

    full = f"no space left on device writing {tmp_path / 'x'}: free some space and run the same command again"
    assert (
        describe_write_failure(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")), tmp_path) == full
    )
    assert describe_write_failure(OSError(errno.EACCES, "Permission denied", "/etc/x"), tmp_path) == (
        "/etc/x: permission denied"
    )
    # safetensors words it without an errno; torch's zip writer without either, so the free space decides.
    wrapped = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert describe_write_failure(wrapped, tmp_path / "x") == full
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 518")
    assert describe_write_failure(torch_full, tmp_path / "x") is None  # this disk has room: another fault
    monkeypatch.setattr(storage_errors, "_free_bytes", lambda _path: 4096)
    assert describe_write_failure(torch_full, tmp_path / "x") == full
    assert describe_write_failure(ValueError("bad value"), tmp_path) is None

    with pytest.raises(StorageError, match=r"^no space left"), write_failures_reported(tmp_path / "x"):
        raise torch_full
    with pytest.raises(KeyError), write_failures_reported(tmp_path):  # a bug keeps its traceback
        raise KeyError("k")
