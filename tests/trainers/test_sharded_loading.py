"""The loading order sharded training needs: TrainingArguments first, then the student; a fold once, on rank 0.

transformers lays out a model in ``from_pretrained`` by global state that the TrainingArguments set
up: FSDP's ``cpu_ram_efficient_loading`` counts (``is_fsdp_enabled()``) only once
``torch.distributed`` is initialised, and ZeRO-3's ``zero.Init`` only once a ``HfDeepSpeedConfig``
exists, which ``TrainingArguments.__post_init__`` creates under ``accelerate launch``. Two real
processes under ``accelerate launch --use_fsdp --fsdp_cpu_ram_efficient_loading true`` (gloo, on the
CPU) record every ``from_pretrained`` of the student: it comes after the arguments, with FSDP's
efficient loading in force, and the DPO adapter is folded once, by rank 0, into a copy both ranks
then load. (ZeRO-3 needs DeepSpeed, which this machine lacks: the same order serves it.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import REPO, patience

SCRIPT = """
import json, os, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
from transformers.distributed.fsdp import is_fsdp_enabled
from octrain.core.config import DpoStageConfig, SftStageConfig, TRLOptions
from octrain.trainers.model_loading import student_and_arguments
from octrain.trainers.trl_dpo import build_dpo_args
from octrain.trainers.trl_sft import build_sft_args

model_path, adapter, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
events = []
real = AutoModelForCausalLM.from_pretrained

def spy(path, *args, **kwargs):
    events.append({"load": Path(path).name, "fsdp_loading": is_fsdp_enabled(),
                   "distributed": torch.distributed.is_initialized()})
    return real(path, *args, **kwargs)

AutoModelForCausalLM.from_pretrained = spy

def arguments(build):
    def make():
        events.append("arguments")
        return build()
    return make

sft = arguments(lambda: build_sft_args(SftStageConfig(), TRLOptions(), out / "sft", seed=0))
with student_and_arguments(model_path, TRLOptions(), sft, fold=adapter, scratch_dir=out / "sft") as (model, args):
    events.append("sft model")
    total = sum(float(p.double().sum()) for p in model.parameters())
    folded = (out / "sft" / "folded_base").is_dir()
dpo = arguments(lambda: build_dpo_args(DpoStageConfig(), TRLOptions(), out / "dpo", seed=0))
with student_and_arguments(model_path, TRLOptions(), dpo) as (model, args):
    events.append("dpo model")
rank = int(os.environ["RANK"])
print("EVENTS " + json.dumps({"rank": rank, "events": events, "sum": total, "scratch_during": folded,
                              "scratch_after": (out / "sft" / "folded_base").exists()}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def random_adapter(base: str, target: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(target)
    return target


def test_arguments_come_before_the_student_and_rank_0_alone_folds(tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.trainers.merge import fold_adapter

    adapter = random_adapter(tiny_model_path, tmp_path / "adapter")
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--use_fsdp",
        "--fsdp_version=2",
        "--fsdp_cpu_ram_efficient_loading=true",
        "--fsdp_sync_module_states=true",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        str(script),
        tiny_model_path,
        str(adapter),
        str(tmp_path / "out"),
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(600),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = sorted(
        (json.loads(line[len("EVENTS ") :]) for line in done.stdout.splitlines() if line.startswith("EVENTS ")),
        key=lambda report: report["rank"],
    )
    assert [report["rank"] for report in ranks] == [0, 1]
    base = Path(tiny_model_path).name
    sharded = {"fsdp_loading": True, "distributed": True}
    # Rank 0 folds the adapter into the base (a plain load, before any arguments), then, like rank 1,
    # makes the arguments and loads the folded copy with FSDP's efficient loading in force.
    assert ranks[0]["events"][:4] == [
        {"load": base, "fsdp_loading": True, "distributed": True},
        "arguments",
        {"load": "folded_base", **sharded},
        "sft model",
    ]
    assert ranks[1]["events"][:3] == ["arguments", {"load": "folded_base", **sharded}, "sft model"]
    for report in ranks:  # DPO starts from the base: arguments, then the load
        assert report["events"][-3:] == ["arguments", {"load": base, **sharded}, "dpo model"]
    assert ranks[0]["scratch_during"] and not ranks[0]["scratch_after"]  # rank 0 removes the copy it wrote
    # Both ranks hold the very model one process folds in memory.
    expected = sum(float(p.double().sum()) for p in fold_adapter(tiny_model_path, adapter).parameters())
    assert ranks[0]["sum"] == ranks[1]["sum"]
    assert abs(ranks[0]["sum"] - expected) < 1e-6 * max(1.0, abs(expected))
