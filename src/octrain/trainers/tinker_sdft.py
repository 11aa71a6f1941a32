"""Stage 1 by on-policy distillation on Tinker (``distill.method=sdft`` with ``trainer=tinker``).

The loop of tinker-cookbook's on-policy distillation (its ``distillation/sdft.py``), on octrain's
prompts, teacher context and checkpointed step loop. Each optimizer step:

1. a sampling client of the student's current weights (``save_weights_and_get_sampling_client``,
   sent after the previous step's ``optim_step``, so it holds that step's update);
2. ``num_generations`` answers to each prompt of the step, at ``temperature``, at most
   ``max_completion_length`` tokens, stopped at the end of turn; each answer is its own request with
   its own seed, derived from the run's seed, the step, the prompt and the answer's number, so a
   resumed run samples what the uninterrupted one would have;
3. the teacher's log-prob of exactly those answer tokens, read with the persona context before the
   prompt (:func:`octrain.constitution.persona_prompts.with_context`): ``compute_logprobs`` of teacher
   prompt + answer on a sampling client of the teacher (the student's base model, or the run's
   ``teacher`` model, which must have the student's tokenizer);
4. Tinker's built-in ``importance_sampling`` loss, with the sampler's log-probs as the behaviour
   log-probs and, per answer token, the advantage teacher log-prob - sampled log-prob: a per-token
   estimate of the reverse KL(student || teacher) on the student's own answers, whose policy
   gradient is TRL's ``distillation_mode=sampled_token`` (``(log p - log q).detach() * log p``).

What TRL's SDFT does and this loop copies: prompts and chat template (each distinct prompt of the
pairs; the student's prompt and the teacher's rendered by ``apply_chat_template`` with the generation
prompt, as TRL and :mod:`octrain.trainers.tinker_dpo` tokenize them), the batch (exactly
``batch_size`` answers a step, ``fitted_batch`` when the prompts cannot fill one; each epoch a fresh
shuffle cut into full groups of ``batch_size / num_generations`` prompts, the remainder left out as
TRL's sampler leaves it out), the loss's normalisation (TRL averages each answer's tokens, then the
answers: Tinker's loss is a plain sum, so each token's advantage carries the weight
``1 / (answer length x answers in the step)``), octrain's learning-rate schedule and TrainingArguments'
AdamW settings. Every other objective (``topk_logits``, ``full_logits``, ``distillation_alpha`` < 1)
needs the teacher's whole next-token distribution, which Tinker's sampler does not return, and the
``live``/``ema`` teachers are states of the student's weights this loop does not keep:
:func:`check_settings` refuses them, in preflight already.

Checkpoints, ``metrics.jsonl``, ``training.png`` and ``model.json`` (the ``tinker://`` sampler
weights) are :mod:`octrain.trainers.tinker_loop`'s, the stage contract of Tinker DPO.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octrain.core.config import DistillationMode, SdftSettings, SdftTeacher, TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.records import Message, ModelRef, PreferencePair, load_records
from octrain.core.seeding import derive_seed
from octrain.trainers import schedule, tinker_common, tinker_loop
from octrain.trainers.trl_sdft import check_shared_vocabulary, distinct_prompts, fitted_batch

logger = logging.getLogger(__name__)

SDFT_PANELS = (
    ("reverse KL to the teacher", ("loss", "kl")),
    ("answer length (tokens)", ("completions/mean_length",)),
    ("answers cut off", ("completions/clipped_ratio",)),
)
# Tinker's loss: the policy gradient of the advantages, importance-weighted by learner / sampler.
LOSS_FN = "importance_sampling"


def check_settings(config: SdftSettings) -> None:
    """A ConfigError naming the first ``distill.sdft`` setting the Tinker loop cannot honour.

    Tinker's sampler returns the log-prob of each sampled token, not the whole next-token
    distribution, so only the sampled-token reverse KL can be computed; the teacher is a fixed
    model served for sampling; and the service's log-probs are never divided by a temperature.
    """
    if config.distillation_mode is not DistillationMode.sampled_token:
        raise ConfigError(
            f"distill.sdft.distillation_mode={config.distillation_mode.value}: with trainer=tinker only sampled_token "
            "can be computed (Tinker returns the log-prob of each sampled token, not whole distributions); set "
            "distill.sdft.distillation_mode=sampled_token distill.sdft.distillation_alpha=1, or trainer=trl"
        )
    if config.distillation_alpha != 1:
        raise ConfigError(
            f"distill.sdft.distillation_alpha={config.distillation_alpha}: with trainer=tinker the loss is the "
            "sampled-token reverse KL, which is alpha 1; set distill.sdft.distillation_alpha=1, or trainer=trl"
        )
    if config.teacher_model_kind is not SdftTeacher.base:
        raise ConfigError(
            f"distill.sdft.teacher_model_kind={config.teacher_model_kind.value}: with trainer=tinker the teacher is a "
            "fixed model (the student's base, or the run's teacher); set distill.sdft.teacher_model_kind=base"
        )
    if config.temperature != 1:
        # TRL divides both models' logits by the temperature in the loss; Tinker's compute_logprobs and
        # its loss's forward pass cannot, and the SDK does not say whether a sampled token's log-prob is
        # taken before or after the temperature: at 1 all of them are the same distribution.
        raise ConfigError(
            f"distill.sdft.temperature={config.temperature}: with trainer=tinker the log-probs are the models' own "
            "(temperature 1) and cannot be scaled as TRL scales them; set distill.sdft.temperature=1, or trainer=trl"
        )
    tinker_common.lora_layers(config.lora)


def prompt_batches(prompt_count: int, *, prompts_per_step: int, epochs: float, seed: int) -> list[list[int]]:
    """The prompt indices of every optimizer step, TRL's SDFT arithmetic.

    Each epoch is shuffled with its own seed and cut into full groups of ``prompts_per_step``; a
    remainder that cannot fill a group is left out (other prompts each epoch), as TRL's sampler does.
    ``ceil(groups per epoch x epochs)`` steps in all.
    """
    per_epoch = prompt_count // prompts_per_step
    if per_epoch < 1:
        raise ValueError(f"{prompt_count} prompts cannot fill a step of {prompts_per_step} (fit the batch first)")
    total = max(1, math.ceil(per_epoch * epochs))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = list(range(prompt_count))
        random.Random(derive_seed(seed, "sdft-order", epoch)).shuffle(order)
        batches.extend(order[i * prompts_per_step : (i + 1) * prompts_per_step] for i in range(per_epoch))
        epoch += 1
    return batches[:total]


@dataclass(frozen=True)
class Answer:
    """One sampled answer: its prompt, its tokens, the sampler's log-prob of each, whether it was cut off."""

    prompt: int
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    cut_off: bool


def sample_answers(
    client: Any,
    prompts: Sequence[Sequence[int]],
    batch: Sequence[int],
    *,
    config: SdftSettings,
    stop: Sequence[int],
    seed: int,
    step: int,
    options: TinkerOptions,
) -> list[Answer]:
    """``num_generations`` answers to each prompt of ``batch``, each its own request and seed."""
    tinker = tinker_common.tinker_module()
    jobs = [(index, generation) for index in batch for generation in range(config.num_generations)]

    def submit(job: int) -> Any:
        index, generation = jobs[job]
        params = tinker.SamplingParams(
            max_tokens=config.max_completion_length,
            temperature=config.temperature,
            top_p=1.0,  # the loss scores the student's unfiltered distribution (docs/on-policy-distillation.md)
            top_k=-1,
            stop=list(stop),
            seed=derive_seed(seed, "sdft-answer", step, index, generation),
        )
        return client.sample(
            prompt=tinker.ModelInput.from_ints(list(prompts[index])), num_samples=1, sampling_params=params
        )

    responses = tinker_common.bounded_map(
        submit, len(jobs), options.max_concurrency, attempts=max(1, options.request_attempts)
    )
    answers = []
    for (index, _), response in zip(jobs, responses, strict=True):
        sequence = response.sequences[0]
        tokens, logprobs = list(sequence.tokens), sequence.logprobs
        if logprobs is None or len(logprobs) != len(tokens):
            raise RuntimeError("Tinker returned no log-prob for some sampled tokens: the loss needs every one")
        answers.append(
            Answer(index, tuple(tokens), tuple(float(v) for v in logprobs), sequence.stop_reason == "length")
        )
    return answers


def teacher_logprobs(
    client: Any, teacher_prompts: Sequence[Sequence[int]], answers: Sequence[Answer], *, options: TinkerOptions
) -> list[list[float]]:
    """Per answer, the teacher's log-prob of each of its tokens after the teacher's prompt (context + prompt).

    Only the answer is scored (``prompt_logprobs_last_n``): the values are aligned to its tokens.
    """
    tinker = tinker_common.tinker_module()
    scored = [answer for answer in answers if answer.tokens]

    def submit(job: int) -> Any:
        answer = scored[job]
        sequence = [*teacher_prompts[answer.prompt], *answer.tokens]
        return client.compute_logprobs(tinker.ModelInput.from_ints(sequence), prompt_logprobs_last_n=len(answer.tokens))

    values = iter(
        tinker_common.bounded_map(
            submit, len(scored), options.max_concurrency, attempts=max(1, options.request_attempts)
        )
    )
    result = []
    for answer in answers:
        if not answer.tokens:
            result.append([])
            continue
        answer_values = next(values)[-len(answer.tokens) :]
        if any(value is None for value in answer_values):
            raise RuntimeError("Tinker returned no teacher log-prob for some answer tokens")
        result.append([float(value) for value in answer_values])
    return result


def step_data(
    prompts: Sequence[Sequence[int]], answers: Sequence[Answer], teacher: Sequence[Sequence[float]]
) -> tuple[list[Any], dict[str, float]]:
    """The step's ``importance_sampling`` datums and what the step's metrics row reads from them.

    Each datum scores the student's prompt + answer; on the answer's tokens ``logprobs`` holds the
    sampler's log-probs and ``advantages`` (teacher - sampled) / (answer length x answers in the step),
    0 on the prompt. The weight turns Tinker's sum into the mean over each answer's tokens, then over
    the answers, as TRL's SDFT loss averages (so ``learning_rate`` means what it means there). ``kl`` is
    that mean of sampled - teacher log-probs, the reverse-KL estimate.
    """
    tinker = tinker_common.tinker_module()
    data, kl = [], 0.0
    for answer, teacher_values in zip(answers, teacher, strict=True):
        if not answer.tokens:
            continue  # TRL counts an empty answer in the mean, with nothing to learn from it
        weight = 1.0 / (len(answer.tokens) * len(answers))
        sequence = [*prompts[answer.prompt], *answer.tokens]
        # Target i is token i + 1: the first len(prompt) - 1 targets are prompt tokens and carry nothing.
        padding = [0.0] * (len(prompts[answer.prompt]) - 1)
        gaps = [t - s for t, s in zip(teacher_values, answer.logprobs, strict=True)]
        kl -= weight * sum(gaps)
        target = sequence[1:]
        inputs = {
            "target_tokens": target,
            "logprobs": [*padding, *answer.logprobs],
            "advantages": [*padding, *(weight * gap for gap in gaps)],
        }
        dtypes = {"target_tokens": "int64", "logprobs": "float32", "advantages": "float32"}
        data.append(
            tinker.Datum(
                model_input=tinker.ModelInput.from_ints(sequence[:-1]),
                loss_fn_inputs={
                    key: tinker.TensorData(data=list(values), dtype=dtypes[key], shape=[len(target)])
                    for key, values in inputs.items()
                },
            )
        )
    if not data:
        raise RuntimeError("dpo (sdft): every answer of the step came back empty; nothing to train on")
    lengths = [len(answer.tokens) for answer in answers]
    metrics = {
        "kl": kl,
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/clipped_ratio": sum(answer.cut_off for answer in answers) / len(answers),
    }
    return data, metrics


def train_sdft(
    pairs_path: Path,
    start: ModelRef,
    output_dir: Path,
    config: SdftSettings,
    context: Sequence[Message],
    options: TinkerOptions | None = None,
    *,
    seed: int = 0,
    enable_thinking: bool = False,
    teacher: ModelRef | None = None,
    service: Any = None,
) -> ModelRef:
    """On-policy distillation on Tinker; the contract of :func:`octrain.trainers.tinker_dpo.train_dpo`.

    Args:
        context: what the teacher reads before each prompt (``teacher_context(...)``).
        config: ``distill.sdft`` with ``max_completion_length`` resolved.
        teacher: a separate Tinker model (the student's tokenizer) to read ``context`` and grade;
            None: the student's base model.

    Returns the trained model as ``ModelRef(base, remote=tinker://.../sampler_weights/...)``.
    """
    options = options or TinkerOptions()
    if start.adapter or start.remote:
        raise ConfigError(f"dpo (sdft): training starts from a base model; got {start.label}")
    if teacher is not None and (teacher.adapter or teacher.remote):
        raise ConfigError(f"dpo (sdft): on Tinker the teacher is a model Tinker serves by name; got {teacher.label}")
    if not context:
        raise ConfigError("dpo (sdft): the teacher has no context to read: it would grade with the student's eyes")
    if config.max_completion_length is None:
        raise ConfigError("distill.sdft.max_completion_length: resolve it (pairs.sampling.max_new_tokens) first")
    check_settings(config)
    tinker_loop.check_save_steps(options)
    layers = tinker_common.lora_layers(config.lora)
    prompts_messages = distinct_prompts(load_records(pairs_path, PreferencePair))
    if not prompts_messages:
        raise ConfigError(f"dpo (sdft): {pairs_path} holds no prompts to answer")
    teacher_model = start.base if teacher is None else teacher.base
    if teacher_model != start.base:
        check_shared_vocabulary(start.base, teacher_model, same_width=False)  # token ids mean the same to both
    output_dir.mkdir(parents=True, exist_ok=True)
    service = service if service is not None else tinker_common.connect(options)
    tinker_common.check_models_served(service, train=[start.base], sample=[start.base, teacher_model])

    from octrain.constitution.persona_prompts import with_context
    from octrain.samplers.tinker_sampler import stop_token_ids
    from octrain.trainers.tinker_dpo import _chat_ids  # TRL's tokenization of a conversational prompt

    tokenizer = tinker_common.load_tokenizer(start.base)
    template = {"add_generation_prompt": True, "enable_thinking": enable_thinking}
    prompts = [_chat_ids(tokenizer, prompt, **template) for prompt in prompts_messages]
    # The teacher's prompt with the student's template, as TRL builds it (one tokenizer for both).
    teacher_prompts = [_chat_ids(tokenizer, with_context(context, prompt), **template) for prompt in prompts_messages]
    stop = stop_token_ids(tokenizer)

    batch_size = fitted_batch(config.batch_size, config.num_generations, len(prompts))
    batches = prompt_batches(
        len(prompts), prompts_per_step=batch_size // config.num_generations, epochs=config.epochs, seed=seed
    )
    steps_per_epoch = len(prompts) // (batch_size // config.num_generations)
    training = tinker_loop.ResumableTraining(
        output_dir,
        stage="dpo",
        key=tinker_loop.fingerprint("sdft", start.base, teacher_model, config, seed, prompts, teacher_prompts, stop),
        total_steps=len(batches),
        options=options,
    )
    if training.finished:
        logger.info("dpo (sdft): already trained (%s)", training.progress.sampler_path)
        return training.finish(start.base, SDFT_PANELS)

    teacher_client = service.create_sampling_client(base_model=teacher_model).result()
    client = training.open_client(
        service,
        lambda: service.create_lora_training_client(
            base_model=start.base, rank=config.lora.rank, seed=seed, **layers
        ).result(),
    )
    logger.info(
        "dpo (sdft) on Tinker: %d distinct prompts x %d answers of up to %d tokens, %d steps of %d answers, "
        "teacher %s with %d context messages, LoRA rank %d, from step %d",
        len(prompts),
        config.num_generations,
        config.max_completion_length,
        len(batches),
        batch_size,
        teacher_model,
        len(context),
        config.lora.rank,
        training.progress.step,
    )

    def send(step: int) -> tuple[Any, dict[str, float]]:
        # Sent after the previous step's optim_step: requests on a training client run in order, so
        # these are the weights that step left (on-policy).
        student = client.save_weights_and_get_sampling_client().result()
        answers = sample_answers(
            student, prompts, batches[step], config=config, stop=stop, seed=seed, step=step, options=options
        )
        graded = teacher_logprobs(teacher_client, teacher_prompts, answers, options=options)
        data, metrics = step_data(prompts, answers, graded)
        return client.forward_backward(data, LOSS_FN), metrics

    def row(step: int, result: Any, metrics: dict[str, float]) -> dict[str, Any]:
        return {"epoch": (step + 1) / steps_per_epoch, "loss": float(result.metrics["loss:sum"]), **metrics}

    beta1, beta2 = tinker_common.TRANSFORMERS_ADAM_BETAS  # SDFTConfig leaves TrainingArguments' AdamW as it is
    plan = tinker_loop.StepPlan(
        learning_rate=lambda step: schedule.learning_rate(
            step,
            total_steps=len(batches),
            peak=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
            min_ratio=config.min_lr_ratio,
        ),
        adam=lambda lr: tinker_common.adam_params(
            lr, beta1=beta1, beta2=beta2, weight_decay=0.0, grad_clip=config.max_grad_norm
        ),
        send=send,
        row=row,
    )
    training.run(client, plan)
    return training.finish(start.base, SDFT_PANELS)
