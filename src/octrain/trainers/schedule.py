"""The learning-rate schedule of both training backends: a short linear warmup, then half a cosine.

One rule, in one place: the TRL trainers build their scheduler from :func:`lr_factor`
(:func:`torch_scheduler`, installed by :class:`octrain.trainers.trl_common.ScheduleMixin`) and the
Tinker trainers send :func:`learning_rate` with each ``optim_step``, so both backends train every
optimizer step at the same learning rate.

Why not transformers' own schedules (``get_scheduler("cosine", ...)``): their warmup is
``ceil(total * ratio)`` steps, at least one whenever the ratio is above 0, and their linear warmup is
``step / warmup``, which is 0 at step 0. A run of one optimizer step (``scale=smoke``: 16 pairs at
batch 32) then trains at LR 0 and leaves every LoRA ``B`` factor at exactly zero, and every short
run loses its first step. Here:

* a run of fewer than :data:`SHORT_RUN_STEPS` steps has no warmup: it has no steps to spare and
  nothing for a warmup to protect;
* otherwise the warmup is ``ceil(total * ratio)`` steps, never more than :data:`MAX_WARMUP_FRACTION`
  of the run;
* warmup step ``s`` (0-based) has LR ``peak * (s + 1) / (warmup + 1)``: never 0, rising in equal
  increments to the peak, which the first step after the warmup reaches;
* then half a cosine from the peak to ``min_ratio * peak``, as transformers' ``cosine``
  (``min_ratio=0``) and ``cosine_with_min_lr`` (``min_lr_rate``) schedules decay.

No heavy imports: torch is imported inside :func:`torch_scheduler` only.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

# A run with fewer optimizer steps than this gets no warmup, and its training report says that its
# loss curve is too short to read much into (octrain.trainers.report.few_steps_note).
SHORT_RUN_STEPS = 10
# The warmup never takes more than this share of a run, whatever the ratio.
MAX_WARMUP_FRACTION = 0.5


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """How many of ``total_steps`` optimizer steps warm up, for a warmup ratio in [0, 1)."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio: expected a value in [0, 1), got {warmup_ratio}")
    if total_steps < SHORT_RUN_STEPS or warmup_ratio == 0:
        return 0
    # The small slack keeps a product that lands on an integer from rounding up: 30 * 0.1 is 3.0000000000000004.
    wanted = math.ceil(total_steps * warmup_ratio - 1e-9)
    return min(wanted, int(total_steps * MAX_WARMUP_FRACTION))


def lr_factor(step: int, *, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0) -> float:
    """The fraction of the peak LR that optimizer step ``step`` (0-based) of ``total_steps`` trains at."""
    warm = warmup_steps(total_steps, warmup_ratio)
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, cosine * (1.0 - min_ratio) + min_ratio)


def learning_rate(step: int, *, total_steps: int, peak: float, warmup_ratio: float, min_ratio: float = 0.0) -> float:
    """The LR of optimizer step ``step`` (0-based): ``peak`` times :func:`lr_factor`."""
    return peak * lr_factor(step, total_steps=total_steps, warmup_ratio=warmup_ratio, min_ratio=min_ratio)


def torch_scheduler(optimizer: Any, *, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0) -> Any:
    """A ``LambdaLR`` on ``optimizer`` that follows :func:`lr_factor`.

    transformers steps the optimizer, then the scheduler, so update ``k`` uses ``lr_factor(k)``:
    the LR :func:`learning_rate` gives for step ``k``. The factor is a ``functools.partial``, as
    transformers' own schedules are, so the scheduler's ``state_dict`` (saved in every checkpoint)
    holds only the step count and a resumed run continues the same schedule.
    """
    from torch.optim.lr_scheduler import LambdaLR

    factor = partial(lr_factor, total_steps=total_steps, warmup_ratio=warmup_ratio, min_ratio=min_ratio)
    return LambdaLR(optimizer, factor)
