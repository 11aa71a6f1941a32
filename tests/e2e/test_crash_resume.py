"""Nothing lost, nothing twice: the pairs stage killed with SIGKILL mid-generation, then rerun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import kill_when_exists, run_cli

# No prompt expansion (the tiny model writes none anyway): the test is about the pairs stage.
ARGS = ["+recipe=pirate_tiny", "stages=[prompts,pairs]", "pairs.chunk_size=4", "prompts.expansion_rounds=0"]


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_killed_pairs_stage_resumes_exactly_once(tmp_path: Path) -> None:
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    student = crashed / "pirate_tiny" / "pairs" / "student"
    # Kill it in the middle of the second model's generation: teacher chunks done, student partial.
    kill_when_exists([sys.executable, "-m", "octrain", *ARGS, f"run_root={crashed}"], student / "chunk-00002.jsonl")
    pairs_dir = crashed / "pirate_tiny" / "pairs"
    assert not (pairs_dir / "pairs.jsonl").exists() and not (pairs_dir / "done.json").exists()
    committed = {p: p.read_bytes() for p in sorted(pairs_dir.glob("*/chunk-*.jsonl"))}
    student_done = len(list(student.glob("chunk-*.jsonl")))

    rerun = run_cli(*ARGS, f"run_root={crashed}")
    assert rerun.returncode == 0, rerun.stderr
    assert "pairs: resuming an interrupted run" in rerun.stderr
    assert f"resuming: {student_done} of " in rerun.stderr
    for path, content in committed.items():  # committed work was kept, not redone
        assert path.read_bytes() == content

    prompt_ids = ids(crashed / "pirate_tiny" / "prompts" / "prompts.jsonl")
    pair_prompt_ids = [json.loads(line)["prompt_id"] for line in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    assert sorted(pair_prompt_ids) == sorted(prompt_ids) and len(set(pair_prompt_ids)) == len(pair_prompt_ids)

    # The same command never interrupted gives the very same pairs: per-chunk seeds make resume exact.
    uninterrupted = run_cli(*ARGS, f"run_root={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert (clean / "pirate_tiny" / "pairs" / "pairs.jsonl").read_text() == (pairs_dir / "pairs.jsonl").read_text()


@pytest.mark.slow  # 19 s: the slow lane, which CI runs
def test_changed_sampling_starts_the_stage_afresh(tmp_path: Path) -> None:
    args = ["+recipe=pirate_tiny", "stages=[prompts,pairs]", "prompts.expansion_rounds=0"]
    first = run_cli(*args, f"run_root={tmp_path}")
    assert first.returncode == 0, first.stderr
    pairs_dir = tmp_path / "pirate_tiny" / "pairs"
    (pairs_dir / "done.json").unlink()  # as if it had crashed just before finishing
    stale = pairs_dir / "student" / "chunk-00000.jsonl"
    before = stale.read_text()
    second = run_cli(*args, f"run_root={tmp_path}", "pairs.sampling.temperature=0.5")
    assert second.returncode == 0, second.stderr
    assert "pairs: its settings or inputs changed since it last ran: clearing" in second.stderr
    assert "resuming" not in second.stderr
    assert stale.read_text() != before  # regenerated with the new settings, not mixed with the old


@pytest.mark.slow  # 30 s on 2 cores: the slow lane, which CI runs (the pairs kill above stays in the default suite)
def test_killed_introspection_resumes_exactly_once(tmp_path: Path) -> None:
    base = ["+recipe=pirate_tiny", "prompts.expansion_rounds=0", f"run_root={tmp_path}"]
    stage1 = run_cli(*base, "stages=[prompts,pairs,dpo]")
    assert stage1.returncode == 0, stage1.stderr
    args = [*base, "stages=[introspect]", "introspect.chunk_size=4"]
    reflections = tmp_path / "pirate_tiny" / "introspect" / "reflections"
    kill_when_exists([sys.executable, "-m", "octrain", *args], reflections / "chunk-00003.jsonl")
    committed = {p: p.read_bytes() for p in sorted(reflections.glob("chunk-*.jsonl"))}
    assert 4 <= len(committed) < 10  # 40 reflections in chunks of 4: killed part-way

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"self-reflection: resuming: {len(committed)} of 10 chunks" in rerun.stderr
    for path, content in committed.items():
        assert path.read_bytes() == content
    records = [
        json.loads(line) for line in (tmp_path / "pirate_tiny" / "introspect" / "sft.jsonl").read_text().splitlines()
    ]
    reflection_ids = [r["id"] for r in records if r["kind"] == "reflection"]
    assert len(reflection_ids) == len(set(reflection_ids)) == 40
    assert sorted({r["id"].rsplit("-", 1)[0] for r in records if r["kind"] == "interaction"}) == [
        "chat-00000-free",
        "chat-00001-leading",
        "chat-00002-free",
        "chat-00003-leading",
    ]


# Run as ``python -c SLOW_SAVE ARGS``: octrain's CLI, with the Trainer held still in the middle of
# its second checkpoint (weights written; optimizer, scheduler and trainer_state.json not yet),
# where the test kills it. The marker file says the process has reached that point.
SLOW_SAVE = """
import os, sys, time
from pathlib import Path
from transformers import Trainer

original = Trainer._save_optimizer_and_scheduler
calls = []

def held(self, output_dir):
    calls.append(output_dir)
    if len(calls) == 2:
        Path(os.environ["OCTRAIN_TEST_MARKER"]).write_text(output_dir)
        time.sleep(600)
    return original(self, output_dir)

Trainer._save_optimizer_and_scheduler = held
from octrain.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # 17 s: the slow lane (resuming from a whole checkpoint is also in tests/trainers/test_dpo.py)
def test_killed_mid_checkpoint_dpo_resumes_from_the_last_whole_one(tmp_path: Path, monkeypatch) -> None:
    args = [
        "+recipe=pirate_tiny",
        "sampler=fake",
        "prompts.expansion_rounds=0",
        "scale.prompts_per_trait=1",  # 16 pairs: two DPO steps of 8
        "stages=[prompts,pairs,dpo]",
        "trainer.trl.save_steps=1",
        f"run_root={tmp_path}",
    ]
    marker = tmp_path / "in-the-middle-of-checkpoint-2"
    monkeypatch.setenv("OCTRAIN_TEST_MARKER", str(marker))
    kill_when_exists([sys.executable, "-c", SLOW_SAVE, *args], marker)
    checkpoints = tmp_path / "pirate_tiny" / "dpo" / "checkpoints"
    half = checkpoints / "checkpoint-2"
    assert (half / "adapter_model.safetensors").is_file() and not (half / "trainer_state.json").exists()

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "Can't find a valid checkpoint" not in rerun.stderr
    assert f"dpo: {half} is incomplete (no trainer_state.json), left by a crash: deleting it" in rerun.stderr
    assert f"dpo: resuming from {checkpoints / 'checkpoint-1'}" in rerun.stderr
    done = json.loads((tmp_path / "pirate_tiny" / "dpo" / "done.json").read_text())
    assert done["summary"]["steps"] == 2
    assert (half / "trainer_state.json").is_file()  # saved again, whole, by the resumed training


@pytest.mark.slow  # 20 s: the slow lane, which CI runs
def test_killed_prompts_stage_replays_its_finished_rounds(tmp_path: Path) -> None:
    args = ["+recipe=pirate_tiny", "stages=[prompts]"]  # three expansion rounds with the tiny generator
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    rounds = crashed / "pirate_tiny" / "prompts" / "rounds"
    kill_when_exists([sys.executable, "-m", "octrain", *args, f"run_root={crashed}"], rounds / "call-00.jsonl")
    assert not (crashed / "pirate_tiny" / "prompts" / "done.json").exists()
    first_round = (rounds / "call-00.jsonl").read_bytes()

    rerun = run_cli(*args, f"run_root={crashed}")
    assert rerun.returncode == 0, rerun.stderr
    assert "prompts: resuming an interrupted run" in rerun.stderr
    assert "expansion rounds replayed from" in rerun.stderr
    assert (rounds / "call-00.jsonl").read_bytes() == first_round  # the committed round was kept, not redone
    uninterrupted = run_cli(*args, f"run_root={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    for name in ("prompts.jsonl", "report.json"):
        assert (clean / "pirate_tiny" / "prompts" / name).read_text() == (
            crashed / "pirate_tiny" / "prompts" / name
        ).read_text()
