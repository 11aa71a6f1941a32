"""``accelerate launch -m octrain``: two real processes on the CPU (gloo), one run directory, one set of files.

Rank 0 samples and writes; rank 1 writes nothing and joins the training stages, where DDP splits
each batch between the two. The adapter two ranks train equals, to float rounding, the one a
single process trains at the same effective batch (the same 8 pairs per step, the gradient
averaged over ranks instead of accumulated).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli

QUICK = ["prompts.expansion_rounds=0"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*args: str, processes: int = 2, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``accelerate launch --multi_gpu --num_processes N -m octrain ARGS``, as a user on a GPU box types it."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={processes}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        "-m",
        "octrain",
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=patience(timeout), env=env)


def lora_weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.mark.slow
def test_a_whole_recipe_under_two_processes_makes_one_set_of_files(tmp_path: Path) -> None:
    done = launch("+recipe=pirate_tiny", f"run_root={tmp_path}", *QUICK)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "pirate_tiny"
    for stage in ("prompts", "pairs", "dpo", "introspect", "sft", "eval"):
        assert (run_dir / stage / "done.json").is_file()
    assert "rank 1: training dpo with rank 0" in done.stderr
    assert "rank 1: training sft with rank 0" in done.stderr
    # One rank sampled: every prompt once in the pairs, and each stage logged once.
    log = (run_dir / "octrain.log").read_text()
    assert log.count("pairs: running") == 1 and log.count("dpo: running") == 1
    pairs = (run_dir / "pairs" / "pairs.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"][0]["content"] for line in pairs]
    assert len(prompts) == len(set(prompts)) == 56
    # done.json holds the whole training, counted once: 56 pairs at an effective batch of 8 is 7 steps.
    dpo = json.loads((run_dir / "dpo" / "done.json").read_text())["summary"]
    assert dpo["steps"] == 7
    assert (run_dir / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    # Running it again under the launcher skips every stage, on both ranks.
    again = launch("+recipe=pirate_tiny", f"run_root={tmp_path}", *QUICK)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training dpo with rank 0" not in again.stderr
    assert len(list((run_dir / ".ranks").iterdir())) == 1  # the earlier launch's signals are gone


def metric_losses(stage_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains_at_the_same_batch(tmp_path: Path) -> None:
    # Every run in one run root: the later ones reuse the first one's prompts and pairs (same
    # settings, same fingerprints) and import its introspection, so that DPO and SFT see the same
    # data everywhere and only how the training is spread differs. (Sampled anew, the transcripts
    # would follow each run's DPO adapter, which differs in its last bits.)
    base = ["+recipe=pirate_tiny", f"run_root={tmp_path}", *QUICK]
    data = run_cli(*base, "name=data", "stages=[prompts,pairs,dpo,introspect]")
    assert data.returncode == 0, data.stderr[-3000:]
    common = [
        *base,
        "stages=[prompts,pairs,dpo,introspect,sft]",
        f"introspect.source={tmp_path}/data/introspect/sft.jsonl",
    ]
    single = run_cli(*common, "name=one")
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch(*common, "name=two")
    assert double.returncode == 0, double.stderr[-3000:]
    launched = run_cli(*common, "name=launched", "trainer.num_processes=2")
    assert launched.returncode == 0, launched.stderr[-3000:]
    other_seed = run_cli(*common, "name=control", "seed=1")
    assert other_seed.returncode == 0, other_seed.stderr[-3000:]
    for stage, adapter in (("dpo", "adapter"), ("sft", "sft_adapter")):
        one, two, by_pipeline, control = (
            lora_weights(tmp_path / name / stage / adapter) for name in ("one", "two", "launched", "control")
        )
        assert one.keys() == two.keys()
        for name in one:
            if "lora_B" not in name:
                continue
            scale = one[name].abs().max().item()
            assert scale > 0
            # Two ranks and one process agree to float rounding; another seed (other data order,
            # other LoRA init) lands far away: the check can tell them apart.
            assert (one[name] - two[name]).abs().max().item() < 1e-3 * scale, (stage, name)
            assert (one[name] - by_pipeline[name]).abs().max().item() < 1e-3 * scale, (stage, name)
            assert (one[name] - control[name]).abs().max().item() > 1e-2 * scale, (stage, name)
        # The loss curve, step by step: the loss two ranks log is the mean over both, as one process's
        # is over its two accumulated micro-batches.
        curve = metric_losses(tmp_path / "one" / stage)
        assert len(curve) == len(metric_losses(tmp_path / "two" / stage)) > 1
        for a, b in zip(curve, metric_losses(tmp_path / "two" / stage), strict=True):
            assert abs(a - b) < 1e-4 * abs(a), (stage, curve)


@pytest.mark.slow
def test_trainer_num_processes_launches_the_training_stages_with_accelerate(tmp_path: Path) -> None:
    done = run_cli(
        "+recipe=pirate_tiny", f"run_root={tmp_path}", "stages=[prompts,pairs,dpo]", "trainer.num_processes=2", *QUICK
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dpo: training on 2 processes (accelerate launch --config_file " in done.stderr
    assert "configs/accelerate/ddp.yaml" in done.stderr
    dpo = json.loads((tmp_path / "pirate_tiny" / "dpo" / "done.json").read_text())["summary"]
    assert dpo["steps"] == 7  # 56 pairs, 4 per device on each of 2 ranks: 8 a step
    assert (tmp_path / "pirate_tiny" / "dpo" / "adapter" / "adapter_model.safetensors").is_file()


def test_ranks_that_disagree_stop_together_with_one_line(tmp_path: Path) -> None:
    # Each rank composes its own config: here only rank 1 gets a different seed (through the environment).
    script = tmp_path / "disagree.py"
    script.write_text(
        "import os, sys\n"
        "from octrain.__main__ import main\n"
        "extra = ['seed=7'] if os.environ.get('RANK') == '1' else []\n"
        "sys.exit(main(sys.argv[1:] + extra))\n"
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        str(script),
        "+recipe=pirate_tiny",
        f"run_root={tmp_path}",
        "stages=[prompts]",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=patience(300))
    assert done.returncode != 0
    assert done.stderr.count("octrain: error: the 2 ranks of this launch do not run the same thing") == 2
    assert not (tmp_path / "pirate_tiny" / "prompts").exists()  # nothing was made
