"""The Tinker trainers' shared step loop (octrain.trainers.tinker_loop) on a bare fake training client.

No SDK and no model: the client only records what it is asked, so these tests pin down the loop's
own rules, which both Tinker trainers rely on: where states are saved and what they are named, that
the progress file names a state only once it is saved, that a resume trains each remaining step
exactly once and keeps the metrics of the steps before it, and that other settings start afresh.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from octrain.core.config import TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.records import ModelRef
from octrain.trainers import tinker_loop

OPTIONS = TinkerOptions(save_steps=2)


@dataclass
class Done:
    """An SDK future whose answer is already there."""

    value: Any

    def result(self) -> Any:
        return self.value


@dataclass
class Saved:
    path: str


class Killed(Exception):
    pass


class FakeClient:
    def __init__(self, calls: list[tuple[str, Any]], kill_at_step: int | None = None) -> None:
        self.calls = calls
        self.kill_at_step = kill_at_step  # 0-based: the forward-backward of this step never comes back

    def forward_backward(self, step: int) -> Done:
        if step == self.kill_at_step:
            raise Killed
        self.calls.append(("forward_backward", step))
        return Done({"loss": 10.0 - step})

    def optim_step(self, params: Any) -> Done:
        self.calls.append(("optim_step", params))
        return Done(None)

    def save_state(self, name: str, ttl_seconds: int | None = None) -> Done:
        self.calls.append(("save_state", name))
        return Done(Saved(f"tinker://run/weights/{name}"))

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None) -> Done:
        self.calls.append(("save_weights_for_sampler", name))
        return Done(Saved(f"tinker://run/sampler_weights/{name}"))


class FakeService:
    def __init__(self, kill_at_step: int | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.kill_at_step = kill_at_step

    def create_training_client_from_state_with_optimizer(self, path: str) -> Done:
        self.calls.append(("resume", path))
        return Done(FakeClient(self.calls, self.kill_at_step))

    def start(self) -> FakeClient:
        self.calls.append(("start", None))
        return FakeClient(self.calls, self.kill_at_step)


def train(out: Path, service: FakeService, *, key: str = "k1", total: int = 5) -> tinker_loop.ResumableTraining:
    training = tinker_loop.ResumableTraining(out, stage="dpo", key=key, total_steps=total, options=OPTIONS)
    client = training.open_client(service, service.start)
    plan = tinker_loop.StepPlan(
        learning_rate=lambda step: 0.1 * (step + 1),
        adam=lambda lr: ("adam", lr),
        send=lambda step: (client.forward_backward(step), f"context {step}"),
        row=lambda step, result, context: {**result, "context": context},
    )
    training.run(client, plan)
    return training


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_states_are_saved_every_save_steps_and_at_the_end(tmp_path: Path) -> None:
    service = FakeService()
    training = train(tmp_path, service)
    saves = [name for kind, name in service.calls if kind.startswith("save")]
    assert saves == ["dpo-step-000002", "dpo-step-000004", "dpo-final", "dpo-final"]
    # Every optimizer step goes out right after its forward-backward, before any answer is read.
    assert [kind for kind, _ in service.calls[1:5]] == ["forward_backward", "optim_step"] * 2
    assert [params for kind, params in service.calls if kind == "optim_step"] == [
        ("adam", pytest.approx(0.1 * (step + 1))) for step in range(5)
    ]
    assert rows(tmp_path) == [
        {"step": step + 1, "loss": 10.0 - step, "context": f"context {step}", "learning_rate": 0.1 * (step + 1)}
        for step in range(5)
    ]
    progress = tinker_loop.Progress.load(tmp_path)
    assert progress == training.progress
    assert progress == tinker_loop.Progress(
        step=5,
        state_path="tinker://run/weights/dpo-final",
        fingerprint="k1",
        final_state_path="tinker://run/weights/dpo-final",
        sampler_path="tinker://run/sampler_weights/dpo-final",
    )
    assert training.finished
    result = training.finish("base-model", (("loss", ("loss",)),))
    assert result == ModelRef(base="base-model", remote="tinker://run/sampler_weights/dpo-final")
    assert ModelRef.load(tmp_path / "model.json") == result
    assert json.loads((tmp_path / "train_summary.json").read_text())["optimizer_steps"] == 5


def test_a_killed_run_resumes_at_its_last_saved_state(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        train(tmp_path, FakeService(kill_at_step=3))  # steps 0-2 trained, only the first two saved
    progress = tinker_loop.Progress.load(tmp_path)
    assert progress is not None and (progress.step, progress.sampler_path) == (2, None)
    assert progress.state_path == "tinker://run/weights/dpo-step-000002"
    assert [row["step"] for row in rows(tmp_path)] == [1, 2]  # written with the state, not after

    service = FakeService()
    train(tmp_path, service)
    assert service.calls[0] == ("resume", "tinker://run/weights/dpo-step-000002")  # with its Adam moments
    assert [step for kind, step in service.calls if kind == "forward_backward"] == [2, 3, 4]  # each step once
    assert [row["step"] for row in rows(tmp_path)] == [1, 2, 3, 4, 5]


def test_progress_of_other_settings_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(Killed):
        train(tmp_path, FakeService(kill_at_step=3))
    service = FakeService()
    with caplog.at_level(logging.WARNING, logger="octrain.trainers.tinker_loop"):
        training = train(tmp_path, service, key="k2")
    assert "tinker_progress.json is from other data or settings" in caplog.text
    assert service.calls[0] == ("start", None)
    assert [step for kind, step in service.calls if kind == "forward_backward"] == [0, 1, 2, 3, 4]
    assert training.progress.fingerprint == "k2" and [row["step"] for row in rows(tmp_path)] == [1, 2, 3, 4, 5]


def test_a_finished_training_is_known_without_the_service(tmp_path: Path) -> None:
    train(tmp_path, FakeService())
    again = tinker_loop.ResumableTraining(tmp_path, stage="dpo", key="k1", total_steps=5, options=OPTIONS)
    assert again.finished
    longer = tinker_loop.ResumableTraining(tmp_path, stage="dpo", key="k1", total_steps=6, options=OPTIONS)
    assert not longer.finished


def test_step_batches_cover_every_record_once_per_epoch() -> None:
    batches = tinker_loop.step_batches(10, batch_size=4, epochs=2.0, seed=1, label="dpo-order")
    assert [len(batch) for batch in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(index for batch in epoch for index in batch) == list(range(10))
    kept = tinker_loop.step_batches(10, batch_size=4, epochs=0.5, seed=1, label="sft", shuffle_first_epoch=False)
    assert kept == [[0, 1, 2, 3], [4, 5, 6, 7]]  # ceil(3 steps x 0.5), in the records' own order


def test_save_steps_below_one_are_refused() -> None:
    with pytest.raises(ConfigError, match="save_steps=0"):
        tinker_loop.check_save_steps(TinkerOptions(save_steps=0))
