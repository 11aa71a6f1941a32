"""The accelerate configs octrain ships (``configs/accelerate/``), checked before any model loads.

With ``trainer.num_processes=N`` the pipeline starts the training stages as

    python -m accelerate.commands.launch --config_file configs/accelerate/NAME.yaml \\
        --num_processes N -m octrain.run.workers RUN_DIR dpo

``trainer.accelerate_config`` names a shipped file (``single_gpu``, ``ddp``, ``fsdp2``, ``zero2``,
``zero3``) or is a path to the user's own. A mistake in that file would otherwise surface minutes
later, in N tracebacks, after N processes have each loaded the student: :func:`check_accelerate_config`
reads the file with accelerate's own loader and checks what octrain relies on up front, naming the
key and the file.

Two things the shipped configs cannot do by themselves, because they are about code that runs in
the trainer (see the comment blocks of ``fsdp2.yaml`` and ``zero3.yaml``):

- under FSDP2 and ZeRO-3 the parameters are sharded, so ``model.save_pretrained`` on rank 0 alone
  writes shards or empty tensors: :func:`gathered_state_dict` gathers the adapter on every rank,
  and rank 0 then passes it to ``save_pretrained(..., state_dict=...)``;
- under ZeRO-3 non-reentrant gradient checkpointing crashes with a frozen base; TRL 1.16's
  DPOTrainer and SFTTrainer switch to reentrant checkpointing themselves, so nothing is needed here.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError
from octrain.core.paths import configs_dir
from octrain.trainers.precision import precision

KEY = "trainer.accelerate_config"

# accelerate's launcher as a module: `accelerate` the console script may not be on PATH (a venv used
# without activating it), while `sys.executable -m ...` always runs the accelerate of this interpreter.
LAUNCHER_MODULE = "accelerate.commands.launch"

# The distributed types octrain supports, with what each needs. accelerate knows more (XLA, MEGATRON_LM,
# MULTI_NPU, ...); octrain has been written and documented for these five setups only.
SUPPORTED_TYPES = ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED")


def accelerate_configs_dir() -> Path:
    return configs_dir() / "accelerate"


def shipped_accelerate_configs() -> list[str]:
    directory = accelerate_configs_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


@dataclass(frozen=True)
class AccelerateSetup:
    """What a checked accelerate config amounts to.

    Attributes:
        path: the config file, resolved.
        distributed_type: accelerate's name for it (``NO``, ``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``).
        num_processes: the processes that will be launched (the caller's, not the file's default).
        mixed_precision: ``no``, ``bf16`` or ``fp16``, as the file says.
        fsdp_version: 2 for FSDP configs, else None.
        zero_stage: the DeepSpeed ZeRO stage, else None.
        shards_parameters: True when no rank holds the whole model (FSDP, ZeRO-3), so saving the
            adapter needs :func:`gathered_state_dict` on every rank first.
        notes: things worth a log line that are not errors.
    """

    path: Path
    distributed_type: str
    num_processes: int
    mixed_precision: str
    fsdp_version: int | None = None
    zero_stage: int | None = None
    shards_parameters: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def find_accelerate_config(name_or_path: str | Path) -> Path:
    """The config file for ``trainer.accelerate_config``: a shipped name or a path to a YAML file.

    A bare name (no ``/``, no ``.yaml``) is looked up in ``configs/accelerate/`` of the project
    (:func:`octrain.core.paths.configs_dir`, so ``OCTRAIN_HOME`` applies); anything else is a path,
    relative to the working directory.

    Raises:
        ConfigError: naming ``trainer.accelerate_config`` and listing the shipped names.
    """
    text = str(name_or_path).strip()
    shipped = shipped_accelerate_configs()
    if not text:
        raise ConfigError(f"{KEY} is empty; name one of {', '.join(shipped)} or give a path to a YAML file")
    candidate = Path(text).expanduser()
    looks_like_path = candidate.suffix in (".yaml", ".yml", ".json") or len(candidate.parts) > 1
    if not looks_like_path:
        shipped_file = accelerate_configs_dir() / f"{text}.yaml"
        if shipped_file.is_file():
            return shipped_file.resolve()
        listing = ", ".join(shipped) if shipped else f"none found in {accelerate_configs_dir()}"
        raise ConfigError(f"{KEY}={text!r} is not a shipped accelerate config ({listing}) nor a path to a YAML file")
    if not candidate.is_file():
        raise ConfigError(
            f"{KEY}={text!r}: no such file ({candidate.resolve()}); "
            f"the shipped configs are {', '.join(shipped)} (by name, no .yaml)"
        )
    return candidate.resolve()


def _raw_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{KEY}: {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{KEY}: {path} must be a mapping of accelerate config keys, got {type(raw).__name__}")
    return raw


def check_accelerate_config(
    path: str | Path,
    num_processes: int,
    *,
    gradient_checkpointing: bool | None = None,
    load_in_4bit: bool = False,
) -> AccelerateSetup:
    """Parse an accelerate config the way ``accelerate launch`` does and check it fits octrain.

    Runs in the parent process, before any model loads. A ``num_processes`` larger than the number
    of GPUs is left to the launcher (this process may not even see the GPUs); what is checked is what
    the file and the number say together.

    Args:
        path: the file, usually from :func:`find_accelerate_config`.
        num_processes: ``trainer.num_processes``; overrides the file's ``num_processes``.
        gradient_checkpointing: whether the trainer will checkpoint activations (octrain's resolved
            ``trainer.trl.gradient_checkpointing``); None skips the check against FSDP's own.
        load_in_4bit: ``trainer.trl.load_in_4bit`` (QLoRA), refused with ZeRO-3.

    Raises:
        ConfigError: naming the key at fault and the file.
    """
    path = Path(path)
    if num_processes < 1:
        raise ConfigError(f"trainer.num_processes must be at least 1, got {num_processes}")
    raw = _raw_yaml(path)
    # YAML 1.1 reads an unquoted NO as false; accelerate would fail with "'False' is not a valid
    # DistributedType", which does not say that quoting is the fix.
    if raw.get("distributed_type") is False:
        raise ConfigError(f"{KEY}: distributed_type in {path} reads as false: quote it, distributed_type: 'NO'")
    if raw.get("compute_environment", "LOCAL_MACHINE") != "LOCAL_MACHINE":
        raise ConfigError(
            f"{KEY}: compute_environment in {path} is {raw.get('compute_environment')!r}; "
            "octrain launches on the local machine only (LOCAL_MACHINE)"
        )

    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(str(path))
    except (ValueError, TypeError, KeyError) as error:
        # accelerate's messages name the unknown keys or the bad value, not which octrain key led there.
        raise ConfigError(f"{KEY}: accelerate cannot read {path}: {error}") from error

    distributed_type = str(getattr(config.distributed_type, "value", config.distributed_type))
    if distributed_type not in SUPPORTED_TYPES:
        raise ConfigError(
            f"{KEY}: distributed_type {distributed_type!r} in {path} is not one octrain supports "
            f"({', '.join(SUPPORTED_TYPES)})"
        )
    if getattr(config, "num_machines", 1) not in (1, None):
        raise ConfigError(f"{KEY}: num_machines in {path} is {config.num_machines}; octrain launches one machine")
    mixed_precision = str(config.mixed_precision or "no")
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"{KEY}: mixed_precision in {path} is {mixed_precision!r}; use bf16 (or 'no')")

    notes: list[str] = []
    fsdp_version: int | None = None
    zero_stage: int | None = None
    shards = False

    # The single-process launcher starts one process whatever --num_processes says, and MULTI_GPU
    # refuses fewer than two: both would otherwise be found out only by the launcher, or not at all.
    if distributed_type == "NO" and num_processes > 1:
        raise ConfigError(
            f"{KEY}: {path} has distributed_type 'NO', which starts one process, but trainer.num_processes="
            f"{num_processes}; use ddp, fsdp2, zero2 or zero3 for more than one"
        )
    if distributed_type == "MULTI_GPU" and num_processes < 2:
        raise ConfigError(
            f"{KEY}: {path} has distributed_type MULTI_GPU, which needs trainer.num_processes >= 2 "
            f"(got {num_processes}); use single_gpu for one process"
        )

    if distributed_type == "FSDP":
        fsdp = dict(config.fsdp_config or {})
        fsdp_version = int(fsdp.get("fsdp_version", 1))
        if fsdp_version != 2:
            raise ConfigError(
                f"{KEY}: fsdp_config.fsdp_version in {path} is {fsdp_version}; octrain supports FSDP2 only "
                "(fsdp_version: 2; `accelerate to-fsdp2` converts an FSDP1 config)"
            )
        if fsdp.get("fsdp_forward_prefetch"):
            raise ConfigError(f"{KEY}: fsdp_config.fsdp_forward_prefetch in {path} is not implemented in FSDP2")
        if fsdp.get("fsdp_cpu_ram_efficient_loading") and not fsdp.get("fsdp_sync_module_states"):
            # accelerate's launcher raises on this even for FSDP2, which ignores sync_module_states.
            raise ConfigError(
                f"{KEY}: fsdp_config.fsdp_cpu_ram_efficient_loading in {path} needs fsdp_sync_module_states: true"
            )
        state_dict_type = str(fsdp.get("fsdp_state_dict_type", "FULL_STATE_DICT"))
        if state_dict_type not in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
            raise ConfigError(
                f"{KEY}: fsdp_config.fsdp_state_dict_type in {path} is {state_dict_type!r}; "
                "FSDP2 takes FULL_STATE_DICT or SHARDED_STATE_DICT"
            )
        if state_dict_type == "SHARDED_STATE_DICT":
            notes.append(
                f"{path.name}: SHARDED_STATE_DICT checkpoints are torch.distributed.checkpoint shards, "
                "not PEFT adapters; the final adapter is still gathered and saved whole"
            )
        if fsdp.get("fsdp_activation_checkpointing") and gradient_checkpointing:
            # transformers' Trainer raises on this only after every rank has loaded the model.
            raise ConfigError(
                f"{KEY}: fsdp_config.fsdp_activation_checkpointing in {path} and trainer.trl.gradient_checkpointing "
                "are both on; use one: trainer.trl.gradient_checkpointing=false to keep FSDP's"
            )
        if load_in_4bit:
            notes.append(
                f"{path.name}: with trainer.trl.load_in_4bit the 4-bit base weights are left out of the FSDP "
                "shards (every GPU holds all of them); ddp does the same with less machinery"
            )
        shards = True

    if distributed_type == "DEEPSPEED":
        deepspeed = dict(config.deepspeed_config or {})
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"{KEY}: {path} uses DeepSpeed, which is not installed in this environment "
                f"({sys.executable}): pip install deepspeed"
            )
        if "deepspeed_config_file" in deepspeed:
            notes.append(f"{path.name}: settings come from {deepspeed['deepspeed_config_file']}")
        stage = deepspeed.get("zero_stage")
        if "deepspeed_config_file" not in deepspeed:
            if stage not in (0, 1, 2, 3):
                raise ConfigError(f"{KEY}: deepspeed_config.zero_stage in {path} must be 0-3, got {stage!r}")
            zero_stage = int(stage)
        for key in ("gradient_accumulation_steps", "gradient_clipping"):
            value = deepspeed.get(key, "auto")
            if value != "auto":
                # octrain computes the accumulation from the world size; a fixed number here that
                # disagrees is a hard error inside the Trainer, after the model has loaded.
                raise ConfigError(
                    f"{KEY}: deepspeed_config.{key} in {path} is {value!r}; set it to auto so that octrain's "
                    "TrainingArguments fill it"
                )
        if zero_stage == 3:
            shards = True
            if not deepspeed.get("zero3_save_16bit_model"):
                raise ConfigError(
                    f"{KEY}: deepspeed_config.zero3_save_16bit_model in {path} must be true: without it the "
                    "partitioned LoRA weights cannot be gathered to save the adapter"
                )
            if load_in_4bit:
                raise ConfigError(
                    f"{KEY}: {path} is ZeRO-3, which octrain does not support with trainer.trl.load_in_4bit=true "
                    "(ZeRO-3 + bitsandbytes needs bnb_4bit_quant_storage and no per-rank device_map); "
                    "use zero2, ddp or fsdp2 for QLoRA"
                )
            if gradient_checkpointing:
                notes.append(
                    f"{path.name}: TRL switches gradient checkpointing to use_reentrant=True under ZeRO-3 with "
                    "PEFT (non-reentrant crashes there) and logs a warning; that is expected"
                )

    if distributed_type in ("FSDP", "DEEPSPEED") and not _cuda_available():
        # accelerate 1.15 applies FSDP and DeepSpeed only to GPU-family distributed types: with
        # use_cpu=True (octrain's choice without CUDA) the processes run MULTI_CPU, which is plain
        # DDP over gloo, and the plugin is dropped without a word. torch's fully_shard itself works
        # on CPU; accelerate does not route to it.
        notes.append(
            f"{path.name}: no CUDA here, so accelerate runs plain DDP over gloo and ignores the "
            f"{distributed_type} settings"
        )

    return AccelerateSetup(
        path=path.resolve(),
        distributed_type=distributed_type,
        num_processes=num_processes,
        mixed_precision=mixed_precision,
        fsdp_version=fsdp_version,
        zero_stage=zero_stage,
        shards_parameters=shards,
        notes=tuple(notes),
    )


def _cuda_available() -> bool:
    from octrain.core.devices import gpu_usable

    return gpu_usable()  # NVML, not CUDA: this runs in the parent, before the launch


def launch_command(
    path: str | Path,
    num_processes: int,
    module_args: Sequence[str],
    *,
    main_process_port: int | None = None,
) -> list[str]:
    """The ``accelerate launch`` command line that runs ``python -m MODULE_ARGS...`` in N processes.

    Args:
        path: the accelerate config file.
        num_processes: overrides the file's ``num_processes``.
        module_args: the module and its arguments, e.g. ``["octrain.run.workers", run_dir, "dpo"]``.
        main_process_port: the rendezvous port; 0 picks a free one (two runs on one machine would
            otherwise both try accelerate's default 29500; accelerate falls back to a free port when
            it is taken, but two launches can race for it).
    """
    if not module_args:
        raise ValueError("launch_command needs a module to run")
    # octrain chooses the precision (bf16 on a GPU that has it, fp32 elsewhere: TrainingArguments'
    # bf16 flag); a file's mixed_precision must not put bf16 autocast on a CPU run or fp32 on a GPU one.
    # precision() asks NVML: the parent that launches the ranks opens no CUDA context on GPU 0.
    mixed = "bf16" if precision()[1] else "no"
    command = [sys.executable, "-m", LAUNCHER_MODULE, "--config_file", str(path), "--num_processes", str(num_processes)]
    command += ["--mixed_precision", mixed]
    if main_process_port is not None:
        command += ["--main_process_port", str(main_process_port)]
    return [*command, "-m", *map(str, module_args)]


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The full state dict for saving the adapter, gathered from every rank; None where not needed.

    Call it on EVERY rank (it is a collective under FSDP2 and ZeRO-3: calling it on rank 0 alone
    hangs), then on rank 0 only: ``model.save_pretrained(target, state_dict=state)``. PEFT's
    ``save_pretrained`` picks the adapter weights out of the full dict itself. Without FSDP or
    DeepSpeed ZeRO-3 every rank holds whole parameters and this returns None: save as usual.

    Mirrors what transformers' ``Trainer.save_model`` does for the same two cases.
    """
    accelerator = trainer.accelerator
    if getattr(trainer, "is_fsdp_enabled", False):
        # FSDP2: torch's get_model_state_dict(full_state_dict=True, cpu_offload=True): full tensors on
        # rank 0's CPU, empty elsewhere.
        return accelerator.get_state_dict(trainer.model)
    if getattr(trainer, "is_deepspeed_enabled", False):
        engine = trainer.model_wrapped
        if engine.config.get("zero_optimization", {}).get("stage") != 3:
            return None
        try:
            # Only the trainable (LoRA) parameters: gathering the frozen base would need its whole
            # 16-bit copy on rank 0 for nothing.
            return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
        except TypeError:  # an older DeepSpeed without the keyword
            return accelerator.get_state_dict(engine)
    return None
