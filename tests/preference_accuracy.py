"""Test helper: how well a trained model prefers the chosen answers, by DPO's implicit reward on held-out pairs.

DPO trains ``beta * (log pi(y|x) - log pi_ref(y|x))`` to rank the chosen answer above the
rejected one. Scoring held-out pairs with it tells whether the preference generalised
beyond the training pairs; the reference is the same model with its adapter switched off,
exactly as in training. The DPO tests check training with it (``from preference_accuracy import
score_pairs``), and the shift suite's likelihood test checks its scorer against
:func:`answer_logps`. It was ``octrain.evaluation.preference_accuracy``; no octrain code used it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from octrain.core.records import Message, PreferencePair


@dataclass(frozen=True)
class PreferenceScore:
    accuracy: float  # share of pairs whose chosen reward beats the rejected one (ties count half)
    mean_margin: float  # mean of reward(chosen) - reward(rejected)
    pairs: int


def answer_logps(model: Any, tokenizer: Any, prompt: list[Message], answer: list[Message]) -> Any:
    """Summed log-probability of ``answer``'s tokens after ``prompt``, in the chat template."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full_ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"]
    ids = torch.tensor([full_ids], device=model.device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    return token_logps[len(prompt_ids) - 1 :].sum()


def score_pairs(
    base_path: str, adapter_path: str | None, pairs: Sequence[PreferencePair], beta: float = 0.1
) -> PreferenceScore:
    """Implicit-reward accuracy of ``base + adapter`` against ``base`` on ``pairs``.

    With no adapter the policy is the reference: every reward is 0 and the accuracy 0.5.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    model.eval()
    wins, margins = 0.0, []
    with torch.no_grad():
        for pair in pairs:
            rewards = []
            for answer in (pair.chosen, pair.rejected):
                policy = answer_logps(model, tokenizer, pair.prompt, answer)
                if adapter_path:
                    with model.disable_adapter():
                        reference = answer_logps(model, tokenizer, pair.prompt, answer)
                else:
                    reference = policy
                rewards.append(beta * (policy - reference).item())
            margin = rewards[0] - rewards[1]
            margins.append(margin)
            wins += 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
    return PreferenceScore(accuracy=wins / len(pairs), mean_margin=sum(margins) / len(pairs), pairs=len(pairs))
