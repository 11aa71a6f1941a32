"""The typed configuration of an octrain run: the schema's root, and the checks across its sections.

Hydra composes YAML (``configs/`` plus a recipe from ``recipes/``) on top of these
dataclasses, which are registered as the schema, so a misspelled key, a value of the wrong
type or an unknown enum member fails at composition with the key's full name. ``__main__``
converts the result to these dataclasses once; nothing below it sees a ``DictConfig``.

:class:`OctrainConfig` is the root; its sections (models, backends, scale, stages) are in
:mod:`octrain.core.config_sections` and the range checks of each in :mod:`octrain.core.config_checks`.
Every name of both is importable from here, the one place code imports the config from.

Enums are ``str`` enums rather than ``Literal`` because OmegaConf 2.3 validates the former
and rejects the latter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from omegaconf import MISSING

from octrain.core.config_checks import (
    check_backends,
    check_distill,
    check_dpo,
    check_eval,
    check_introspect,
    check_model,
    check_pairs,
    check_prompts,
    check_scale,
    check_sft,
)
from octrain.core.config_sections import (
    ClassifierKind,
    DistillationMode,
    DistillMethod,
    DistillStageConfig,
    DpoStageConfig,
    DType,
    EndpointConfig,
    EvalStageConfig,
    EvalSuite,
    HFSamplerOptions,
    IntrospectionFilters,
    IntrospectStageConfig,
    JudgeKind,
    LoraSettings,
    ModelConfig,
    ModelRole,
    PairFilters,
    PairsStageConfig,
    PersonaClassifierSettings,
    PromptsStageConfig,
    SamplerBackend,
    SamplerConfig,
    SamplingConfig,
    ScaleConfig,
    SdftSettings,
    SdftTeacher,
    SdftTeacherWeights,
    SftMode,
    SftStageConfig,
    TeacherPrompt,
    TinkerOptions,
    TrainerBackend,
    TrainerConfig,
    TRLOptions,
    VLLMSamplerOptions,
)
from octrain.core.errors import ConfigError

__all__ = [
    "VLLM_LORA_RANKS",
    "ClassifierKind",
    "DType",
    "DistillMethod",
    "DistillStageConfig",
    "DistillationMode",
    "DpoStageConfig",
    "EndpointConfig",
    "EvalStageConfig",
    "EvalSuite",
    "Execution",
    "HFSamplerOptions",
    "IntrospectStageConfig",
    "IntrospectionFilters",
    "JudgeKind",
    "LoraSettings",
    "ModelConfig",
    "ModelRole",
    "OctrainConfig",
    "PairFilters",
    "PairsStageConfig",
    "PersonaClassifierSettings",
    "PromptsStageConfig",
    "SamplerBackend",
    "SamplerConfig",
    "SamplingConfig",
    "ScaleConfig",
    "SdftSettings",
    "SdftTeacher",
    "SdftTeacherWeights",
    "SftMode",
    "SftStageConfig",
    "SmokeMode",
    "StageName",
    "TRLOptions",
    "TeacherPrompt",
    "TinkerOptions",
    "TrainerBackend",
    "TrainerConfig",
    "VLLMSamplerOptions",
    "validate",
]


class StageName(str, Enum):
    """Pipeline stages, in the order they run. Stage name = output folder = config key."""

    prompts = "prompts"
    pairs = "pairs"
    dpo = "dpo"
    introspect = "introspect"
    sft = "sft"
    eval = "eval"


class Execution(str, Enum):
    """Where each stage runs (see :mod:`octrain.run.workers`)."""

    auto = "auto"  # worker processes on a CUDA machine, in-process on the CPU
    inline = "inline"  # every stage in the process that started the run
    worker = "worker"  # every stage in a fresh process of its own, so its memory is gone when it ends


class SmokeMode(str, Enum):
    """Which smoke runs go before a run at scale=full or scale=paper (see :mod:`octrain.run.smoke`)."""

    both = "both"  # the small one, then the large one
    small = "small"  # tiny counts and short answers: every code path, in minutes
    large = "large"  # tiny counts at the full run's lengths and batch sizes: the memory peaks
    none = "none"  # start the full run straight away


def _all_stages() -> list[StageName]:
    return list(StageName)


@dataclass
class OctrainConfig:
    """Everything one run needs. A recipe fills ``name`` and ``constitution``."""

    name: str = MISSING
    constitution: str = MISSING  # a name from constitutions/ or a path to a file
    run_root: str = "runs"
    seed: int = 0
    stages: list[StageName] = field(default_factory=_all_stages)
    force: list[StageName] = field(default_factory=list)  # rerun these even when complete
    # Generation stages whose output a run copies from another run (under run_root or beside the
    # run directory, sweep jobs included) that made it with identical settings and inputs (a sweep
    # over DPO settings samples the pairs once).
    reuse: list[StageName] = field(default_factory=lambda: [StageName.prompts, StageName.pairs])
    log_level: str = "INFO"
    execution: Execution = Execution.auto
    # Only for scale=full and scale=paper (hours of GPU time): smoke runs with the same models and
    # settings must pass first; other scales ignore it.
    smoke: SmokeMode = SmokeMode.both
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    prompts: PromptsStageConfig = field(default_factory=PromptsStageConfig)
    pairs: PairsStageConfig = field(default_factory=PairsStageConfig)
    dpo: DpoStageConfig = field(default_factory=DpoStageConfig)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)  # what trains stage 1: dpo or sdft
    introspect: IntrospectStageConfig = field(default_factory=IntrospectStageConfig)
    sft: SftStageConfig = field(default_factory=SftStageConfig)
    eval: EvalStageConfig = field(default_factory=EvalStageConfig)

    def model(self, role: ModelRole) -> ModelConfig:
        return self.teacher if role is ModelRole.teacher else self.student


# The only values vLLM accepts for ``max_lora_rank`` (its LoRA config refuses any other). An
# adapter whose rank is one of them can be served with ``max_lora_rank = r``; the merge and
# the vLLM sampler read this list too, so the two cannot drift apart.
VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _check_final_adapter_rank(config: OctrainConfig) -> None:
    """Refuse LoRA ranks whose sum vLLM cannot serve: the sft stage's final adapter concatenates both.

    Checked here, before any model loads, rather than when the sft stage writes that adapter
    after both trainings.
    """
    if StageName.sft not in config.stages or config.trainer.backend is not TrainerBackend.trl:
        return
    # Stage 1's adapter is the one distill.method trains: dpo.lora, or distill.sdft.lora.
    sdft = config.distill.method is DistillMethod.sdft
    first_key = "distill.sdft.lora.rank" if sdft else "dpo.lora.rank"
    dpo_rank = config.distill.sdft.lora.rank if sdft else config.dpo.lora.rank
    sft_rank, largest = config.sft.lora.rank, VLLM_LORA_RANKS[-1]
    if dpo_rank + sft_rank > largest:
        raise ConfigError(
            f"{first_key} + sft.lora.rank: the final adapter's rank {dpo_rank} + {sft_rank} = {dpo_rank + sft_rank} "
            f"is above {largest}, the largest LoRA rank vLLM serves; lower one of them"
        )


def validate(config: OctrainConfig) -> None:
    """Check the values the schema's types cannot: ranges, counts, cross-field rules.

    Raises:
        ConfigError: naming the first offending key and what was expected.
    """
    if not config.name.strip() or "/" in config.name:
        raise ConfigError(f"name: expected a non-empty name without '/', got {config.name!r}")
    for role in ModelRole:
        check_model(role.value, config.model(role))
    check_scale(config.scale)
    check_prompts(config.prompts)
    check_pairs(config.pairs)
    check_dpo(config.dpo)
    check_distill(config.distill)
    check_introspect(config.introspect)
    check_sft(config.sft)
    _check_final_adapter_rank(config)
    check_eval(config.eval)
    check_backends(config.sampler, config.trainer)
    if not config.stages:
        raise ConfigError(f"stages: expected at least one of {', '.join(s.value for s in StageName)}")
