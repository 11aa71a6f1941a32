"""A sampler on Tinker's hosted sampling API: any machine, no GPU, a base model or trained weights.

Prompts are rendered here, with the model's own Hugging Face tokenizer and
:func:`octrain.samplers.rendering.prompt_token_ids` (the function the transformers and vLLM
samplers use), and sent as token ids: the service never applies a template of its own, so the
same conversation is the same tokens on every backend. Generation stops at the model's end of
turn (its EOS and end-of-turn tokens, as the transformers sampler stops).

Every (conversation, sample) pair is its own request with its own seed,
``derive_seed(request_seed, sample)`` as in the transformers sampler, so the K repeats of a
prompt draw different text and a rerun asks for the same draws. Requests go out concurrently,
at most ``max_concurrency`` at a time (:func:`octrain.trainers.tinker_common.bounded_map`); a
dropped connection or a server error is retried, the SDK itself waits out rate limits.

Tinker's sampling parameters are temperature, top-p, top-k, stop and seed: min-p and the
repetition penalty have no counterpart, so a call that sets them logs once that they are
ignored (docs/tinker.md: the two backends side by side).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from octrain.core.config import TinkerOptions
from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, SamplingParams, request_seeds
from octrain.samplers.hf import END_OF_TURN_TOKENS
from octrain.samplers.rendering import prompt_token_ids
from octrain.trainers import tinker_common

logger = logging.getLogger(__name__)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokens that end the assistant's turn: EOS and every end-of-turn marker the vocabulary has."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[token]) for token in END_OF_TURN_TOKENS if token in vocab)
    return sorted(ids)


class TinkerSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` on a Tinker sampling client.

    Args:
        model: the base model's name as Tinker and the Hub know it (``Qwen/Qwen3-8B``); its
            tokenizer is loaded locally from the Hub (or a local directory of that name).
        model_path: a ``tinker://.../sampler_weights/...`` path to sample trained weights of
            ``model`` instead of the base.
        service: an open ``tinker.ServiceClient``; by default one is opened from ``options``.

    Raises:
        ConfigError: before any request, when ``TINKER_API_KEY`` is missing or malformed, or the
            service does not serve ``model`` for sampling (the error lists what it serves).
    """

    def __init__(
        self,
        model: str,
        *,
        model_path: str | None = None,
        options: TinkerOptions | None = None,
        enable_thinking: bool = False,
        service: Any = None,
        name: str | None = None,
        show_progress: bool = True,
    ) -> None:
        from octrain.core.errors import ConfigError

        self.options = options or TinkerOptions()
        if self.options.max_concurrency < 1:
            raise ConfigError(f"tinker.max_concurrency={self.options.max_concurrency}: must be at least 1")
        if model_path is not None and not model_path.startswith("tinker://"):
            raise ConfigError(
                f"{model_path}: a Tinker sampler loads tinker:// paths only (a local adapter: sampler=hf)"
            )
        self.service = service if service is not None else tinker_common.connect(self.options)
        tinker_common.check_models_served(self.service, sample=[model])
        self.model = model
        self.model_path = model_path
        self.name = name or (model_path or model)
        self.enable_thinking = enable_thinking
        self.show_progress = show_progress
        self.tokenizer = tinker_common.load_tokenizer(model)
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"{model}: the tokenizer has no chat template; octrain needs a chat model")
        self.stop = stop_token_ids(self.tokenizer)
        if model_path is not None:
            self.client = self.service.create_sampling_client(model_path=model_path).result()
        else:
            self.client = self.service.create_sampling_client(base_model=model).result()
        self._warned: set[str] = set()

    def render(self, conversation: Sequence[Message]) -> list[int]:
        """Token ids of the conversation, exactly as the transformers and vLLM samplers render it."""
        return prompt_token_ids(self.tokenizer, conversation, enable_thinking=self.enable_thinking)

    def _warn_unsupported(self, params: SamplingParams) -> None:
        unsupported = {"min_p": params.min_p > 0, "repetition_penalty": params.repetition_penalty != 1.0}
        for setting, used in unsupported.items():
            if used and setting not in self._warned:
                self._warned.add(setting)
                logger.warning("sampler=tinker: Tinker has no %s; it is ignored (%s)", setting, self.name)

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        import random

        from tqdm.auto import tqdm

        tinker = tinker_common.tinker_module()
        self._warn_unsupported(params)
        prompts = [tinker.ModelInput.from_ints(self.render(conversation)) for conversation in conversations]
        # An unseeded call still gives each request its own stream, from Python's generator.
        request = [
            seed if seed is not None else random.randrange(2**31) for seed in request_seeds(params, len(prompts), seeds)
        ]
        jobs = [(index, sample) for index in range(len(prompts)) for sample in range(params.n)]
        bar = tqdm(
            total=len(jobs),
            desc=desc or "sampling",
            unit="seq",
            disable=not (self.show_progress and progress),
            leave=False,
        )

        def submit(job: int) -> Any:
            index, sample = jobs[job]
            sampling = tinker.SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=-1,
                stop=self.stop,
                seed=derive_seed(request[index], sample),
            )
            return self.client.sample(prompt=prompts[index], num_samples=1, sampling_params=sampling)

        try:
            responses = tinker_common.bounded_map(
                submit,
                len(jobs),
                self.options.max_concurrency,
                attempts=max(1, self.options.request_attempts),
                on_result=lambda _job, _response: bar.update(1),
            )
        finally:
            bar.close()
        results: list[list[Completion]] = [[] for _ in prompts]
        for (index, _sample), response in zip(jobs, responses, strict=True):
            results[index].append(self._completion(response.sequences[0]))
        return results

    def _completion(self, sequence: Any) -> Completion:
        tokens = list(sequence.tokens)
        stops = set(self.stop)
        # Whether the service returns the stop token or not, it is not part of the text.
        end = next((i for i, token in enumerate(tokens) if token in stops), None)
        kept = tokens if end is None else tokens[:end]
        finished = sequence.stop_reason == "stop" or end is not None
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text.strip(), len(kept) + int(finished), finished=finished)

    def close(self) -> None:
        # Sampling clients hold no local resources beyond the SDK's connection pool.
        self.client = None
