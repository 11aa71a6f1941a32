"""A sampler on transformers' ``generate``: any machine, the CPU included.

Conversations are rendered with the model's own chat template, sorted by length so that
each batch pads little, left-padded (decoder-only models continue from the right edge),
and generated until the model ends its turn. A LoRA adapter, if given, is merged into the
weights once at load time: generation then costs the same as for the base model.

Every sequence draws its tokens from its own seeded ``torch.Generator`` (see
:class:`PerRequestDraw`), as vLLM does per request: a sample depends on its prompt and its
seed, not on which other prompts share its batch, so the K repeats of a prompt differ and a
resumed run regenerates exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, SamplingParams, request_seeds
from octrain.samplers.rendering import prompt_token_ids

logger = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")


def pick_device(requested: str = "auto") -> str:
    from octrain.core.devices import gpu_usable

    if requested != "auto":
        return requested
    return "cuda" if gpu_usable() else "cpu"  # the same decision as training's (octrain.core.devices)


def pick_dtype(requested: str, device: str) -> Any:
    """``auto`` means bf16 on a GPU that has it and fp32 everywhere else (CPU bf16 is slow)."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    from octrain.core.devices import bf16_supported

    if device.startswith("cuda") and bf16_supported():
        return torch.bfloat16
    return torch.float32


class HFSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` with a local transformers model.

    Args:
        model_path: Hub id or local directory of the base model.
        adapter_path: optional PEFT LoRA adapter directory to apply on top.
        batch_size: sequences per ``generate`` call (the n samples of a prompt count apiece).
        enable_thinking: passed to chat templates that support it (Qwen3); off by default.
    """

    def __init__(
        self,
        model_path: str,
        *,
        adapter_path: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 16,
        enable_thinking: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str = "sdpa",
        name: str | None = None,
        show_progress: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name or (f"{model_path}+{adapter_path}" if adapter_path else model_path)
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.enable_thinking = enable_thinking
        self.show_progress = show_progress
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, revision=revision, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model_path}: the tokenizer has no chat template; octrain needs a chat model")
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=pick_dtype(dtype, self.device),
            revision=revision,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        if adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.stop_token_ids = self._stop_tokens()

    def _stop_tokens(self) -> list[int]:
        ids = set()
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
        return sorted(ids)

    def render(self, conversation: Sequence[Message]) -> list[int]:
        """Token ids of the conversation, ready for the assistant to write.

        A conversation that ends with an assistant message (a prefill) is continued from
        where that message stops instead of starting a new turn
        (:func:`octrain.samplers.rendering.render_prompt`).
        """
        return prompt_token_ids(self.tokenizer, conversation, enable_thinking=self.enable_thinking)

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        import torch
        from tqdm.auto import tqdm

        prompts = [self.render(conversation) for conversation in conversations]
        # Unseeded requests still get a stream each, drawn from torch's global generator.
        request = [
            seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
            for seed in request_seeds(params, len(prompts), seeds)
        ]
        # One job per (conversation, sample); longest first so each batch holds similar lengths.
        jobs = sorted(
            ((index, sample) for index in range(len(prompts)) for sample in range(params.n)),
            key=lambda job: (-len(prompts[job[0]]), job),
        )
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        bar = tqdm(
            total=len(jobs),
            desc=desc or "sampling",
            unit="seq",
            disable=not (self.show_progress and progress),
            leave=False,
        )
        generated = 0
        try:
            for start in range(0, len(jobs), self.batch_size):
                batch = jobs[start : start + self.batch_size]
                completions = self._generate(
                    [prompts[index] for index, _ in batch],
                    [derive_seed(request[index], sample) for index, sample in batch],
                    params,
                )
                for (index, sample), completion in zip(batch, completions, strict=True):
                    results[index][sample] = completion
                generated += sum(c.num_tokens for c in completions)
                bar.update(len(batch))
                elapsed = bar.format_dict["elapsed"] or 1e-9
                bar.set_postfix_str(f"{generated / elapsed:.0f} tok/s")
        finally:
            bar.close()
        return [[c for c in row if c is not None] for row in results]

    def _generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Completion]:
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        options = self.generate_options(seeds, params)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        stops = set(self.stop_token_ids)
        completions = []
        for row in output[:, width:].tolist():
            end = next((i for i, token in enumerate(row) if token in stops), None)
            kept = row if end is None else row[:end]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            completions.append(Completion(text.strip(), len(kept) + (end is not None), finished=end is not None))
        return completions

    def generate_options(self, seeds: Sequence[int], params: SamplingParams) -> dict[str, Any]:
        """The keyword arguments of ``generate`` for rows drawn with ``seeds`` (one per row).

        Shared with :mod:`octrain.samplers.streaming`, so that a streamed answer is drawn exactly
        as a batched one with the same seed.
        """
        options: dict[str, Any] = {
            # Sampling happens in PerRequestDraw, which leaves one allowed token per row: the greedy
            # step then takes it. transformers' own sampler would draw every row from one generator.
            "do_sample": False,
            "max_new_tokens": params.max_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if params.temperature > 0:
            options["logits_processor"] = [PerRequestDraw(seeds, params, self.device)]
        return options

    def close(self) -> None:
        from octrain.core.devices import free_device_memory

        self.model = None
        free_device_memory()


class PerRequestDraw:
    """A logits processor that samples each row's next token from that row's own generator.

    transformers' warpers shape the distribution (temperature, then top-p, then min-p, the
    order ``generate`` itself uses; the repetition penalty ran before this processor), then
    each row draws with ``torch.multinomial`` from a ``torch.Generator`` seeded with its own
    seed, and every other token is masked out so that greedy decoding emits the draw.
    """

    def __init__(self, seeds: Sequence[int], params: SamplingParams, device: str) -> None:
        import torch
        from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        warpers: list[Any] = [TemperatureLogitsWarper(params.temperature)]
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        if params.min_p > 0:
            warpers.append(MinPLogitsWarper(params.min_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probabilities = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        picks = torch.cat(
            [
                torch.multinomial(row, 1, generator=generator)
                for row, generator in zip(probabilities, self.generators, strict=True)
            ]
        )
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(len(picks), device=scores.device), picks] = 0.0
        return forced
