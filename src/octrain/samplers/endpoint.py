"""A run's model sampled from a server over HTTP: ``teacher.endpoint.base_url`` (or the student's).

The teacher of a paper-scale run is often too large to share a node with the student: served by
``vllm serve`` elsewhere (or any OpenAI-compatible provider), it answers over HTTP while the student
trains here. The stages do not change: they commit answers chunk by chunk as with a local model
(:mod:`octrain.samplers.generation`), so a killed run resumes without asking for, or paying for,
an answer twice. What each endpoint was asked in this process is tallied here, and the stages that
sample put it in their report.
"""

from __future__ import annotations

import threading

from octrain.core.config import ModelConfig, ModelRole, OctrainConfig
from octrain.core.errors import ConfigError
from octrain.samplers.openai_http import CHECK_TIMEOUT, JudgeRequestError, OpenAIChatSampler, shown_models

_CREATED: list[OpenAIChatSampler] = []
_LOCK = threading.Lock()


def served_name(model: ModelConfig) -> str:
    """The model name the server is asked for: ``endpoint.model``, or the model's path."""
    return model.endpoint.model or model.path


def endpoint_sampler(model: ModelConfig, *, adapter: str | None = None) -> OpenAIChatSampler:
    """The sampler for a model behind ``model.endpoint``; the key is read from its variable now."""
    endpoint = model.endpoint
    if endpoint.base_url is None:
        raise ConfigError(f"{model.path}: no endpoint.base_url, so it is not served over HTTP")
    if adapter is not None:
        # A server samples what it serves: a trained adapter must be served there (vLLM's --lora-modules)
        # and named by endpoint.model, not handed over from here.
        raise ConfigError(
            f"{model.path} is sampled from {endpoint.base_url}, which cannot load the adapter {adapter}: "
            "sample the trained model locally (leave endpoint.base_url unset for the student), or serve the "
            "adapter there and name it in endpoint.model"
        )
    sampler = _client(model)
    with _LOCK:
        _CREATED.append(sampler)
    return sampler


def _client(model: ModelConfig) -> OpenAIChatSampler:
    """The HTTP client for ``model.endpoint`` (set), outside the usage tally."""
    endpoint = model.endpoint
    assert endpoint.base_url is not None
    sampler = OpenAIChatSampler(
        endpoint.base_url,
        served_name(model),
        api_key_env=endpoint.api_key_env,
        timeout=endpoint.timeout,
        max_retries=endpoint.max_retries,
        backoff=endpoint.backoff,
        max_concurrency=endpoint.max_concurrency,
        extra_params=endpoint.extra_params,
        # A server that takes extra parameters (vLLM, SGLang) hears the model's thinking setting as a
        # local engine does: without it a reasoning teacher would think on every answer by default.
        chat_template_kwargs={"enable_thinking": model.enable_thinking},
        name=f"{served_name(model)}@{endpoint.base_url}",
    )
    sampler.prices = (endpoint.price_per_million_prompt_tokens, endpoint.price_per_million_completion_tokens)
    return sampler


SEED_PROBE = "Name three things you might find on a beach."


def seed_behaviour(model: ModelConfig) -> str:
    """Whether ``model``'s server honours a request's seed, from three short answers outside the tally.

    The same seed twice at temperature 1, then another: "honoured" when the first two agree and the
    third differs, "ignored" when the first two differ (a resumed run then gets other answers for the
    chunks it had not committed than an uninterrupted run would have; none is asked for twice), and
    "undetermined" when all three agree (a greedy or caching server, or a fixed reply).
    """
    from octrain.core.errors import OctrainError
    from octrain.samplers.base import SamplingParams

    sampler = _client(model)
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24)
    conversation = [{"role": "user", "content": SEED_PROBE}]
    try:
        first, again, other = (
            sampler.chat([conversation], params, seeds=[seed], progress=False)[0][0].text for seed in (11, 11, 12)
        )
    except (JudgeRequestError, OctrainError) as error:
        return f"not checked ({error})"
    if first != again:
        return "ignored"
    return "honoured" if first != other else "undetermined"


def usage_snapshot() -> dict[str, dict[str, int]]:
    """Every endpoint's requests and tokens so far in this process, by sampler name."""
    totals: dict[str, dict[str, int]] = {}
    with _LOCK:
        for sampler in _CREATED:
            row = totals.setdefault(sampler.name, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
            for key, value in sampler.usage.items():
                row[key] += value
    return totals


def usage_since(before: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """What each endpoint was asked since ``before`` (a :func:`usage_snapshot`); endpoints not asked are left out.

    With both of the endpoint's prices set, each row also holds ``cost``: prompt and completion tokens at
    those prices (the provider's bill can differ: cached prompts, minimum charges).
    """
    with _LOCK:
        prices = {sampler.name: sampler.prices for sampler in _CREATED}
    spent: dict[str, dict[str, float]] = {}
    for name, row in usage_snapshot().items():
        earlier = before.get(name, {})
        delta: dict[str, float] = {key: value - earlier.get(key, 0) for key, value in row.items()}
        if not delta["requests"]:
            continue
        prompt_price, completion_price = prices.get(name, (None, None))
        if prompt_price is not None and completion_price is not None:
            cost = delta["prompt_tokens"] * prompt_price + delta["completion_tokens"] * completion_price
            delta["cost"] = round(cost / 1e6, 6)
        spent[name] = delta
    return spent


# Stages that sample the trained student (its adapter), which a server of the base model cannot.
_TRAINED_STUDENT_STAGES = ("introspect", "eval")


def check_endpoints(config: OctrainConfig) -> None:
    """Before any model loads: each model behind an endpoint can be used by this run's stages, its key
    is set, the server answers and (when it lists its models) serves the model asked for.

    Raises:
        ConfigError: naming the key (``teacher.endpoint.base_url`` ...) and what is wrong.
    """
    stages = {stage.value for stage in config.stages}
    for role in ModelRole:
        model = config.model(role)
        if model.endpoint.base_url is None:
            continue
        key = f"{role.value}.endpoint"
        if role is ModelRole.student and stages & set(_TRAINED_STUDENT_STAGES):
            named = ", ".join(sorted(stages & set(_TRAINED_STUDENT_STAGES)))
            raise ConfigError(
                f"{key}.base_url: the stages {named} sample the trained student (its adapter), which a server of "
                "the base model cannot; serve only the teacher over HTTP, or run those stages without "
                f"{key}.base_url"
            )
        if role is ModelRole.teacher and config.pairs.thinking_prefill and "pairs" in stages:
            raise ConfigError(
                f"pairs.thinking_prefill: the teacher is sampled from {model.endpoint.base_url}, and a chat API "
                "cannot continue an assistant turn opened for it; set pairs.thinking_prefill=false"
            )
        sampler = _client(model)  # reads the key: an unset variable stops here, named; a check stays out of the tally
        try:
            listed = sampler.list_models(timeout=min(CHECK_TIMEOUT, model.endpoint.timeout))
        except JudgeRequestError as error:
            raise ConfigError(f"{key}.base_url: the server does not answer: {error}") from None
        name = served_name(model)
        if listed is not None and name not in listed:
            where = "endpoint.model" if model.endpoint.model else "path"
            raise ConfigError(
                f"{role.value}.{where}: {name!r} is not among the models {sampler.display_base_url} serves "
                f"({shown_models(listed)})"
            )
