"""The data preview's pairs are the pairs stage's: same prompts in, same pairs and verdicts out (fake sampler).

:func:`octrain.stages.pairs_preview.preview_pairs` is what the studio's data preview page shows;
these tests hold it to what :func:`octrain.stages.pairs.run` writes for the same config and
prompts, the length filter (the student's tokenizer) included.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from octrain.core.compose import compose_config
from octrain.core.config import OctrainConfig
from octrain.core.layout import PAIRS_FILE, PROMPTS_FILE, REPORT_FILE
from octrain.core.records import PreferencePair, PromptRecord, load_records, save_records
from octrain.run.pipeline import resolve_constitution
from octrain.stages import pairs as pairs_stage
from octrain.stages.context import RunContext
from octrain.stages.pairs_preview import preview_pairs

LONG = "Tell me everything about the sea, " + "and the wind and the waves and the stars, " * 40


@pytest.fixture(scope="module")
def config() -> OctrainConfig:
    # The fake sampler answers from a hash of the conversation and the seed: any difference in what
    # either side reads, or in the seed it draws with, shows as a different answer.
    return compose_config("pirate_tiny", ["sampler=fake", "pairs.max_length=96"])


def prompt(index: int, text: str, trait: int | None) -> PromptRecord:
    stem = f"t{trait:02d}" if trait else "g"
    return PromptRecord(
        id=f"{stem}-{index:04d}-k0", prompt=[{"role": "user", "content": text}], origin="seed", trait=trait
    )


def test_the_preview_makes_the_pairs_the_stage_writes(config: OctrainConfig, tmp_path: Path) -> None:
    records = [
        prompt(0, "Ahoy! Who are you?", 1),
        prompt(1, LONG, 2),  # too long for pairs.max_length in the student's template: dropped
        prompt(2, "What do you think of the navy?", 3),
        prompt(3, "Can you help me plan a picnic?", None),
    ]
    constitution = resolve_constitution(config)
    run_dir = tmp_path / "run"
    save_records(run_dir / "prompts" / PROMPTS_FILE, records)
    pairs_stage.run(RunContext(config=config, run_dir=run_dir, constitution=constitution))
    written = load_records(run_dir / "pairs" / PAIRS_FILE, PreferencePair)
    report = json.loads((run_dir / "pairs" / REPORT_FILE).read_text())

    progress: list[tuple[int, int]] = []
    rows = preview_pairs(config, prompts=records, on_progress=lambda done, total: progress.append((done, total)))

    assert [row.prompt_id for row in rows] == [record.id for record in records]
    assert [row.pair for row in rows if row.pair is not None] == written
    assert [row.verdict == "kept" for row in rows] == [row.pair is not None for row in rows]
    dropped = Counter(row.verdict for row in rows if row.verdict != "kept")
    assert dropped == Counter({reason: n for reason, n in report["dropped"].items() if n})
    assert dropped == Counter({"too-long": 1}) and len(written) == 3  # both outcomes are compared
    # 1 (the prompts) + 2 x (a model load + 4 answers) + 1 (the tokenizer), every unit counted.
    assert progress[-1] == (12, 12) and [done for done, _ in progress] == list(range(1, 13))


def test_the_preview_draws_one_prompt_a_trait_as_the_prompts_stage_does(config: OctrainConfig) -> None:
    lines: list[str] = []
    progress: list[tuple[int, int]] = []
    rows = preview_pairs(config, 3, report=lines.append, on_progress=lambda done, total: progress.append((done, total)))
    assert len(rows) == 3 and len({row.trait for row in rows}) == 3  # spread over the traits
    assert all(row.prompt_id.endswith("-k0") and row.teacher and row.student for row in rows)
    assert progress[-1][0] == progress[-1][1] == 1 + 2 * (1 + 3) + 1
    assert any("prompt generator" in line for line in lines) and any("teacher" in line for line in lines)
