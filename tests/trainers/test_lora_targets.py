"""Which layers an all-linear LoRA adapter wraps: every linear layer of the language model, and none of a
multimodal checkpoint's vision tower (Gemma-3-4B-it, one of the paper's students, is such a checkpoint)."""

from __future__ import annotations

import warnings

import pytest

from octrain.core.config_sections import LoraSettings
from octrain.trainers.trl_common import lora_config


def tiny_gemma3():
    """A Gemma3ForConditionalGeneration as Gemma-3-4B-it is built, at a few thousand parameters a layer."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "vocab_size": 300,
        "sliding_window": 16,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    return Gemma3ForConditionalGeneration(config)


def wrapped(model, config) -> set[str]:
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an exclusion that matched nothing warns: fail on it
        peft = get_peft_model(model, config)
    return {name.removesuffix(".lora_A.default") for name, _ in peft.named_modules() if name.endswith("lora_A.default")}


def test_all_linear_leaves_a_vision_tower_out_and_keeps_every_language_layer() -> None:
    pytest.importorskip("transformers.models.gemma3")
    model = tiny_gemma3()
    language = {
        name
        for name, module in model.named_modules()
        if type(module).__name__ == "Linear" and ".language_model." in f".{name}" and "lm_head" not in name
    }
    vision = {name for name, module in model.named_modules() if type(module).__name__ == "Linear" and "vision" in name}
    assert language and vision  # the checkpoint has both, as the real one does

    settings = LoraSettings(rank=4, alpha=8)
    layers = wrapped(model, lora_config(settings, model))
    assert {name.split("base_model.model.", 1)[-1] for name in layers} == language
    # PEFT's own all-linear, without octrain's exclusion, wraps the vision tower too: what this guards against.
    plain = wrapped(tiny_gemma3(), lora_config(settings))
    assert any("vision_tower" in name for name in plain)


def test_a_text_model_gets_the_plain_all_linear_adapter(tiny_model_path: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    config = lora_config(LoraSettings(rank=4, alpha=8), model)
    assert config.exclude_modules is None  # nothing to leave out, and no warning that nothing matched
    assert {name.rsplit(".", 1)[-1] for name in wrapped(model, config)} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
