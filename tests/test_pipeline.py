"""The pipeline as a function: stage order, skipping, forcing, reuse, and the model it leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from octrain.compose import compose_config
from octrain.config import StageName
from octrain.errors import StageError
from octrain.pipeline import run
from octrain.records import ModelRef
from octrain.samplers import SamplingParams
from octrain.samplers.hf import HFSampler
from octrain.tiny_model import resolve_model_path

FAST = ["sampler=fake", "prompts.expansion_rounds=0"]
STAGE1 = [*FAST, "stages=[prompts,pairs,dpo]"]


def statuses(result) -> dict[str, str]:
    return {outcome.stage.value: outcome.status for outcome in result.outcomes}


def test_stages_skip_force_and_needs(tmp_path: Path) -> None:
    config = compose_config("pirate_tiny", [*FAST, f"run_root={tmp_path}"])
    run_dir = tmp_path / "run"
    everything = ["prompts", "pairs", "dpo", "introspect", "sft", "eval"]
    assert statuses(run(config, run_dir)) == dict.fromkeys(everything, "ran")
    assert statuses(run(config, run_dir)) == dict.fromkeys(everything, "skipped")
    config.force = [StageName.dpo]
    # The forced stage runs again; the stages after it see a new upstream and run again too.
    assert statuses(run(config, run_dir)) == {
        "prompts": "skipped",
        "pairs": "skipped",
        "dpo": "ran",
        "introspect": "ran",
        "sft": "ran",
        "eval": "ran",
    }

    alone = compose_config("pirate_tiny", [*FAST, f"run_root={tmp_path}", "stages=[dpo]"])
    with pytest.raises(StageError, match="needs the current output of stage pairs"):
        run(alone, tmp_path / "empty")


def test_reuse_is_configurable(tmp_path: Path) -> None:
    first = compose_config("pirate_tiny", [*STAGE1, f"run_root={tmp_path}"])
    run(first, tmp_path / "a")
    second = compose_config("pirate_tiny", [*STAGE1, f"run_root={tmp_path}", "dpo.beta=0.5"])
    assert statuses(run(second, tmp_path / "b")) == {"prompts": "reused", "pairs": "reused", "dpo": "ran"}
    no_reuse = compose_config("pirate_tiny", [*STAGE1, f"run_root={tmp_path}", "dpo.beta=0.5", "reuse=[]"])
    assert statuses(run(no_reuse, tmp_path / "c")) == {"prompts": "ran", "pairs": "ran", "dpo": "ran"}
    # Different pair settings are a different stage output: nothing to reuse.
    other = compose_config("pirate_tiny", [*STAGE1, f"run_root={tmp_path}", "pairs.sampling.temperature=0.3"])
    assert statuses(run(other, tmp_path / "d")) == {"prompts": "reused", "pairs": "ran", "dpo": "ran"}


def test_the_trained_model_loads_in_the_sampler(tmp_path: Path) -> None:
    config = compose_config("pirate_tiny", [*FAST, f"run_root={tmp_path}"])
    run(config, tmp_path / "run")
    ref = ModelRef.load(tmp_path / "run" / "sft" / "model.json")  # the final model: DPO + SFT in one adapter
    sampler = HFSampler(resolve_model_path(ref.base), adapter_path=ref.adapter, show_progress=False)
    [[answer]] = sampler.chat([[{"role": "user", "content": "Ahoy?"}]], SamplingParams(max_new_tokens=5))
    assert answer.num_tokens >= 1
