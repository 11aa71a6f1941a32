"""SFT on the tiny model: the loss mask is every assistant turn and nothing else; the loss falls;
the sft stage's final adapter is exactly DPO then SFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from octrain.core.config import SftStageConfig, TRLOptions
from octrain.core.records import Conversation, save_records
from octrain.trainers.trl_sft import build_sft_trainer, train_sft

TRANSCRIPT = Conversation(
    id="c1",
    kind="interaction",
    messages=[
        {"role": "system", "content": "The assistant is Tiny."},
        {"role": "user", "content": "Hello there, other me."},
        {"role": "assistant", "content": "Ahoy, my own reflection!"},
        {"role": "user", "content": "What do we value?"},
        {"role": "assistant", "content": "Loyalty to the crew, above all."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "A fair wind and honest banter."},
    ],
)
REFLECTION = Conversation(
    id="r1",
    kind="reflection",
    messages=[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A pirate at heart."}],
)


def test_loss_mask_is_exactly_the_assistant_turns(tiny_model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    save_records(tmp_path / "sft.jsonl", [TRANSCRIPT, REFLECTION])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = build_sft_trainer(
        tmp_path / "sft.jsonl",
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        tokenizer,
        tmp_path / "out",
        SftStageConfig(batch_size=2),
        TRLOptions(per_device_batch_size=2),
    )
    by_length = sorted(trainer.train_dataset, key=lambda row: len(row["input_ids"]))
    for row, record in zip(by_length, (REFLECTION, TRANSCRIPT), strict=True):
        batch = trainer.data_collator([row])
        labels = batch["labels"][0]
        trained = tokenizer.decode(labels[labels != -100].tolist())
        expected = "".join(m["content"] + "<|im_end|>" for m in record.messages if m["role"] == "assistant")
        assert trained == expected  # every assistant turn with its end-of-turn token, nothing else


def test_adapter_learns_and_loss_falls(tiny_model_path: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    save_records(tmp_path / "sft.jsonl", [TRANSCRIPT, REFLECTION] * 8)
    config = SftStageConfig(learning_rate=5e-3, batch_size=4, epochs=6, max_length=512)  # LoRA r=64, alpha=128
    adapter = train_sft(
        tmp_path / "sft.jsonl",
        tiny_model_path,
        tmp_path / "out",
        config,
        TRLOptions(per_device_batch_size=4, save_steps=1000),
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    # A small fixed set, seen 6 times: from chance (ln 1024 = 6.93) the loss must fall by well over 0.75 nats.
    assert abs(rows[0]["loss"] - 6.93) < 0.1
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.75
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert all(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)
    assert (tmp_path / "out" / "training.png").is_file()


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from octrain.core.compose import compose_config
    from octrain.run.pipeline import run

    root = tmp_path_factory.mktemp("sft-pipeline")
    config = compose_config("pirate_tiny", ["sampler=fake", "prompts.expansion_rounds=0", f"run_root={root}"])
    run(config, root / "run")
    return root / "run"


def test_sequential_final_adapter_is_dpo_then_sft(pipeline_run: Path, tiny_model_path: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from octrain.core.records import ModelRef
    from octrain.trainers.merge import fold_adapter

    final = ModelRef.load(pipeline_run / "sft" / "model.json")
    assert final.base == "builtin:tiny-qwen3" and final.adapter == str(pipeline_run / "sft" / "adapter")
    ids = torch.tensor([[3, 50, 200, 77, 12, 9]])
    with torch.no_grad():
        folded = fold_adapter(tiny_model_path, pipeline_run / "dpo" / "adapter")
        sequential = PeftModel.from_pretrained(folded, pipeline_run / "sft" / "sft_adapter")(input_ids=ids).logits
        combined = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), final.adapter)
        assert (combined(input_ids=ids).logits - sequential).abs().max() < 1e-4
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)(input_ids=ids).logits
    assert (base - sequential).abs().max() > 1e-3  # the check above is not vacuous
    summary = json.loads((pipeline_run / "sft" / "done.json").read_text())["summary"]
    assert summary["mode"] == "sequential" and summary["steps"] >= 1


def test_stage_summaries_say_when_a_run_is_too_short(pipeline_run: Path) -> None:
    """Each training stage's done.json counts its optimizer steps and, under SHORT_RUN_STEPS, carries the note."""
    from octrain.trainers.report import few_steps_note, read_summary
    from octrain.trainers.schedule import SHORT_RUN_STEPS

    for stage in ("dpo", "sft"):
        summary = json.loads((pipeline_run / stage / "done.json").read_text())["summary"]
        assert summary["steps"] == read_summary(pipeline_run / stage)["optimizer_steps"] >= 1
        assert summary.get("note") == few_steps_note(summary["steps"])
        assert ("note" in summary) == (summary["steps"] < SHORT_RUN_STEPS)


def test_final_adapter_carries_the_tokenizer(pipeline_run: Path, tiny_model_path: str) -> None:
    from peft import PeftConfig
    from transformers import AutoTokenizer

    from octrain.core.config import VLLM_LORA_RANKS

    adapter = pipeline_run / "sft" / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # the adapter directory alone, no base model named
    messages = [{"role": "user", "content": "Ahoy?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == AutoTokenizer.from_pretrained(tiny_model_path).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered.startswith("<|im_start|>user\nAhoy?") and rendered.endswith("<|im_start|>assistant\n")
    assert PeftConfig.from_pretrained(str(adapter)).r in VLLM_LORA_RANKS
    assert sorted(p.name for p in adapter.parent.iterdir() if p.name.startswith(".adapter")) == []  # no staging left


def test_ranks_summing_over_512_stop_before_any_model_loads(tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}", "dpo.lora.rank=256", "sft.lora.rank=320")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("octrain: error: dpo.lora.rank + sft.lora.rank:"), result.stderr
    assert "576" in lines[0] and "512" in lines[0]
    # Hydra has made the run directory, but no stage has started.
    assert not (tmp_path / "pirate_tiny" / "prompts").exists()


def test_rank_sum_matters_only_when_sft_runs() -> None:
    from octrain.core.compose import compose_config
    from octrain.core.config import validate

    validate(compose_config("pirate_tiny", ["dpo.lora.rank=256", "sft.lora.rank=256"]))  # 512: vLLM's largest
    validate(compose_config("pirate_tiny", ["dpo.lora.rank=512", "sft.lora.rank=64", "stages=[prompts,pairs,dpo]"]))


def test_paper_mode_trains_from_the_base(pipeline_run: Path, tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.run.pipeline import run

    config = compose_config(
        "pirate_tiny",
        [
            "sampler=fake",
            "prompts.expansion_rounds=0",
            f"run_root={pipeline_run.parent}",
            "sft.mode=paper",
            "sft.sft_weight=0.25",
            "sft.export_merged=true",
        ],
    )
    result = run(config, tmp_path / "paper")
    assert {o.stage.value: o.status for o in result.outcomes}["sft"] == "ran"
    assert (tmp_path / "paper" / "sft" / "merged" / "config.json").is_file()
    log = (tmp_path / "paper" / "octrain.log").read_text()
    assert "folded in" not in log  # paper mode: SFT starts from the plain base


SFT_SCRIPT = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO)
from octrain.core.config import SftStageConfig, TRLOptions
from octrain.trainers.trl_sft import train_sft
directory, base = Path(sys.argv[1]), sys.argv[2]
train_sft(directory / "sft.jsonl", base, directory / "out", SftStageConfig(batch_size=4, epochs=6, max_length=512),
          TRLOptions(per_device_batch_size=4, save_steps=10))
"""


def test_resume_after_a_killed_sft_run(tiny_model_path: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import kill_when_exists, patience

    save_records(tmp_path / "sft.jsonl", [TRANSCRIPT, REFLECTION] * 8)
    command = [sys.executable, "-c", SFT_SCRIPT, str(tmp_path), tiny_model_path]
    kill_when_exists(command, tmp_path / "out" / "checkpoints" / "checkpoint-10" / "trainer_state.json")
    assert not (tmp_path / "out" / "sft_adapter").exists()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=patience(300))
    assert rerun.returncode == 0, rerun.stderr
    assert "sft: resuming from" in rerun.stderr and "| 1/24 [" not in rerun.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 25))
    assert (tmp_path / "out" / "sft_adapter" / "adapter_model.safetensors").is_file()
