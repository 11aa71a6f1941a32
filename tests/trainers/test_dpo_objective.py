"""The one DPO objective both backends call (octrain.trainers.dpo_objective), held to TRL's own numbers.

TRL's ``DPOTrainer`` with the arguments octrain builds (``loss_type=["sigmoid", "sft"]``) computes the
objective's first two parts itself: on a batch of the tiny model with its LoRA moved off zero, the
objective with ``kl_weight=0`` must give TRL's loss, rewards and log-probs, and the TRL backend's
trainer must train TRL's loss plus exactly the KL term. The agreement of the two backends on one batch
is in test_tinker_trainers.py (it needs the Tinker SDK).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from conftest import synthetic_pairs
from octrain.core.config import DpoStageConfig, LoraSettings, TRLOptions
from octrain.trainers.dpo_objective import AnswerSums, dpo_objective

CONFIG = DpoStageConfig(lora=LoraSettings(rank=4, alpha=8), batch_size=4, max_length=128)


@pytest.fixture(scope="module")
def trl_batch(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The TRL backend's trainer on 4 pairs, its LoRA moved off zero so the log-ratios are not 0, and one batch."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from octrain.trainers.trl_common import load_tokenizer, lora_config
    from octrain.trainers.trl_dpo import build_dpo_args, make_trainer_class

    args = build_dpo_args(CONFIG, TRLOptions(per_device_batch_size=4), tmp_path_factory.mktemp("dpo"), seed=0)
    records = synthetic_pairs(4)
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in records])
    trainer = make_trainer_class()(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(tiny_model_path),
        peft_config=lora_config(CONFIG.lora),
        kl_weight=CONFIG.kl_weight,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    return trainer, batch


def trl_own_loss(trainer: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, AnswerSums, dict[str, list[float]]]:
    """TRL's ``DPOTrainer._compute_loss`` (not octrain's override), the answer sums of the log-probs
    its two forward passes gave, and the metrics it logged."""
    from trl import DPOTrainer

    outputs: list[Any] = []
    handle = trainer.model.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    trainer._metrics["eval"].clear()  # the model is in eval mode: TRL logs there
    try:
        with torch.no_grad():
            loss = DPOTrainer._compute_loss(trainer, trainer.model, batch, return_outputs=False)
    finally:
        handle.remove()
    mask = batch["completion_mask"][..., 1:].float()
    width = mask.size(1)
    sums = AnswerSums.from_padded(outputs[0].log_probs[:, -width:], outputs[1].log_probs[:, -width:], mask)
    return loss, sums, {name: list(values) for name, values in trainer._metrics["eval"].items()}


def test_objective_without_kl_is_trl_s_own_dpo_loss(trl_batch: Any) -> None:
    trainer, batch = trl_batch
    trl_loss, sums, logged = trl_own_loss(trainer, batch)
    loss, parts = dpo_objective(sums, beta=CONFIG.beta, nll_weight=CONFIG.nll_weight, kl_weight=0.0)
    assert abs(float(parts["dpo_loss"]) - math.log(2)) > 1e-4  # a real, moved policy, not the ln 2 of the start
    assert float(parts["nll_loss"]) > 0
    assert float(loss) == pytest.approx(float(trl_loss), rel=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert float(parts[name]) == pytest.approx(logged[name][-1], rel=1e-5, abs=1e-7), name
    for name in ("logps/chosen", "logps/rejected"):
        assert float(parts[name]) == pytest.approx(logged[name][-1], rel=1e-5), name
    # The NLL weight is TRL's own "sft" part: without it the objective is TRL's plain sigmoid loss.
    dpo_only, _ = dpo_objective(sums, beta=CONFIG.beta, nll_weight=0.0, kl_weight=0.0)
    assert float(dpo_only) == pytest.approx(float(parts["dpo_loss"]), rel=1e-6)


def test_the_trl_backend_trains_trl_s_loss_plus_the_kl_term(trl_batch: Any) -> None:
    trainer, batch = trl_batch
    trl_loss, sums, _ = trl_own_loss(trainer, batch)
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        ours = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    kl = float(sums.squared_log_ratio.sum() / sums.tokens.sum())
    assert kl > 0
    assert float(ours) == pytest.approx(float(trl_loss) + CONFIG.kl_weight * kl, rel=1e-5)
    logged = trainer._metrics["eval"]
    assert logged["kl_penalty"][-1] == pytest.approx(kl, rel=1e-4)
    _, parts = dpo_objective(sums, beta=CONFIG.beta, nll_weight=CONFIG.nll_weight, kl_weight=CONFIG.kl_weight)
    for name in ("dpo_loss", "nll_loss"):
        assert logged[name][-1] == pytest.approx(float(parts[name]), rel=1e-5), name


def test_the_trl_backend_refuses_arguments_for_another_objective(trl_batch: Any) -> None:
    from octrain.trainers.trl_dpo import _nll_weight

    trainer, _ = trl_batch
    assert _nll_weight(trainer) == CONFIG.nll_weight

    class Arguments:
        loss_types, loss_weights = ["sigmoid", "sft"], [1.0, 0.1]
        ld_alpha, use_weighting, f_divergence_type = None, False, "reverse_kl"

    for change in ({"loss_types": ["ipo"], "loss_weights": [1.0]}, {"loss_weights": [0.5, 0.1]}, {"ld_alpha": 0.5}):
        other = type("Other", (Arguments,), change)()
        with pytest.raises(ValueError, match="CharacterDPOTrainer"):
            _nll_weight(other)


def test_padded_and_unpadded_answers_give_the_same_sums() -> None:
    torch.manual_seed(0)
    lengths = [5, 3, 4, 2]  # two pairs: chosen 5 and 3 targets, rejected 4 and 2
    policy = [-torch.rand(n) for n in lengths]
    reference = [-torch.rand(n) for n in lengths]
    masks = [torch.tensor([0.0] + [1.0] * (n - 1)) for n in lengths]  # the first target is a prompt token

    def padded(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.cat([row, torch.zeros(max(lengths) - len(row))]) for row in rows])

    ragged = AnswerSums.from_sequences(policy, reference, masks)
    square = AnswerSums.from_padded(padded(policy), padded(reference), padded(masks))
    for field in ("policy", "reference", "squared_log_ratio", "tokens"):
        torch.testing.assert_close(getattr(ragged, field), getattr(square, field))
    assert ragged.tokens.tolist() == [4.0, 2.0, 3.0, 1.0]


def test_hand_computed_objective() -> None:
    # Pair 1: chosen ratio +1, rejected ratio -1; pair 2: both ratios 0.
    sums = AnswerSums(
        policy=torch.tensor([-3.0, -2.0, -5.0, -4.0]),
        reference=torch.tensor([-4.0, -2.0, -4.0, -4.0]),
        squared_log_ratio=torch.tensor([0.5, 0.0, 0.25, 0.25]),
        tokens=torch.tensor([2.0, 3.0, 4.0, 1.0]),
    )
    loss, parts = dpo_objective(sums, beta=0.5, nll_weight=0.1, kl_weight=2.0)
    dpo = (-math.log(1 / (1 + math.exp(-0.5 * 2.0))) + math.log(2)) / 2
    nll = 5.0 / 5  # minus the chosen log-probs over the 2 + 3 chosen tokens
    kl = 1.0 / 10  # every squared log-ratio over every answer token
    assert float(parts["dpo_loss"]) == pytest.approx(dpo)
    assert float(parts["nll_loss"]) == pytest.approx(nll)
    assert float(parts["kl_penalty"]) == pytest.approx(kl)
    assert float(loss) == pytest.approx(dpo + 0.1 * nll + 2.0 * kl)
    assert float(parts["rewards/margins"]) == pytest.approx((0.5 * 2.0 + 0.0) / 2)
    assert float(parts["rewards/accuracies"]) == 0.5  # a tie is not a win
    with pytest.raises(ValueError, match="chosen and a rejected"):
        dpo_objective(AnswerSums(*(torch.zeros(3) for _ in range(4))), beta=0.1, nll_weight=0, kl_weight=0)
