"""The checkpoint registry: concurrent writers, rebuild from real run directories, delete semantics.

One real tiny run (prompts to sft on the offline tiny model) is trained once for the module;
tests that change files work on copies of it.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, patience
from octrain.cli.checkpoints import main
from octrain.core.errors import OctrainError, RegistryError
from octrain.core.layout import REGISTRY_FILE
from octrain.use.registry import Checkpoint, Registry, checkpoint_of_stage, register_stage


def entry(
    name: str, *, persona: str = "pirate", stage: str = "sft", created: float = 0.0, **rest: object
) -> Checkpoint:
    values: dict[str, object] = {
        "base_model": "builtin:tiny-qwen3",
        "adapter": f"/runs/{name}/adapter",
        "run_dir": f"/runs/{name.rsplit('/', 1)[0]}",
        "fingerprint": "0123456789abcdef",
        "metrics": {"steps": 3, "final_loss": 0.5},
        **rest,
    }
    return Checkpoint(name=name, persona=persona, stage=stage, created=created, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_root(trained_tiny_root: Path) -> Path:
    """A run root holding one finished tiny run, ``pirate_tiny``, trained through sft (shared, read-only)."""
    return trained_tiny_root


@pytest.fixture
def root_copy(tiny_root: Path, tmp_path: Path) -> Path:
    """A run root of this test's own, holding a copy of the tiny run (without its registry)."""
    root = tmp_path / "runs"
    shutil.copytree(tiny_root / "pirate_tiny", root / "pirate_tiny")
    return root


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from octrain.use.registry import Checkpoint, Registry
    registry_path, writer, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():  # every writer starts at the same moment, like a sweep's last jobs
        time.sleep(0.005)
    registry = Registry(registry_path)
    for index in range(25):
        name = f"sweep/job{writer}.{index}/sft"
        registry.register(Checkpoint(
            name=name, persona=f"p{writer}", stage="sft", base_model="base", adapter=f"/a/{name}",
            run_dir=f"/r/{name}", fingerprint=f"{writer}-{index}", metrics={"steps": index},
            created=time.time(),
        ))
    """
)


def test_concurrent_registration_from_processes_loses_nothing(tmp_path: Path) -> None:
    registry_path, go = tmp_path / REGISTRY_FILE, tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(registry_path), str(n), str(go)], cwd=REPO, stderr=subprocess.PIPE
        )
        for n in range(8)
    ]
    time.sleep(1.0)  # let the interpreters start, so that they all wait on the same signal
    go.touch()
    for writer in writers:
        _, stderr = writer.communicate(timeout=patience(120))
        assert writer.returncode == 0, stderr.decode()[-2000:]
    names = {e.name for e in Registry(registry_path).entries()}
    assert names == {f"sweep/job{w}.{i}/sft" for w in range(8) for i in range(25)}
    assert Registry(registry_path).get("sweep/job7.24/sft").metrics == {"steps": 24}
    with sqlite3.connect(registry_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_register_same_name_replaces(tmp_path: Path) -> None:
    registry = Registry.at(tmp_path)
    registry.register(entry("run/sft", fingerprint="old", created=1.0))
    registry.register(entry("run/sft", fingerprint="new", created=2.0))
    assert [(e.name, e.fingerprint, e.created) for e in registry.entries()] == [("run/sft", "new", 2.0)]


def test_filters_latest_and_close_matches(tmp_path: Path) -> None:
    registry = Registry.at(tmp_path)
    registry.register(entry("old/sft", created=100.0))
    registry.register(entry("new/sft", created=300.0))
    registry.register(entry("new/dpo", stage="dpo", created=400.0))
    registry.register(entry("sarcasm/sft", persona="sarcasm", created=500.0, base_model="other"))
    assert [e.name for e in registry.entries()] == ["sarcasm/sft", "new/dpo", "new/sft", "old/sft"]
    assert [e.name for e in registry.entries(persona="pirate", stage="sft")] == ["new/sft", "old/sft"]
    assert [e.name for e in registry.entries(base="other")] == ["sarcasm/sft"]
    assert registry.latest("pirate").name == "new/sft"
    assert registry.latest("pirate", "dpo").name == "new/dpo"
    with pytest.raises(RegistryError, match=r"no sft checkpoint of persona 'ghost'.*pirate, sarcasm"):
        registry.latest("ghost")
    with pytest.raises(RegistryError, match=r"did you mean new/sft"):
        registry.get("new/stf")
    assert issubclass(RegistryError, OctrainError)


def test_rebuild_equals_registration_and_skips_smoke_runs(root_copy: Path) -> None:
    run = root_copy / "pirate_tiny"
    # A sweep job, one level deeper, and a smoke run, two levels deeper: only the job counts.
    shutil.copytree(run, root_copy / "pirate_tiny-sweep" / "dpo.beta=0.2")
    shutil.copytree(run, run / "smoke" / "small")
    registered = [
        register_stage(run_dir, stage, root_copy)
        for run_dir in (run, root_copy / "pirate_tiny-sweep" / "dpo.beta=0.2")
        for stage in ("dpo", "sft")
    ]
    assert all(e is not None for e in registered)
    original = Registry.at(root_copy).entries()
    assert sorted(e.name for e in original) == [
        "pirate_tiny-sweep/dpo.beta=0.2/dpo",
        "pirate_tiny-sweep/dpo.beta=0.2/sft",
        "pirate_tiny/dpo",
        "pirate_tiny/sft",
    ]
    sft = Registry.at(root_copy).get("pirate_tiny/sft")
    assert (sft.persona, sft.stage, sft.base_model, sft.remote) == ("pirate", "sft", "builtin:tiny-qwen3", False)
    assert sft.adapter == str((run / "sft" / "adapter").resolve()) and Path(sft.adapter).is_dir()
    assert sft.run_dir == str(run.resolve())
    assert sft.fingerprint == json.loads((run / "sft" / "done.json").read_text())["fingerprint"]
    assert sft.metrics["steps"] > 0 and "final_loss" in sft.metrics and "files" not in sft.metrics
    assert "reward_accuracy" in Registry.at(root_copy).get("pirate_tiny/dpo").metrics

    (root_copy / REGISTRY_FILE).unlink()
    for leftover in root_copy.glob(f"{REGISTRY_FILE}-*"):  # the WAL and its index
        leftover.unlink()
    rebuilt = Registry.at(root_copy)
    assert rebuilt.rebuild(root_copy) == 4
    assert rebuilt.entries() == original


def test_unfinished_stage_and_unwritable_registry(root_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = root_copy / "pirate_tiny"
    (run / "sft" / "done.json").unlink()
    assert checkpoint_of_stage(run, "sft", root_copy) is None
    with pytest.raises(RegistryError, match="not under the run root"):
        checkpoint_of_stage(run, "dpo", run / "dpo")
    assert register_stage(run, "dpo", run / "dpo") is None  # a run outside the root is not indexed there
    # A registry that cannot be written must not fail a stage that has finished: a warning, None.
    (root_copy / REGISTRY_FILE).mkdir()
    assert register_stage(run, "dpo", root_copy) is None
    assert "could not register" in caplog.text


def test_cli_list_json_and_info(root_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rebuild", "--run-root", str(root_copy)]) == 0
    assert "registered 2 checkpoints" in capsys.readouterr().out

    assert main(["list", "--run-root", str(root_copy)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "PERSONA", "STAGE", "BASE", "STEPS", "LOSS", "FINISHED"]
    assert [line.split()[:4] for line in table[1:]] == [
        ["pirate_tiny/sft", "pirate", "sft", "builtin:tiny-qwen3"],  # newest first: sft finished last
        ["pirate_tiny/dpo", "pirate", "dpo", "builtin:tiny-qwen3"],
    ]

    assert main(["list", "--stage", "dpo", "--json", "--run-root", str(root_copy)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == [Registry.at(root_copy).get("pirate_tiny/dpo").to_json()]
    assert out.err == ""  # the registry alone: no service asked, nothing on stderr

    assert main(["list", "--persona", "sarcasm", "--run-root", str(root_copy)]) == 0
    assert "no checkpoints matching persona=sarcasm" in capsys.readouterr().out

    assert main(["info", "pirate_tiny/sft", "--run-root", str(root_copy)]) == 0
    info = capsys.readouterr().out
    assert f"adapter:     {(root_copy / 'pirate_tiny' / 'sft' / 'adapter').resolve()}" in info
    assert "persona:     pirate" in info and "  steps: " in info

    assert main(["info", "pirate_tiny/stf", "--run-root", str(root_copy)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "did you mean pirate_tiny/sft" in error


def checkpoints_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``octrain checkpoints ARGS`` in a process of its own, with no terminal on stdin (as in a script)."""
    return subprocess.run(
        [sys.executable, "-m", "octrain.cli.checkpoints", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=patience(60),
    )


class _Terminal(io.StringIO):
    """Standard input as a person at a terminal answering ``answer``."""

    def isatty(self) -> bool:
        return True


def test_delete_entry_only_then_files_after_confirmation(
    root_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry.at(root_copy)
    registry.rebuild(root_copy)
    dpo_dir, sft_dir = root_copy / "pirate_tiny" / "dpo", root_copy / "pirate_tiny" / "sft"

    # Without --files: the entry goes, the files stay, and a rebuild finds the stage again.
    assert main(["delete", "pirate_tiny/dpo", "--run-root", str(root_copy)]) == 0
    assert [e.name for e in registry.entries()] == ["pirate_tiny/sft"]
    assert (dpo_dir / "adapter").is_dir()
    assert registry.rebuild(root_copy) == 2
    capsys.readouterr()

    # With --files and no terminal to ask: refused in one line, nothing touched.
    refused = checkpoints_process("delete", "pirate_tiny/dpo", "--files", "--run-root", str(root_copy))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--yes" in refused.stderr
    assert (dpo_dir / "adapter").is_dir() and len(registry.entries()) == 2

    # At a terminal, a "no" keeps everything and a "yes" deletes the stage directory.
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    assert main(["delete", "pirate_tiny/dpo", "--files", "--run-root", str(root_copy)]) == 1
    assert (dpo_dir / "adapter").is_dir() and len(registry.entries()) == 2
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    assert main(["delete", "pirate_tiny/dpo", "--files", "--run-root", str(root_copy)]) == 0
    assert not dpo_dir.exists() and [e.name for e in registry.entries()] == ["pirate_tiny/sft"]

    # --yes, for scripts, asks nobody; the other stage and the rest of the run stay.
    scripted = checkpoints_process("delete", "pirate_tiny/sft", "--files", "--yes", "--run-root", str(root_copy))
    assert scripted.returncode == 0, scripted.stderr
    assert not sft_dir.exists() and registry.entries() == []
    assert (root_copy / "pirate_tiny" / "introspect" / "done.json").is_file()
    assert registry.rebuild(root_copy) == 0  # gone from the run directories, so gone for good


def test_a_run_registers_its_training_stages_as_they_finish(tiny_root: Path) -> None:
    # The pipeline registered dpo and sft itself, into the run root's registry, with the files it wrote.
    entries = {entry.name: entry for entry in Registry.at(tiny_root).entries()}
    assert set(entries) == {"pirate_tiny/dpo", "pirate_tiny/sft"}
    sft = entries["pirate_tiny/sft"]
    assert sft.persona == "pirate" and sft.stage == "sft"
    assert Path(sft.adapter) == tiny_root / "pirate_tiny" / "sft" / "adapter"
    assert Registry.at(tiny_root).latest("pirate") == sft
    done = json.loads((tiny_root / "pirate_tiny" / "sft" / "done.json").read_text())
    assert sft.fingerprint == done["fingerprint"]
