"""Resuming training picks the newest whole checkpoint, never one a crash or a full disk cut short."""

from __future__ import annotations

import json
import logging
import struct
import zipfile
from pathlib import Path

import pytest

from octrain.core.files import remove_stray_temporaries
from octrain.trainers.checkpoints import incomplete_reason, last_complete_checkpoint


def safetensors(path: Path, *, cut: int = 0) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    data = struct.pack("<Q", len(header)) + header + bytes(16)
    path.write_bytes(data[: len(data) - cut])


def torch_zip(path: Path, *, cut: int = 0) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])


def checkpoint(root: Path, step: int, *, missing: str = "", cut: str = "") -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if missing != "weights":
        safetensors(folder / "adapter_model.safetensors", cut=10 if cut == "weights" else 0)
    if missing != "optimizer":
        torch_zip(folder / "optimizer.pt", cut=30 if cut == "optimizer" else 0)
    if missing != "state":
        (folder / "trainer_state.json").write_text('{"global_step": 1' if cut == "state" else '{"global_step": 1}')
    return folder


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ({"missing": "state"}, "no trainer_state.json"),
        ({"cut": "state"}, "trainer_state.json does not parse"),
        ({"missing": "weights"}, "its weights are missing or cut short"),
        ({"cut": "weights"}, "its weights are missing or cut short"),
        ({"missing": "optimizer"}, "its optimizer.pt is missing or cut short"),
        ({"cut": "optimizer"}, "its optimizer.pt is missing or cut short"),
    ],
)
def test_newest_whole_checkpoint_wins_and_the_broken_one_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: dict[str, str], reason: str
) -> None:
    whole = checkpoint(tmp_path, 4)
    broken = checkpoint(tmp_path, 8, **damage)
    assert incomplete_reason(whole) is None and incomplete_reason(broken) == reason
    with caplog.at_level(logging.WARNING, logger="octrain"):
        assert last_complete_checkpoint(tmp_path, stage="sft") == str(whole)
    assert not broken.exists()
    assert f"sft: {broken} is incomplete ({reason}), left by a crash: deleting it" in caplog.text


def test_no_checkpoints(tmp_path: Path) -> None:
    assert last_complete_checkpoint(tmp_path / "absent", stage="dpo") is None
    checkpoint(tmp_path, 2, missing="state")
    assert last_complete_checkpoint(tmp_path, stage="dpo") is None  # train from the start


def test_only_octrains_own_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    strays = [tmp_path / ".done.json.a1b2c3d4.tmp", tmp_path / "sub" / ".chunk-00001.jsonl.zz_9.tmp"]
    for stray in strays:
        stray.write_text("half")
    (tmp_path / ".adapter.q8w7e6.tmp").mkdir()
    kept = [tmp_path / ".lock", tmp_path / ".hydra", tmp_path / "notes.tmp", tmp_path / "sub" / ".keep"]
    for path in kept:
        path.write_text("")
    assert remove_stray_temporaries(tmp_path) == [tmp_path / ".adapter.q8w7e6.tmp", strays[0]]
    assert strays[1].exists()  # not recursive unless asked
    assert remove_stray_temporaries(tmp_path, recursive=True) == [strays[1]]
    assert all(path.exists() for path in kept)
