"""The shipped accelerate configs: accelerate reads them, builds their plugins, and launches them.

What runs on a CPU machine: every file through accelerate's own loader and through the launcher's
argument handling; the FSDP2 and DeepSpeed plugins built from the environment the launcher gives
its processes (DeepSpeed only where ``deepspeed`` is installed); a real 2-process launch of
``ddp.yaml`` over gloo. What cannot: FSDP2 and ZeRO training through accelerate, which accelerate
1.15 applies to GPU processes only (see ``test_fsdp2_config_on_cpu_falls_back_to_ddp``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import patience
from octrain.core.errors import ConfigError
from octrain.trainers import accelerate_configs
from octrain.trainers.accelerate_configs import (
    check_accelerate_config,
    find_accelerate_config,
    launch_command,
    shipped_accelerate_configs,
)

SHIPPED = {"single_gpu": "NO", "ddp": "MULTI_GPU", "fsdp2": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
PROCESSES = {"single_gpu": 1, "ddp": 2, "fsdp2": 2, "zero2": 2, "zero3": 2}


def has_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


needs_deepspeed = pytest.mark.skipif(
    not has_deepspeed(), reason="deepspeed is not installed (pip install deepspeed): its plugin cannot be built"
)


def write_config(tmp_path: Path, name: str, **changes: Any) -> Path:
    """A copy of a shipped config with some keys changed (None removes a key)."""
    config = yaml.safe_load((accelerate_configs.accelerate_configs_dir() / f"{name}.yaml").read_text())
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    path = tmp_path / f"{name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"  # one file per call
    path.write_text(yaml.safe_dump(config))
    return path


def launcher_environment(config: Path, num_processes: int) -> dict[str, str]:
    """The environment ``accelerate launch`` gives each process for this config (no process started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    command = launch_command(config, num_processes, ["probe"], main_process_port=0)
    args = launch_command_parser().parse_args(command[3:])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # What accelerate's launch_command sets before calling the DeepSpeed launcher.
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
        return env
    return prepare_multi_gpu_env(args)


def test_the_five_setups_are_shipped() -> None:
    assert shipped_accelerate_configs() == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads_with_accelerate_and_passes_the_checks(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = find_accelerate_config(name)
    text = path.read_text()
    assert text.startswith("# octrain accelerate config"), "each file opens with its comment block"
    for part in ("Hardware it was written for", "octrain command", "Known pitfalls", f"accelerate_config={name}"):
        assert part in text, f"{name}.yaml's comment block lacks {part!r}"

    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == SHIPPED[name]
    assert config.mixed_precision == "bf16"
    if not has_deepspeed() and SHIPPED[name] == "DEEPSPEED":
        pytest.skip("deepspeed is not installed: check_accelerate_config refuses DeepSpeed configs without it")
    setup = check_accelerate_config(path, PROCESSES[name], gradient_checkpointing=True)
    assert setup.distributed_type == SHIPPED[name]
    assert setup.num_processes == PROCESSES[name]
    assert setup.shards_parameters == (name in ("fsdp2", "zero3"))


def test_fsdp2_config_builds_its_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    env = launcher_environment(find_accelerate_config("fsdp2"), 8)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap is None  # the model's _no_split_modules decide
    assert plugin.activation_checkpointing is False  # octrain's gradient checkpointing is the one on
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.reshard_after_forward is True


@needs_deepspeed
@pytest.mark.parametrize(("name", "stage"), [("zero2", 2), ("zero3", 3)])
def test_deepspeed_config_builds_its_plugin_and_takes_the_trainers_batch(
    name: str, stage: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from accelerate.utils import DeepSpeedPlugin
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    env = launcher_environment(find_accelerate_config(name), 8)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    assert plugin.zero3_init_flag is (stage == 3)
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "none" and zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"

    # What the Trainer does with it: octrain's computed accumulation fills the `auto`s, no mismatch.
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
        report_to="none",
    )
    filled = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    filled.trainer_config_process(args)
    assert filled.config["train_micro_batch_size_per_gpu"] == 2
    assert filled.config["gradient_accumulation_steps"] == 3
    assert filled.config["train_batch_size"] == 2 * 3 * args.world_size


@pytest.fixture(autouse=True)
def no_deepspeed_config_left_behind() -> Iterator[None]:
    """HfTrainerDeepSpeedConfig registers itself with transformers (a weak reference): while it lives,
    ``is_deepspeed_zero3_enabled()`` is true for every later ``from_pretrained`` in this process."""
    yield
    if has_deepspeed():
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def test_find_accepts_a_shipped_name_or_a_path(tmp_path: Path) -> None:
    shipped = find_accelerate_config("ddp")
    assert shipped == (accelerate_configs.accelerate_configs_dir() / "ddp.yaml").resolve()
    own = write_config(tmp_path, "ddp")
    assert find_accelerate_config(str(own)) == own.resolve()


@pytest.mark.parametrize("value", ["fsdp", "deepspeed_zero3", "", "missing/own.yaml"])
def test_find_names_the_key_and_lists_the_shipped_configs(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        find_accelerate_config(value)
    message = str(raised.value)
    assert "trainer.accelerate_config" in message
    for name in SHIPPED:
        assert name in message


def test_find_uses_octrain_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs" / "accelerate").mkdir(parents=True)
    (tmp_path / "configs" / "accelerate" / "mine.yaml").write_text("distributed_type: MULTI_GPU\n")
    monkeypatch.setenv("OCTRAIN_HOME", str(tmp_path))
    assert find_accelerate_config("mine") == (tmp_path / "configs" / "accelerate" / "mine.yaml").resolve()
    assert shipped_accelerate_configs() == ["mine"]


def bad_config(tmp_path: Path, request: str) -> tuple[Path, int, dict[str, Any], str]:
    """(file, num_processes, extra check arguments, the key the error must name) for one mistake."""
    cases: dict[str, tuple[Path, int, dict[str, Any], str]] = {
        "one process launcher, many processes": (write_config(tmp_path, "single_gpu"), 4, {}, "trainer.num_processes"),
        "ddp with one process": (write_config(tmp_path, "ddp"), 1, {}, "trainer.num_processes"),
        "fsdp1": (write_config(tmp_path, "fsdp2", **{"fsdp_config.fsdp_version": 1}), 2, {}, "fsdp_version"),
        "both checkpointings": (
            write_config(tmp_path, "fsdp2", **{"fsdp_config.fsdp_activation_checkpointing": True}),
            2,
            {"gradient_checkpointing": True},
            "fsdp_activation_checkpointing",
        ),
        "efficient loading without sync": (
            write_config(tmp_path, "fsdp2", **{"fsdp_config.fsdp_sync_module_states": False}),
            2,
            {},
            "fsdp_sync_module_states",
        ),
        "unknown key": (write_config(tmp_path, "ddp", fsdp_verison=2), 2, {}, "fsdp_verison"),
        "unknown type": (write_config(tmp_path, "ddp", distributed_type="XLA"), 2, {}, "distributed_type"),
    }
    return cases[request]


@pytest.mark.parametrize(
    "case",
    [
        "one process launcher, many processes",
        "ddp with one process",
        "fsdp1",
        "both checkpointings",
        "efficient loading without sync",
        "unknown key",
        "unknown type",
    ],
)
def test_check_errors_name_the_key_and_the_file(case: str, tmp_path: Path) -> None:
    path, processes, extra, key = bad_config(tmp_path, case)
    with pytest.raises(ConfigError) as raised:
        check_accelerate_config(path, processes, **extra)
    message = str(raised.value)
    assert "trainer.accelerate_config" in message
    assert key in message
    assert str(path) in message


def test_check_explains_an_unquoted_no(tmp_path: Path) -> None:
    path = tmp_path / "single.yaml"
    path.write_text(find_accelerate_config("single_gpu").read_text().replace("'NO'", "NO"))
    with pytest.raises(ConfigError, match=r"distributed_type: 'NO'"):
        check_accelerate_config(path, 1)


def test_check_says_how_to_install_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install deepspeed") as raised:
        check_accelerate_config(find_accelerate_config("zero2"), 2)
    assert "zero2.yaml" in str(raised.value)


@needs_deepspeed
@pytest.mark.parametrize(
    ("changes", "extra", "key"),
    [
        ({"deepspeed_config.gradient_accumulation_steps": 1}, {}, "deepspeed_config.gradient_accumulation_steps"),
        ({"deepspeed_config.zero3_save_16bit_model": False}, {}, "zero3_save_16bit_model"),
        ({}, {"load_in_4bit": True}, "trainer.trl.load_in_4bit"),
    ],
)
def test_check_refuses_what_breaks_zero3(
    changes: dict[str, Any], extra: dict[str, Any], key: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path, "zero3", **changes)
    with pytest.raises(ConfigError) as raised:
        check_accelerate_config(path, 2, **extra)
    assert key in str(raised.value) and str(path) in str(raised.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the note is for machines without CUDA")
def test_check_notes_that_fsdp_becomes_ddp_without_cuda() -> None:
    setup = check_accelerate_config(find_accelerate_config("fsdp2"), 2)
    assert any("plain DDP over gloo" in note for note in setup.notes)


def test_launch_command_shape() -> None:
    command = launch_command("configs/accelerate/ddp.yaml", 8, ["octrain.run.workers", Path("/runs/a"), "dpo"])
    assert command == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/ddp.yaml",
        "--num_processes",
        "8",
        "--mixed_precision",
        "no",  # octrain's own precision on this CPU machine, whatever the file says (bf16)
        "-m",
        "octrain.run.workers",
        "/runs/a",
        "dpo",
    ]
    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args(command[3:])
    assert args.module and args.training_script == "octrain.run.workers"
    assert args.training_script_args == ["/runs/a", "dpo"] and args.num_processes == 8


PROBE = """
import json, os, sys
import torch
from accelerate import PartialState

# cpu=True is what octrain's TrainingArguments(use_cpu=True) does without CUDA.
state = PartialState(cpu=True)
total = torch.tensor([float(state.process_index + 1)])
torch.distributed.all_reduce(total)
record = {"rank": state.process_index, "world": state.num_processes, "type": str(state.distributed_type),
          "backend": torch.distributed.get_backend(), "sum": total.item()}
with open(os.path.join(sys.argv[1], f"rank{state.process_index}.json"), "w") as handle:
    json.dump(record, handle)
# End together and take the group down cleanly: a rank that exits while the other's gloo threads still
# run can abort it ("terminate called without an active exception").
state.wait_for_everyone()
torch.distributed.destroy_process_group()
"""


def test_ddp_config_launches_two_processes_that_all_reduce_on_cpu(tmp_path: Path) -> None:
    (tmp_path / "allreduce_probe.py").write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    command = launch_command(find_accelerate_config("ddp"), 2, ["allreduce_probe", str(out)], main_process_port=0)
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=patience(120), env=os.environ.copy()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        assert record["world"] == 2
        assert record["sum"] == 3.0  # 1 + 2: both ranks took part
        assert record["type"] == "DistributedType.MULTI_CPU" and record["backend"] == "gloo"


FSDP_SFT = """
import json, os, sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from octrain.trainers.accelerate_configs import gathered_state_dict

model_path, out = sys.argv[1], Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(model_path)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"arr {i}"}]}
        for i in range(16)]
args = SFTConfig(output_dir=str(out / "checkpoints"), per_device_train_batch_size=2, max_steps=3, use_cpu=True,
                 bf16=False, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                 logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, max_length=64)
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                     peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
loss = trainer.train().training_loss
state = gathered_state_dict(trainer)  # every rank
accelerator = trainer.accelerator
if accelerator.is_main_process:
    trainer.model.save_pretrained(out / "adapter", state_dict=state)
record = {"rank": accelerator.process_index, "world": accelerator.num_processes, "loss": loss,
          "type": str(accelerator.distributed_type), "fsdp2": accelerator.is_fsdp2, "gathered": state is not None}
(out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
"""


@pytest.mark.slow
def test_fsdp2_config_on_cpu_falls_back_to_ddp(tmp_path: Path, tiny_model_path: str) -> None:
    """LoRA + checkpointing through accelerate with fsdp2.yaml on 2 CPU processes.

    It trains, but as DDP: accelerate 1.15 turns FSDP on only for GPU-family distributed types, and
    use_cpu=True makes the processes MULTI_CPU. This pins that, so a future accelerate that does
    shard on CPU shows up here (and the no-CUDA note in check_accelerate_config can go).
    """
    (tmp_path / "fsdp_sft_probe.py").write_text(FSDP_SFT)
    out = tmp_path / "out"
    out.mkdir()
    command = launch_command(
        find_accelerate_config("fsdp2"), 2, ["fsdp_sft_probe", tiny_model_path, str(out)], main_process_port=0
    )
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=patience(300), env=os.environ.copy()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    assert records[0]["loss"] == pytest.approx(records[1]["loss"])
    for record in records:
        assert record["world"] == 2
        assert record["type"] == "DistributedType.MULTI_CPU" and record["fsdp2"] is False
        assert record["gathered"] is False  # DDP ranks hold whole parameters: nothing to gather
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


RAW_FSDP2 = """
import json, os, sys
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

dist.init_process_group("gloo")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.enable_input_require_grads()
for layer in model.base_model.model.model.layers:  # the Qwen3DecoderLayers, as TRANSFORMER_BASED_WRAP would
    fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
losses = []
for _ in range(3):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
lora = next(p for n, p in model.named_parameters() if "lora_A" in n)
record = {"rank": dist.get_rank(), "losses": losses, "kind": type(lora).__name__,
          "local": list(lora.to_local().shape), "full": list(lora.shape)}
with open(os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json"), "w") as handle:
    json.dump(record, handle)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torch_fully_shard_trains_lora_on_cpu(tmp_path: Path, tiny_model_path: str) -> None:
    """torch 2.13's FSDP2 itself shards and trains a LoRA model on CPU over gloo (without accelerate)."""
    (tmp_path / "raw_fsdp2.py").write_text(RAW_FSDP2)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "raw_fsdp2.py", tiny_model_path, str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=patience(300),
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        assert record["kind"] == "DTensor"
        assert record["local"][0] * 2 == record["full"][0]  # each rank holds half of lora_A
        assert record["losses"][-1] < record["losses"][0]
    assert records[0]["losses"] == pytest.approx(records[1]["losses"])
