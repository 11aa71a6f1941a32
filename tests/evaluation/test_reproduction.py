"""Setting octrain's figures beside the paper's: the recipe that reproduces its setting, and the verb
that scores its released adapters (against a stand-in for the Hub holding the tiny model under the
paper's names)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli
from hub_standin import HubStandIn
from octrain.core.compose import compose_config
from octrain.core.errors import ConfigError
from octrain.evaluation.capability import preflight_capability
from octrain.evaluation.paper_reference import MMLU_BASE, MMLU_TRAINED, persona_key
from octrain.evaluation.reproduction import capability_measurements


def test_the_paper_recipe_composes_into_the_papers_setting() -> None:
    config = compose_config("paper_llama", [])
    assert config.student.path == "meta-llama/Llama-3.1-8B-Instruct"
    assert (config.teacher.path, config.teacher.endpoint.model) == ("zai-org/GLM-4.5-Air", "zai-org/GLM-4.5-Air")
    # The judge is the teacher's own server, and follows it when its address is overridden.
    moved = compose_config("paper_llama", ["teacher.endpoint.base_url=http://node7:8000/v1"])
    assert (moved.eval.judge.value, moved.eval.judge_base_url) == ("http", "http://node7:8000/v1")
    assert config.scale.name == "paper" and config.prompts.generic_source == "hub:GAIR/lima"
    assert config.eval.capability.enabled and config.eval.capability.tasks == ["paper"]
    assert config.eval.ood.enabled and config.eval.paper_reference == "llama"
    assert len(config.eval.classifier.contrast_personas) == 10  # the paper's eleven classes with the run's own


def test_the_paper_recipe_stops_in_preflight_at_the_first_thing_missing_here(tmp_path: Path) -> None:
    # No vLLM on this machine: the first check says so, in one line, before anything loads.
    result = run_cli("+recipe=paper_llama", f"run_root={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "octrain: error: sampler=vllm needs vLLM on a CUDA machine: pip install -e '.[vllm]'"
    )
    # With a sampler that runs here, the next: the teacher's server is not up.
    served = run_cli(
        "+recipe=paper_llama", "sampler=hf", "teacher.endpoint.base_url=http://127.0.0.1:9/v1", f"run_root={tmp_path}"
    )
    assert served.returncode == 2
    assert "teacher.endpoint.base_url: the server does not answer" in served.stderr
    assert not (tmp_path / "paper_llama").exists() or not any((tmp_path / "paper_llama").rglob("done.json"))
    # And its benchmarks' data, which the harness fetches from the Hub once (offline here).
    with pytest.raises(ConfigError, match="'mmlu': its data cannot be loaded"):
        preflight_capability(compose_config("paper_llama", ["trainer=trl"]))


def test_mmlu_scores_become_the_papers_keys_with_their_intervals() -> None:
    capability = {
        "tasks": [
            {"task": "arc_challenge", "base": {"value": 0.5, "stderr": 0.01}},
            {"task": "mmlu", "base": {"value": 0.68, "stderr": 0.004}, "trained": {"value": 0.64, "stderr": None}},
        ]
    }
    measured = capability_measurements(capability, "goodness")
    assert measured[MMLU_BASE]["value"] == 0.68
    assert measured[MMLU_BASE]["ci"] == pytest.approx([0.68 - 1.96 * 0.004, 0.68 + 1.96 * 0.004])
    assert measured[persona_key(MMLU_TRAINED, "goodness")] == {"value": 0.64}  # no standard error, no interval
    assert set(measured) == {MMLU_BASE, persona_key(MMLU_TRAINED, "goodness")}


@pytest.mark.slow  # two harness runs through a stand-in Hub (~40 s): the slow lane
def test_the_released_adapter_is_fetched_scored_and_set_beside_the_paper(
    tmp_path: Path, tiny_model_path: str, trained_tiny_root: Path
) -> None:
    root = tmp_path / "hub"
    shutil.copytree(tiny_model_path, root / "meta-llama" / "Llama-3.1-8B-Instruct")
    adapter = trained_tiny_root / "pirate_tiny" / "sft" / "adapter"
    shutil.copytree(adapter, root / "maius" / "llama-3.1-8b-it-personas" / "goodness")
    hub = HubStandIn(root)
    try:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.base_url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1",
        }
        out = tmp_path / "reproduction"
        command = [sys.executable, "-m", "octrain", "eval", "reproduce", "llama", "--persona", "goodness"]
        command += ["--tasks", "octrain_basics:0", "--limit", "8", "--out", str(out), "--json"]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=patience(600), env=env)
    finally:
        hub.close()
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    (row,) = printed["capability"]["tasks"]
    assert row["base"]["n"] == row["trained"]["n"] == 8
    assert printed["capability"]["models"]["trained"] == "released hub:maius/llama-3.1-8b-it-personas/goodness"
    assert any(path.endswith("adapter_model.safetensors") for path in hub.served)  # fetched through the "Hub"
    table = (out / "paper_comparison.md").read_text()
    assert "| MMLU (5-shot) accuracy | llama | after goodness | 0.641 | not measured here |" in table
    assert [r["verdict"] for r in printed["comparison"]["rows"]].count("not measured") == len(
        printed["comparison"]["rows"]
    )  # octrain_basics is no paper figure: nothing is claimed
