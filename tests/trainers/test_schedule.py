"""The learning-rate schedule both backends follow (octrain.trainers.schedule): every run trains.

transformers' own rule gave a run of one optimizer step one warmup step at LR 0, so ``scale=smoke``'s
DPO (16 pairs at batch 32) trained nothing; here no step trains at LR 0, a short run has no warmup,
a long one warms up for its ratio of the steps (never more than half the run), and the TRL backend's
scheduler gives the Tinker backend's LR at every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from octrain.trainers import schedule
from octrain.trainers.report import few_steps_note, read_summary, record_steps


def lrs(total: int, *, ratio: float = 0.1, peak: float = 5e-5, floor: float = 0.0) -> list[float]:
    return [
        schedule.learning_rate(step, total_steps=total, peak=peak, warmup_ratio=ratio, min_ratio=floor)
        for step in range(total)
    ]


def test_one_step_has_no_warmup_and_trains_at_the_peak() -> None:
    assert schedule.warmup_steps(1, 0.1) == 0
    assert lrs(1) == [5e-5]
    assert lrs(1, floor=0.1) == [5e-5]  # the cosine_with_min_lr of DPO too


def test_short_runs_have_no_warmup_and_no_step_at_lr_zero() -> None:
    for total in range(1, schedule.SHORT_RUN_STEPS):
        assert schedule.warmup_steps(total, 0.1) == 0 and schedule.warmup_steps(total, 0.9) == 0
        rates = lrs(total)
        assert rates[0] == 5e-5  # no warmup: the first step is at the peak
        assert all(rate > 0 for rate in rates), total
        assert rates == sorted(rates, reverse=True)  # then only the cosine decay


def test_a_hundred_steps_warm_up_for_ten_from_above_zero() -> None:
    assert schedule.warmup_steps(100, 0.1) == 10
    rates = lrs(100)
    assert rates[0] == pytest.approx(5e-5 / 11) and rates[0] > 0
    assert rates[:11] == pytest.approx([5e-5 * (s + 1) / 11 for s in range(10)] + [5e-5])  # linear, to the peak
    assert max(rates) == rates[10] == 5e-5
    assert all(rate > 0 for rate in rates)


def test_warmup_is_never_more_than_its_share_of_the_run() -> None:
    assert schedule.warmup_steps(30, 0.1) == 3  # 30 x 0.1 is 3.0000000000000004 in floats: not rounded up to 4
    assert schedule.warmup_steps(47, 0.1) == 5  # a ratio that does not divide rounds up, as transformers does
    assert schedule.warmup_steps(100, 0.9) == 50  # capped at half the run
    assert schedule.warmup_steps(100, 0.0) == 0
    for total in range(1, 400):
        for ratio in (0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99):
            warm = schedule.warmup_steps(total, ratio)
            assert 0 <= warm <= total * schedule.MAX_WARMUP_FRACTION
            assert warm <= total * ratio + 1 - 1e-9  # at most the ratio, rounded up
            assert lrs(total, ratio=ratio, floor=0.1)[0] > 0
    with pytest.raises(ValueError, match="warmup_ratio"):
        schedule.warmup_steps(10, 1.0)


def test_the_decay_after_warmup_is_transformers_cosine() -> None:
    """After the warmup, the numbers of transformers' cosine / cosine_with_min_lr, step for step."""
    from transformers import get_scheduler

    total = 47
    warm = schedule.warmup_steps(total, 0.1)
    for name, kwargs, floor in (("cosine_with_min_lr", {"min_lr_rate": 0.1}, 0.1), ("cosine", {}, 0.0)):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-5)
        reference = get_scheduler(
            name, optimizer, num_warmup_steps=warm, num_training_steps=total, scheduler_specific_kwargs=kwargs
        )
        ours = lrs(total, floor=floor)
        for step in range(total):
            if step >= warm:
                assert ours[step] == pytest.approx(reference.get_last_lr()[0], rel=1e-12, abs=1e-18)
            optimizer.step()
            reference.step()


@pytest.mark.parametrize("total", [1, 3, 12, 47])
def test_the_trl_scheduler_gives_the_tinker_learning_rates(tiny_model_path: str, tmp_path: Path, total: int) -> None:
    """The TRL trainers' create_scheduler (ScheduleMixin), as transformers calls it with the run's step count,
    gives the LR the Tinker trainers send at every step, DPO's floor included."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from octrain.core.config import DpoStageConfig, LoraSettings, SftStageConfig, TRLOptions
    from octrain.core.records import Conversation, save_records
    from octrain.trainers.trl_common import load_tokenizer, lora_config
    from octrain.trainers.trl_dpo import build_dpo_args, make_trainer_class
    from octrain.trainers.trl_sft import build_sft_trainer

    lora = LoraSettings(rank=4, alpha=8)
    dpo = DpoStageConfig(lora=lora)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    tokenizer = load_tokenizer(tiny_model_path)
    pair = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Arr"}]}
    pair["rejected"] = [{"role": "assistant", "content": "Hello"}]
    dpo_trainer = make_trainer_class()(
        model=model,
        args=build_dpo_args(dpo, TRLOptions(per_device_batch_size=4), tmp_path / "dpo", seed=0),
        train_dataset=Dataset.from_list([pair]),
        processing_class=tokenizer,
        peft_config=lora_config(lora),
    )
    sft = SftStageConfig(lora=lora)
    message = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "A pirate."}]
    save_records(tmp_path / "sft.jsonl", [Conversation(id="r", kind="reflection", messages=message)])
    sft_trainer = build_sft_trainer(
        tmp_path / "sft.jsonl",
        AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
        tokenizer,
        tmp_path / "sft",
        sft,
        TRLOptions(per_device_batch_size=4),
    )
    for trainer, peak, floor in (
        (dpo_trainer, dpo.learning_rate, dpo.min_lr_ratio),
        (sft_trainer, sft.learning_rate, 0),
    ):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=trainer.args.learning_rate)
        scheduler = trainer.create_scheduler(num_training_steps=total, optimizer=optimizer)
        used = []
        for _ in range(total):  # transformers: the optimizer steps at the current LR, then the scheduler steps
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert used == pytest.approx(lrs(total, peak=peak, floor=floor), rel=1e-12)
        assert used[0] > 0


def test_a_short_run_s_report_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert few_steps_note(1) == "1 optimizer step: too few for the loss curve to mean much"
    assert few_steps_note(schedule.SHORT_RUN_STEPS - 1).startswith(f"{schedule.SHORT_RUN_STEPS - 1} optimizer steps")
    assert few_steps_note(schedule.SHORT_RUN_STEPS) is None
    (tmp_path / "train_summary.json").write_text(json.dumps({"train_runtime": 1.5}))  # transformers' end row
    with caplog.at_level("WARNING", logger="octrain.trainers.report"):
        note = record_steps(tmp_path, 2, stage="dpo")
    assert note and "2 optimizer steps: too few" in caplog.text and "dpo:" in caplog.text
    assert read_summary(tmp_path) == {"train_runtime": 1.5, "optimizer_steps": 2, "note": note}
    caplog.clear()
    with caplog.at_level("WARNING", logger="octrain.trainers.report"):
        assert record_steps(tmp_path, 40, stage="dpo") is None  # a rerun with more data: the note goes
    assert read_summary(tmp_path) == {"train_runtime": 1.5, "optimizer_steps": 40} and not caplog.text


def test_the_stage_summaries_carry_the_note() -> None:
    from octrain.stages import dpo, sft

    note = few_steps_note(1)
    assert note and note in dpo.describe({"steps": 1, "final_loss": 0.69, "note": note})
    assert note in sft.describe({"mode": "sequential", "steps": 1, "first_loss": 7.0, "final_loss": 6.9, "note": note})
    assert "too few" not in dpo.describe({"steps": 40, "final_loss": 0.3})
