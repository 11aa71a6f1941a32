"""The table of stages: what each needs before it, how it runs, fingerprints and describes itself.

The pipeline, the workers, smoke runs and reuse look stages up here (:func:`stages_for`); the
stage modules themselves never import this table, so none of them imports its siblings through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from octrain.core.config import OctrainConfig, StageName
from octrain.stages import dpo, evaluate, from_file, introspect, pairs, prompts, sft
from octrain.stages.context import RunContext


@dataclass(frozen=True)
class StageSpec:
    name: StageName
    needs: tuple[StageName, ...]
    run: Callable[[RunContext], dict[str, Any]]
    fingerprint: Callable[[RunContext], dict[str, Any]]
    describe: Callable[[dict[str, Any]], str]
    # A stage that trains needs the device's memory for itself: the sampling engines loaded by the
    # stages before it are closed first, and its own memory is gone before the next stage starts.
    trains: bool = False


def _or_imported(describe: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    """A stage's summary line, or the import's when the stage imported a file (its summary names a source)."""

    def describe_summary(summary: dict[str, Any]) -> str:
        return from_file.describe(summary) if "source" in summary else describe(summary)

    return describe_summary


STAGES: dict[StageName, StageSpec] = {
    StageName.prompts: StageSpec(StageName.prompts, (), prompts.run, prompts.fingerprint, prompts.describe),
    StageName.pairs: StageSpec(
        StageName.pairs, (StageName.prompts,), pairs.run, pairs.fingerprint, _or_imported(pairs.describe)
    ),
    StageName.dpo: StageSpec(StageName.dpo, (StageName.pairs,), dpo.run, dpo.fingerprint, dpo.describe, trains=True),
    StageName.introspect: StageSpec(
        StageName.introspect,
        (StageName.dpo,),
        introspect.run,
        introspect.fingerprint,
        _or_imported(introspect.describe),
    ),
    StageName.sft: StageSpec(
        StageName.sft, (StageName.introspect,), sft.run, sft.fingerprint, sft.describe, trains=True
    ),
    # eval reads the training prompts (held-out check, classifier data) and compares against DPO alone.
    StageName.eval: StageSpec(
        StageName.eval,
        (StageName.prompts, StageName.dpo, StageName.sft),
        evaluate.run,
        evaluate.fingerprint,
        evaluate.describe,
    ),
}

# What a stage needs when it imports its output instead of making it, where that differs: pairs
# imported from a file do not come from the prompts. An imported introspect keeps needing dpo: sft,
# after it, trains on the DPO adapter, and the chain dpo -> introspect -> sft keeps sft current with it.
_IMPORTED_NEEDS: dict[StageName, tuple[StageName, ...]] = {StageName.pairs: ()}


def stages_for(config: OctrainConfig) -> dict[StageName, StageSpec]:
    """The stages of one run, in order, each with the needs it has in that run (see ``_IMPORTED_NEEDS``)."""
    imported = from_file.imported_stages(config)
    return {
        name: dataclasses.replace(spec, needs=_IMPORTED_NEEDS.get(name, spec.needs)) if name in imported else spec
        for name, spec in STAGES.items()
    }
