"""Smoke runs before a run at paper scale: the full run starts only when they pass.

A run at ``scale=full`` or ``scale=paper`` holds GPUs for hours; a setting that breaks in its last
stage (a LoRA target the student lacks, an eval prompt file that clashes with training, a batch
that does not fit in memory) should not cost those hours. So before such a run starts,
:func:`check_smoke_runs` runs the same pipeline twice more, on tiny counts, in scratch directories
under the run directory:

``small`` (``RUN_DIR/smoke/small``)
    Every selected stage, with the same models, sampler and trainer backends, LoRA settings,
    templates, filters and execution mode, but a few records per stage and answers of at most
    :data:`SHORT_ANSWER_TOKENS` tokens: every code path, in minutes.
``large`` (``RUN_DIR/smoke/large``)
    The same few records, at the full run's answer lengths, sequence limits and batch sizes, and
    just enough of them to fill one optimiser step of DPO and of SFT and one generate() batch of
    the sampler, with self-interactions of the full number of turns: the memory peaks of the full
    run happen here.

``smoke=both|small|large|none`` chooses (``both``: small, then large). Each is a real
:func:`octrain.run.pipeline.run` in its own directory, so it resumes like any run: a smoke run that
passed with the same settings skips every stage on the next invocation, and one whose settings
changed reruns only what changed. A failure stops everything before the full run takes its lock
or makes a stage directory, with one line naming the smoke run, the stage and the reason.

Stages imported from a file (``pairs.source``, ``introspect.source``) import the whole file in the
smoke runs too: there is no count to shrink there.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from octrain.constitution import Constitution
from octrain.constitution.near_duplicates import PromptSet
from octrain.core.config import OctrainConfig, SamplerBackend, SamplingConfig, SmokeMode, StageName
from octrain.core.errors import OctrainError, StageError
from octrain.core.layout import DONE_FILE, SMOKE_DIR, STARTED_FILE
from octrain.run.result import RunResult
from octrain.stages.prompts import given_prompts, needs_expansion
from octrain.stages.table import stages_for

logger = logging.getLogger(__name__)

# What runs a smoke run: the pipeline's own ``run`` (octrain.run.pipeline passes it in, so that this
# module need not import the pipeline that imports it).
RunPipeline = Callable[[OctrainConfig, Path], RunResult]

# The scales big enough that a late failure is expensive; smaller ones are their own smoke test.
SMOKED_SCALES = ("full", "paper")
SHORT_ANSWER_TOKENS = 64
# A filtered record or two must not leave the large run's optimiser step short of a full batch.
BATCH_MARGIN = 1.25

# The small run's counts (each capped at the full run's own value).
SMALL_GENERIC_PROMPTS = 2
SMALL_REFLECTIONS = 4
SMALL_INTERACTIONS = 2  # one free and one leading conversation (introspect.interaction_plan alternates)
SMALL_INTERACTION_TURNS = 3  # both copies speak, and one sees its own earlier turn
SMALL_EVAL_PROMPTS = 4
SMALL_CLASSIFIER_PROMPTS = 8  # enough for a held-out share of at least one prompt
LARGE_CLASSIFIER_PROMPTS = 16  # one training batch of the transformer classifier
SMOKE_TRIALS_PER_TRAIT = 1
SMOKE_ELO_ROUNDS = 20


def smoke_kinds(config: OctrainConfig) -> list[SmokeMode]:
    """The smoke runs ``config`` asks for before it starts, in the order they run (none for small scales)."""
    if config.scale.name not in SMOKED_SCALES or config.smoke is SmokeMode.none:
        return []
    if config.smoke is SmokeMode.both:
        return [SmokeMode.small, SmokeMode.large]
    return [config.smoke]


def smoke_dir(run_dir: str | Path, kind: SmokeMode) -> Path:
    """Where the smoke run ``kind`` of the run in ``run_dir`` keeps its files."""
    return Path(run_dir) / SMOKE_DIR / kind.value


def smoke_stages(config: OctrainConfig) -> list[StageName]:
    """The run's stages and every stage they need, in pipeline order.

    A smoke run starts in an empty directory: where the full run resumes (``stages=[sft,eval]``
    after the earlier stages finished), its smoke run must make those inputs itself.
    """
    specs = stages_for(config)
    wanted = set(config.stages)
    pending = list(wanted)
    while pending:
        for need in specs[pending.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                pending.append(need)
    return [stage for stage in StageName if stage in wanted]


def _sequences_per_call(config: OctrainConfig) -> int:
    """How many sequences the sampler decodes at once, when that is a setting that shapes memory.

    The transformers sampler pads a batch of ``sampler.hf.batch_size`` sequences: its peak needs that
    many in one call. vLLM takes its memory up front (``gpu_memory_utilization``) and Tinker is remote.
    """
    if config.sampler.backend is SamplerBackend.hf:
        return config.sampler.hf.batch_size
    if config.sampler.backend is SamplerBackend.vllm:
        return config.sampler.vllm.max_num_seqs or 0
    return 0


def _smoke_prompts_per_trait(config: OctrainConfig, constitution: Constitution) -> int:
    """Prompts per trait for a smoke run: as few as still take the full run's paths in the prompts stage.

    The full run asks a generator model for more prompts when a trait has fewer seed (and
    additional) questions than ``scale.prompts_per_trait``. One more than the fewest any trait has
    makes the smoke run load that model and expand too; without expansion one prompt a trait is enough.
    """
    full = config.scale.prompts_per_trait
    if not needs_expansion(constitution, full, config.prompts):
        return min(full, 1)
    given, _ = given_prompts(constitution, full, PromptSet(config.prompts.near_duplicate_overlap))
    return min(full, min(len(kept) for kept in given) + 1)


def _shorten(sampling: SamplingConfig) -> None:
    sampling.max_new_tokens = min(sampling.max_new_tokens, SHORT_ANSWER_TOKENS)


def _thinks(config: OctrainConfig) -> bool:
    """Whether some answer opens with a thought: a short budget would hold nothing but the thought."""
    return config.teacher.enable_thinking or config.student.enable_thinking or config.pairs.thinking_prefill


def derive_smoke_config(config: OctrainConfig, kind: SmokeMode, constitution: Constitution) -> OctrainConfig:
    """The config of the smoke run ``kind`` (small or large) of the full run ``config``.

    A deep copy in which only counts change (and, for ``small``, answer lengths, with the filters
    that only judge an answer's length): models, backends, LoRA settings, learning rates, templates,
    sequence limits and batch sizes stay as they are.
    """
    if kind not in (SmokeMode.small, SmokeMode.large):
        raise ValueError(f"a smoke run is small or large, not {kind.value}")
    full = config
    smoke = copy.deepcopy(config)
    smoke.smoke = SmokeMode.none  # a smoke run must not start smoke runs of its own
    smoke.stages = smoke_stages(config)
    smoke.force = []  # its stages rerun when their settings change; force is for the full run's outputs
    # A stage copied from another run would prove nothing about this one's code paths or memory.
    smoke.reuse = []

    scale = smoke.scale
    scale.prompts_per_trait = _smoke_prompts_per_trait(full, constitution)
    scale.generic_prompts = min(full.scale.generic_prompts, SMALL_GENERIC_PROMPTS)
    # Samples of one prompt are separate records with their own ids, not another code path.
    scale.samples_per_prompt = 1
    scale.reflections = min(full.scale.reflections, SMALL_REFLECTIONS)
    scale.interactions = min(full.scale.interactions, SMALL_INTERACTIONS)
    scale.interaction_turns = min(full.scale.interaction_turns, SMALL_INTERACTION_TURNS)
    evaluation = smoke.eval
    evaluation.prompt_count = min(full.eval.prompt_count, SMALL_EVAL_PROMPTS)
    evaluation.trials_per_trait = min(full.eval.trials_per_trait, SMOKE_TRIALS_PER_TRAIT)
    evaluation.classifier.prompts = min(full.eval.classifier.prompts, SMALL_CLASSIFIER_PROMPTS)
    evaluation.elo_rounds = min(full.eval.elo_rounds, SMOKE_ELO_ROUNDS)

    if kind is SmokeMode.small:
        if not _thinks(full):
            for sampling in (
                smoke.prompts.sampling,
                smoke.pairs.sampling,
                smoke.introspect.reflection_sampling,
                smoke.introspect.interaction_sampling,
                smoke.eval.sampling,
            ):
                _shorten(sampling)
            # Cut short on purpose, nearly every answer would fail these and the stage would stop
            # with nothing to train on; the large run keeps them, at the full lengths.
            smoke.pairs.filters.unfinished = False
            smoke.pairs.filters.final_punctuation = False
            smoke.introspect.filters.unfinished = False
        return smoke

    # Large: enough records for one full optimiser step and one full sampler batch.
    batch = _sequences_per_call(full)
    traits = len(constitution.traits)
    pairs_wanted = max(math.ceil(BATCH_MARGIN * full.dpo.batch_size), batch)
    for key in ("prompts_per_trait", "generic_prompts", "samples_per_prompt"):
        ceiling = getattr(full.scale, key)
        while scale.pairs_for(traits) < pairs_wanted and getattr(scale, key) < ceiling:
            setattr(scale, key, getattr(scale, key) + 1)
    # Each reflection is one SFT transcript; the conversations come on top.
    scale.reflections = min(
        full.scale.reflections, max(scale.reflections, math.ceil(BATCH_MARGIN * full.sft.batch_size), batch)
    )
    scale.interactions = min(full.scale.interactions, max(scale.interactions, batch))
    scale.interaction_turns = full.scale.interaction_turns  # the longest contexts come in the last turns
    evaluation.prompt_count = min(full.eval.prompt_count, max(evaluation.prompt_count, batch))
    evaluation.classifier.prompts = min(full.eval.classifier.prompts, LARGE_CLASSIFIER_PROMPTS)
    return smoke


def _failed_where(smoke: OctrainConfig, scratch: Path) -> str:
    """Where in its pipeline a smoke run stopped, from its stage markers.

    Stages run in order and a stage whose settings changed is cleared before it runs again, so the
    first stage without a ``done.json`` is the one that failed (if it wrote its ``started.json``).
    """
    for stage in smoke.stages:
        if not (scratch / stage.value / DONE_FILE).is_file():
            if (scratch / stage.value / STARTED_FILE).is_file():
                return f"in stage {stage.value}"
            return f"before stage {stage.value} started"
    return "after its stages"


def _reason(exc: Exception) -> str:
    """The error as one line: octrain's own message, or the exception's type and first line."""
    text = str(exc).strip()
    if isinstance(exc, OctrainError):
        return " ".join(text.split()) or type(exc).__name__
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _describe(smoke: OctrainConfig, constitution: Constitution) -> str:
    scale = smoke.scale
    return (
        f"{scale.pairs_for(len(constitution.traits))} pairs aimed for, {scale.reflections} reflections, "
        f"{scale.interactions} conversations of {scale.interaction_turns} turns, {smoke.eval.prompt_count} eval "
        f"prompts; answers up to {smoke.pairs.sampling.max_new_tokens} tokens; stages "
        + ", ".join(stage.value for stage in smoke.stages)
    )


def run_smoke(
    config: OctrainConfig,
    kind: SmokeMode,
    run_dir: str | Path,
    constitution: Constitution,
    *,
    run_pipeline: RunPipeline,
) -> None:
    """Run the smoke run ``kind`` of ``config`` in its scratch directory under ``run_dir``.

    Raises:
        StageError: it failed; the message names it, where it stopped, why, and its directory.
    """
    smoke = derive_smoke_config(config, kind, constitution)
    scratch = smoke_dir(run_dir, kind)
    logger.info("smoke run %s: running in %s (%s)", kind.value, scratch, _describe(smoke, constitution))
    began = time.perf_counter()
    try:
        result = run_pipeline(smoke, scratch)
    except Exception as exc:  # a CUDA out-of-memory or a library's ValueError is what it is there to catch
        if not isinstance(exc, OctrainError):
            # Not one of octrain's own messages: the traceback is how to find out more.
            logger.error("smoke run %s failed", kind.value, exc_info=exc)
        raise StageError(
            f"smoke run {kind.value} failed {_failed_where(smoke, scratch)}: {_reason(exc)} (its files are in "
            f"{scratch}). The full run has not started: fix the setting and run the same command again, or add "
            "smoke=none to start it without smoke runs"
        ) from exc
    if all(outcome.status == "skipped" for outcome in result.outcomes):
        logger.info("smoke run %s: passed before with the same settings (%s)", kind.value, scratch)
    else:
        logger.info("smoke run %s passed in %.0f s", kind.value, time.perf_counter() - began)


def check_smoke_runs(
    config: OctrainConfig, run_dir: Path, constitution: Constitution, *, run_pipeline: RunPipeline
) -> None:
    """Run the smoke runs ``config.smoke`` asks for before a scale=full or scale=paper run.

    Called by :func:`octrain.run.pipeline.run`, which passes itself as ``run_pipeline``, after the
    config and inputs are checked and before the run takes its lock, so a failure leaves the full
    run's directory without a stage of its own.

    Raises:
        StageError: a smoke run failed; the message names the smoke run, the stage and why.
    """
    kinds = smoke_kinds(config)
    if not kinds:
        return
    logger.info(
        "scale=%s: smoke run%s %s before the full run (smoke=none skips them)",
        config.scale.name,
        "s" if len(kinds) > 1 else "",
        " and ".join(kind.value for kind in kinds),
    )
    for kind in kinds:
        run_smoke(config, kind, run_dir, constitution, run_pipeline=run_pipeline)
