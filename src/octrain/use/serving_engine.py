"""The engine side of octrain's transformers server: a model in transformers' continuous-batching manager.

:class:`BatchingEngine` loads a model directory into
:class:`~transformers.generation.continuous_batching.ContinuousBatchingManager` (paged attention,
requests joining and leaving the running batch token by token) and runs one request per
:meth:`BatchingEngine.tokens` call, cancelling it in the engine the moment its consumer lets go.

The manager, left alone, freezes the first request's sampling settings for every later one and
samples a whole batch from one shared random stream. So the engine starts it with per-request
temperature, top-k and top-p processors, and appends one of its own, the seeded draw (see
:func:`_seeded_draw_class`): each request picks its tokens from its own seeded generator, so
temperature 0 is greedy and the same seed gives the same answer whatever else is in the batch.

The engine's own top-k and top-p are made to skip batches that do not use them (see
:func:`_lazy_truncation`), which keeps their results and spares a full-vocabulary sort per step.

This leans on transformers internals (the per-request processors and their tensor arguments, the
output router's result handlers), so start-up checks that the manager built the three per-request
processors, and raises :class:`EngineError` naming an unsupported transformers version otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from octrain.use.serving_requests import RequestError, Sampling

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NO_TOP_K = 2**31 - 1  # a top_k above any vocabulary: keeps every token


def _lazy_truncation(processors: list) -> None:
    """Make the engine's per-request top-k and top-p skip batches where no request asks for them.

    They sort the whole vocabulary for every row at every step (0.3 s for 8 rows of Qwen3's
    152k tokens on a 2-core CPU), which dwarfed a small model's own step. Swapping in a subclass
    that first checks the batch's values keeps their code and their results.
    """
    import torch
    from transformers.generation.continuous_batching import cb_logits_processors as cb

    class LazyTopK(cb.ContinuousBatchingTopKLogitsWarper):
        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if bool((tensor_arg[: scores.size(0)] >= scores.size(-1)).all()):
                return scores
            return super().__call__(scores, tensor_arg)

    class LazyTopP(cb.ContinuousBatchingTopPLogitsWarper):
        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if bool((tensor_arg[: scores.size(0)].view(torch.float32) >= 1.0).all()):
                return scores
            return super().__call__(scores, tensor_arg)

    for processor in processors:
        if type(processor) is cb.ContinuousBatchingTopKLogitsWarper:
            processor.__class__ = LazyTopK
        elif type(processor) is cb.ContinuousBatchingTopPLogitsWarper:
            processor.__class__ = LazyTopP


def _seeded_draw_class() -> type:
    """:class:`SeededDraw`, built on first use: its base class lives in transformers, imported late."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class SeededDrawProcessor(ContinuousBatchingLogitsProcessor):
        """The last logits processor: picks each request's next token with that request's own generator.

        The engine samples a whole batch from one shared random stream, so a request's tokens
        would depend on what else was running. Here each request draws one uniform number per
        token from a ``torch.Generator`` seeded with its ``seed`` (a random one without), picks
        its token by inverse CDF over the already tempered and truncated distribution, and hands
        the engine a distribution with all its mass on that token, which the engine's own
        sampling then returns exactly. A greedy request (temperature 0) takes the argmax instead.
        """

        supported_kwargs: ClassVar[dict[str, type]] = {"draw_seed": int, "greedy": bool}
        ignored_kwargs: ClassVar[tuple[str, ...]] = ()

        def __init__(self) -> None:
            self._generators: dict[str, torch.Generator] = {}
            self._lock = threading.Lock()

        def forget(self, request_id: str) -> None:
            with self._lock:
                self._generators.pop(request_id, None)

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.copy_(torch.full_like(int32_tensor, -1.0, dtype=torch.float32).view(torch.int32))

        def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
            draws = []
            for request in requests_with_new_token:
                options = request.state.logit_processor_kwargs
                if options.get("greedy", False):
                    draws.append(-1.0)  # a negative draw means argmax
                    continue
                with self._lock:
                    generator = self._generators.get(request.state.request_id)
                    if generator is None:
                        seed = options.get("draw_seed", secrets.randbits(63))
                        generator = torch.Generator().manual_seed(seed)
                        self._generators[request.state.request_id] = generator
                draws.append(float(torch.rand((), generator=generator)))
            return torch.tensor(draws, dtype=torch.float32).view(torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            draws = tensor_arg[: scores.size(0)].view(torch.float32).to(scores.device)
            chosen = torch.full_like(scores, float("-inf"))
            if bool((draws < 0).all()):  # all greedy: no distribution to build
                return chosen.scatter(-1, scores.argmax(dim=-1, keepdim=True), 0.0)
            probs = torch.softmax(scores.float(), dim=-1)
            cumulative = probs.cumsum(dim=-1)
            target = (draws.clamp(min=0) * cumulative[:, -1]).unsqueeze(-1)
            sampled = torch.searchsorted(cumulative, target).clamp(max=scores.size(-1) - 1).squeeze(-1)
            tokens = torch.where(draws < 0, scores.argmax(dim=-1), sampled)
            return chosen.scatter(-1, tokens.unsqueeze(-1), 0.0)

    return SeededDrawProcessor


class EngineError(RuntimeError):
    """The engine failed a request (or died)."""


CLIENT_GONE = object()  # put in a request's queue when its client disconnects


class BatchingEngine:
    """A model behind transformers' continuous-batching manager, one request per :meth:`tokens` call."""

    def __init__(self, model_dir: Path, *, device: str = "auto", dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device).eval()
        own = self.model.generation_config
        eos = own.eos_token_id if own.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_id: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        self.positions = int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 0) or 0)
        self.defaults = Sampling(
            temperature=float(own.temperature) if own.temperature is not None else 1.0,
            top_p=float(own.top_p) if own.top_p is not None else 1.0,
            top_k=int(own.top_k) if own.top_k else 0,
            seed=None,
        )
        # The manager builds its per-request temperature, top-k and top-p processors only for values
        # that change something at start-up; these placeholders make all three exist, and every
        # request then passes its own values.
        shared = GenerationConfig(
            do_sample=True, temperature=0.5, top_k=2, top_p=0.5, max_new_tokens=16, eos_token_id=self.eos_token_id
        )
        self._manager = self._start_manager(shared)
        self.cancelled = 0  # requests cancelled before they finished (their clients left)

    def _start_manager(self, shared: Any) -> Any:
        from transformers import ContinuousBatchingConfig

        manager = self.model.init_continuous_batching(
            generation_config=shared, continuous_batching_config=ContinuousBatchingConfig(per_request_processors=True)
        )
        processors = manager.logit_processor
        if processors.tensors_required != 3:
            raise EngineError(
                "transformers' continuous batching did not set up per-request temperature, top-k and top-p "
                f"(got {processors.logits_processor}); this transformers version is not supported"
            )
        _lazy_truncation(processors.logits_processor)
        # The seeded draw goes last, after the request's temperature and truncation. The engine sizes
        # its argument storage when its loop starts, so adding a processor before start() is safe.
        self.draw = _seeded_draw_class()()
        processors.logits_processor.append(self.draw)
        processors.tensors_required += 1
        processors.supported_keys.update(self.draw.supported_kwargs)
        manager.start()
        return manager

    def running(self) -> int:
        """How many requests the engine holds now, generating or waiting for a batch slot."""
        processor = self._manager.batch_processor
        if processor is None:
            return 0
        scheduler = processor.scheduler
        return len(scheduler.active_requests) + len(scheduler.waiting_requests)

    @property
    def alive(self) -> bool:
        return self._manager.is_running() and self._manager.background_thread_status.fatal_error is None

    def stop(self) -> None:
        self._manager.stop(block=True, timeout=5)

    def prompt_ids(self, messages: Sequence[dict[str, str]], template_kwargs: dict[str, Any]) -> list[int]:
        """The chat template applied to ``messages``; a template's own refusal is the client's 400."""
        try:
            encoded = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True, return_dict=True, **template_kwargs
            )
        except Exception as exc:  # jinja's TemplateError, a template's raise_exception, a bad kwarg
            raise RequestError(f"the chat template refused these messages: {exc}", param="messages") from exc
        return list(encoded["input_ids"])

    async def tokens(
        self, prompt_ids: list[int], *, max_new_tokens: int, sampling: Sampling, queue: asyncio.Queue
    ) -> AsyncIterator[list[int]]:
        """Yield the tokens generated so far, growing, until the request ends.

        ``queue`` is this request's own: the engine puts its outputs there, and the HTTP layer
        puts :data:`CLIENT_GONE` when the client disconnects. Leaving the loop early (the client gone,
        the consumer closing the generator, a cancelled task) cancels the request in the engine.
        """
        request_id = f"octrain-{uuid.uuid4().hex}"
        greedy = sampling.temperature == 0
        options: dict[str, Any] = {
            "temperature": 1.0 if greedy else sampling.temperature,
            "top_k": sampling.top_k if sampling.top_k > 0 else NO_TOP_K,
            "top_p": sampling.top_p,
            "greedy": greedy,
        }
        if sampling.seed is not None:
            options["draw_seed"] = sampling.seed % 2**63
        # The handler is registered before the request is added, so that no output can come first.
        self._manager.register_result_handler(request_id, queue.put_nowait)
        finished = False
        try:
            added = self._manager.add_request(
                prompt_ids,
                request_id=request_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                eos_token_id=self.eos_token_id,
                **options,
            )
            if added is None:
                raise EngineError("the engine is not accepting requests (it is stopping or has failed)")
            while True:
                output = await queue.get()
                if output is CLIENT_GONE:
                    return
                if output.error is not None:
                    finished = True
                    raise EngineError(f"generation failed: {output.error}")
                finished = output.is_finished()
                yield list(output.generated_tokens)
                if finished:
                    return
        finally:
            if not finished:
                self.cancelled += 1
                logger.info("serve: cancelled %s, its client is gone", request_id)
                self._manager.cancel_request(request_id)
                # A cancelled request never finishes, so its handler would stay registered for good.
                with self._manager.output_router._lock:
                    self._manager.output_router.result_handlers.pop(request_id, None)
            self.draw.forget(request_id)
