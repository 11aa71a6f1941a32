"""One engine per process, reused for the same model: the transformers backend on the tiny model.

vLLM's side of the same rule (one engine for the base and every adapter) runs in the vllm lane:
tests/test_vllm_sampler.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from octrain.core.config import DType, ModelConfig, SamplerBackend, SamplerConfig
from octrain.samplers import SamplingParams, build_sampler, release_engines
from octrain.samplers.engine_pool import ENGINES

GREEDY = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=6)
HELLO = [[{"role": "user", "content": "Hello there"}]]


@pytest.fixture
def pool() -> Iterator[list]:
    # Engines other tests of this process loaded are theirs: each test here counts from zero.
    release_engines()
    earlier = list(ENGINES.starts)
    ENGINES.starts.clear()
    yield ENGINES.starts
    release_engines()
    ENGINES.starts[:] = earlier


def hf(tiny_model_path: str) -> tuple[SamplerConfig, ModelConfig]:
    return SamplerConfig(backend=SamplerBackend.hf), ModelConfig(path=tiny_model_path, assistant_name="Teacher")


def test_the_same_model_is_loaded_once_and_another_closes_it(tiny_model_path: str, pool: list) -> None:
    sampler_config, teacher = hf(tiny_model_path)
    first = build_sampler(sampler_config, teacher, show_progress=False)
    answer = first.chat(HELLO, GREEDY)
    first.close()  # the stage is done with it; the engine stays for the next one
    # The student on the same weights, under another name: the same engine, the same answer.
    student = ModelConfig(path=tiny_model_path, assistant_name="Student")
    second = build_sampler(sampler_config, student, show_progress=False)
    assert second.chat(HELLO, GREEDY) == answer
    assert len(pool) == 1
    # A different model (here: another precision) closes the loaded one before loading its own.
    other = ModelConfig(path=tiny_model_path, dtype=DType.bfloat16)
    third = build_sampler(sampler_config, other, show_progress=False)
    third.chat(HELLO, GREEDY)
    assert len(pool) == 2
    with pytest.raises(RuntimeError, match="engine was closed"):
        second.chat(HELLO, GREEDY)  # its engine is gone: an error, not a silent reload


def test_an_adapter_is_its_own_engine_and_release_closes_it(tiny_model_path: str, pool: list, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path), LoraConfig(r=4, target_modules="all-linear")
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.save_pretrained(tmp_path / "adapter")
    sampler_config, student = hf(tiny_model_path)
    base = build_sampler(sampler_config, student, show_progress=False).chat(HELLO, GREEDY)
    adapted = build_sampler(sampler_config, student, adapter=str(tmp_path / "adapter"), show_progress=False)
    assert adapted.chat(HELLO, GREEDY) != base  # transformers merges the adapter: a model of its own
    assert [start.label for start in pool] == [
        f"transformers {tiny_model_path}",
        f"transformers {tiny_model_path} + {tmp_path / 'adapter'}",
    ]
    release_engines()
    with pytest.raises(RuntimeError, match="engine was closed"):
        adapted.chat(HELLO, GREEDY)
