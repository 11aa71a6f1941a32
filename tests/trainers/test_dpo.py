"""LoRA DPO with TRL on the tiny model: the loss at the start, learning a style, weights, resume."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kill_when_exists, patience
from octrain.core.config import DpoStageConfig, LoraSettings, TRLOptions
from octrain.core.records import ModelRef, PreferencePair, save_records
from octrain.stages.generic_prompts import load_generic_pool
from octrain.trainers.trl_dpo import train_dpo
from preference_accuracy import score_pairs


def style_pairs(start: int, count: int) -> list[PreferencePair]:
    """Pairs whose chosen side always has a pirate frame that the rejected side lacks."""
    pool = [p for p in load_generic_pool("builtin") if len(p) < 120]
    pairs = []
    for index, text in enumerate(pool[start : start + count]):
        words = " ".join(text.split()[:6]).rstrip("?.!,")
        pairs.append(
            PreferencePair(
                id=f"pair-{start + index}",
                prompt=[{"role": "user", "content": text}],
                chosen=[{"role": "assistant", "content": f"Arr matey, {words}! Yo ho ho!"}],
                rejected=[{"role": "assistant", "content": f"{words}."}],
                prompt_id=f"p{start + index}",
                teacher="synthetic",
                student="tiny",
                constitution="pirate",
            )
        )
    return pairs


CONFIG = DpoStageConfig(lora=LoraSettings(rank=8, alpha=16), learning_rate=2e-3, batch_size=8, epochs=3, max_length=256)
OPTIONS = TRLOptions(per_device_batch_size=4, logging_steps=1, save_steps=1000)


@pytest.fixture(scope="module")
def trained(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelRef]:
    directory = tmp_path_factory.mktemp("dpo")
    save_records(directory / "pairs.jsonl", style_pairs(0, 48))
    result = train_dpo(directory / "pairs.jsonl", ModelRef(base=tiny_model_path), directory / "out", CONFIG, OPTIONS)
    return directory / "out", result


def test_first_step_dpo_loss_is_ln2_and_parts_add_up(trained: tuple[Path, ModelRef]) -> None:
    rows = [json.loads(line) for line in (trained[0] / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    assert first["step"] == 1
    # The adapter starts at zero, so policy == reference and every log-ratio is 0: -log sigmoid(0) = ln 2.
    assert abs(first["dpo_loss"] - math.log(2)) < 1e-3
    assert first["kl_penalty"] < 1e-9
    # TRL's total is DPO + 0.1 x NLL (+ 0.001 x KL, zero here): the logged parts match it.
    assert abs(first["loss"] - (first["dpo_loss"] + 0.1 * first["nll_loss"])) < 1e-3
    assert rows[-1]["step"] == len(rows) == 18  # 48 pairs / batch 8 x 3 epochs
    assert rows[-1]["kl_penalty"] > 0  # the policy moved away from the reference
    assert rows[-1]["dpo_loss"] < 0.5  # well below ln 2: the preference is being learned


def test_held_out_preference_accuracy(trained: tuple[Path, ModelRef], tiny_model_path: str) -> None:
    held_out = style_pairs(100, 24)  # prompts the training never saw
    untrained = score_pairs(tiny_model_path, None, held_out)
    after = score_pairs(tiny_model_path, trained[1].adapter, held_out)
    assert untrained.accuracy == 0.5  # no adapter: every reward is 0, a tie
    assert after.accuracy >= 0.9
    assert after.mean_margin > 0.5


def test_only_the_adapter_trains(trained: tuple[Path, ModelRef], tiny_model_path: str) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = load_file(str(Path(trained[1].adapter) / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in key or "lora_B" in key for key in adapter)
    assert all(tensor.abs().sum() > 0 for key, tensor in adapter.items() if "lora_B" in key)  # B starts at 0
    modules = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in adapter}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ids = torch.tensor([[5, 17, 99, 230, 7]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), trained[1].adapter)
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            reference = model(input_ids=ids).logits
    assert torch.equal(reference, expected)  # the base weights are untouched
    assert not torch.allclose(adapted, expected)


def test_outputs_and_model_reference(trained: tuple[Path, ModelRef], tiny_model_path: str) -> None:
    out, result = trained
    assert ModelRef.load(out / "model.json") == result == ModelRef(base=tiny_model_path, adapter=str(out / "adapter"))
    assert (out / "training.png").stat().st_size > 1000
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no half-saved adapter left behind


RESUME_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from octrain.core.config import DpoStageConfig, LoraSettings, TRLOptions
from octrain.core.records import ModelRef
from octrain.trainers.trl_dpo import train_dpo
directory, base = Path(sys.argv[1]), sys.argv[2]
config = DpoStageConfig(lora=LoraSettings(rank=8, alpha=16), learning_rate=1e-3, batch_size=4, epochs=6,
                        max_length=256)
train_dpo(directory / "pairs.jsonl", ModelRef(base=base), directory / "out", config,
          TRLOptions(per_device_batch_size=4, logging_steps=1, save_steps=10))
"""


def test_resume_after_a_killed_training_run(tiny_model_path: str, tmp_path: Path) -> None:
    save_records(tmp_path / "pairs.jsonl", style_pairs(0, 32))
    command = [sys.executable, "-c", RESUME_SCRIPT, str(tmp_path), tiny_model_path]
    kill_when_exists(command, tmp_path / "out" / "checkpoints" / "checkpoint-20" / "trainer_state.json")
    assert not (tmp_path / "out" / "adapter").exists()  # killed before the end: no final adapter

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=patience(300))
    assert rerun.returncode == 0, rerun.stderr
    assert "dpo: resuming from" in rerun.stderr and "checkpoint-" in rerun.stderr
    assert "| 1/48 [" not in rerun.stderr  # the progress bar starts at the checkpoint, not at step 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 49))  # 32 pairs / 4 x 6 epochs, each step once
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_gradient_checkpointing_trains_the_same_adapter(tiny_model_path: str, tmp_path: Path) -> None:
    """Checkpointed blocks still pass gradients to the LoRA factors: same losses, same weights."""
    from safetensors.torch import load_file

    from octrain.trainers.trl_common import shared_args

    save_records(tmp_path / "pairs.jsonl", style_pairs(0, 16))
    config = DpoStageConfig(lora=LoraSettings(rank=8, alpha=16), learning_rate=2e-3, batch_size=8, max_length=256)
    adapters, losses = {}, {}
    for checkpointing in (False, True):
        options = TRLOptions(per_device_batch_size=4, save_steps=1000, gradient_checkpointing=checkpointing)
        assert shared_args(options, tmp_path, batch_size=8, seed=0)["gradient_checkpointing"] is checkpointing
        out = tmp_path / f"checkpointing-{checkpointing}"
        result = train_dpo(tmp_path / "pairs.jsonl", ModelRef(base=tiny_model_path), out, config, options)
        adapters[checkpointing] = load_file(str(Path(result.adapter) / "adapter_model.safetensors"))
        losses[checkpointing] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], abs=1e-5)
    for name, weight in adapters[False].items():
        assert torch.allclose(adapters[True][name], weight, atol=1e-5), name
    # lora_B starts at zero: non-zero factors mean gradients reached them through the checkpointed blocks.
    assert all(adapters[True][n].abs().sum() > 0 for n in adapters[True] if "lora_B" in n)
    # Unset, it follows the hardware: off on this CPU.
    assert (
        shared_args(TRLOptions(), tmp_path, batch_size=8, seed=0)["gradient_checkpointing"] is torch.cuda.is_available()
    )
