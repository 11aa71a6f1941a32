"""Capability retention through lm-evaluation-harness: task names, the paired change, and real harness runs.

The harness runs for real on the tiny model and a task written here in the harness's own format
(no Hub). What is checked against an independent computation: the log-likelihoods the harness gave
each choice of an item equal transformers' own, for the base and for the base with a LoRA adapter
whose weights are not zero, so the "trained" column really is the adapter's.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from conftest import run_cli
from octrain.core.errors import ConfigError
from octrain.evaluation.capability import (
    CapabilitySettings,
    ScoredModel,
    measure_capability,
    paired_change,
)
from octrain.evaluation.capability_tasks import PAPER_TASK_SPECS, check_tasks, parse_task, parse_tasks, task_manager

pytest.importorskip("lm_eval", reason="the capability extra (lm-evaluation-harness) is not installed")

QUESTIONS = [
    ("Which colour is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("How many legs does a cat have?", ["two", "four", "six"], 1),
    ("What do bees make?", ["milk", "wool", "honey"], 2),
    ("What is two plus two?", ["four", "five", "three"], 0),
    ("Which animal barks?", ["a fish", "a dog", "a bird"], 1),
    ("What is frozen water called?", ["steam", "sand", "ice"], 2),
]


def write_task(folder: Path, name: str = "octest_mc", *, data: bool = True) -> Path:
    """A multiple-choice task in lm-evaluation-harness's own YAML format, reading a local JSONL."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    data_file = folder / f"{name}.jsonl"
    if data:
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return folder


def test_task_specs_parse_with_defaults_and_the_paper_set() -> None:
    assert parse_task("mmlu:5", where="t").spec == "mmlu:5:acc"
    assert parse_task("arc_challenge:25:acc_norm", where="t").spec == "arc_challenge:25:acc_norm"
    assert parse_task("octrain_basics", where="t").spec == "octrain_basics:0:acc"
    paper = parse_tasks("paper", where="t")
    assert [t.spec for t in paper] == list(PAPER_TASK_SPECS)
    assert [(t.name, t.shots) for t in paper] == [
        ("mmlu", 5),
        ("arc_challenge", 25),
        ("hellaswag", 10),
        ("winogrande", 5),
        ("truthfulqa_mc2", 0),
    ]
    assert [t.name for t in parse_tasks(["octrain_basics:5", "mmlu:5"], where="t")] == ["octrain_basics", "mmlu"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mmlu:five", "whole number from 0"),
        ("mmlu:-1", "whole number from 0"),
        (":5", "expected NAME[:SHOTS[:METRIC]]"),
        ("a:1:acc:x", "expected NAME[:SHOTS[:METRIC]]"),
        ("", "no task named"),
        ("mmlu:5,mmlu:0", "mmlu named more than once"),
        ("paper,winogrande:0", "winogrande named more than once"),
    ],
)
def test_a_malformed_task_list_is_a_named_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        parse_tasks(spec, where="--tasks")
    assert str(raised.value).startswith("--tasks")


def test_the_paired_change_is_the_mean_item_difference_with_its_standard_error() -> None:
    base = {"t/0": 1.0, "t/1": 0.0, "t/2": 1.0, "t/3": 0.0, "t/4": 1.0, "only-base": 1.0}
    trained = {"t/0": 1.0, "t/1": 1.0, "t/2": 0.0, "t/3": 1.0, "t/4": 1.0, "only-trained": 0.0}
    change = paired_change(base, trained)
    # Differences over the five shared items: 0, +1, -1, +1, 0: mean 0.2, sample variance 0.7.
    assert change["n"] == 5
    assert change["mean"] == pytest.approx(0.2)
    assert change["stderr"] == pytest.approx(math.sqrt(0.7 / 5))
    low, high = change["ci"]
    assert low == pytest.approx(0.2 - 1.959964 * math.sqrt(0.14))
    assert high == pytest.approx(0.2 + 1.959964 * math.sqrt(0.14))
    assert paired_change({"a": 1.0}, {"b": 1.0}) == {"mean": None, "stderr": None, "ci": None, "n": 0}


def _settings(task_dir: Path, specs: str = "octest_mc:0", **kwargs: object) -> CapabilitySettings:
    return CapabilitySettings(tasks=tuple(parse_tasks(specs, where="t")), task_dir=str(task_dir), **kwargs)


def test_unknown_tasks_and_unreadable_data_stop_before_any_model_loads(tmp_path: Path) -> None:
    # The model does not exist: had it been loaded first, the error would be about the model.
    missing_model = ScoredModel("base", "no such model", str(tmp_path / "no-model"))
    tasks = write_task(tmp_path / "tasks", "octest_nodata", data=False)
    with pytest.raises(ConfigError, match="'octest_nodata': its data cannot be loaded"):
        measure_capability([missing_model], _settings(tasks, "octest_nodata:0"), tmp_path / "out")
    manager = task_manager(tmp_path / "out", str(tasks))
    with pytest.raises(ConfigError, match=r"'octrain_basic': not a task.*closest: octrain_basics"):
        check_tasks(parse_tasks("octrain_basic:0", where="t"), manager)
    with pytest.raises(ConfigError, match="not a folder"):
        measure_capability([missing_model], _settings(tmp_path / "nowhere"), tmp_path / "out")


def _random_adapter(base: str, where: Path) -> Path:
    """A LoRA adapter on the tiny model whose weights are not zero (PEFT's default B = 0 changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(where)
    return where


def _choice_logliks(base: str, adapter: Path | None, question: str, choices: list[str]) -> list[float]:
    """log p(" choice" | "Question: ...\\nAnswer:") under the model, computed here with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    context = f"Question: {question}\nAnswer:"
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    values = []
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
        values.append(sum(float(logits[i - 1, whole[i]]) for i in range(len(context_ids), len(whole))))
    return values


@pytest.mark.slow
def test_the_harness_scores_base_and_adapter_and_commits_each(tiny_model_path: str, tmp_path: Path) -> None:
    adapter = _random_adapter(tiny_model_path, tmp_path / "adapter")
    models = [
        ScoredModel("base", "tiny base", tiny_model_path, None, "float32"),
        ScoredModel("trained", "tiny + random LoRA", tiny_model_path, str(adapter), "float32"),
    ]
    settings = _settings(write_task(tmp_path / "tasks"), batch_size=4)
    out = tmp_path / "out"
    result = measure_capability(models, settings, out)

    (row,) = result["tasks"]
    assert (row["task"], row["shots"], row["metric"]) == ("octest_mc", 0, "acc")
    question, choices, _ = QUESTIONS[0]
    for name, weights in (("base", None), ("trained", adapter)):
        assert row[name]["n"] == len(QUESTIONS)
        assert row[name]["stderr"] is not None
        harness = row[name]["first_item_logliks"]
        assert harness["item"] == "octest_mc/0"
        assert harness["choices"] == pytest.approx(
            _choice_logliks(tiny_model_path, weights, question, choices), abs=2e-3
        )
    # The adapter changed what the harness measured (its weights are far from zero).
    assert row["base"]["first_item_logliks"]["choices"] != pytest.approx(
        row["trained"]["first_item_logliks"]["choices"], abs=1e-2
    )
    scores = {
        name: json.loads((out / f"scores-{name}.json").read_text())["tasks"]["octest_mc"]
        for name in models_names(models)
    }
    expected = sum(scores["trained"]["items"].values()) / 6 - sum(scores["base"]["items"].values()) / 6
    assert row["change"]["mean"] == pytest.approx(expected)
    assert row["base"]["value"] == pytest.approx(sum(scores["base"]["items"].values()) / 6)
    report = (out / "capability.md").read_text()
    assert "| octest_mc | 0 | acc | 6 |" in report
    assert "under 100 items: octest_mc" in report

    # Committed scores are read back, not made again; another setting (here the limit) scores again.
    committed = {name: (out / f"scores-{name}.json").stat().st_mtime_ns for name in models_names(models)}
    assert measure_capability(models, settings, out)["tasks"] == result["tasks"]
    assert {name: (out / f"scores-{name}.json").stat().st_mtime_ns for name in committed} == committed
    limited = measure_capability(models[:1], _settings(tmp_path / "tasks", limit=2, batch_size=4), out)
    assert limited["tasks"][0]["base"]["n"] == 2
    assert any("limit 2" in note for note in limited["notes"])


def models_names(models: list[ScoredModel]) -> list[str]:
    return [m.name for m in models]


@pytest.mark.slow  # the harness twice through the CLI (~35 s): the slow lane, which CI runs
def test_the_verb_scores_a_trained_run_beside_its_base_on_the_shipped_task(
    trained_tiny_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "capability"
    result = run_cli(
        "eval",
        "capability",
        str(trained_tiny_root / "pirate_tiny"),
        "--tasks",
        "octrain_basics:1",
        "--limit",
        "12",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    (row,) = printed["tasks"]
    assert (row["task"], row["shots"], row["base"]["n"], row["trained"]["n"]) == ("octrain_basics", 1, 12, 12)
    assert printed["models"]["trained"].endswith("(sft)")
    assert json.loads((out / "capability.json").read_text())["tasks"] == printed["tasks"]

    bad = run_cli("eval", "capability", str(trained_tiny_root / "pirate_tiny"), "--tasks", "mmlu:five")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("octrain: error: octrain eval capability.tasks: 'mmlu:five'")
