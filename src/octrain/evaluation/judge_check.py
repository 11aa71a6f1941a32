"""The eval stage's judge, built from the eval settings, and the HTTP judge checked before a run does any other work.

:func:`build_judge` gives the judge a run's config names: the HTTP endpoint (:func:`http_judge`)
or the teacher model. A judge named on the command line instead is a :class:`JudgeEndpoint`.

The eval stage is the last one: without a check up front, a missing API key, a judge URL
that nothing answers or a model name the server does not serve would show only after every
model of the run had been trained, loaded and sampled. :func:`check_judge` runs in the
pipeline's preflight instead: the key is in its environment variable, ``GET
{base_url}/models`` answers within a few seconds and lists ``eval.judge_model``. A server
that keeps no model list (many OpenAI-compatible ones do not) gets a warning, not a failure:
the model name is then checked only by the first judge request.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from octrain.core.config import EvalStageConfig, JudgeKind, OctrainConfig, StageName
from octrain.core.errors import ConfigError
from octrain.samplers.base import Sampler
from octrain.samplers.openai_http import (
    CHECK_TIMEOUT,
    JudgeRequestError,
    OpenAIChatSampler,
    shown_models,
    without_userinfo,
)

logger = logging.getLogger(__name__)

# The check waits no longer than CHECK_TIMEOUT for the model list, even with a longer
# eval.judge_timeout: an endpoint that needs more than that to list its models is one to hear about now.


@dataclasses.dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible judge given on the command line (the key is read from ``api_key_env``)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 4


def http_judge(settings: EvalStageConfig) -> OpenAIChatSampler:
    """The judge at ``eval.judge_base_url``, with the configured timeout and retries.

    Raises:
        ConfigError: the key's environment variable is unset or empty.
    """
    env = settings.judge_api_key_env
    if env and not os.environ.get(env, "").strip():
        raise ConfigError(
            f"eval.judge_api_key_env: environment variable {env} is not set; it must hold the API key for "
            f"{without_userinfo(settings.judge_base_url or '')} "
            "(eval.judge_api_key_env='' for a server that takes no key)"
        )
    return OpenAIChatSampler(
        settings.judge_base_url or "",
        settings.judge_model or "",
        api_key_env=env,
        timeout=settings.judge_timeout,
        max_retries=settings.judge_retries,
    )


def build_judge(config: OctrainConfig) -> Sampler:
    """The judge ``eval.judge`` names: the HTTP endpoint, or the teacher model through the run's sampler."""
    if config.eval.judge is JudgeKind.http:
        return http_judge(config.eval)
    # Imported here: build_sampler reaches every backend; tests also replace it on octrain.samplers.
    from octrain.samplers import build_sampler

    return build_sampler(config.sampler, config.teacher)


def check_judge(config: OctrainConfig) -> None:
    """With ``eval`` among the stages and ``eval.judge=http``: the key, the endpoint and the model.

    Raises:
        ConfigError: the key is missing, the endpoint does not answer ``GET /models`` (or
            answers with an error, a rejected key among them), or it lists other models only.
    """
    settings = config.eval
    if StageName.eval not in config.stages or settings.judge is not JudgeKind.http:
        return
    judge = http_judge(settings)
    try:
        listed = judge.list_models(timeout=min(CHECK_TIMEOUT, settings.judge_timeout))
    except JudgeRequestError as error:
        raise ConfigError(f"eval.judge_base_url: the judge endpoint does not answer: {error}") from None
    model = judge.model
    if listed is None:
        logger.warning(
            "eval: the judge endpoint %s keeps no model list (GET /models), so eval.judge_model=%s cannot be "
            "checked before the run; a wrong name shows at the first judge request",
            judge.display_base_url,
            model,
        )
        return
    if model not in listed:
        raise ConfigError(
            f"eval.judge_model: {model!r} is not among the models the judge endpoint lists ({shown_models(listed)})"
        )
