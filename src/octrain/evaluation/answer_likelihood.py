"""How likely a model finds a given answer to a given prompt: log-probabilities, batched.

Two evaluation figures rest on this rather than on a judge, since a model that can be trained
on a CPU is too small to judge reliably:

* how far training moved a model toward the teacher: the teacher's in-character answer
  against the base model's plain one, per token, under each model;
* whether an answer still answers its question: the answer's likelihood under its own prompt
  against other prompts, scored by the fixed base model (pointwise mutual information).

Conversations are rendered with the model's chat template, exactly as in training and
sampling; only the answer's tokens (its end-of-turn token included) are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from octrain.core.records import ModelRef


@dataclass(frozen=True)
class AnswerScore:
    """The summed log-probability of an answer's tokens, and how many tokens it has."""

    logprob: float
    tokens: int

    @property
    def per_token(self) -> float:
        return self.logprob / self.tokens if self.tokens else 0.0


class LikelihoodScorer:
    """A model (base, or base + LoRA adapter merged in) that scores answers in batches."""

    def __init__(self, ref: ModelRef, *, batch_size: int = 16, device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from octrain.models.builtin import resolve_model_path
        from octrain.samplers.hf import pick_device

        base = resolve_model_path(ref.base)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if ref.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, ref.adapter).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.label = ref.label

    def _ids(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """Token ids of the whole exchange, and where the answer starts."""
        user = [{"role": "user", "content": prompt}]
        head = self.tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)
        whole = self.tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True
        )
        ids = list(whole["input_ids"])
        start = len(head["input_ids"])
        # The template may add a newline after the end-of-turn token: it is not the model's to write.
        end = len(ids)
        while end > start and self.tokenizer.decode(ids[end - 1 : end]).strip() == "":
            end -= 1
        return ids[:end], start

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[AnswerScore]:
        """One score per (prompt, answer) pair, in order."""
        import torch

        items = [self._ids(p, a) for p, a in zip(prompts, answers, strict=True)]
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))  # little padding per batch
        scores: list[AnswerScore | None] = [None] * len(items)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for first in range(0, len(order), self.batch_size):
                batch = order[first : first + self.batch_size]
                width = max(len(items[i][0]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    sequence = items[i][0]
                    ids[row, : len(sequence)] = torch.tensor(sequence)
                    mask[row, : len(sequence)] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                token_logprobs = logprobs.gather(2, ids[:, 1:].to(self.device)[..., None])[..., 0].cpu()
                for row, i in enumerate(batch):
                    sequence, start = items[i]
                    # Position t predicts token t + 1: the answer's tokens start..end-1 are at start-1..end-2.
                    answer = token_logprobs[row, start - 1 : len(sequence) - 1]
                    scores[i] = AnswerScore(float(answer.sum()), int(answer.numel()))
        return [s for s in scores if s is not None]

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()
