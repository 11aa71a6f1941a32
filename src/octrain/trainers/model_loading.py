"""Loading the student for training: precision, attention kernel and, optionally, QLoRA.

This is the one place the TRL trainers load the model they put LoRA adapters on, so that DPO
and SFT cannot drift apart in dtype, attention kernel or quantization.

QLoRA (``trainer.trl.load_in_4bit=true``): the frozen base is loaded in 4-bit NF4 with double
quantization through bitsandbytes, computing in bf16 on a GPU that has it (fp32 elsewhere), and
the LoRA adapters train on top unquantized (TRL keeps them in bf16). The adapter that comes out
is an ordinary LoRA adapter: its factors are not quantized and it names the full-precision base.
At sampling time it is applied to the bf16 (or fp32) base, not to the 4-bit one, as is usual
with QLoRA; the small difference between the two bases is the price of ~4x smaller weights in
training.

Sequential SFT trains on the base with the DPO adapter folded in. Folding into 4-bit weights
would dequantize, add ``s·B·A`` and quantize again: the base rounded to NF4 twice, and an update
much smaller than one NF4 step (16 levels per block of 64 weights) partly rounded away. So the
fold happens in float32 first (:func:`octrain.trainers.merge.fold_adapter`), the folded weights go to a
scratch directory under the stage's output, and that directory is loaded with the 4-bit config:
``W + ΔW_dpo`` is quantized once, with the same error a plain 4-bit load of any base has.
(A BitsAndBytesConfig acts in ``from_pretrained``; transformers has no call that quantizes a model in memory.)
Under a launcher of several processes the fold goes through the same scratch copy, folded once by rank 0,
and the TrainingArguments are made before any rank loads the student, so that ZeRO-3's partitioned load
and FSDP's ``cpu_ram_efficient_loading`` act (:func:`student_and_arguments`).
:mod:`octrain.trainers.merge` then sums the DPO and SFT updates into the final adapter on the
full-precision base, exactly as without QLoRA.

What TRL 1.16 does and does not do with a 4-bit model (read from its DPOTrainer and
SFTTrainer): given a ``peft_config`` it calls ``get_peft_model`` and, when gradient
checkpointing is on, ``enable_input_require_grads``; for a quantized model it then casts the
trainable LoRA parameters to bf16 (the QLoRA paper's setting). It does *not* call PEFT's
``prepare_model_for_kbit_training``, so that is done here, once, before the trainer is built,
with the same gradient-checkpointing settings the TrainingArguments carry (the Trainer switches
checkpointing on again with identical kwargs, which is harmless).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from octrain.core.config import TrainerBackend, TRLOptions
from octrain.core.errors import ConfigError
from octrain.core.layout import FOLDED_BASE_DIR
from octrain.trainers.precision import precision
from octrain.trainers.trl_common import gradient_checkpointing

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from octrain.core.config import OctrainConfig

# transformers' own kernels, which need nothing beyond torch; the flash-attention ones need a package.
ATTENTION_KERNELS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}

# Where sequential QLoRA writes the base with the DPO adapter folded in, under the stage's output.

ArgsT = TypeVar("ArgsT")


def check_training_settings(config: OctrainConfig) -> None:
    """Refuse, before any model loads, settings the training stages could only fail on later.

    Raises:
        ConfigError: one line naming the key: 4-bit loading without bitsandbytes, an unknown
            attention kernel, or flash attention without CUDA or without its package.
    """
    # Only the local TRL backend loads the student itself; a hosted backend ignores trainer.trl.
    quantized = config.trainer.backend is TrainerBackend.trl and config.trainer.trl.load_in_4bit
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            'trainer.trl.load_in_4bit=true needs bitsandbytes, which is not installed: pip install -e ".[quant]"'
        )
    kernel = config.student.attn_implementation
    if kernel not in ATTENTION_KERNELS:
        raise ConfigError(f"student.attn_implementation={kernel}: expected one of {', '.join(ATTENTION_KERNELS)}")
    package = _FLASH_PACKAGES.get(kernel)
    if package is None:
        return
    from octrain.core.devices import gpu_usable

    if not gpu_usable():
        raise ConfigError(f"student.attn_implementation={kernel} needs a CUDA GPU; on the CPU use sdpa")
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"student.attn_implementation={kernel} needs the {package} package, which is not installed")


def quantization_config() -> Any:
    """bitsandbytes' 4-bit NF4 with double quantization, computing in the training precision."""
    import torch
    from transformers import BitsAndBytesConfig

    _, bf16 = precision()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # the QLoRA paper's data type for normally distributed weights
        bnb_4bit_use_double_quant=True,  # quantizes the per-block scales too: ~0.4 bits per weight saved
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )


def load_student(model_path: str, options: TRLOptions, *, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Load ``model_path`` for LoRA training: bf16 on a GPU that has it, else fp32; 4-bit if asked.

    Args:
        model_path: a directory or Hub id (``builtin:`` names already resolved).
        options: the TRL options; ``load_in_4bit`` and ``gradient_checkpointing`` matter here.
        attn_implementation: transformers' attention kernel (``student.attn_implementation``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    use_cuda, bf16 = precision()
    kwargs: dict[str, Any] = {
        "dtype": torch.bfloat16 if bf16 else torch.float32,
        "attn_implementation": attn_implementation,
    }
    if not options.load_in_4bit:
        return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    kwargs["quantization_config"] = quantization_config()
    if use_cuda:
        # bitsandbytes quantizes as the weights reach the GPU, so each process must load straight
        # onto its own card: under ``accelerate launch`` transformers' default would put every rank on cuda:0.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    return _prepare_4bit(model, options)


@contextmanager
def training_student(
    model_path: str,
    options: TRLOptions,
    *,
    attn_implementation: str = "sdpa",
    fold: str | Path | None = None,
    scratch_dir: Path | None = None,
) -> Iterator[PreTrainedModel]:
    """The student to train, with ``fold`` (a LoRA adapter) merged into its weights first if given.

    :func:`student_and_arguments` without TrainingArguments (for callers that make none).
    """
    with student_and_arguments(
        model_path,
        options,
        lambda: None,
        attn_implementation=attn_implementation,
        fold=fold,
        scratch_dir=scratch_dir,
    ) as (model, _):
        yield model


@contextmanager
def student_and_arguments(
    model_path: str,
    options: TRLOptions,
    arguments: Callable[[], ArgsT],
    *,
    attn_implementation: str = "sdpa",
    fold: str | Path | None = None,
    scratch_dir: Path | None = None,
) -> Iterator[tuple[PreTrainedModel, ArgsT]]:
    """The student to train and its TrainingArguments (``arguments()``), made in the order sharded loading needs.

    ``from_pretrained`` lays the weights out by global state that the TrainingArguments set up, so
    they are made first (transformers 5.x, accelerate 1.15):

    * ZeRO-3 builds the model already partitioned (``deepspeed.zero.Init``, rank 0 reading the
      checkpoint, the others only its shapes) when ``is_deepspeed_zero3_enabled()``: a
      ``HfDeepSpeedConfig`` must be alive, and under ``accelerate launch`` it is created by
      ``TrainingArguments.__post_init__`` (``DeepSpeedPlugin().set_deepspeed_weakref()``).
    * FSDP's ``cpu_ram_efficient_loading`` counts only once ``torch.distributed`` is initialised
      (``transformers.distributed.fsdp.is_fsdp_enabled``), which the arguments' device set-up does.

    Without ``fold`` the model is then loaded. With it, the fold needs the whole weights in float32,
    which a sharded load does not give: in a launch of several processes (or under a DeepSpeed or FSDP
    launcher) rank 0 alone folds, before the arguments exist, and writes the folded model to
    ``scratch_dir / FOLDED_BASE_DIR``; then the arguments are made and every rank loads that copy,
    sharded as the launcher says. One process folds in memory, as it always did. With 4-bit the fold
    always goes through the scratch copy (see the module docstring). The scratch copy is removed
    when the block ends, and replaced if a killed run left one behind.

    Raises:
        ConfigError: ``fold`` through a scratch copy but no ``scratch_dir``, or a bad adapter.
    """
    import torch

    from octrain.trainers.merge import fold_adapter

    if fold is None:
        args = arguments()
        yield load_student(model_path, options, attn_implementation=attn_implementation), args
        return
    if not options.load_in_4bit and not _fold_on_disk():
        _, bf16 = precision()
        model = fold_adapter(model_path, fold)
        model = model.to(torch.bfloat16) if bf16 else model
        # fold_adapter loads with transformers' default kernel; this validates and dispatches the asked-for
        # one (after the cast, since the flash kernels refuse fp32).
        model.set_attn_implementation(attn_implementation)
        yield model, arguments()
        return
    if scratch_dir is None:
        raise ConfigError("training_student: folding an adapter for this load needs a scratch directory")
    folded_dir = scratch_dir / FOLDED_BASE_DIR
    state = _launch_state()
    # Under ``accelerate launch`` every rank gets here: one writes the folded copy (the run directory
    # is shared, as the stages' inputs are), the others wait for it and then load it.
    with state.main_process_first():
        if state.is_main_process:
            _write_folded(model_path, fold, folded_dir)
    args = arguments()
    try:
        model = load_student(str(folded_dir), options, attn_implementation=attn_implementation)
        state.wait_for_everyone()  # every rank has read the copy before rank 0 may delete it
        # The adapter trained on this is an update to the student, not to a scratch directory that
        # is about to vanish: name the real base, as the in-memory fold does.
        model.config.name_or_path = model_path
        model.name_or_path = model_path
        yield model, args
    finally:
        if state.is_main_process:
            # What the ranks hold no longer reads the files.
            shutil.rmtree(folded_dir, ignore_errors=True)


def _fold_on_disk() -> bool:
    """Whether a fold must go through a scratch copy: several ranks, or a launcher that shards the load.

    Every rank folding in float32 on its own would hold the whole model in host memory once per rank
    (8 x 16 GB for a 4B student), and a ZeRO-3 or FSDP launch loads the student sharded, which a fold
    in memory cannot be.
    """
    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    launched = launched or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return launched or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _launch_state() -> Any:
    """accelerate's process state, made as TrainingArguments will make it (the CPU flag, its DDP timeout)."""
    from datetime import timedelta

    from accelerate import PartialState

    use_cuda, _ = precision()
    if not use_cuda:
        return PartialState(cpu=True)
    # TrainingArguments' ddp_timeout: the others wait in a barrier while rank 0 folds a large model.
    return PartialState(timeout=timedelta(seconds=1800))


def _write_folded(model_path: str, fold: str | Path, folded_dir: Path) -> None:
    """Fold ``fold`` into the base in float32 and save the result where the 4-bit load reads it."""
    import torch

    from octrain.trainers.merge import fold_adapter

    shutil.rmtree(folded_dir, ignore_errors=True)  # a copy left by a killed run may be half-written
    folded = fold_adapter(model_path, fold)
    _, bf16 = precision()
    # Saved in the training precision: bf16 rounding is far below NF4's, and it halves the scratch
    # space a large student needs (~8 GB for a 4B model instead of ~16 GB).
    folded.to(torch.bfloat16 if bf16 else torch.float32).save_pretrained(folded_dir)


def _prepare_4bit(model: PreTrainedModel, options: TRLOptions) -> PreTrainedModel:
    """PEFT's k-bit preparation: freeze the base, upcast its small non-quantized layers (norms,
    embeddings) to fp32 for stable training, and switch on gradient checkpointing as TrainingArguments will."""
    from peft import prepare_model_for_kbit_training

    enabled, kwargs = gradient_checkpointing(options)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=enabled, gradient_checkpointing_kwargs=kwargs
    )
