"""SFT batches are grouped by length, so that a batch is not padded to one long transcript.

Reflections are a sentence or two and self-interactions run to thousands of tokens: in random
batches most of a batch would be padding. The batches here are the ones the trainer feeds the model.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from octrain.core.config import SftStageConfig, TRLOptions
from octrain.core.records import Conversation, save_records
from octrain.trainers.trl_sft import build_sft_trainer


def transcripts(count: int) -> list[Conversation]:
    """Short and long transcripts, alternating (a random batch of 4 mixes them almost surely)."""
    records = []
    for index in range(count):
        words = 4 if index % 2 else 120
        answer = " ".join(["Arr, the sea is wide and deep"] * (words // 6 + 1))
        records.append(
            Conversation(
                id=f"c{index}",
                kind="reflection",
                messages=[{"role": "user", "content": f"Tell me {index}."}, {"role": "assistant", "content": answer}],
            )
        )
    return records


def padding(trainer: object) -> tuple[float, int]:
    """The share of padded positions in the trainer's training batches, and how many examples they hold."""
    padded = real = seen = 0
    for batch in trainer.get_train_dataloader():  # type: ignore[attr-defined]
        mask = batch["attention_mask"]
        padded += int((mask == 0).sum())
        real += int(mask.sum())
        seen += mask.shape[0]
    return padded / (padded + real), seen


@pytest.fixture(scope="module")
def trainer(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("sft-batches")
    save_records(directory / "sft.jsonl", transcripts(256))
    return build_sft_trainer(
        directory / "sft.jsonl",
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        AutoTokenizer.from_pretrained(tiny_model_path),
        directory / "out",
        SftStageConfig(batch_size=4, max_length=1024),
        TRLOptions(per_device_batch_size=4),
    )


def test_sft_batches_are_grouped_by_length(trainer: Any) -> None:
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    grouped, seen = padding(trainer)
    assert seen == 256  # every transcript once per epoch
    trainer.args.train_sampling_strategy = "random"  # what the trainer did before: the baseline
    try:
        shuffled, _ = padding(trainer)
    finally:
        trainer.args.train_sampling_strategy = "group_by_length"
    # Random batches of 4 from two lengths are mostly mixed (7 in 8): about 40% of all positions are
    # padding (41% measured). Grouped, only a batch at the edge of a sorted window of 16 batches can mix
    # the two (2.5% measured).
    assert shuffled > 0.3
    assert grouped < 0.1


def test_the_grouped_order_depends_on_the_seed_and_the_epoch_only(trainer: Any) -> None:
    """A run resumed mid-epoch skips the batches it trained before: the Trainer sets the epoch, and the
    order must not depend on what training left in torch's global generator (LoRA dropout draws from it)."""
    sampler = trainer._get_train_sampler()
    orders = []
    for epoch in (0, 1):
        torch.manual_seed(1000 + epoch)  # whatever an interrupted run had drawn
        sampler.set_epoch(epoch)
        first = list(sampler)
        torch.manual_seed(7)  # what the resumed run has drawn instead
        sampler.set_epoch(epoch)
        assert list(sampler) == first
        orders.append(first)
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == list(range(256))
