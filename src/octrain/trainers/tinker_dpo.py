"""LoRA DPO on Tinker, with the TRL backend's tokens and loss (METHOD.md section 2).

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
the backward pass from the gradient octrain's loss puts on each token's log-prob):

* DPO: mean over pairs of ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` on
  summed (not length-normalised) answer log-probs;
* NLL: minus the chosen answers' log-probs, mean over all chosen answer tokens of the batch;
* KL: mean over all answer tokens of the batch of ``(log pi - log pi_ref)^2``;

``loss = dpo + nll_weight * nll + kl_weight * kl``, the TRL backend's definitions (there
each is a mean per micro-batch of ``trainer.trl.per_device_batch_size``; here per batch of
``dpo.batch_size``, the same when the two are equal). The optimizer is Tinker's AdamW with
every setting given (betas, epsilon, weight decay, gradient clipping) and, at each step, the LR
of :mod:`octrain.trainers.schedule` (warmup, then a cosine to ``min_lr_ratio``), the TRL backend's.

Checkpoints: ``save_state`` every ``trainer.tinker.save_steps`` steps (weights and Adam
moments); ``tinker_progress.json`` records a state only once Tinker has confirmed it, and a
rerun after a kill continues from it, so each step is trained exactly once. At the end the
weights are saved for sampling and ``model.json`` holds their ``tinker://`` path.
"""

from __future__ import annotations

import dataclasses
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
from octrain.core.layout import METRICS_FILE, MODEL_FILE, PLOT_FILE, REFERENCE_LOGPROBS_FILE
from octrain.core.records import ModelRef, PreferencePair, load_records
from octrain.trainers import schedule, tinker_common
from octrain.trainers.report import plot_metrics, read_metrics, record_steps, write_metrics

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
# The objective


def dpo_objective(
    policy: Sequence[Any],
    reference: Sequence[Any],
    masks: Sequence[Any],
    *,
    beta: float,
    nll_weight: float,
    kl_weight: float,
) -> tuple[Any, dict[str, float]]:
    """The loss of one batch and its parts; the first half of each list is chosen, the second rejected.

    ``policy[i]``, ``reference[i]`` and ``masks[i]`` are per-target-token tensors of sequence ``i``
    (mask 1 on answer tokens). Definitions as the TRL backend's (see the module docstring).
    """
    import torch
    import torch.nn.functional as F

    if len(policy) % 2 or not (len(policy) == len(reference) == len(masks)):
        raise ValueError("dpo_objective needs chosen then rejected sequences, with a reference and mask each")
    half = len(policy) // 2
    summed = torch.stack([(p * m).sum() for p, m in zip(policy, masks, strict=True)])
    summed_ref = torch.stack([(r * m).sum() for r, m in zip(reference, masks, strict=True)])
    chosen_ratio = summed[:half] - summed_ref[:half]
    rejected_ratio = summed[half:] - summed_ref[half:]
    dpo = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    chosen_tokens = torch.stack([m.sum() for m in masks[:half]]).sum().clamp(min=1.0)
    nll = -torch.stack([(p * m).sum() for p, m in zip(policy[:half], masks[:half], strict=True)]).sum() / chosen_tokens
    all_tokens = torch.stack([m.sum() for m in masks]).sum().clamp(min=1.0)
    kl = torch.stack([((p - r).pow(2) * m).sum() for p, r, m in zip(policy, reference, masks, strict=True)]).sum()
    kl = kl / all_tokens
    loss = dpo + nll_weight * nll + kl_weight * kl
    with torch.no_grad():
        chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
        parts = {
            "loss": float(loss),
            "dpo_loss": float(dpo),
            "nll_loss": float(nll),
            "kl_penalty": float(kl),
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
            "logps/chosen": float(summed[:half].mean()),
            "logps/rejected": float(summed[half:].mean()),
        }
    return loss, parts


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
    """The custom loss for ``forward_backward_custom``: ``(data, logprobs) -> (loss, metrics)``."""

    def loss_fn(data: Sequence[Any], logprobs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        import torch

        masks = [datum.loss_fn_inputs["weights"].to_torch().float() for datum in data]
        refs = [torch.tensor(ref, dtype=torch.float32) for ref in references]
        for index, (lp, ref) in enumerate(zip(logprobs, refs, strict=True)):
            if lp.shape != ref.shape:
                raise RuntimeError(f"sequence {index}: {tuple(lp.shape)} log-probs for {tuple(ref.shape)} targets")
        return dpo_objective(
            [lp.float() for lp in logprobs],
            refs,
            masks,
            beta=config.beta,
            nll_weight=config.nll_weight,
            kl_weight=config.kl_weight,
        )

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
    if options.save_steps < 1:
        raise ConfigError(f"trainer.tinker.save_steps={options.save_steps}: must be at least 1")
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

    key = tinker_common.fingerprint(start.base, dataclasses.asdict(config), seed, sequences_hash(pairs))
    progress = tinker_common.Progress.load(output_dir)
    if progress is not None and progress.fingerprint != key:
        logger.warning("dpo: %s is from other data or settings; training from the start", tinker_common.PROGRESS_FILE)
        progress = None
    progress = progress or tinker_common.Progress(fingerprint=key)
    batches = tinker_common.step_batches(
        len(pairs), batch_size=config.batch_size, epochs=config.epochs, seed=seed, label="dpo-order"
    )
    if progress.sampler_path and progress.step >= len(batches):
        logger.info("dpo: already trained (%s)", progress.sampler_path)
        return _finish(output_dir, start, progress)

    # The reference first, from the starting weights, before any step changes them.
    references = load_or_compute_reference(output_dir, service, start.base, pairs, options=options)
    if progress.state_path:
        logger.info("dpo: resuming at step %d from %s", progress.step, progress.state_path)
        client = service.create_training_client_from_state_with_optimizer(progress.state_path).result()
    else:
        client = service.create_lora_training_client(
            base_model=start.base, rank=config.lora.rank, seed=seed, **layers
        ).result()
    logger.info(
        "dpo on Tinker: %d pairs, %d steps of %d, LoRA rank %d (%s), from step %d",
        len(pairs),
        len(batches),
        config.batch_size,
        config.lora.rank,
        ", ".join(name for name, on in layers.items() if on),
        progress.step,
    )
    rows = [row for row in read_metrics(output_dir / METRICS_FILE) if row.get("step", 0) <= progress.step]

    def submit(step: int) -> tuple[Any, Any, float]:
        chosen = [pairs[i] for i in batches[step]]
        data, refs = batch_data(chosen, [references[i] for i in batches[step]])
        lr = schedule.learning_rate(
            step,
            total_steps=len(batches),
            peak=config.learning_rate,
            warmup_ratio=config.warmup_ratio,
            min_ratio=config.min_lr_ratio,
        )
        backward = client.forward_backward_custom(data, make_loss(refs, config))
        # Requests on a training client run in submission order: the optimizer step goes out at
        # once, and the next batch's forward pass after it, before this one's answers are read.
        update = client.optim_step(
            tinker_common.adam_params(
                lr,
                beta1=config.adam_beta1,
                beta2=config.adam_beta2,
                weight_decay=config.weight_decay,
                grad_clip=config.max_grad_norm,
            )
        )
        return backward, update, lr

    def record(step: int, backward: Any, update: Any, lr: float) -> None:
        result = backward.result()
        update.result()
        row: dict[str, Any] = {"step": step + 1, "epoch": (step + 1) / math.ceil(len(pairs) / config.batch_size)}
        row.update({k: float(v) for k, v in result.metrics.items() if k in _METRIC_KEYS})
        row["learning_rate"] = lr
        rows.append(row)

    pending: tuple[int, Any, Any, float] | None = None
    for step in range(progress.step, len(batches)):
        backward, update, lr = submit(step)
        if pending is not None:
            record(*pending)
        pending = (step, backward, update, lr)
        done = step + 1
        if done % options.save_steps == 0 and done < len(batches):
            record(*pending)
            pending = None
            saved = client.save_state(f"dpo-step-{done:06d}", ttl_seconds=options.checkpoint_ttl_seconds).result()
            write_metrics(output_dir / METRICS_FILE, rows)
            progress.step, progress.state_path = done, saved.path  # only now is the state known complete
            progress.save(output_dir)
    if pending is not None:
        record(*pending)
    final = client.save_state("dpo-final", ttl_seconds=options.checkpoint_ttl_seconds).result()
    sampler = client.save_weights_for_sampler("dpo-final", ttl_seconds=options.checkpoint_ttl_seconds).result()
    write_metrics(output_dir / METRICS_FILE, rows)
    progress.step, progress.state_path = len(batches), final.path
    progress.final_state_path, progress.sampler_path = final.path, sampler.path
    progress.save(output_dir)
    return _finish(output_dir, start, progress)


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


def _finish(output_dir: Path, start: ModelRef, progress: tinker_common.Progress) -> ModelRef:
    note = record_steps(output_dir, progress.step, stage="dpo")  # every step is trained by now
    plot_metrics(output_dir / PLOT_FILE, read_metrics(output_dir / METRICS_FILE), DPO_PANELS, note=note)
    result = ModelRef(base=start.base, remote=progress.sampler_path)
    result.save(output_dir / MODEL_FILE)
    return result
