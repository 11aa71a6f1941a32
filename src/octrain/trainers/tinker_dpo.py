"""LoRA DPO on Tinker, with the TRL backend's tokens and loss (docs/method.md section 2).

Tokens: each pair is tokenized here as TRL's ``DPOTrainer`` tokenizes a conversational pair
(the prompt with the generation prompt, prompt + answer without; the answer starts where the
two token lists part; ``max_length`` keeps the start; a prompt that fills it drops the pair),
so both backends train on the same token sequences.

Reference: the starting model, a Tinker sampling client of the base weights. Its log-probs are
computed once, before the first step, on exactly the sequences the policy is scored on (only
their answer tokens, ``prompt_logprobs_last_n``), and written to ``reference_logprobs.jsonl``
with a hash of those sequences: a resumed run reads them back and asks the service for none,
so the reference stays pinned to the starting weights whatever step the run resumes at.

Loss, per batch, through ``forward_backward_custom`` (the service runs the forward pass and
the backward pass from the gradient octrain's loss puts on each token's log-prob): the method's
objective, :func:`octrain.trainers.dpo_objective.dpo_objective`, the function the TRL backend's
trainer calls too (sigmoid DPO on summed answer log-probs + ``nll_weight`` x NLL on the chosen
answers + ``kl_weight`` x the per-token KL penalty). There each part is a mean per micro-batch of
``trainer.trl.per_device_batch_size``; here per batch of ``dpo.batch_size``, the same when the two
are equal. The optimizer is Tinker's AdamW with every setting given (betas, epsilon, weight decay,
gradient clipping) and, at each step, the LR of :mod:`octrain.trainers.schedule` (warmup, then a
cosine to ``min_lr_ratio``), the TRL backend's.

Checkpoints and resuming are :mod:`octrain.trainers.tinker_loop`'s, shared with SFT: a state saved
every ``trainer.tinker.save_steps`` steps, each step trained exactly once across kills, and at the
end the weights saved for sampling, their ``tinker://`` path in ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octrain.core.config import DpoStageConfig, TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.files import iter_jsonl, write_jsonl
from octrain.core.layout import REFERENCE_LOGPROBS_FILE
from octrain.core.records import ModelRef, PreferencePair, load_records
from octrain.trainers import schedule, tinker_common, tinker_loop

logger = logging.getLogger(__name__)

DPO_PANELS = (
    ("loss", ("loss", "dpo_loss", "nll_loss")),
    ("reward margin", ("rewards/margins",)),
    ("reward accuracy", ("rewards/accuracies",)),
    ("KL penalty", ("kl_penalty",)),
)


@dataclass(frozen=True)
class TokenizedPair:
    """One pair as two token sequences with a shared prompt; ``answer_*`` tokens are trained."""

    pair_id: str
    prompt_length: int
    chosen: tuple[int, ...]  # prompt + chosen answer, truncated to max_length
    rejected: tuple[int, ...]

    @property
    def answer_chosen(self) -> int:
        return len(self.chosen) - self.prompt_length

    @property
    def answer_rejected(self) -> int:
        return len(self.rejected) - self.prompt_length

    def weights(self, side: str) -> list[float]:
        """Per token of the sequence: 1 on the answer, 0 on the prompt (TRL's ``completion_mask``)."""
        tokens = self.chosen if side == "chosen" else self.rejected
        return [0.0] * self.prompt_length + [1.0] * (len(tokens) - self.prompt_length)


def _chat_ids(tokenizer: Any, messages: Sequence[Any], **kwargs: Any) -> list[int]:
    # TRL's data_utils._tokenize for conversational input: apply_chat_template(tokenize=True, return_dict=True).
    encoded = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=True, return_dict=True, **kwargs)
    return list(encoded["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def tokenize_pair(tokenizer: Any, pair: PreferencePair, *, max_length: int) -> TokenizedPair | None:
    """The pair's token sequences as TRL's DPOTrainer builds them; None when TRL would drop it."""
    prompt = _chat_ids(tokenizer, pair.prompt, add_generation_prompt=True)
    chosen = _chat_ids(tokenizer, [*pair.prompt, *pair.chosen])
    rejected = _chat_ids(tokenizer, [*pair.prompt, *pair.rejected])
    # Where prompt and prompt + answer part, not the prompt's length: some templates render the
    # generation prompt differently from a finished turn (TRL's common_prefix_length rule).
    length = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    if length >= max_length:
        return None  # TRL drops a prompt that fills max_length: nothing of the answer would be left
    if length < 1:
        return None  # no shared first token: the first answer token could not be scored (no template does this)
    chosen, rejected = chosen[:max_length], rejected[:max_length]
    if len(chosen) <= length or len(rejected) <= length:
        return None  # an answer with no token at all: nothing to compare
    return TokenizedPair(pair.id, length, tuple(chosen), tuple(rejected))


def sequences_hash(pairs: Sequence[TokenizedPair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.prompt_length, pair.chosen, pair.rejected]).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reference log-probs


def reference_logprobs(
    service: Any, base_model: str, pairs: Sequence[TokenizedPair], *, options: TinkerOptions
) -> list[tuple[list[float], list[float]]]:
    """Per pair, the starting model's log-probs of the chosen and the rejected answer tokens.

    One ``compute_logprobs`` per sequence, on a sampling client of the base weights, scoring only
    the answer (``prompt_logprobs_last_n``): the entries are aligned to the sequence's last
    ``answer`` tokens, which are the trained ones.
    """
    tinker = tinker_common.tinker_module()
    client = service.create_sampling_client(base_model=base_model).result()
    jobs = [(pair, side) for pair in pairs for side in ("chosen", "rejected")]

    def submit(job: int) -> Any:
        pair, side = jobs[job]
        tokens = pair.chosen if side == "chosen" else pair.rejected
        answer = len(tokens) - pair.prompt_length
        return client.compute_logprobs(tinker.ModelInput.from_ints(list(tokens)), prompt_logprobs_last_n=answer)

    answers = tinker_common.bounded_map(
        submit, len(jobs), options.max_concurrency, attempts=max(1, options.request_attempts)
    )
    result = []
    for index, pair in enumerate(pairs):
        sides = []
        for offset, answer in ((0, pair.answer_chosen), (1, pair.answer_rejected)):
            values = answers[2 * index + offset][-answer:]
            if any(value is None for value in values):
                raise RuntimeError(f"Tinker returned no log-prob for some answer tokens of pair {pair.pair_id}")
            sides.append([float(value) for value in values])
        result.append((sides[0], sides[1]))
    return result


def load_or_compute_reference(
    output_dir: Path, service: Any, base_model: str, pairs: Sequence[TokenizedPair], *, options: TinkerOptions
) -> list[tuple[list[float], list[float]]]:
    """The reference log-probs from ``reference_logprobs.jsonl`` when it matches these sequences, else
    computed once and written there (before the first training step)."""
    path = output_dir / REFERENCE_LOGPROBS_FILE
    key = sequences_hash(pairs)
    if path.is_file():
        rows = [row for _, row in iter_jsonl(path)]
        if rows and rows[0].get("sequences") == key and len(rows) == len(pairs) + 1:
            logger.info("dpo: reference log-probs of %d pairs read back from %s", len(pairs), path)
            return [(row["chosen"], row["rejected"]) for row in rows[1:]]
        logger.warning("dpo: %s is for other token sequences; computing the reference again", path)
    logger.info("dpo: reference log-probs of %d pairs from %s (the starting weights)", len(pairs), base_model)
    values = reference_logprobs(service, base_model, pairs, options=options)
    header = {"sequences": key, "model": base_model}
    body = [{"pair": p.pair_id, "chosen": c, "rejected": r} for p, (c, r) in zip(pairs, values, strict=True)]
    write_jsonl(path, [header, *body])
    return values


# ---------------------------------------------------------------------------------------------
# The loss


def batch_data(
    pairs: Sequence[TokenizedPair], references: Sequence[tuple[list[float], list[float]]]
) -> tuple[list[Any], list[list[float]]]:
    """Datums for a batch, every chosen sequence then every rejected one (TRL's concatenated layout),
    and each sequence's reference log-probs spread over its target tokens (0 on the prompt)."""
    data, refs = [], []
    for side in ("chosen", "rejected"):
        for pair, (chosen_ref, rejected_ref) in zip(pairs, references, strict=True):
            tokens = pair.chosen if side == "chosen" else pair.rejected
            answer_ref = chosen_ref if side == "chosen" else rejected_ref
            data.append(tinker_common.shifted_datum(tokens, pair.weights(side)))
            # Target i is token i + 1; the answer's targets are the last len(answer_ref) ones.
            refs.append([0.0] * (len(tokens) - 1 - len(answer_ref)) + list(answer_ref))
    return data, refs


def make_loss(references: Sequence[Sequence[float]], config: DpoStageConfig) -> Callable[..., Any]:
    """The custom loss for ``forward_backward_custom``: ``(data, logprobs) -> (loss, metrics)``, the
    method's objective (:func:`octrain.trainers.dpo_objective.dpo_objective`) on the service's log-probs."""

    def loss_fn(data: Sequence[Any], logprobs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        # Imported here, where the SDK already has torch loaded: importing this module stays torch-free.
        import torch

        from octrain.trainers.dpo_objective import AnswerSums, dpo_objective

        masks = [datum.loss_fn_inputs["weights"].to_torch().float() for datum in data]
        refs = [torch.tensor(ref, dtype=torch.float32) for ref in references]
        for index, (lp, ref) in enumerate(zip(logprobs, refs, strict=True)):
            if lp.shape != ref.shape:
                raise RuntimeError(f"sequence {index}: {tuple(lp.shape)} log-probs for {tuple(ref.shape)} targets")
        sums = AnswerSums.from_sequences([lp.float() for lp in logprobs], refs, masks)
        loss, parts = dpo_objective(sums, beta=config.beta, nll_weight=config.nll_weight, kl_weight=config.kl_weight)
        return loss, {name: float(value) for name, value in parts.items()}

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Training


def train_dpo(
    pairs_path: Path,
    start: ModelRef,
    output_dir: Path,
    config: DpoStageConfig,
    options: TinkerOptions | None = None,
    *,
    seed: int = 0,
    service: Any = None,
) -> ModelRef:
    """Train a LoRA with DPO on Tinker; see :class:`~octrain.trainers.base.Trainer`.

    Returns the trained model as ``ModelRef(base, remote=tinker://.../sampler_weights/...)``.
    """
    options = options or TinkerOptions()
    if start.adapter or start.remote:
        raise ConfigError(f"dpo: training starts from a base model; got {start.label}")
    tinker_loop.check_save_steps(options)
    layers = tinker_common.lora_layers(config.lora)
    output_dir.mkdir(parents=True, exist_ok=True)
    service = service if service is not None else tinker_common.connect(options)
    tinker_common.check_models_served(service, train=[start.base], sample=[start.base])

    tokenizer = tinker_common.load_tokenizer(start.base)
    records = load_records(pairs_path, PreferencePair)
    tokenized = [tokenize_pair(tokenizer, pair, max_length=config.max_length) for pair in records]
    pairs = [pair for pair in tokenized if pair is not None]
    if len(pairs) < len(records):
        logger.info("dpo: %d of %d pairs dropped: the prompt fills max_length", len(records) - len(pairs), len(records))
    if not pairs:
        raise ConfigError(f"dpo: no pair of {pairs_path} fits dpo.max_length={config.max_length}")

    batches = tinker_loop.step_batches(
        len(pairs), batch_size=config.batch_size, epochs=config.epochs, seed=seed, label="dpo-order"
    )
    training = tinker_loop.ResumableTraining(
        output_dir,
        stage="dpo",
        key=tinker_loop.fingerprint(start.base, config, seed, sequences_hash(pairs)),
        total_steps=len(batches),
        options=options,
    )
    if training.finished:
        logger.info("dpo: already trained (%s)", training.progress.sampler_path)
        return training.finish(start.base, DPO_PANELS)

    # The reference first, from the starting weights, before any step changes them.
    references = load_or_compute_reference(output_dir, service, start.base, pairs, options=options)
    client = training.open_client(
        service,
        lambda: service.create_lora_training_client(
            base_model=start.base, rank=config.lora.rank, seed=seed, **layers
        ).result(),
    )
    logger.info(
        "dpo on Tinker: %d pairs, %d steps of %d, LoRA rank %d (%s), from step %d",
        len(pairs),
        len(batches),
        config.batch_size,
        config.lora.rank,
        ", ".join(name for name, on in layers.items() if on),
        training.progress.step,
    )
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)

    def send(step: int) -> tuple[Any, None]:
        data, refs = batch_data([pairs[i] for i in batches[step]], [references[i] for i in batches[step]])
        return client.forward_backward_custom(data, make_loss(refs, config)), None

    def row(step: int, result: Any, _: None) -> dict[str, Any]:
        metrics = {key: float(value) for key, value in result.metrics.items() if key in _METRIC_KEYS}
        return {"epoch": (step + 1) / steps_per_epoch, **metrics}

    plan = tinker_loop.StepPlan(
        learning_rate=lambda step: schedule.learning_rate(
            step,
            total_steps=len(batches),
            peak=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
            min_ratio=config.min_lr_ratio,
        ),
        adam=lambda lr: tinker_common.adam_params(
            lr,
            beta1=config.adam_beta1,
            beta2=config.adam_beta2,
            weight_decay=config.weight_decay,
            grad_clip=config.max_grad_norm,
        ),
        send=send,
        row=row,
    )
    training.run(client, plan)
    return training.finish(start.base, DPO_PANELS)


# The objective's parts and rewards (dpo_objective's keys) that go into metrics.jsonl.
_METRIC_KEYS = frozenset(
    {
        "loss",
        "dpo_loss",
        "nll_loss",
        "kl_penalty",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    }
)
