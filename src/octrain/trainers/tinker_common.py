"""What octrain's Tinker backends share: the SDK import, the key, the served models, LoRA, batches.

Tinker (Thinking Machines' hosted training and sampling API) runs the forward and backward
passes of a LoRA model remotely and hands back per-token log-probs; everything else is octrain's:
the session, the checks and the request helpers here, the checkpointed step loop in
:mod:`octrain.trainers.tinker_loop`, the tokenization and the loss in the trainers, and the
learning-rate schedule in :mod:`octrain.trainers.schedule`, the one the TRL backend follows too.

Checks happen before any work: the ``tinker`` SDK must be installed (the ``[tinker]`` extra),
``TINKER_API_KEY`` must be set and look like a Tinker key, and every model a run asks for must
be in the list the service says it serves (:func:`check_models_served`), so a stale recipe
fails with that list instead of after an hour of sampling.

The SDK is imported lazily, inside functions: ``import octrain`` and the default tests work
without the extra. A test replaces :data:`SERVICE_FACTORY` to talk to a fake service.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from octrain.core.config import LoraSettings, TinkerOptions
from octrain.core.errors import ConfigError

# Moved to tinker_loop with the step loop it belongs to; re-exported until octrain.stages.sft and
# octrain.use.tinker_download import it from there.

API_KEY_VARIABLE = "TINKER_API_KEY"
# ApiKeyAuthProvider in the SDK accepts keys with this prefix, or a JWT (which starts "eyJ").
KEY_PREFIXES = ("tml-", "eyJ")
# transformers' AdamW epsilon (TrainingArguments.adam_epsilon), which the TRL backend uses; Tinker's
# own default is 1e-12, so it is always set explicitly.
ADAM_EPSILON = 1e-8
# TrainingArguments' Adam betas: the TRL SFT stage does not set them (DPO sets the method's 0.9, 0.98).
TRANSFORMERS_ADAM_BETAS = (0.9, 0.999)
# PEFT's "all-linear" in a decoder: every linear layer of attention and MLP, never the output head.
ATTENTION_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
MLP_MODULES = frozenset({"gate_proj", "up_proj", "down_proj"})
UNEMBED_MODULES = frozenset({"lm_head"})


def tinker_module() -> Any:
    """The ``tinker`` SDK, or a :class:`ConfigError` that says how to install it."""
    try:
        import tinker
    except ImportError as exc:
        raise ConfigError(
            "the Tinker backend needs the tinker SDK: pip install -e '.[tinker]' (and export TINKER_API_KEY)"
        ) from exc
    return tinker


def check_api_key() -> str:
    """The key in ``TINKER_API_KEY``; a :class:`ConfigError` naming the variable when it is unusable."""
    key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if not key:
        raise ConfigError(
            f"{API_KEY_VARIABLE} is not set: the Tinker backend needs an API key "
            "(create one in the Tinker console, then export TINKER_API_KEY=tml-...)"
        )
    if not key.startswith(KEY_PREFIXES) or any(c.isspace() for c in key):
        # Say what is wrong without echoing the secret.
        raise ConfigError(
            f"{API_KEY_VARIABLE} does not look like a Tinker API key: it should start with 'tml-' "
            f"and hold no spaces (got {len(key)} characters starting {key[:3]!r})"
        )
    return key


def default_service_factory(options: TinkerOptions) -> Any:
    tinker = tinker_module()
    return tinker.ServiceClient(base_url=options.base_url, api_key=check_api_key())


# How octrain opens a Tinker session: tests put a factory of fake clients here.
SERVICE_FACTORY: Callable[[TinkerOptions], Any] = default_service_factory
# One session per service URL and process: every sampler and trainer of a run shares it.
_SESSIONS: dict[str | None, Any] = {}


def connect(options: TinkerOptions) -> Any:
    """The process's ``tinker.ServiceClient`` for ``options.base_url``, opened after the key check
    (no request goes out with a missing or malformed key)."""
    check_api_key()
    tinker_module()
    if options.base_url not in _SESSIONS:
        _SESSIONS[options.base_url] = SERVICE_FACTORY(options)
    return _SESSIONS[options.base_url]


def forget_sessions() -> None:
    """Drop the cached sessions (tests that swap :data:`SERVICE_FACTORY`)."""
    _SESSIONS.clear()


@dataclass(frozen=True)
class ServedModel:
    name: str
    trainable: bool
    sampleable: bool


def served_models(service: Any) -> list[ServedModel]:
    """What the service serves now, from its ``get_server_capabilities`` answer.

    Through the REST client of the session: ``ServiceClient.get_server_capabilities`` is deprecated
    in SDK 0.38 in favour of ``RestClient.get_server_capabilities`` (an APIFuture).
    """
    capabilities = service.create_rest_client().get_server_capabilities().result()
    # The SDK leaves both flags Optional: unset means the server did not say, so it is not held against it.
    return [
        ServedModel(model.model_name, model.trainable is not False, model.sampleable is not False)
        for model in capabilities.supported_models
        if model.model_name
    ]


def check_models_served(service: Any, *, sample: Iterable[str] = (), train: Iterable[str] = ()) -> None:
    """Refuse models the service does not serve (for sampling, or for training), listing what it does."""
    served = served_models(service)
    by_name = {model.name: model for model in served}
    listing = ", ".join(sorted(by_name)) or "(none)"
    for name in dict.fromkeys(train):
        if name not in by_name or not by_name[name].trainable:
            raise ConfigError(f"Tinker does not train {name!r}; models it serves now: {listing}")
    for name in dict.fromkeys(sample):
        if name not in by_name or not by_name[name].sampleable:
            raise ConfigError(f"Tinker does not serve {name!r} for sampling; models it serves now: {listing}")


def lora_layers(settings: LoraSettings) -> dict[str, bool]:
    """``train_mlp`` / ``train_attn`` / ``train_unembed`` for the LoRA settings, or a ConfigError.

    Tinker picks layers by group, not by module name: "all-linear" (PEFT: every linear layer but the
    output head) is attention + MLP without the unembedding; a list must be whole groups.
    """
    if settings.dropout:
        raise ConfigError(f"lora.dropout={settings.dropout}: Tinker's LoRA has no dropout; set it to 0")
    targets = set(settings.target_modules)
    if targets == {"all-linear"}:
        return {"train_mlp": True, "train_attn": True, "train_unembed": False}
    groups = {"attention": ATTENTION_MODULES, "mlp": MLP_MODULES, "unembed": UNEMBED_MODULES}
    chosen = {name: bool(targets & modules) for name, modules in groups.items()}
    partial = [name for name, modules in groups.items() if targets & modules and not modules <= targets]
    unknown = targets - ATTENTION_MODULES - MLP_MODULES - UNEMBED_MODULES
    if unknown or partial or not any(chosen.values()):
        raise ConfigError(
            f"lora.target_modules={sorted(targets)}: Tinker trains whole groups only (attention "
            f"{sorted(ATTENTION_MODULES)}, MLP {sorted(MLP_MODULES)}, unembedding lm_head) or all-linear"
        )
    return {"train_mlp": chosen["mlp"], "train_attn": chosen["attention"], "train_unembed": chosen["unembed"]}


def adam_params(
    lr: float, *, beta1: float, beta2: float, weight_decay: float, grad_clip: float, eps: float = ADAM_EPSILON
) -> Any:
    """Every field of ``tinker.AdamParams`` set: its defaults (beta2 0.95, eps 1e-12, no clipping)
    are not the method's."""
    tinker = tinker_module()
    return tinker.AdamParams(
        learning_rate=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, grad_clip_norm=grad_clip
    )


def shifted_datum(tokens: Sequence[int], weights: Sequence[float]) -> Any:
    """A ``tinker.Datum`` that scores ``tokens[1:]`` given ``tokens[:-1]``.

    ``weights[i]`` belongs to ``tokens[i]`` (1 = a trained token); the first token has no
    prediction, so its weight is dropped, the shift ``labels[..., 1:]`` does in transformers.
    """
    tinker = tinker_module()
    if len(tokens) != len(weights) or len(tokens) < 2:
        raise ValueError(f"a datum needs at least 2 tokens and one weight each (got {len(tokens)}, {len(weights)})")
    target = list(tokens[1:])
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(list(tokens[:-1])),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=target, dtype="int64", shape=[len(target)]),
            "weights": tinker.TensorData(data=[float(w) for w in weights[1:]], dtype="float32", shape=[len(target)]),
        },
    )


def datum_weights(datum: Any) -> list[float]:
    return list(datum.loss_fn_inputs["weights"].data)


def load_tokenizer(model: str) -> Any:
    """The model's own Hugging Face tokenizer, loaded locally (a Tinker model is named by its Hub id)."""
    from octrain.models.builtin import resolve_model_path
    from octrain.trainers.trl_common import load_tokenizer as load

    return load(resolve_model_path(model))


def retryable(error: BaseException) -> bool:
    """A failure worth another attempt: the connection dropped, the request timed out, the server erred.

    The SDK already waits out 429s (rate limits) itself; a 4xx other than those is the request's fault.
    """
    try:
        tinker = tinker_module()
    except ConfigError:
        return False
    return isinstance(error, (tinker.APIConnectionError, tinker.APITimeoutError, tinker.InternalServerError))


def bounded_map(
    submit: Callable[[int], Any],
    count: int,
    limit: int,
    *,
    attempts: int = 1,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``submit(i).result()`` for ``i < count``, with at most ``limit`` requests in flight.

    The first ``limit`` requests all go out before any answer is awaited; each answer that comes
    back makes room for the next request. Waits on the SDK futures' ``future()`` (a
    ``concurrent.futures.Future``), whichever finishes first. A request that fails with a
    :func:`retryable` error is sent again, up to ``attempts`` times in all; ``on_result(i, result)``
    sees each answer as it arrives (a progress bar).
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    results: list[Any] = [None] * count
    pending: dict[Any, tuple[int, int]] = {}  # future -> (index, attempt)
    retry: list[tuple[int, int]] = []
    following = 0
    limit = max(1, limit)
    while following < count or pending or retry:
        while (retry or following < count) and len(pending) < limit:
            if retry:
                index, attempt = retry.pop()
            else:
                index, attempt = following, 1
                following += 1
            pending[submit(index).future()] = (index, attempt)
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for handle in done:
            index, attempt = pending.pop(handle)
            error = handle.exception()
            if error is None:
                results[index] = handle.result()
                if on_result is not None:
                    on_result(index, results[index])
            elif attempt < attempts and retryable(error):
                retry.append((index, attempt + 1))
            else:
                for other in pending:
                    other.cancel()
                raise error
    return results


SAMPLING_STAGES = ("prompts", "pairs", "introspect", "eval")
TRAINING_STAGES = ("dpo", "sft")


def check_tinker_run(config: Any) -> None:
    """Everything a run on Tinker can be refused for, before any stage starts (``octrain.run.pipeline.preflight``).

    The SDK and the key first (no request with a bad key), then the settings Tinker cannot honour
    (paper-mode SFT, weighted update sums, merged exports: there are no local weights to combine),
    then one ``get_server_capabilities`` call: the student must be trainable when Tinker trains,
    and the teacher and student sampleable when Tinker samples.
    """
    from octrain.core.config import SamplerBackend, SftMode, TrainerBackend

    stages = {stage.value for stage in config.stages}
    samples = config.sampler.backend is SamplerBackend.tinker and bool(stages & set(SAMPLING_STAGES))
    trains = config.trainer.backend is TrainerBackend.tinker and bool(stages & set(TRAINING_STAGES))
    if not (samples or trains):
        return
    tinker_module()
    check_api_key()
    if trains:
        lora_layers(config.dpo.lora)
        lora_layers(config.sft.lora)
        if config.trainer.num_processes > 1:
            raise ConfigError("trainer.num_processes: trainer=tinker trains on the service; leave it at 1")
        if "sft" in stages:
            sft = config.sft
            if sft.mode is not SftMode.sequential:
                raise ConfigError(
                    f"sft.mode={sft.mode.value}: trainer=tinker trains sequentially only (SFT continues the DPO "
                    "weights); Tinker cannot merge two adapters"
                )
            if sft.dpo_weight != 1.0 or sft.sft_weight != 1.0:
                raise ConfigError(
                    "sft.dpo_weight / sft.sft_weight: on Tinker both updates live in one adapter, trained one after "
                    "the other, so they cannot be weighted; leave both at 1"
                )
            if sft.export_merged:
                raise ConfigError("sft.export_merged: trainer=tinker keeps the weights on the service; set it false")
    service = connect(config.trainer.tinker if trains else config.sampler.tinker)
    sampled = [config.teacher.path, config.student.path] if samples else []
    check_models_served(service, sample=sampled, train=[config.student.path] if trains else [])
