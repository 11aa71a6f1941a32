"""The delete rules of :func:`octrain.use.checkpoint_deletion.delete_checkpoint`, without the CLI around them.

``octrain checkpoints delete`` end to end (the terminal question, Tinker) is in test_registry.py
and tests/trainers/test_tinker_checkpoints.py; here, the rules a front end gets from the library.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from octrain.core.errors import RegistryError
from octrain.use.checkpoint_deletion import delete_checkpoint
from octrain.use.registry import Checkpoint, Registry


def register(registry: Registry, name: str, run_dir: Path) -> Checkpoint:
    (run_dir / "dpo" / "adapter").mkdir(parents=True)
    entry = Checkpoint(
        name=name,
        persona="pirate",
        stage="dpo",
        base_model="base",
        adapter=str(run_dir / "dpo" / "adapter"),
        run_dir=str(run_dir),
        fingerprint="f",
    )
    registry.register(entry)
    return entry


def test_the_entry_alone_goes_unless_files_are_asked_for(tmp_path: Path) -> None:
    registry = Registry.at(tmp_path)
    register(registry, "run/dpo", tmp_path / "run")
    deletion = delete_checkpoint(registry, "run/dpo", tmp_path, confirm=lambda _question: False)
    assert deletion is not None and deletion.stage_dir is None  # nobody is asked about keeping files
    assert registry.entries() == [] and (tmp_path / "run" / "dpo" / "adapter").is_dir()


def test_files_go_after_a_yes_and_the_whole_stage_directory_with_them(tmp_path: Path) -> None:
    registry = Registry.at(tmp_path)
    register(registry, "run/dpo", tmp_path / "run")
    questions: list[str] = []
    assert (
        delete_checkpoint(registry, "run/dpo", tmp_path, files=True, confirm=lambda q: questions.append(q) or False)
        is None
    )
    assert (tmp_path / "run" / "dpo").is_dir() and registry.get("run/dpo")  # a no deletes nothing
    assert questions == [f"delete {tmp_path / 'run' / 'dpo'} (adapter, checkpoints, metrics)?"]
    deletion = delete_checkpoint(registry, "run/dpo", tmp_path, files=True)  # confirm=None: nobody asked (--yes)
    assert deletion is not None and deletion.stage_dir == (tmp_path / "run" / "dpo").resolve()
    assert not (tmp_path / "run" / "dpo").exists() and (tmp_path / "run").is_dir() and registry.entries() == []


def test_an_entry_pointing_outside_the_run_root_deletes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    registry = Registry.at(root)
    register(registry, "run/dpo", tmp_path / "elsewhere")
    with pytest.raises(RegistryError, match="outside the run root"):
        delete_checkpoint(registry, "run/dpo", root, files=True)
    assert (tmp_path / "elsewhere" / "dpo" / "adapter").is_dir() and registry.get("run/dpo")
