"""The transformers sampler on the tiny model: n completions each, real batching, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from octrain.samplers import SamplingParams
from octrain.samplers.hf import HFSampler

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me about the sea."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "A much longer question about ships, storms, sails and stars at night?"}],
]


@pytest.fixture(scope="module")
def sampler(tiny_model_path: str) -> HFSampler:
    return HFSampler(tiny_model_path, batch_size=4, show_progress=False)


def count_generate_calls(sampler: HFSampler, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every real generate() call (the call itself still runs)."""
    sizes: list[int] = []
    real = sampler.model.generate

    def counting(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler.model, "generate", counting)
    return sizes


def test_n_completions_per_conversation_in_batches(sampler: HFSampler, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = count_generate_calls(sampler, monkeypatch)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=0)
    results = sampler.chat(CONVERSATIONS, params)
    assert [len(r) for r in results] == [3, 3, 3]
    assert sizes == [4, 4, 1]  # 9 sequences in batches of at most 4, not 9 single calls
    for row in results:
        for completion in row:
            assert isinstance(completion.text, str)
            assert 1 <= completion.num_tokens <= 12
            # Unfinished answers used the whole budget; finished ones counted their end-of-turn token.
            assert completion.finished or completion.num_tokens == 12
    assert len({c.text for c in results[0]}) > 1  # sampling: the n answers differ


def test_seeded_sampling_is_reproducible(sampler: HFSampler) -> None:
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=10, seed=123)
    assert sampler.chat(CONVERSATIONS, params) == sampler.chat(CONVERSATIONS, params)


def test_left_padding_does_not_change_answers(sampler: HFSampler) -> None:
    greedy = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=10)
    together = sampler.chat(CONVERSATIONS, greedy)
    alone = [sampler.chat([conversation], greedy)[0] for conversation in CONVERSATIONS]
    assert [r[0].text for r in together] == [r[0].text for r in alone]


def test_stops_at_end_of_turn(tiny_model_path: str) -> None:
    sampler = HFSampler(tiny_model_path, show_progress=False)
    im_end = sampler.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in sampler.stop_token_ids
    # Make <|im_end|> the only likely token: every answer must end at once, as finished.
    with torch.no_grad():
        sampler.model.lm_head.weight.zero_()
        sampler.model.lm_head.weight[im_end] = 1.0
        sampler.model.model.norm.weight.fill_(50.0)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=20, seed=0)
    for row in sampler.chat(CONVERSATIONS, params):
        assert all(c.finished and c.num_tokens == 1 and c.text == "" for c in row)


def test_loads_a_lora_adapter(tiny_model_path: str, sampler: HFSampler, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained-looking adapter, not the zero init
    peft_model.save_pretrained(tmp_path / "adapter")

    adapted = HFSampler(tiny_model_path, adapter_path=str(tmp_path / "adapter"), show_progress=False)
    greedy = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=10)
    base_answers = [r[0].text for r in sampler.chat(CONVERSATIONS, greedy)]
    adapted_answers = [r[0].text for r in adapted.chat(CONVERSATIONS, greedy)]
    assert adapted_answers != base_answers
    assert "+" in adapted.name
