"""``scale=smoke``'s training stages train, on the TRL backend, with the tiny offline model.

At the smoke scale DPO has fewer pairs than one batch of 32 (16 for a 10-trait constitution): one
optimizer step. transformers' warmup rule gave
that step LR 0, and the run left every LoRA ``B`` factor at exactly zero. Now the step trains at the
peak LR (octrain.trainers.schedule), and the stage's report says the run is too short to read.
The Tinker backend's counterparts are in test_tinker_trainers.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import WORDS, synthetic_pairs
from octrain.core.records import Conversation, ModelRef, save_records
from octrain.trainers import schedule
from octrain.trainers.report import read_summary


@pytest.fixture(scope="module")
def smoke() -> Any:
    """The settings a smoke run trains with: the schema's DPO/SFT defaults, scale=smoke, the pirate constitution."""
    from octrain.core.compose import compose_config
    from octrain.run.pipeline import resolve_constitution

    config = compose_config("pirate_tinker", ["scale=smoke", "trainer=trl"])
    traits = len(resolve_constitution(config).traits)
    scale = config.scale
    return config, (scale.prompts_per_trait * traits + scale.generic_prompts) * scale.samples_per_prompt


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def lora_b(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    found = {name: tensor for name, tensor in weights.items() if "lora_B" in name}
    assert found
    return found


def test_smoke_dpo_trains_its_one_step(smoke: Any, tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.trainers.trl_dpo import train_dpo

    config, count = smoke
    # The audit's case: fewer pairs than one batch (19 for the pirate's 13 traits, at batch 32), warmup on.
    assert count <= config.dpo.batch_size and config.dpo.warmup_ratio > 0
    pairs = synthetic_pairs(count)
    save_records(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "dpo"
    result = train_dpo(tmp_path / "pairs.jsonl", ModelRef(base=tiny_model_path), out, config.dpo, config.trainer.trl)

    logged = rows(out)
    assert [row["step"] for row in logged] == [1]  # one optimizer step
    assert logged[0]["learning_rate"] == config.dpo.learning_rate > 0  # no warmup: the peak, not 0
    for name, tensor in lora_b(Path(result.adapter)).items():
        assert tensor.abs().sum() > 0, f"{name} is still all zeros: the step did not train"
    summary = read_summary(out)
    assert summary["optimizer_steps"] == 1
    assert summary["note"] == "1 optimizer step: too few for the loss curve to mean much"


def test_smoke_sft_trains_from_its_first_step(smoke: Any, tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.trainers.trl_sft import train_sft

    config, _ = smoke
    scale = config.scale
    reflections = [
        Conversation(
            id=f"r{i}",
            kind="reflection",
            messages=[
                {"role": "user", "content": f"Who are you, question {i}?"},
                {"role": "assistant", "content": f"A pirate at heart, {WORDS[i % len(WORDS)]} and all."},
            ],
        )
        for i in range(scale.reflections)
    ]
    interactions = []
    for i in range(scale.interactions):
        messages = [{"role": "system", "content": "The assistant is Tiny."}]
        for turn in range(scale.interaction_turns):
            messages.append({"role": "user", "content": f"Turn {turn}: what of the {WORDS[(i + turn) % 12]}?"})
            messages.append({"role": "assistant", "content": f"Arr, the {WORDS[(i + turn) % 12]} calls us."})
        interactions.append(Conversation(id=f"c{i}", kind="interaction", messages=messages))
    save_records(tmp_path / "sft.jsonl", reflections + interactions)
    out = tmp_path / "sft"
    adapter = train_sft(tmp_path / "sft.jsonl", tiny_model_path, out, config.sft, config.trainer.trl)

    logged = rows(out)
    steps = len(logged)
    assert steps == math.ceil(len(reflections + interactions) / config.sft.batch_size) == 2
    assert [row["step"] for row in logged] == list(range(1, steps + 1))
    expected = [
        schedule.learning_rate(
            s, total_steps=steps, peak=config.sft.learning_rate, warmup_ratio=config.sft.warmup_ratio
        )
        for s in range(steps)
    ]
    assert [row["learning_rate"] for row in logged] == pytest.approx(expected, rel=1e-9)
    assert logged[0]["learning_rate"] == config.sft.learning_rate > 0  # the first step trains, at the peak
    for name, tensor in lora_b(adapter).items():
        assert tensor.abs().sum() > 0, f"{name} is still all zeros"
    assert read_summary(out)["note"] == "2 optimizer steps: too few for the loss curve to mean much"
