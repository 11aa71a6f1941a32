"""The settings that shape an evaluation's results: the ``eval`` stage's fingerprint.

The pipeline runs a finished ``eval`` stage again when its fingerprint changes
(:mod:`octrain.stages`), and the ``paper`` suite keys its committed answers and judgements by it
(:func:`octrain.evaluation.chunked.work_dir`), so that ``octrain eval model`` never reads back
work made with other settings. Both read it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from octrain.core.settings_digest import at_defaults

if TYPE_CHECKING:
    # For the annotation only: octrain.stages imports this module while its own package is loading.
    from octrain.stages.context import RunContext

# How the judge is reached, not what it says: left out of the fingerprint.
TRANSPORT_SETTINGS = ("judge_timeout", "judge_retries")


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    """Every setting of the run that shapes the evaluation's results (see :mod:`octrain.core.settings_digest`)."""
    config = ctx.config
    # How long to wait for the judge and how often to retry a failed request change no result: left
    # out, so that raising them after a judge failure resumes the committed work instead of clearing it.
    return {
        "eval": at_defaults(config.eval, TRANSPORT_SETTINGS),
        # The teacher writes the classifier's data (and judges, with eval.judge=teacher).
        "teacher": config.teacher,
        "student": config.student,
        "constitution": ctx.constitution.numbered_traits(),
        "teacher_prompt": config.pairs.teacher_prompt.value,  # the teacher's voice in the classifier data
        "sampler": config.sampler.backend.value,
        "seed": config.seed,
    }
