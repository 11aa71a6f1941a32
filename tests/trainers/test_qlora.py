"""QLoRA and the attention kernel: DPO then sequential SFT on a 4-bit tiny student, on the CPU.

The adapters trained on the 4-bit base must be ordinary LoRA adapters that load onto the
full-precision base and change what it computes; the settings check must name the key at fault.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_dpo import style_pairs
from test_sft import REFLECTION, TRANSCRIPT

from conftest import REPO
from octrain.core.config import DpoStageConfig, LoraSettings, SftStageConfig, TRLOptions
from octrain.core.devices import driver_report
from octrain.core.errors import ConfigError
from octrain.core.layout import FOLDED_BASE_DIR
from octrain.core.records import ModelRef, save_records
from octrain.trainers import model_loading
from octrain.trainers.model_loading import check_training_settings, load_student, training_student

sys.path.insert(0, str(REPO / "tests" / "gpu_world"))
from nvml_fake import FakeNvml, pretend_machine

needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason='bitsandbytes is not installed (pip install -e ".[quant]"); the QLoRA path cannot run',
)

DPO_CONFIG = DpoStageConfig(
    lora=LoraSettings(rank=8, alpha=16), learning_rate=2e-3, batch_size=4, epochs=1, max_length=128
)
SFT_CONFIG = SftStageConfig(
    lora=LoraSettings(rank=8, alpha=16), learning_rate=5e-3, batch_size=4, epochs=2, max_length=256
)
QLORA = TRLOptions(per_device_batch_size=4, logging_steps=1, save_steps=1000, load_in_4bit=True)
IDS = torch.tensor([[5, 17, 99, 230, 7, 41]])


class FourBitWatch:
    """Records every model the loader prepares for 4-bit training, and counts the calls its
    quantized linear layers get while gradients are on (that is, in training steps)."""

    def __init__(self) -> None:
        self.models: list[Any] = []
        self.quantized_calls = 0

    def wrap(self, prepare: Any) -> Any:
        import bitsandbytes as bnb

        def watched(model: Any, options: TRLOptions) -> Any:
            prepared = prepare(model, options)
            self.models.append(prepared)
            for module in prepared.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    module.register_forward_hook(self._count)
            return prepared

        return watched

    def _count(self, _module: Any, _args: Any, _out: Any) -> None:
        if torch.is_grad_enabled():
            self.quantized_calls += 1


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def full_precision(path: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def qlora_run(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """DPO, then SFT with the DPO adapter folded in, both on a 4-bit base with eager attention."""
    from octrain.trainers.trl_dpo import train_dpo
    from octrain.trainers.trl_sft import train_sft

    directory = tmp_path_factory.mktemp("qlora")
    save_records(directory / "pairs.jsonl", style_pairs(0, 16))
    save_records(directory / "sft.jsonl", [TRANSCRIPT, REFLECTION] * 4)
    dpo_watch, sft_watch = FourBitWatch(), FourBitWatch()
    with pytest.MonkeyPatch.context() as patch:
        prepare = model_loading._prepare_4bit
        patch.setattr(model_loading, "_prepare_4bit", dpo_watch.wrap(prepare))
        dpo = train_dpo(
            directory / "pairs.jsonl",
            ModelRef(base=tiny_model_path),
            directory / "dpo",
            DPO_CONFIG,
            QLORA,
            attn_implementation="eager",
        )
        patch.setattr(model_loading, "_prepare_4bit", sft_watch.wrap(prepare))
        sft = train_sft(
            directory / "sft.jsonl",
            tiny_model_path,
            directory / "sft",
            SFT_CONFIG,
            QLORA,
            fold=dpo.adapter,
            attn_implementation="eager",
        )
    yield {"dir": directory, "dpo": Path(str(dpo.adapter)), "sft": sft, "watch": {"dpo": dpo_watch, "sft": sft_watch}}


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_bitsandbytes
@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_training_runs_on_a_4bit_base(qlora_run: dict[str, Any], stage: str) -> None:
    import bitsandbytes as bnb

    watch = qlora_run["watch"][stage]
    assert len(watch.models) == 1
    model = watch.models[0]
    assert model.config._attn_implementation == "eager"  # the kernel asked for reached the trained model
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 14  # every linear layer of both blocks (lm_head stays full precision)
    assert all(isinstance(m.weight, bnb.nn.Params4bit) and m.weight.quant_type == "nf4" for m in quantized)
    assert watch.quantized_calls > 0  # and they did the training forward passes
    rows = read_rows(qlora_run["dir"] / stage / "metrics.jsonl")
    assert rows and all(math.isfinite(row["loss"]) for row in rows if "loss" in row)
    if stage == "dpo":
        # The adapter starts at zero on the same 4-bit base the reference uses: the first loss is ln 2.
        assert abs(rows[0]["dpo_loss"] - math.log(2)) < 1e-3


@needs_bitsandbytes
def test_dpo_adapter_is_plain_lora_on_the_full_precision_base(qlora_run: dict[str, Any], tiny_model_path: str) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter = qlora_run["dpo"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # B moved off zero
    base = logits(full_precision(tiny_model_path))
    adapted = logits(PeftModel.from_pretrained(full_precision(tiny_model_path), adapter))
    assert torch.isfinite(adapted).all() and (adapted - base).abs().max() > 1e-3


@needs_bitsandbytes
def test_sequential_sft_folds_in_full_precision(qlora_run: dict[str, Any], tiny_model_path: str) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    from octrain.trainers.merge import combine_adapters, fold_adapter

    sft = qlora_run["sft"]
    weights = load_file(str(sft / "adapter_model.safetensors"))
    assert weights and all(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)
    config = json.loads((sft / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_path  # not the scratch copy of the folded base
    assert not (qlora_run["dir"] / "sft" / FOLDED_BASE_DIR).exists()  # the scratch copy is gone

    # What the sft stage ships: one adapter, the exact sum of both updates, on the full-precision base.
    final = combine_adapters([(qlora_run["dpo"], 1.0), (sft, 1.0)], qlora_run["dir"] / "final", pad_for_serving=False)
    folded = logits(fold_adapter(tiny_model_path, qlora_run["dpo"]))
    sequential = logits(PeftModel.from_pretrained(fold_adapter(tiny_model_path, qlora_run["dpo"]), sft))
    combined = logits(PeftModel.from_pretrained(full_precision(tiny_model_path), final))
    assert (combined - sequential).abs().max() < 1e-4
    assert (sequential - folded).abs().max() > 1e-3  # SFT changed the model: the check above is not vacuous


def random_adapter(base: str, target: Path) -> Path:
    """A LoRA adapter with non-zero B factors, to fold without training one."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(full_precision(base), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(target)
    return target


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attention_kernel_reaches_the_loaded_model(tiny_model_path: str, tmp_path: Path, kernel: str) -> None:
    assert load_student(tiny_model_path, TRLOptions(), attn_implementation=kernel).config._attn_implementation == kernel
    adapter = random_adapter(tiny_model_path, tmp_path / "adapter")
    with training_student(tiny_model_path, TRLOptions(), attn_implementation=kernel, fold=adapter) as folded:
        assert folded.config._attn_implementation == kernel
        assert folded.dtype == torch.float32


def settings(*overrides: str) -> Any:
    from octrain.core.compose import compose_config

    return compose_config("pirate_tiny", list(overrides))


def test_settings_check_accepts_the_defaults() -> None:
    check_training_settings(settings())
    check_training_settings(settings("student.attn_implementation=eager"))


def test_settings_check_refuses_4bit_without_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    check_training_settings(settings())  # off by default: no need for bitsandbytes
    with pytest.raises(ConfigError, match=r'trainer\.trl\.load_in_4bit=true.*pip install -e "\.\[quant\]"'):
        check_training_settings(settings("trainer.trl.load_in_4bit=true"))


def test_settings_check_names_the_accepted_kernels() -> None:
    with pytest.raises(ConfigError) as error:
        check_training_settings(settings("student.attn_implementation=flash"))
    message = str(error.value)
    assert message.startswith("student.attn_implementation=flash") and "\n" not in message
    for kernel in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
        assert kernel in message


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """For :func:`pretend_machine`: octrain's cached driver report is dropped when the test ends."""
    yield monkeypatch
    driver_report.cache_clear()


@pytest.mark.parametrize(
    ("kernel", "package"), [("flash_attention_2", "flash_attn"), ("flash_attention_3", "flash_attn_interface")]
)
def test_settings_check_flash_attention(
    machine: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch, kernel: str, package: str
) -> None:
    config = settings(f"student.attn_implementation={kernel}")
    pretend_machine(machine, None, None)  # a CPU build of torch, no NVIDIA driver
    with pytest.raises(
        ConfigError, match=rf"student\.attn_implementation={kernel} needs a CUDA GPU; on the CPU use sdpa"
    ):
        check_training_settings(config)
    pretend_machine(machine, FakeNvml(), "13.0")  # an H100 through NVML, torch built for CUDA 13.0
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name))
    with pytest.raises(ConfigError, match=rf"student\.attn_implementation={kernel} needs the {package} package"):
        check_training_settings(config)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == package else real(name))
    check_training_settings(config)  # CUDA and the package: accepted
