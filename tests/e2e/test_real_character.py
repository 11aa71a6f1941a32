"""A real effect on a real model: a reduced pirate_smollm2 run makes SmolLM2-135M-Instruct talk like a pirate.

Every other test trains the tiny random model, whose answers are noise, so no other test can see
whether octrain gives a model a character. This one trains SmolLM2 on the CPU through every stage
and asserts on the eval stage's own figures, on held-out prompts with no system prompt:

* the instrument passes its own check (the classifier tells held-out in-character answers from
  the student's plain ones), so the rates mean something;
* the trained model is in character more often than the base, with a paired 95% interval that
  excludes zero;
* in log-probability the trained model moved toward the teacher's in-character answers.

A statistical assertion on a real model, never a timing. Slow lane: about 10 minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import patience, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(patience(2400))]

# The demo recipe with less introspection (the eval's prompt count is what the assertion needs).
REDUCED = ("+recipe=pirate_smollm2", "scale.reflections=8")


def test_trained_smollm2_is_in_character_far_more_often_than_its_base(smollm2_model: str, tmp_path: Path) -> None:
    result = run_cli(*REDUCED, f"run_root={tmp_path}", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "pirate_smollm2" / "eval" / "results.json").read_text(encoding="utf-8"))
    character = results["in_character"]

    assert character["instrument"]["passes_check"], character["instrument"]
    base, final = character["rates"]["base"], character["rates"]["final"]
    difference = character["vs_base"]["final"]
    assert final["rate"] > base["rate"], (base, final)
    assert difference["ci"][0] > 0, difference  # the paired interval excludes zero
    # The ceiling control: the teacher in character is called in character most of the time.
    assert character["rates"]["teacher"]["rate"] >= 0.6, character["rates"]["teacher"]

    shift = results["toward_teacher"]["vs_base"]["final"]
    assert shift["ci"][0] > 0, shift  # the teacher's answers became likelier relative to the base's own
