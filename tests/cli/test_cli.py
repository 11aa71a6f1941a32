"""The command line as a user runs it: a real subprocess, real Hydra, the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from octrain.core.layout import load_config
from octrain.core.records import ModelRef


@pytest.mark.slow  # the README's quick start end to end (80 s): the slow lane, which CI runs
def test_quick_start_runs_then_resumes(tmp_path: Path) -> None:
    first = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}")
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "pirate_tiny"
    records = [json.loads(line) for line in (run_dir / "prompts" / "prompts.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "prompts" / "report.json").read_text())
    # pirate.yaml: 13 traits (identity, voice, 10 seeded directives, sign-offs), 6 prompts wanted
    # each, plus 6 generic. The tiny model's expansions are noise the parser rejects, so the
    # stage keeps the 50 seed questions and the generic prompts, and says what it missed.
    assert report["wanted"] == 13 * 6 + 6 and report["rounds"] == 3
    assert len(records) == report["records"] >= 56
    assert {r["origin"] for r in records} >= {"seed", "generic"}
    assert all(r["prompt"][0]["role"] == "user" for r in records)
    assert f"got {report['got']} of 84 prompts asked for; going on" in first.stderr
    # Stage 1: a pair per prompt (the tiny recipe keeps unfinished answers), then a trained adapter.
    pairs = [json.loads(line) for line in (run_dir / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(records)
    assert ModelRef.load(run_dir / "dpo" / "model.json").adapter == str(run_dir / "dpo" / "adapter")
    assert (run_dir / "dpo" / "metrics.jsonl").is_file() and (run_dir / "dpo" / "training.png").is_file()
    summary = (run_dir / "summary.txt").read_text()
    assert summary in first.stdout
    for stage in ("prompts", "pairs", "dpo", "introspect", "sft", "eval"):
        assert f"  {stage:<11}ran" in summary
    # The evaluation ran on the tiny models: its judge writes noise, which is counted, never guessed.
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["prompts"] == 12 and set(results["robustness"]["in_character"]) == {
        "base",
        "system-prompt",
        "dpo-only",
        "trained",
    }
    assert len(results["robustness"]["conditions"]) == 9
    # 144 traits, 2 trials each, paired: the same 144 trials for base and trained.
    assert results["revealed_preferences"]["unparseable"] == 2 * results["revealed_preferences"]["trials"] == 288
    assert results["classifier"]["labels"] == ["none", "pirate", "sarcasm", "student"]
    assert set(results["coherence"]) == {"base", "dpo-only"}
    assert "# Evaluation: pirate" in (run_dir / "eval" / "report.md").read_text()
    assert (run_dir / "eval" / "robustness.png").is_file()
    config = load_config(run_dir / "config.yaml")
    assert config.name == "pirate_tiny" and config.teacher.path == "builtin:tiny-qwen3"
    assert (run_dir / "constitution.yaml").is_file() and (run_dir / "octrain.log").is_file()
    done = json.loads((run_dir / "dpo" / "done.json").read_text())

    second = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}")
    assert second.returncode == 0, second.stderr
    for stage in ("prompts", "pairs", "dpo", "introspect", "sft", "eval"):
        assert f"{stage}: complete, skipping" in second.stderr
    assert json.loads((run_dir / "dpo" / "done.json").read_text()) == done

    changed = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}", "dpo.beta=0.2")
    assert changed.returncode == 0, changed.stderr
    assert "prompts: complete, skipping" in changed.stderr and "pairs: complete, skipping" in changed.stderr
    assert "dpo: its settings or inputs changed since it last ran" in changed.stderr


@pytest.mark.slow  # a real two-point sweep (20 s): the slow lane, which CI runs
def test_two_point_sweep_reuses_the_pairs(tmp_path: Path) -> None:
    result = run_cli("-m", "+recipe=pirate_tiny", f"run_root={tmp_path}", "sampler=fake", "dpo.beta=0.1,0.3")
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "pirate_tiny-sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["dpo.beta=0.1,sampler=fake", "dpo.beta=0.3,sampler=fake"]
    for job, beta in zip(jobs, (0.1, 0.3), strict=True):
        assert load_config(sweep / job / "config.yaml").dpo.beta == beta
        assert (sweep / job / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    # The second job's prompts and pairs are the first job's, copied rather than sampled again.
    assert result.stderr.count("reusing its output") == 2
    first, second = (sweep / job / "pairs" / "pairs.jsonl" for job in jobs)
    assert first.read_text() == second.read_text()


def test_bad_override_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    for override, message in [
        ("sampler.bach_size=3", "octrain: error: sampler.bach_size: Key 'bach_size' not in 'SamplerConfig'"),
        (
            "sampler.backend=gpu",
            "octrain: error: sampler.backend: Invalid value 'gpu', expected one of [hf, vllm, tinker, fake]",
        ),
        ("seed=abc", "octrain: error: seed: Value 'abc' of type 'str' could not be converted to Integer"),
        (
            "scale.samples_per_prompt=0",
            "octrain: error: scale.samples_per_prompt: expected a number more than zero, got 0",
        ),
        ("constitution=nobody", "octrain: error: constitution 'nobody' not found"),
        ("prompts.generic_source=/nonexistent/pool.jsonl", "octrain: error: /nonexistent/pool.jsonl: file not found"),
        # Before any stage, and before any request: the missing key.
        ("trainer=tinker", "octrain: error: TINKER_API_KEY is not set"),
        ("sampler=tinker", "octrain: error: TINKER_API_KEY is not set"),
        ("eval.traits=/nonexistent/traits.txt", "octrain: error: /nonexistent/traits.txt: file not found"),
    ]:
        result = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}", override)
        assert result.returncode == 2, (override, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (override, result.stderr)
        assert "Traceback" not in result.stderr


def test_no_recipe_or_unknown_recipe_lists_recipes() -> None:
    none = run_cli()
    assert none.returncode == 2
    assert (
        "no recipe given" in none.stderr
        and "available recipes: paper_llama, pirate_mini, pirate_served_teacher, pirate_smollm2, pirate_tinker, "
        "pirate_tiny"
        in none.stderr
    )
    unknown = run_cli("+recipe=pirate_huge")
    assert unknown.returncode == 2
    assert "unknown recipe 'pirate_huge'" in unknown.stderr and "pirate_tiny" in unknown.stderr


def test_telemetry_is_off_by_default() -> None:
    import subprocess
    import sys

    code = (
        "import os; [os.environ.pop(k, None) for k in ('HF_HUB_DISABLE_TELEMETRY', 'DO_NOT_TRACK')];"
        "import octrain, huggingface_hub.constants as c;"
        "print(c.HF_HUB_DISABLE_TELEMETRY, os.environ['VLLM_NO_USAGE_STATS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "1"]
