"""The pipeline's stages, in order.

Each stage module has pure functions on records (testable with a fake sampler) and a thin
``run(ctx)`` that reads its inputs from the run directory, writes its outputs there and
returns a small summary dict. ``fingerprint(ctx)`` lists every setting that shapes the
stage's output: when it changes, a finished stage runs again instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from octrain.config import StageName
from octrain.context import RunContext
from octrain.stages import dpo, evaluate, introspect, pairs, prompts, sft


@dataclass(frozen=True)
class StageSpec:
    name: StageName
    needs: tuple[StageName, ...]
    run: Callable[[RunContext], dict[str, Any]]
    fingerprint: Callable[[RunContext], dict[str, Any]]
    describe: Callable[[dict[str, Any]], str]


STAGES: dict[StageName, StageSpec] = {
    StageName.prompts: StageSpec(StageName.prompts, (), prompts.run, prompts.fingerprint, prompts.describe),
    StageName.pairs: StageSpec(StageName.pairs, (StageName.prompts,), pairs.run, pairs.fingerprint, pairs.describe),
    StageName.dpo: StageSpec(StageName.dpo, (StageName.pairs,), dpo.run, dpo.fingerprint, dpo.describe),
    StageName.introspect: StageSpec(
        StageName.introspect, (StageName.dpo,), introspect.run, introspect.fingerprint, introspect.describe
    ),
    StageName.sft: StageSpec(StageName.sft, (StageName.introspect,), sft.run, sft.fingerprint, sft.describe),
    # eval reads the training prompts (held-out check, classifier data) and compares against DPO alone.
    StageName.eval: StageSpec(
        StageName.eval,
        (StageName.prompts, StageName.dpo, StageName.sft),
        evaluate.run,
        evaluate.fingerprint,
        evaluate.describe,
    ),
}
