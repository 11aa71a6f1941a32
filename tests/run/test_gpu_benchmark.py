"""benchmarks/gpu_training.py: its CPU smoke mode runs every configuration in a process of its own and
records a configuration that breaks as failed; its FLOPs count agrees with one done by hand."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import patience

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_training.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_training", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# hidden 8, 1 layer, 2 query heads and 1 KV head of 4, MLP 16, vocabulary 10.
SMALL = {
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "vocab_size": 10,
}


def test_flops_per_sequence_matches_a_hand_count() -> None:
    bench = load_benchmark()
    # Matmul weights: q 8x8=64, k 8x4=32, v 32, o 64, gate/up/down 3 x 8x16=384, head 8x10=80 -> 656.
    assert bench.matmul_params(SMALL) == 656
    # LoRA r=2, r x (in + out): q 2x16=32, k 2x12=24, v 24, o 32, gate/up/down 3 x 2x24=144 -> 256.
    assert bench.lora_params(SMALL, 2) == 256
    # Causal attention forward, s=3: the positions attend 1 + 2 + 3 = 6 keys; each key costs QK^T 2 x 4 and
    # AV 2 x 4 FLOPs per head, 2 heads: 16 x 2 x 6 = 192.
    assert bench.attention_flops(SMALL, 3) == 192
    # SFT, 3 tokens: forward 2N + backward 2N + LoRA 6P per token, attention forward + 2x backward:
    # 3 x (4 x 656 + 6 x 256) + 3 x 192 = 3 x 4160 + 576 = 13056.
    assert bench.flops_per_sequence(SMALL, 3, lora_rank=2, kind="sft") == 13056
    # DPO adds the reference forward: 3 x 2 x 656 + 192 = 4128 -> 17184.
    assert bench.flops_per_sequence(SMALL, 3, lora_rank=2, kind="dpo") == 17184
    with pytest.raises(ValueError):
        bench.flops_per_sequence(SMALL, 3, lora_rank=2, kind="ppo")


def test_qwen3_4b_shape_is_about_four_billion_parameters() -> None:
    bench = load_benchmark()
    shape = bench.QWEN3_4B_SHAPE
    # Qwen3-4B: 4.02B parameters with the tied embedding counted once; the norms are ~0.2M.
    assert 4.00e9 < bench.matmul_params(shape) < 4.03e9
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA L40S") == 362.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("Some Future Card") is None


def test_parameter_counts_agree_with_the_model_and_peft() -> None:
    """The FLOPs count's N and P against the real Qwen3-4B module tree (on the meta device: no memory)."""
    import torch
    from peft import get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from octrain.core.config import LoraSettings
    from octrain.trainers.trl_common import lora_config

    bench = load_benchmark()
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**bench.QWEN3_4B_SHAPE))
    # Everything but the RMSNorm weights (2 per layer + 2 q/k norms of head_dim + the final norm) is a matmul weight.
    shape = bench.QWEN3_4B_SHAPE
    norms = shape["num_hidden_layers"] * (2 * shape["hidden_size"] + 2 * shape["head_dim"]) + shape["hidden_size"]
    assert sum(p.numel() for p in model.parameters()) == bench.matmul_params(shape) + norms
    adapted = get_peft_model(model, lora_config(LoraSettings()))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == bench.lora_params(shape, LoraSettings().rank)


def test_synthetic_tokenizer_gives_one_token_a_word_and_the_full_vocabulary() -> None:
    bench = load_benchmark()
    tokenizer = bench.synthetic_tokenizer(151936)
    assert len(tokenizer) == 151936
    ids = tokenizer("w0 w17 w151000", add_special_tokens=False)["input_ids"]
    assert ids == [0, 17, 151000]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "w5 w6"}, {"role": "assistant", "content": "w7"}], tokenize=False
    )
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"][-4:] == [
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        tokenizer.convert_tokens_to_ids("assistant"),
        7,
        tokenizer.eos_token_id,
    ]


@pytest.mark.slow
def test_smoke_run_reports_every_configuration_and_records_a_broken_one(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "OCTRAIN_GPU_BENCH_BROKEN": "1", "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--jobs", "2", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(400),
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    payload = json.loads(out.read_text())
    results = {r["config"]["name"]: r for r in payload["results"]}
    bench = load_benchmark()
    expected = [c.name for c in bench.default_grid(smoke=True)]
    assert set(results) == {*expected, "broken-lora-rank-0"}

    broken = results.pop("broken-lora-rank-0")
    assert broken["status"] == "failed"
    assert "ValueError" in broken["error"]

    for name, result in results.items():
        assert result["status"] == "ok", (name, result["error"])
        assert result["steps_measured"] == result["config"]["measured_steps"]
        assert math.isfinite(result["tokens_per_s"]) and result["tokens_per_s"] > 0
        assert 0 < result["real_tokens"] <= result["padded_tokens"]
        losses = result["losses"]
        assert len(losses) == result["config"]["warmup_steps"] + result["config"]["measured_steps"]
        assert all(math.isfinite(x) for x in losses)
        assert result["mfu"] is None  # no peak figure for a CPU
    # Same seed, data and LoRA initialisation: the first step's loss does not depend on who builds the trainer's
    # arguments, and DPO's starts at ln 2 + 0.1 x NLL for octrain (the NLL term) but ln 2 for stock TRL.
    assert results["dpo-trl-default-b2"]["losses"][0] == pytest.approx(math.log(2), abs=1e-3)
    assert results["dpo-octrain-ckpt-b2"]["losses"][0] > math.log(2) + 0.1
    assert results["dpo-octrain-ckpt-b2"]["losses"][0] == pytest.approx(
        results["dpo-octrain-nockpt-b2"]["losses"][0], rel=1e-5
    )
    assert "| broken-lora-rank-0 | **failed** |" in payload["table"]
    assert "dpo-octrain-ckpt-b2" in completed.stdout
