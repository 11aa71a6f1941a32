"""What the standalone evaluations of one model share: held-out prompts, and base and trained answers.

``octrain eval quick`` and ``octrain eval revealed-preferences`` take a model the way every
command does (:mod:`octrain.use.model_choice`) and compare it with its own base model. Both need
prompts the model was not trained on, and both answer with the base and the trained weights
through one engine where the backend allows it (vLLM serves the adapter as a LoRA request).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from octrain.core.config import SamplerConfig
from octrain.core.errors import ConfigError
from octrain.core.records import Message
from octrain.samplers.base import Sampler
from octrain.use.model_choice import ChosenModel

logger = logging.getLogger(__name__)


def training_prompts_of(chosen: ChosenModel) -> list[str] | None:
    """The user prompts the model's run trained on, or None when the run (or its prompts) is unknown."""
    config = chosen.run_config()
    if config is None or chosen.run_dir is None:
        return None
    from octrain.core.layout import PROMPTS_FILE
    from octrain.evaluation.heldout import training_prompts

    if not (chosen.run_dir / "prompts" / PROMPTS_FILE).is_file():
        return None
    return training_prompts(Path(chosen.run_dir))


def heldout_prompts(chosen: ChosenModel, source: str, count: int, *, seed: int) -> tuple[list[str], list[str]]:
    """Up to ``count`` prompts from ``source`` that the model's run did not train on, in a seeded order.

    Returns:
        (the prompts, notes for the user: prompts left out, or why no check was possible).
    """
    from octrain.evaluation.heldout import load_eval_prompts, select_heldout

    pool = load_eval_prompts(source)
    random.Random(seed).shuffle(pool)
    trained_on = training_prompts_of(chosen)
    if trained_on is None:
        notes = [f"{chosen.label} comes with no run's prompts: the prompts could not be checked against its training"]
        return pool[:count], notes
    heldout = select_heldout(pool, trained_on, count)
    if not heldout.prompts:
        raise ConfigError(f"every prompt of {source} repeats a prompt {chosen.label} was trained on: pass --prompts")
    return heldout.prompts, heldout.notes()


@contextmanager
def base_and_trained(
    chosen: ChosenModel, sampler: SamplerConfig, *, show_progress: bool = True
) -> Iterator[Callable[[bool], Sampler]]:
    """``get(trained)``: the base sampler (False) or the trained one (True), each built on first use.

    One vLLM engine serves both (the adapter as a LoRA request); transformers loads each model
    once. Every engine is released when the block ends.
    """
    from octrain.samplers import build_sampler
    from octrain.samplers.engine_pool import release_engines

    if chosen.ref.remote:
        raise ConfigError(f"{chosen.label} is a remote model: evaluate it through its backend's sampler")
    if chosen.ref.adapter is None:
        raise ConfigError(f"{chosen.label} is a base model: compare a trained checkpoint with its base")
    model = chosen.model_config()
    built: dict[bool, Sampler] = {}

    def get(trained: bool) -> Sampler:
        if trained not in built:
            adapter = chosen.ref.adapter if trained else None
            built[trained] = build_sampler(
                sampler, model, adapter=adapter, serves=[None, chosen.ref.adapter], show_progress=show_progress
            )
        return built[trained]

    try:
        yield get
    finally:
        for one in built.values():
            one.close()
        release_engines()


def user_turns(prompts: Sequence[str]) -> list[list[Message]]:
    return [[{"role": "user", "content": prompt}] for prompt in prompts]
