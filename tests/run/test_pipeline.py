"""The pipeline as a function: stage order, skipping, forcing, reuse, and the model it leaves."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from octrain.core.compose import compose_config
from octrain.core.config import StageName
from octrain.core.errors import StageError
from octrain.core.records import ModelRef
from octrain.models.builtin import resolve_model_path
from octrain.run.pipeline import run
from octrain.samplers import SamplingParams
from octrain.samplers.hf import HFSampler

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


def _tree(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")} if root.exists() else set()


def test_a_run_outside_run_root_writes_only_into_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cwd, elsewhere = tmp_path / "root", tmp_path / "cwd", tmp_path / "elsewhere"
    for directory in (root, cwd, elsewhere):
        directory.mkdir()
    monkeypatch.chdir(cwd)
    config = compose_config("pirate_tiny", [*STAGE1, f"run_root={root}"])  # reuse is on by default
    first = run(config, elsewhere / "a")
    assert statuses(first) == {"prompts": "ran", "pairs": "ran", "dpo": "ran"}
    assert _tree(root) == set() and _tree(cwd) == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "elsewhere", "root"]

    # A second run beside the first finds its generation stages there, still without writing elsewhere.
    second = compose_config("pirate_tiny", [*STAGE1, f"run_root={root}", "dpo.beta=0.5"])
    assert statuses(run(second, elsewhere / "b")) == {"prompts": "reused", "pairs": "reused", "dpo": "ran"}
    assert (elsewhere / "b" / "pairs" / "pairs.jsonl").read_bytes() == (
        elsewhere / "a" / "pairs" / "pairs.jsonl"
    ).read_bytes()
    assert _tree(root) == set() and _tree(cwd) == set()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["a", "b"]


def test_reuse_between_sweep_jobs_and_plain_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="octrain")  # the log names the run each reused stage came from
    generation = [*FAST, f"run_root={tmp_path}", "stages=[prompts,pairs]"]
    # The directories Hydra gives a sweep's jobs: <run_root>/<name>-sweep/<overrides>/.
    sweep = tmp_path / "pirate_tiny-sweep"
    job = compose_config("pirate_tiny", [*generation, "dpo.beta=0.1"])
    assert statuses(run(job, sweep / "dpo.beta=0.1")) == {"prompts": "ran", "pairs": "ran"}
    other_job = compose_config("pirate_tiny", [*generation, "dpo.beta=0.3"])
    assert statuses(run(other_job, sweep / "dpo.beta=0.3")) == {"prompts": "reused", "pairs": "reused"}
    assert f"as {(sweep / 'dpo.beta=0.1' / 'pairs').resolve()}: reusing" in caplog.text
    caplog.clear()
    # A plain run under run_root finds a sweep job's stages one level deeper.
    plain = compose_config("pirate_tiny", [*generation, "dpo.beta=0.2"])
    assert statuses(run(plain, tmp_path / "plain")) == {"prompts": "reused", "pairs": "reused"}
    assert f"as {sweep.resolve()}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pirate_tiny-sweep", "plain"]


def _finished(stage_dir: Path, fingerprint: str, mtime: float) -> Path:
    stage_dir.mkdir(parents=True)
    (stage_dir / "done.json").write_text(json.dumps({"fingerprint": fingerprint, "summary": {}}))
    os.utime(stage_dir / "done.json", (mtime, mtime))
    return stage_dir


def test_reuse_takes_the_newest_match_and_never_the_run_itself(tmp_path: Path) -> None:
    from octrain.run.reuse import find_reusable

    config = compose_config("pirate_tiny", [*FAST, f"run_root={tmp_path / 'runs'}"])
    runs = tmp_path / "runs"
    _finished(runs / "old" / "pairs", "abc", 1_000)
    newest = _finished(runs / "x-sweep" / "job" / "pairs", "abc", 3_000)
    _finished(runs / "other-settings" / "pairs", "def", 4_000)
    me = _finished(runs / "me" / "pairs", "abc", 5_000)  # the run's own stage: never its source
    _finished(runs / "deep" / "er" / "still" / "pairs", "abc", 6_000)  # beyond the sweep depth: not searched
    assert find_reusable(config, runs / "me", StageName.pairs, "abc") == newest.resolve()
    assert find_reusable(config, runs / "me", StageName.pairs, "zzz") is None
    assert find_reusable(config, runs / "me", StageName.prompts, "abc") is None
    # Outside run_root, the run's parent is searched too; run_root still is (runs/me is another run now).
    beside = _finished(tmp_path / "elsewhere" / "a" / "pairs", "abc", 2_000)
    assert find_reusable(config, tmp_path / "elsewhere" / "b", StageName.pairs, "abc") == me.resolve()
    _finished(tmp_path / "elsewhere" / "c" / "pairs", "ghi", 7_000)
    config.run_root = str(tmp_path / "missing")
    assert find_reusable(config, tmp_path / "elsewhere" / "b", StageName.pairs, "abc") == beside.resolve()
