"""A fake Tinker service, faked at the SDK boundary only, for the Tinker backend's tests.

The clients have the SDK's method names and signatures and return the SDK's own types
(``tinker.types`` responses inside ``AwaitableConcurrentFuture``, the SDK's future class), and
their numbers are real: a local model (octrain's tiny offline Qwen3, a PEFT LoRA on top for
training) computes every log-prob, ``forward_backward`` runs a real backward pass, and
``forward_backward_custom`` hands the forward pass's log-probs to the SDK's own
``TrainingClient._compute_custom_loss`` (the code that runs a custom loss and turns its
gradient into per-token weights), then back-propagates those weights as the service would.
``forward_backward`` runs the built-in losses the trainers use, ``cross_entropy`` and
``importance_sampling`` (``-(exp(logprobs - sampling logprobs) * advantages).sum()``, as Tinker's
documentation of the loss writes it), and ``optim_step`` is torch's AdamW with the step's
``AdamParams``. ``sample`` returns each sampled token's log-prob, under the distribution it was drawn
from. Checkpoints live in memory, in the service object, so a "killed" run's successor finds them.
Every request is kept, with the name of the model that answered it, for the tests to read.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import tinker
import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture
from tinker.lib.public_interfaces.training_client import TrainingClient as SdkTrainingClient
from tinker.types.get_server_capabilities_response import SupportedModel


def completed(value: Any) -> AwaitableConcurrentFuture:
    future: Future = Future()
    future.set_result(value)
    return AwaitableConcurrentFuture(future)


class Killed(Exception):
    """Raised by the fake at a chosen optimizer step: the process dies there."""


def load_base(model: str) -> Any:
    from transformers import AutoModelForCausalLM

    from octrain.models.builtin import resolve_model_path

    return AutoModelForCausalLM.from_pretrained(resolve_model_path(model), dtype=torch.float32).eval()


def with_lora(model: Any, rank: int, seed: int | None, layers: dict[str, bool]) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: list[str] = []
    if layers.get("train_attn"):
        targets += ["q_proj", "k_proj", "v_proj", "o_proj"]
    if layers.get("train_mlp"):
        targets += ["gate_proj", "up_proj", "down_proj"]
    if layers.get("train_unembed"):
        targets += ["lm_head"]
    torch.manual_seed(0 if seed is None else seed)
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets))


def target_logprobs(model: Any, inputs: Sequence[int], targets: Sequence[int]) -> torch.Tensor:
    """log p(targets[i] | inputs[: i + 1]) for each position: what Tinker returns per target token."""
    logits = model(input_ids=torch.tensor([list(inputs)])).logits[0].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(list(targets))[:, None])[:, 0]


class FakeService:
    """Stands in for ``tinker.ServiceClient``; counts and keeps every request for the tests to read."""

    def __init__(
        self,
        models: Sequence[str] = ("builtin:tiny-qwen3",),
        *,
        served: Sequence[str] | None = None,
        sample_delay: float = 0.0,
        failures: int = 0,
        kill_at_step: int | None = None,
    ) -> None:
        self.models = list(models)
        self.served = list(self.models if served is None else served)
        self.sample_delay = sample_delay
        self.failures = failures  # the first N sample requests fail with a connection error
        self.kill_at_step = kill_at_step
        self.storage: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.logprob_requests: list[tuple[tuple[int, ...], int | None]] = []
        self.sample_requests: list[tuple[tuple[int, ...], types.SamplingParams]] = []
        # Which model answered each of the requests above, index for index: a base model's name, a
        # tinker:// path, or "RUN@STEPS" for a training client's weights after that many optimizer steps.
        self.logprob_models: list[str] = []
        self.sample_models: list[str] = []
        self.custom_batches: list[list[types.Datum]] = []
        self.loss_batches: list[tuple[str, list[types.Datum]]] = []  # forward_backward's (loss_fn, data)
        self.optim_params: list[types.AdamParams] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.executor = ThreadPoolExecutor(max_workers=16)
        self.runs = 0
        self.base_models: dict[str, Any] = {}

    def base(self, model: str) -> Any:
        if model not in self.base_models:
            self.base_models[model] = load_base(model)
        return self.base_models[model]

    # ServiceClient surface ---------------------------------------------------------------------

    def create_rest_client(self) -> FakeRestClient:
        return FakeRestClient(self)

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None, **_: Any) -> Any:
        self.calls.append(("create_sampling_client", {"model_path": model_path, "base_model": base_model}))
        if model_path is not None:
            state = self.storage[model_path]
            model = with_lora(copy.deepcopy(self.base(state["base"])), state["rank"], 0, state["layers"])
            model.load_state_dict(state["weights"], strict=False)
            return completed(FakeSamplingClient(self, model.eval(), model_path))
        assert base_model is not None
        return completed(FakeSamplingClient(self, self.base(base_model), base_model))

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        **_: Any,
    ) -> Any:
        layers = {"train_mlp": train_mlp, "train_attn": train_attn, "train_unembed": train_unembed}
        self.calls.append(
            ("create_lora_training_client", {"base_model": base_model, "rank": rank, "seed": seed, **layers})
        )
        return completed(FakeTrainingClient(self, base_model, rank, seed, layers))

    def _from_state(self, path: str, optimizer: bool) -> FakeTrainingClient:
        state = self.storage[path]
        client = FakeTrainingClient(self, state["base"], state["rank"], 0, state["layers"])
        client.model.load_state_dict(state["weights"], strict=False)
        if optimizer:
            client.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        return client

    def create_training_client_from_state(self, path: str, **_: Any) -> Any:
        self.calls.append(("create_training_client_from_state", {"path": path}))
        return completed(self._from_state(path, optimizer=False))

    def create_training_client_from_state_with_optimizer(self, path: str, **_: Any) -> Any:
        self.calls.append(("create_training_client_from_state_with_optimizer", {"path": path}))
        return completed(self._from_state(path, optimizer=True))


class FakeRestClient:
    def __init__(self, service: FakeService) -> None:
        self.service = service

    def get_server_capabilities(self) -> Any:
        self.service.calls.append(("get_server_capabilities", {}))
        models = [
            SupportedModel(model_name=name, max_context_length=4096, trainable=True, sampleable=True)
            for name in self.service.served
        ]
        return completed(types.GetServerCapabilitiesResponse(supported_models=models))


class FakeSamplingClient:
    def __init__(self, service: FakeService, model: Any, name: str) -> None:
        self.service = service
        self.model = model
        self.name = name  # what the tests see as the model that answered

    def compute_logprobs(self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None) -> Any:
        tokens = prompt.to_ints()
        with self.service.lock:
            self.service.logprob_requests.append((tuple(tokens), prompt_logprobs_last_n))
            self.service.logprob_models.append(self.name)
        with torch.no_grad():
            values: list[float | None] = [None, *target_logprobs(self.model, tokens[:-1], tokens[1:]).tolist()]
        if prompt_logprobs_last_n is not None:
            values = [None] * (len(values) - prompt_logprobs_last_n) + values[-prompt_logprobs_last_n:]
        return completed(values)

    def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams, **_: Any
    ) -> Any:
        service = self.service
        with service.lock:
            service.sample_requests.append((tuple(prompt.to_ints()), sampling_params))
            service.sample_models.append(self.name)
            fail = service.failures > 0
            if fail:
                service.failures -= 1
        return AwaitableConcurrentFuture(
            service.executor.submit(self._generate, prompt.to_ints(), num_samples, sampling_params, fail)
        )

    def _generate(
        self, tokens: list[int], num_samples: int, params: types.SamplingParams, fail: bool
    ) -> types.SampleResponse:
        service = self.service
        with service.lock:
            service.in_flight += 1
            service.max_in_flight = max(service.max_in_flight, service.in_flight)
        try:
            time.sleep(service.sample_delay)
            if fail:
                raise tinker.APIConnectionError(request=httpx.Request("POST", "https://fake.tinker/api/v1/sample"))
            stops = set(params.stop or [])
            sequences = []
            for sample in range(num_samples):
                generator = torch.Generator().manual_seed((params.seed or 0) + sample)
                out: list[int] = []
                logprobs: list[float] = []
                context = list(tokens)
                reason = "length"
                with torch.no_grad():
                    for _ in range(params.max_tokens or 16):
                        logits = self.model(input_ids=torch.tensor([context])).logits[0, -1].float()
                        # The SDK does not say whether a sampled token's log-prob is taken before or after
                        # the temperature: the fake gives the one of the distribution it drew from.
                        log_probs = torch.log_softmax(logits / max(params.temperature, 1e-5), dim=-1)
                        token = int(torch.multinomial(log_probs.exp(), 1, generator=generator))
                        out.append(token)
                        logprobs.append(float(log_probs[token]))
                        context.append(token)
                        if token in stops:
                            reason = "stop"
                            break
                sequences.append(
                    types.SampledSequence(
                        stop_reason=reason, sequence_id=f"seq-{id(out)}", _tokens_list=out, _logprobs_list=logprobs
                    )
                )
            return types.SampleResponse(sequences=sequences)
        finally:
            with service.lock:
                service.in_flight -= 1


class FakeTrainingClient:
    def __init__(self, service: FakeService, base: str, rank: int, seed: int | None, layers: dict[str, bool]) -> None:
        self.service = service
        self.base = base
        self.rank = rank
        self.layers = layers
        self.model = with_lora(copy.deepcopy(service.base(base)), rank, seed, layers)
        self.model.train()
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=0.0)
        service.runs += 1
        self.run = f"run-{service.runs}"
        self.steps = 0

    def lora_weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def _pass(
        self, data: Sequence[types.Datum], *, backward: bool, loss_fn: str = "cross_entropy"
    ) -> types.ForwardBackwardOutput:
        outputs, total = [], 0.0
        context = torch.enable_grad() if backward else torch.no_grad()
        with context:
            losses = []
            for datum in data:
                inputs = datum.loss_fn_inputs
                targets = inputs["target_tokens"].data
                logprobs = target_logprobs(self.model, datum.model_input.to_ints(), targets)
                if loss_fn == "importance_sampling":
                    # Tinker's definition: the learner's log-probs against the sampler's, times the advantages.
                    ratio = torch.exp(logprobs - inputs["logprobs"].to_torch().float())
                    losses.append(-(ratio * inputs["advantages"].to_torch().float()).sum())
                else:
                    losses.append((-logprobs * inputs["weights"].to_torch().float()).sum())
                outputs.append({"logprobs": types.TensorData.from_torch(logprobs.detach())})
            loss = torch.stack(losses).sum()
            if backward:
                loss.backward()
            total = float(loss.detach())
        return types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": total}
        )

    def forward(self, data: list[types.Datum], loss_fn: str, loss_fn_config: Any = None) -> Any:
        assert loss_fn == "cross_entropy"
        return completed(self._pass(data, backward=False))

    def forward_backward(self, data: list[types.Datum], loss_fn: str, loss_fn_config: Any = None) -> Any:
        assert loss_fn in ("cross_entropy", "importance_sampling"), loss_fn
        self.service.calls.append(("forward_backward", {"size": len(data)}))
        self.service.loss_batches.append((loss_fn, list(data)))
        return completed(self._pass(data, backward=True, loss_fn=loss_fn))

    def forward_backward_custom(self, data: list[types.Datum], loss_fn: Callable[..., Any]) -> Any:
        self.service.custom_batches.append(list(data))
        forward = self._pass(data, backward=False)
        # The SDK's own code: run the custom loss on the log-probs, weights = -d loss / d logprob.
        custom = SdkTrainingClient._compute_custom_loss(data, loss_fn, forward)
        result = self._pass(custom.data, backward=True)
        surrogate = result.metrics.pop("loss:sum")
        result.metrics.update(custom.metrics)
        result.metrics["loss:sum"] = custom.loss_sum
        result.metrics["surrogate_loss:sum"] = surrogate
        return completed(result)

    def optim_step(self, optim_params: types.AdamParams) -> Any:
        self.service.optim_params.append(optim_params)
        if self.service.kill_at_step is not None and len(self.service.optim_params) == self.service.kill_at_step:
            raise Killed(f"killed at optimizer step {self.service.kill_at_step}")
        for group in self.optimizer.param_groups:
            group.update(
                lr=optim_params.learning_rate,
                betas=(optim_params.beta1, optim_params.beta2),
                eps=optim_params.eps,
                weight_decay=optim_params.weight_decay,
            )
        if optim_params.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, optim_params.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return completed(types.OptimStepResponse(metrics={}))

    def _store(self, kind: str, name: str) -> str:
        path = f"tinker://{self.run}/{kind}/{name}"
        self.service.storage[path] = {
            "base": self.base,
            "rank": self.rank,
            "layers": self.layers,
            "weights": self.lora_weights(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "steps": self.steps,
        }
        return path

    def save_state(self, name: str, ttl_seconds: int | None = None, **_: Any) -> Any:
        self.service.calls.append(("save_state", {"name": name}))
        return completed(types.SaveWeightsResponse(path=self._store("weights", name)))

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None, **_: Any) -> Any:
        self.service.calls.append(("save_weights_for_sampler", {"name": name}))
        return completed(types.SaveWeightsForSamplerResponse(path=self._store("sampler_weights", name)))

    def save_weights_and_get_sampling_client(self, name: str | None = None, **_: Any) -> Any:
        """A sampling client of the weights as they are now (the SDK's default ``kind="snapshot"``):
        later optimizer steps do not change what it samples."""
        self.service.calls.append(("save_weights_and_get_sampling_client", {"run": self.run, "steps": self.steps}))
        snapshot = copy.deepcopy(self.model).eval()
        return completed(FakeSamplingClient(self.service, snapshot, f"{self.run}@{self.steps}"))
