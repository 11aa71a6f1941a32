"""The plan: every model a run's stages load, judged on each card, with advice where it does not fit.

Every stage runs in a process of its own and holds one model at a time (one vLLM engine, or one
model being trained), so a stage needs as much as its largest model, never the sum:

* ``prompts``: the generator's engine (the teacher by default);
* ``pairs``: the teacher's engine, then the student's;
* ``dpo``: the student being trained with LoRA; the reference is the same weights with the
  adapter switched off, so there is no second copy (with ``distill.method=sdft`` the student also
  writes its answers and, with ``distill.sdft.teacher_weights=teacher``, a frozen teacher sits beside it);
* ``introspect``: the student's engine serving the DPO adapter;
* ``sft``: the student being trained (sequential mode folds the DPO adapter in first, on the CPU);
* ``eval``: the student's engine serving the base and each adapter, then the teacher's engine.

Stages that import their data (``pairs.source``, ``introspect.source``) load no model, and a model
served over HTTP (``teacher.endpoint.base_url``) takes no memory here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from octrain.core.config import ModelRole, OctrainConfig, StageName
from octrain.memory.advice import Change, advise, engine_changes, training_changes
from octrain.memory.engines import engine_need
from octrain.memory.needs import CARDS, Need, Verdict
from octrain.memory.training import training_need


@dataclass
class Row:
    """One model of one stage, with a verdict and, where it does not fit, advice, per card."""

    stage: str
    need: Need
    verdicts: dict[float, Verdict]
    advice: dict[float, str]


@dataclass(frozen=True)
class _Item:
    """One model a stage loads: how to size it for a config on a card, and what may make it smaller."""

    stage: str
    needs: Callable[[OctrainConfig, float], Need]
    changes: Callable[[OctrainConfig], list[list[Change]]]
    role: str | None = None  # the model an engine item samples; None for training


def _engine_item(
    stage: str,
    role: ModelRole,
    new_tokens: Callable[[OctrainConfig], int],
    rank: Callable[[OctrainConfig], int] = lambda _: 0,
) -> _Item:
    def needs(config: OctrainConfig, card: float) -> Need:
        return engine_need(
            config, role, stage=stage, max_new_tokens=new_tokens(config), adapter_rank=rank(config), card=card
        )

    return _Item(stage.split("-")[0], needs, lambda config: engine_changes(config, role), role.value)


def _training_item(stage: StageName) -> _Item:
    def needs(config: OctrainConfig, card: float) -> Need:
        return training_need(config, stage)  # the card only judges it: training allocates what it uses

    return _Item(stage.value, needs, lambda config: training_changes(config, stage))


def _introspect_tokens(config: OctrainConfig) -> int:
    # A self-interaction's context grows turn by turn and the engine holds conversations at every
    # turn at once: half the final length on average. Reflections are single answers.
    turns = config.scale.interaction_turns * config.introspect.interaction_sampling.max_new_tokens // 2
    return max(config.introspect.reflection_sampling.max_new_tokens, turns)


def _items(config: OctrainConfig) -> list[_Item]:
    """The models each stage of the run loads, in the order the stages run (imported data loads none)."""
    stages = set(config.stages)
    items: list[_Item] = []
    if StageName.prompts in stages:
        items.append(_engine_item("prompts", config.prompts.generator, lambda c: c.prompts.sampling.max_new_tokens))
    if StageName.pairs in stages and not config.pairs.source:
        for role in (ModelRole.teacher, ModelRole.student):
            items.append(_engine_item(f"pairs-{role.value}", role, lambda c: c.pairs.sampling.max_new_tokens))
    if StageName.dpo in stages:
        items.append(_training_item(StageName.dpo))
    if StageName.introspect in stages and not config.introspect.source:
        items.append(_engine_item("introspect", ModelRole.student, _introspect_tokens, lambda c: c.dpo.lora.rank))
    if StageName.sft in stages:
        items.append(_training_item(StageName.sft))
    if StageName.eval in stages:
        # The trained model is served as one adapter holding both updates: rank dpo + sft.
        both = lambda c: c.dpo.lora.rank + c.sft.lora.rank  # noqa: E731
        items.append(_engine_item("eval", ModelRole.student, lambda c: c.eval.sampling.max_new_tokens, both))
        items.append(_engine_item("eval", ModelRole.teacher, lambda c: c.eval.judge_sampling.max_new_tokens))
    # A model sampled from a server over HTTP loads nowhere here (its memory is the server's).
    served = {role.value for role in ModelRole if config.model(role).endpoint.base_url is not None}
    return [item for item in items if not (item.role and item.role in served)]


def plan(config: OctrainConfig, cards: Sequence[float] = CARDS) -> list[Row]:
    """Every model the run's stages load, judged on each card, with advice where it is not a clean fit."""
    rows = []
    for item in _items(config):
        verdicts: dict[float, Verdict] = {}
        advice: dict[float, str] = {}
        for card in cards:
            verdict = item.needs(config, card).judge(card)
            verdicts[card] = verdict
            if verdict.status != "fits":
                advice[card] = advise(
                    config,
                    card,
                    partial(item.needs, card=card),
                    item.changes(config),
                    accept_tight=verdict.status == "no",
                )
        rows.append(Row(item.stage, item.needs(config, max(cards)), verdicts, advice))
    return rows
