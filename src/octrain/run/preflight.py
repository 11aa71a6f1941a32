"""Checks before a run: everything that can be found wrong without loading a model.

:func:`preflight` checks the backends, the GPU, the trainer's launch settings and the student's chat
template, and reads every input file the selected stages need, so that a typo in a path or a
missing package stops the run in seconds rather than after hours of sampling.
:func:`resolve_constitution` finds and validates the run's constitution the same way for the
pipeline, its worker processes, the smoke runs and the front ends.
"""

from __future__ import annotations

import logging

from octrain.constitution import Constitution
from octrain.constitution.catalog import resolve_constitution_name
from octrain.core.config import ModelRole, OctrainConfig, SamplerBackend, StageName, TrainerBackend
from octrain.core.devices import gpu_problem
from octrain.core.errors import ConfigError
from octrain.evaluation.capability import preflight_capability
from octrain.evaluation.heldout import load_eval_prompts
from octrain.evaluation.judge_check import check_judge
from octrain.evaluation.ood_prompts import load_ood_prompts
from octrain.evaluation.paper_reference import base_name
from octrain.evaluation.traits import load_traits
from octrain.models.builtin import require_fetched, resolve_model_path
from octrain.run.training_launch import checked_accelerate_setup
from octrain.samplers import check_backend
from octrain.samplers.endpoint import check_endpoints
from octrain.samplers.shard_devices import plan_devices
from octrain.stages.from_file import prepare_imports
from octrain.stages.generic_prompts import load_generic_pool
from octrain.stages.introspect import load_reflection_prompts
from octrain.trainers.assistant_mask import check_chat_template
from octrain.trainers.model_loading import check_training_settings
from octrain.trainers.tinker_common import check_tinker_run

logger = logging.getLogger(__name__)


def resolve_constitution(config: OctrainConfig) -> Constitution:
    """Find and validate the configured constitution."""
    return resolve_constitution_name(config.constitution)


def _check_separate_teacher(config: OctrainConfig) -> None:
    """On-policy distillation from the run's teacher needs its weights here, and the student's vocabulary."""
    from octrain.stages.dpo import trained_by_teacher

    if not trained_by_teacher(config):
        return
    if config.teacher.endpoint.base_url is not None:
        raise ConfigError(
            "distill.sdft.teacher_weights=teacher grades every token with the teacher's own next-token "
            f"distribution, which a server at teacher.endpoint.base_url={config.teacher.endpoint.base_url} does not "
            "return: load the teacher here (teacher.endpoint.base_url=null), or distill.sdft.teacher_weights=student"
        )
    from octrain.trainers.trl_sdft import check_shared_vocabulary

    # Tokenizers and configs, no weights. Tinker's loss reads sampled tokens' log-probs: no width to match.
    on_tinker = config.trainer.backend is TrainerBackend.tinker
    check_shared_vocabulary(config.student.path, config.teacher.path, same_width=not on_tinker)


def _check_tinker_sdft(config: OctrainConfig) -> None:
    """On-policy distillation on Tinker computes the sampled-token reverse KL from a fixed teacher only."""
    if config.distill.method.value != "sdft" or config.trainer.backend is not TrainerBackend.tinker:
        return
    from octrain.trainers.tinker_sdft import check_settings

    check_settings(config.distill.sdft)


def preflight(config: OctrainConfig) -> None:
    """Check the backends and read every input file the selected stages need, so that a problem
    shows before any model loads."""
    for role in ModelRole:  # a built-in that is not fetched stops here, naming the command that fetches it
        require_fetched(config.model(role).path)
    if StageName.dpo in config.stages:
        _check_separate_teacher(config)  # before the endpoint check: a served teacher cannot grade at all
    check_backend(config.sampler)
    check_endpoints(config)  # models served over HTTP: usable by these stages, key set, server up
    _check_gpu(config)
    if config.sampler.data_parallel_size > 1:
        plan_devices(config.sampler)  # enough GPUs for every shard, said before any stage starts
    training = {StageName.dpo, StageName.sft} & set(config.stages)
    if training and config.trainer.backend.value not in ("trl", "tinker"):
        raise ConfigError(
            f"trainer.backend={config.trainer.backend.value}: this backend is not in this version of octrain yet; "
            "use trainer=trl or trainer=tinker"
        )
    if StageName.dpo in training:
        # Before check_tinker_run, which would ask the service about a run that cannot happen.
        _check_tinker_sdft(config)
    check_tinker_run(config)  # Tinker's SDK, key, settings and served models; nothing when no stage uses Tinker
    _check_input_files(config)
    if training:
        check_training_settings(config)  # QLoRA's bitsandbytes, the attention kernel's package and device
        if config.trainer.num_processes > 1 and config.trainer.backend.value == "trl":
            checked_accelerate_setup(config.trainer)
    if StageName.sft in config.stages:  # both trainers build their SFT mask with octrain.trainers.assistant_mask
        # Last, as the one check that reads more than a local file: the student's tokenizer (never
        # its weights). A template the loss mask cannot handle, or a tokenizer that cannot be loaded
        # (offline, gated), would otherwise stop the sft stage after DPO and introspection have run.
        student = config.student
        check_chat_template(
            resolve_model_path(student.path),
            model_name=f"student.path={student.path}",
            template_kwargs={"enable_thinking": student.enable_thinking},
        )
    check_judge(config)
    prepare_imports(config)


def _check_input_files(config: OctrainConfig) -> None:
    """Read the prompt, trait and persona files the selected stages will read."""
    generic = config.prompts.generic_source
    # A Hub dataset is fetched only when the stage runs: no download just to check it.
    if StageName.prompts in config.stages and config.scale.generic_prompts > 0 and not generic.startswith("hub:"):
        load_generic_pool(generic)
    if StageName.introspect in config.stages:
        load_reflection_prompts(config.introspect.reflection_prompts)
    if StageName.eval in config.stages:
        load_eval_prompts(config.eval.prompts)
        load_traits(config.eval.traits)
        if config.eval.capability.enabled:
            preflight_capability(config)  # the harness, the tasks and their data (downloaded once, cached)
        if config.eval.paper_reference is not None:
            base_name(config.eval.paper_reference)  # one of the paper's students, or a named error
        if config.eval.ood.enabled:
            ood = config.eval.ood
            load_ood_prompts(ood.prompts, categories=ood.categories or None, per_category=ood.per_category)
        contrasts = [resolve_constitution_name(name).name for name in config.eval.classifier.contrast_personas]
        if contrasts:
            own = resolve_constitution(config).name
            if own in contrasts or len(set(contrasts)) < len(contrasts):
                raise ConfigError(
                    f"eval.classifier.contrast_personas: {contrasts} must name other personas than the run's own "
                    f"({own!r}), each once"
                )


def _check_gpu(config: OctrainConfig) -> None:
    """Say, before any model loads, when a CUDA build of torch will not use the GPU for this run.

    A driver too old for torch's CUDA build stops the run: the card is there, and the stages would
    otherwise train in fp32 on the CPU for hours (``CUDA_VISIBLE_DEVICES=`` runs on the CPU on
    purpose). A CUDA build on a machine without a GPU is a warning. Nothing is said for a run whose
    models all run elsewhere (Tinker, the fake sampler without a training stage).
    """
    trains_here = bool({StageName.dpo, StageName.sft} & set(config.stages)) and (
        config.trainer.backend is TrainerBackend.trl
    )
    if not trains_here and config.sampler.backend not in (SamplerBackend.hf, SamplerBackend.vllm):
        return
    problem = gpu_problem()  # NVML and torch.version.cuda: no CUDA context in this process
    if problem is None:
        return
    if problem.fatal:
        raise ConfigError(problem.message)
    logger.warning("%s", problem.message)
