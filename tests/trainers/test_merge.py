"""Exact LoRA combination and merging, checked on the tiny offline model.

The reference for "two adapters trained one after the other" is computed with PEFT alone:
fold adapter 1 into the base (``merge_and_unload``), then attach adapter 2 on top. The
combined adapter, and the full weights merged from it, must give the same logits. By default
the combined rank is padded with zeros to one vLLM accepts; that must change nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from octrain.core.config import VLLM_LORA_RANKS
from octrain.core.errors import ConfigError
from octrain.trainers.merge import combine_adapters, fold_adapter, merge_into_weights, serving_rank

TOL = 1e-4


def _base(path: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _make_adapter(base_path: str, directory: Path, *, r: int, alpha: int, targets: str | list[str], seed: int) -> Path:
    """A LoRA adapter with random (nonzero) A and B, as if trained; PEFT initialises B to zero."""
    model = get_peft_model(_base(base_path), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(directory)
    return directory


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def _sequential_logits(base_path: str, first: Path, second: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """Reference: first adapter folded into the base, second adapter applied on top (PEFT only)."""
    folded = PeftModel.from_pretrained(_base(base_path), str(first)).merge_and_unload()
    return _logits(PeftModel.from_pretrained(folded, str(second)).eval(), input_ids)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merge")


@pytest.fixture(scope="module")
def adapter1(tiny_model_path: str, workdir: Path) -> Path:
    return _make_adapter(tiny_model_path, workdir / "a1", r=4, alpha=8, targets="all-linear", seed=1)


@pytest.fixture(scope="module")
def adapter2(tiny_model_path: str, workdir: Path) -> Path:
    # Different rank, scaling and target set: modules outside it must get zero blocks.
    return _make_adapter(
        tiny_model_path, workdir / "a2", r=8, alpha=32, targets=["q_proj", "v_proj", "down_proj"], seed=2
    )


@pytest.fixture(scope="module")
def adapter3(tiny_model_path: str, workdir: Path) -> Path:
    # Same rank and targets as adapter1 (PEFT's "linear" combination requires that), other alpha.
    return _make_adapter(tiny_model_path, workdir / "a3", r=4, alpha=16, targets="all-linear", seed=3)


@pytest.fixture(scope="module")
def input_ids(tiny_model_path: str) -> torch.Tensor:
    vocab = AutoModelForCausalLM.from_pretrained(tiny_model_path).config.vocab_size
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def sequential(tiny_model_path: str, adapter1: Path, adapter2: Path, input_ids: torch.Tensor) -> torch.Tensor:
    return _sequential_logits(tiny_model_path, adapter1, adapter2, input_ids)


@pytest.fixture(scope="module")
def combined(adapter1: Path, adapter2: Path, workdir: Path) -> Path:
    return combine_adapters([(adapter1, 1.0), (adapter2, 1.0)], workdir / "combined" / "adapter")


def test_combined_adapter_matches_sequential(
    tiny_model_path: str, combined: Path, sequential: torch.Tensor, input_ids: torch.Tensor
) -> None:
    # The adapters must move the logits a lot, or the comparison below would prove nothing.
    assert _max_diff(_logits(_base(tiny_model_path), input_ids), sequential) > 1e-2

    config = json.loads((combined / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 16  # 4 + 8 = 12, padded to the next vLLM rank
    assert config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == tiny_model_path
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    keys = set(load_file(str(combined / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight" in keys  # only adapter1 has it

    model = PeftModel.from_pretrained(_base(tiny_model_path), str(combined)).eval()
    assert _max_diff(_logits(model, input_ids), sequential) < TOL


def test_merged_weights_match_sequential(
    tiny_model_path: str, combined: Path, sequential: torch.Tensor, input_ids: torch.Tensor, workdir: Path
) -> None:
    out = merge_into_weights(tiny_model_path, combined, workdir / "merged" / "model")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert _max_diff(_logits(model, input_ids), sequential) < TOL
    assert (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no staging left behind


def test_fold_adapter_matches_peft(tiny_model_path: str, adapter1: Path, input_ids: torch.Tensor) -> None:
    folded = fold_adapter(tiny_model_path, adapter1)
    assert not isinstance(folded, PeftModel)
    assert next(folded.parameters()).dtype == torch.float32
    reference = PeftModel.from_pretrained(_base(tiny_model_path), str(adapter1)).eval()
    assert _max_diff(_logits(folded, input_ids), _logits(reference, input_ids)) < TOL


def test_weights_scale_each_update(tiny_model_path: str, adapter1: Path, adapter2: Path, workdir: Path) -> None:
    """(a1, 1.0), (a2, 0.25) must give W + ΔW1 + 0.25·ΔW2, checked weight matrix by matrix."""
    weights = {adapter1: 1.0, adapter2: 0.25}
    out = combine_adapters(list(weights.items()), workdir / "weighted" / "adapter")
    merged = merge_into_weights(tiny_model_path, out, workdir / "weighted" / "model")
    merged_state = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).state_dict()

    expected = {name: tensor.clone() for name, tensor in _base(tiny_model_path).state_dict().items()}
    for adapter, weight in weights.items():
        config = json.loads((adapter / "adapter_config.json").read_text())
        scaling = config["lora_alpha"] / config["r"]
        factors = load_file(str(adapter / "adapter_model.safetensors"))
        for key, lora_a in factors.items():
            if key.endswith(".lora_A.weight"):
                prefix = key.removesuffix(".lora_A.weight")
                lora_b = factors[prefix + ".lora_B.weight"]
                expected[prefix.removeprefix("base_model.model.") + ".weight"] += weight * scaling * lora_b @ lora_a

    assert set(merged_state) <= set(expected)
    for name, tensor in merged_state.items():
        assert _max_diff(tensor, expected[name]) < TOL, name


def test_exact_combination_beats_peft_linear(
    tiny_model_path: str, adapter1: Path, adapter3: Path, input_ids: torch.Tensor, workdir: Path
) -> None:
    """On the same pair of same-rank adapters, "cat" is exact and PEFT's "linear" is not."""
    reference = _sequential_logits(tiny_model_path, adapter1, adapter3, input_ids)

    exact = combine_adapters([(adapter1, 1.0), (adapter3, 1.0)], workdir / "same-rank")
    exact_model = PeftModel.from_pretrained(_base(tiny_model_path), str(exact)).eval()
    assert _max_diff(_logits(exact_model, input_ids), reference) < TOL

    mixed = PeftModel.from_pretrained(_base(tiny_model_path), str(adapter1), adapter_name="a1")
    mixed.load_adapter(str(adapter3), adapter_name="a3")
    mixed.add_weighted_adapter(["a1", "a3"], [1.0, 1.0], combination_type="linear", adapter_name="lin")
    mixed.set_adapter("lin")
    mixed.eval()
    assert _max_diff(_logits(mixed, input_ids), reference) > 1e-3  # the cross terms B_i·A_j show


def test_output_replaced_atomically(adapter1: Path, adapter2: Path, workdir: Path) -> None:
    parent = workdir / "replace"
    target = parent / "out"
    combine_adapters([(adapter1, 1.0)], target, pad_for_serving=False)
    assert json.loads((target / "adapter_config.json").read_text())["r"] == 4
    combine_adapters([(adapter1, 1.0), (adapter2, 0.5)], target)  # replaces the existing directory
    assert json.loads((target / "adapter_config.json").read_text())["r"] == 16
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_failed_write_leaves_previous_output(
    adapter1: Path, adapter2: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = workdir / "failed-write"
    target = combine_adapters([(adapter1, 1.0)], parent / "out")
    before = (target / "adapter_model.safetensors").read_bytes()

    def broken_save(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        combine_adapters([(adapter1, 1.0), (adapter2, 1.0)], target)
    assert (target / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_missing_adapter_is_refused(adapter1: Path, workdir: Path) -> None:
    parent = workdir / "missing"
    missing = workdir / "no-such-adapter"
    with pytest.raises(ConfigError, match="no-such-adapter"):
        combine_adapters([(adapter1, 1.0), (missing, 1.0)], parent / "out")
    assert not parent.exists() or not any(parent.iterdir())


def _copy_with_config(adapter: Path, directory: Path, **changes: object) -> Path:
    shutil.copytree(adapter, directory)
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(changes)
    config_path.write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("setting", ["use_dora", "use_rslora"])
def test_dora_and_rslora_are_refused(tiny_model_path: str, adapter1: Path, tmp_path: Path, setting: str) -> None:
    bad = _copy_with_config(adapter1, tmp_path / f"with-{setting}", **{setting: True})
    with pytest.raises(ConfigError, match=rf"with-{setting}.*{setting}"):
        combine_adapters([(adapter1, 1.0), (bad, 1.0)], tmp_path / "out")
    with pytest.raises(ConfigError, match=setting):
        merge_into_weights(tiny_model_path, bad, tmp_path / "merged")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "merged").exists()


def test_non_lora_adapter_is_refused(adapter1: Path, tmp_path: Path) -> None:
    bad = _copy_with_config(adapter1, tmp_path / "ia3", peft_type="IA3")
    with pytest.raises(ConfigError, match=r"ia3.*not a LoRA adapter"):
        combine_adapters([(bad, 1.0)], tmp_path / "out")


def test_mismatched_base_shapes_are_refused(adapter1: Path, adapter2: Path, tmp_path: Path) -> None:
    bad = tmp_path / "other-base"
    shutil.copytree(adapter2, bad)
    factors = load_file(str(bad / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    factors[key] = factors[key][:, :32].contiguous()  # as if the base had hidden size 32
    save_file(factors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match=r"other-base.*layers\.0\.self_attn\.q_proj"):
        combine_adapters([(adapter1, 1.0), (bad, 1.0)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "1.0"])
def test_bad_weight_is_refused(adapter1: Path, tmp_path: Path, weight: object) -> None:
    with pytest.raises(ConfigError, match="weight"):
        combine_adapters([(adapter1, weight)], tmp_path / "out")  # type: ignore[list-item]


def test_no_adapters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        combine_adapters([], tmp_path / "out")


@pytest.mark.parametrize(
    ("rank", "expected"), [(1, 1), (2, 8), (8, 8), (12, 16), (96, 128), (128, 128), (257, 320), (321, 512), (512, 512)]
)
def test_serving_rank_is_the_next_vllm_rank(rank: int, expected: int) -> None:
    assert serving_rank(rank) == expected
    assert expected in VLLM_LORA_RANKS


@pytest.mark.parametrize("rank", [513, 0, -8])
def test_serving_rank_refuses_what_vllm_cannot_hold(rank: int) -> None:
    with pytest.raises(ConfigError, match="rank"):
        serving_rank(rank)


def _update(factors: dict[str, torch.Tensor], prefix: str, scaling: float) -> torch.Tensor:
    return scaling * factors[prefix + ".lora_B.weight"] @ factors[prefix + ".lora_A.weight"]


def test_rank_96_is_padded_to_128_and_stays_exact(tiny_model_path: str, workdir: Path, input_ids: torch.Tensor) -> None:
    """32 + 64 = 96 is no vLLM rank: the output has rank 128, zero padding, and exactly the summed update."""
    first = _make_adapter(tiny_model_path, workdir / "r32", r=32, alpha=64, targets="all-linear", seed=4)
    second = _make_adapter(tiny_model_path, workdir / "r64", r=64, alpha=16, targets=["q_proj", "down_proj"], seed=5)
    out = combine_adapters([(first, 1.0), (second, 1.0)], workdir / "padded")

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 128
    combined = load_file(str(out / "adapter_model.safetensors"))
    # (factors, scaling lora_alpha / r) of each input adapter
    inputs = [
        (load_file(str(first / "adapter_model.safetensors")), 64 / 32),
        (load_file(str(second / "adapter_model.safetensors")), 16 / 64),
    ]
    prefixes = [key.removesuffix(".lora_A.weight") for key in combined if key.endswith(".lora_A.weight")]
    assert prefixes
    for prefix in prefixes:
        lora_a, lora_b = combined[prefix + ".lora_A.weight"], combined[prefix + ".lora_B.weight"]
        assert lora_a.shape[0] == lora_b.shape[1] == 128
        assert not lora_a[96:].any() and not lora_b[:, 96:].any()  # the padding is zeros
        expected = sum(
            _update(factors, prefix, scaling) for factors, scaling in inputs if prefix + ".lora_A.weight" in factors
        )
        assert _max_diff(_update(combined, prefix, 1.0), expected) < 1e-5, prefix

    # And as a model: the padded adapter gives the logits of the two adapters applied one after the other.
    served = PeftModel.from_pretrained(_base(tiny_model_path), str(out)).eval()
    assert _max_diff(_logits(served, input_ids), _sequential_logits(tiny_model_path, first, second, input_ids)) < TOL


def test_padding_can_be_turned_off(adapter1: Path, adapter2: Path, workdir: Path) -> None:
    out = combine_adapters([(adapter1, 1.0), (adapter2, 1.0)], workdir / "unpadded", pad_for_serving=False)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 12
    factors = load_file(str(out / "adapter_model.safetensors"))
    assert factors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape[0] == 12


def test_tokenizer_is_saved_with_the_adapter(tiny_model_path: str, adapter1: Path, workdir: Path) -> None:
    from transformers import AutoTokenizer

    parent = workdir / "with-tokenizer"
    out = combine_adapters([(adapter1, 1.0)], parent / "adapter", tokenizer_from=tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_path).chat_template
    assert sorted(p.name for p in parent.iterdir()) == ["adapter"]  # no staging left behind
