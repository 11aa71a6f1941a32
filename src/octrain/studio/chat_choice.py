"""What the chat page's settings choose: the checkpoints offered, who speaks, and the chat session they make.

The page (:mod:`octrain.studio.views.chat`) offers every registered checkpoint three ways: the
trained model, its base, and its base with the constitution as the system prompt. An option is
turned into a :class:`~octrain.use.chat.Speaker` for a comparison (:func:`speaker_for`) or, with
the sidebar's settings (:class:`Choice`), into a :class:`~octrain.use.chat.ChatSession`
(:func:`new_session`), through the same functions ``octrain sample`` and ``octrain chat`` call.
Nothing here draws: the page does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNS_OWN = "(the run's)"
ROLE_SUFFIXES = {"": (False, False), " (base)": (True, False), " (base + constitution)": (True, True)}
THINKING_OPTIONS: dict[str, bool | None] = {RUNS_OWN: None, "on": True, "off": False}
THINKING_HELP = (
    "Whether a reasoning model (Qwen3) thinks before it answers: its chat template's enable_thinking. "
    "The run's setting is what it was trained and evaluated with. Other models ignore it."
)


@dataclass(frozen=True)
class Choice:
    """What the sidebar settings ask for; a change of any of them starts a new chat session."""

    spec: str
    base: bool
    with_constitution: bool
    backend: str | None
    temperature: float | None
    max_new_tokens: int | None
    seed: int | None
    system: str
    thinking: bool | None = None  # None: the run's own enable_thinking


def checkpoint_names(root: Path) -> list[str]:
    """The registered checkpoints, newest first (``octrain checkpoints list``)."""
    from octrain.use.registry import Registry

    if not root.is_dir():
        return []
    return [entry.name for entry in Registry.at(root).entries()]


def speaker_options(names: list[str]) -> list[str]:
    """Each checkpoint three ways: itself, its base, and its base with the constitution."""
    return [f"{name}{suffix}" for name in names for suffix in ROLE_SUFFIXES]


def parse_speaker(option: str) -> tuple[str, bool, bool]:
    """An option back as (checkpoint name, its base?, with the constitution?)."""
    for suffix, (base, with_constitution) in ROLE_SUFFIXES.items():
        if suffix and option.endswith(suffix):
            return option[: -len(suffix)], base, with_constitution
    return option, False, False


def speaker_for(option: str, root: Path, thinking: bool | None = None) -> Any:
    """A :class:`~octrain.use.chat.Speaker`: the model, its base, or its base with the constitution."""
    from octrain.use.chat import Speaker, constitution_prompt, pick_model

    spec, base, with_constitution = parse_speaker(option)
    chosen = pick_model(spec, base=base, run_root=root, thinking=thinking)
    system = constitution_prompt(chosen) if with_constitution else None
    return Speaker(chosen, system=system, role="base" if base else "trained", with_constitution=with_constitution)


def new_session(choice: Choice, root: Path) -> Any:
    """The :class:`~octrain.use.chat.ChatSession` the settings ask for; its model is not loaded yet."""
    from octrain.use.chat import ChatSession, constitution_prompt, pick_model, sampler_config, sampling_params

    chosen = pick_model(choice.spec, base=choice.base, run_root=root, thinking=choice.thinking)
    system = constitution_prompt(chosen) if choice.with_constitution else (choice.system or None)
    return ChatSession(
        chosen,
        settings=sampler_config(chosen, choice.backend),
        params=sampling_params(
            chosen, seed=choice.seed, temperature=choice.temperature, max_new_tokens=choice.max_new_tokens
        ),
        run_root=root,
        system=system,
    )
