"""The method's DPO objective, written once: sigmoid DPO on summed answer log-probs, plus NLL and KL terms.

Both training backends call :func:`dpo_objective`: the TRL backend's ``CharacterDPOTrainer``
(:mod:`octrain.trainers.trl_dpo`) on the per-token log-probs of TRL's own forward passes, the Tinker
backend's custom loss (:mod:`octrain.trainers.tinker_dpo`) on the log-probs the service returns. Each
backend only reduces its per-token log-probs to per-sequence sums (:class:`AnswerSums`); the loss is
the same code on both.

A batch holds every pair's chosen sequence first, then the rejected sequences of the same pairs in the
same order (TRL's concatenated layout). With ``pi`` and ``ref`` the sums of the answer tokens'
log-probs under the policy and the reference (summed, not length-normalised):

* DPO: mean over pairs of ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, TRL's ``sigmoid``;
* NLL: minus the chosen answers' log-probs, a mean over every chosen answer token of the batch, TRL's ``sft``;
* KL: the paper's per-token penalty, a mean over every answer token of the batch of ``(log pi - log ref)^2``;

``loss = dpo + nll_weight * nll + kl_weight * kl``. tests/trainers/test_dpo_objective.py holds the first
two parts to TRL's own ``DPOTrainer`` numbers.

This module imports torch at the top: its callers import it inside the functions that already need
torch, so ``import octrain`` stays free of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# What the objective reports besides the loss; the TRL backend logs the first three (TRL logs the rest itself).
PART_NAMES = ("dpo_loss", "nll_loss", "kl_penalty")


@dataclass(frozen=True)
class AnswerSums:
    """Per sequence of a batch (chosen ones first, then rejected), sums over its answer tokens.

    Attributes:
        policy: the policy's log-probs, summed (with the gradient, for the policy's part).
        reference: the reference's log-probs, summed.
        squared_log_ratio: ``(log pi - log ref)^2``, summed.
        tokens: how many answer tokens the sequence has.
    """

    policy: torch.Tensor
    reference: torch.Tensor
    squared_log_ratio: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def from_padded(cls, policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> AnswerSums:
        """From ``[sequences, targets]`` tensors, ``mask`` 1 on answer tokens and 0 elsewhere (TRL's layout)."""
        return cls(
            policy=(policy * mask).sum(dim=1),
            reference=(reference * mask).sum(dim=1),
            squared_log_ratio=((policy - reference).pow(2) * mask).sum(dim=1),
            tokens=mask.sum(dim=1),
        )

    @classmethod
    def from_sequences(
        cls, policy: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
    ) -> AnswerSums:
        """From one 1-D tensor per sequence, of that sequence's own length (Tinker's unpadded answers)."""
        if not len(policy) == len(reference) == len(masks):
            raise ValueError("AnswerSums needs a reference and a mask for every policy sequence")
        triples = list(zip(policy, reference, masks, strict=True))
        return cls(
            policy=torch.stack([(p * m).sum() for p, _, m in triples]),
            reference=torch.stack([(r * m).sum() for _, r, m in triples]),
            squared_log_ratio=torch.stack([((p - r).pow(2) * m).sum() for p, r, m in triples]),
            tokens=torch.stack([m.sum() for _, _, m in triples]),
        )


def dpo_objective(
    sums: AnswerSums, *, beta: float, nll_weight: float, kl_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch, and its parts and rewards as detached 0-d tensors.

    The parts are tensors, not floats: the TRL backend gathers them across ranks before logging; the
    Tinker backend turns them into floats. Keys: ``loss``, :data:`PART_NAMES`, and the reward and
    log-prob summaries TRL logs (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``).
    """
    count = sums.policy.numel()
    if count < 2 or count % 2:
        raise ValueError(f"dpo_objective needs a chosen and a rejected sequence per pair (got {count} sequences)")
    chosen, rejected = sums.policy.chunk(2)
    reference_chosen, reference_rejected = sums.reference.chunk(2)
    chosen_ratio = chosen - reference_chosen
    rejected_ratio = rejected - reference_rejected
    dpo = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    chosen_tokens = sums.tokens.chunk(2)[0].sum().clamp(min=1.0)
    nll = -chosen.sum() / chosen_tokens
    kl = sums.squared_log_ratio.sum() / sums.tokens.sum().clamp(min=1.0)
    loss = dpo + nll_weight * nll + kl_weight * kl
    with torch.no_grad():
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        parts = {
            "loss": loss.detach(),
            "dpo_loss": dpo.detach(),
            "nll_loss": nll.detach(),
            "kl_penalty": kl.detach(),
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": rejected.detach().mean(),
        }
    return loss, parts
