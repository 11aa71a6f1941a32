"""Revealed trait preferences of a base and a trained model, with intervals that hold up.

In the revealed-preference study (:func:`octrain.evaluation.protocols.plan_trials`) each trial
offers a model two traits; it embodies the one it prefers and a judge names which trait the
answer shows. The base and the trained model answer the *same* trials, so the comparison is
paired. :func:`compare_revealed` turns the two sets of verdicts into what a report prints:

* **Ratings** per model and trait: Bradley-Terry strengths, fitted by maximum a posteriori
  with a weak Gaussian prior (:data:`PRIOR_SD`), shown on the Elo scale (``400 / ln 10`` Elo
  points per unit of log-strength, centred on 1000). The fit is deterministic: unlike
  sequential Elo, the order of the trials plays no part.
* **One bootstrap for every interval**: each round draws the trial indices with replacement (as
  multinomial counts per trial), gives *both* models the same draw (they answered the same
  trials), and recomputes exactly what the point estimate computes: both fits, both
  reliabilities (their split-half fits too), the correlations and every delta.
* **Spearman** between the two fitted rankings (``raw``). The trials' noise pulls it below the
  agreement of the models' underlying rankings (0.74 for two runs of the *same* model at the
  method's size), so it comes with
* each model's **reliability**: split-half Spearman (halves split by *original* trial, balanced
  per trait, averaged over :data:`DEFAULT_SPLITS` random splits), stepped up to the full length
  by Spearman-Brown ``2r / (1 + r)``, and
* the **agreement** corrected for that noise (Spearman's disattenuation
  ``raw / sqrt(rel_base * rel_trained)``): how alike the underlying rankings are, 1 when
  training changed nothing. When a reliability is too low for the correction to mean anything
  (:data:`MIN_RELIABILITY`) it is reported as not estimable, not as a big number.
* **Deltas** per trait (trained - base, Elo points) with marginal intervals; ``rose`` and
  ``fell`` list only the traits whose Bonferroni-simultaneous interval excludes zero, so that when
  nothing changed the chance that *any* trait is listed is at most about ``1 - confidence``.
* **changed**: whether the data show that training changed the ranking (the agreement's interval
  lies below 1, or some trait is listed), with notes in words.

The work is split by topic: :mod:`~octrain.evaluation.trait_fit` (the trials as arrays and the
Bradley-Terry fit), :mod:`~octrain.evaluation.trait_bootstrap` (the paired bootstrap and the
split-halves), :mod:`~octrain.evaluation.trait_summary` (from the bootstrap to ratings,
reliabilities, agreement, deltas and notes) and :mod:`~octrain.evaluation.trait_comparison` (the
result types, in words and as JSON); this module pairs the trials and runs the comparison, and
the result types and the settings can still be imported from here.

How each interval is built, and why, is in those modules' functions and in
docs/revealed-preferences.md, with what a simulation with judges of known truth measured;
tests/evaluation/test_trait_preferences.py repeats that simulation. The code is numpy and the
standard library (plus threadpoolctl, when present, to keep BLAS to one thread). It is vectorised:
all fits of one comparison (both models, the split-halves, every round) are one stacked problem,
solved by inexact Newton steps with preconditioned conjugate gradients, so the default study
(144 traits, 1,152 trials, 200 rounds) takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from octrain.evaluation.trait_bootstrap import DEFAULT_SPLITS, bootstrap_replicates
from octrain.evaluation.trait_comparison import (
    Agreement,
    Interval,
    Reliability,
    RevealedComparison,
    TraitDelta,
    TraitRating,
)
from octrain.evaluation.trait_fit import PRIOR_SD, TrialArrays, encode_trials, trait_names
from octrain.evaluation.trait_summary import (
    ELO_MEAN,
    ELO_PER_LOG_STRENGTH,
    FEW_ROUNDS,
    FEW_TRIALS_PER_TRAIT,
    MIN_RELIABILITY,
    MODELS,
    summarise_pair,
)

# The comparison's types and settings: importable from here, where they were before the code was split.
__all__ = [
    "DEFAULT_SPLITS",
    "ELO_MEAN",
    "ELO_PER_LOG_STRENGTH",
    "FEW_ROUNDS",
    "FEW_TRIALS_PER_TRAIT",
    "MIN_RELIABILITY",
    "MODELS",
    "PRIOR_SD",
    "Agreement",
    "Interval",
    "JudgedTrial",
    "PairedTrial",
    "Reliability",
    "RevealedComparison",
    "TraitDelta",
    "TraitRating",
    "compare_revealed",
    "pair_trials",
    "preference_summary",
]


class JudgedTrial(Protocol):
    """What :func:`pair_trials` reads from a judged trial (``protocols.Trial`` has both)."""

    traits: tuple[str, str]
    chosen: str | None


@dataclass(frozen=True)
class PairedTrial:
    """One trial as both models met it.

    Attributes:
        traits: the two traits offered, in the order shown.
        base: the trait the judge named for the base model's answer; None when unparseable.
        trained: the same for the trained model's answer.
    """

    traits: tuple[str, str]
    base: str | None
    trained: str | None

    def __post_init__(self) -> None:
        first, second = self.traits
        if first == second:
            raise ValueError(f"a trial needs two different traits, got {first!r} twice")
        for model, chosen in (("base", self.base), ("trained", self.trained)):
            if chosen is not None and chosen not in self.traits:
                raise ValueError(f"the {model} verdict {chosen!r} is neither of the trial's traits {self.traits}")


def pair_trials(base: Sequence[JudgedTrial], trained: Sequence[JudgedTrial]) -> list[PairedTrial]:
    """Zip two models' judged copies of one plan (``protocols.copy_trials``) into paired trials.

    Raises:
        ValueError: the two lists are not the same plan (different lengths or trait pairs).
    """
    if len(base) != len(trained):
        raise ValueError(f"the two models answered different plans: {len(base)} and {len(trained)} trials")
    paired = []
    for index, (one, other) in enumerate(zip(base, trained, strict=True)):
        if tuple(one.traits) != tuple(other.traits):
            raise ValueError(f"trial {index} offers {one.traits} to base but {other.traits} to trained")
        paired.append(PairedTrial(tuple(one.traits), one.chosen, other.chosen))  # type: ignore[arg-type]
    return paired


class JudgedPlan(Protocol):
    """One model's judged trials (``protocols.RevealedResult`` is one)."""

    @property
    def trials(self) -> Sequence[JudgedTrial]: ...


def preference_summary(
    revealed: Mapping[str, JudgedPlan],
    *,
    traits: Sequence[str] | None = None,
    rounds: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Base against trained on the same judged trials (``revealed["base"]``, ``revealed["trained"]``), JSON-ready.

    What the eval stage and ``octrain eval revealed-preferences`` report: :func:`compare_revealed`'s
    :meth:`~RevealedComparison.to_dict`, where ``unparseable`` is the total over both models
    (``unparseable_by_model`` keeps each).
    """
    paired = pair_trials(revealed["base"].trials, revealed["trained"].trials)
    summary = compare_revealed(paired, traits=traits, rounds=rounds, seed=seed).to_dict()
    summary["unparseable_by_model"] = summary["unparseable"]
    summary["unparseable"] = sum(summary["unparseable_by_model"].values())
    return summary


def compare_revealed(
    trials: Sequence[PairedTrial],
    *,
    traits: Sequence[str] | None = None,
    rounds: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    splits: int = DEFAULT_SPLITS,
    prior_sd: float = PRIOR_SD,
) -> RevealedComparison:
    """Rate the traits for both models, compare the rankings, and say whether training changed them.

    Args:
        trials: the paired trials (:func:`pair_trials` builds them from two judged plans). An
            unparseable verdict (None) leaves that trial out of that model's fit only; the trial
            stays paired, so the bootstrap still draws both sides together.
        traits: every trait to rate, in the order to report them; by default those offered in
            ``trials`` in order of first appearance. A trait offered in no trial rates 1000.
        rounds: bootstrap rounds; every interval comes from the same rounds.
        seed: seeds the bootstrap draws and the split-halves: same inputs and seed, same output.
        confidence: the level of every interval (and ``1 - confidence`` is the chance, when
            nothing changed, that any trait is listed in ``rose``/``fell``).
        splits: random split-halves to average per reliability.
        prior_sd: standard deviation of the Gaussian prior on log-strength (see :data:`PRIOR_SD`).

    Raises:
        ValueError: no trials, fewer than two traits, a trial with a trait missing from
            ``traits``, or bad ``rounds``/``confidence``/``splits``/``prior_sd``.
    """
    if not trials:
        raise ValueError("compare_revealed needs at least one trial")
    if rounds < 2:
        raise ValueError(f"rounds must be at least 2, got {rounds}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    if not prior_sd > 0.0:
        raise ValueError(f"prior_sd must be positive, got {prior_sd}")
    names = trait_names([trial.traits for trial in trials], traits)
    verdicts = [[trial.base for trial in trials], [trial.trained for trial in trials]]
    data = encode_trials([trial.traits for trial in trials], verdicts, names)
    settings = {"rounds": rounds, "seed": seed, "confidence": confidence, "splits": splits, "prior_sd": prior_sd}
    return _against_first(data, names, settings)[0]


def _against_first(data: TrialArrays, names: list[str], settings: dict[str, Any]) -> list[RevealedComparison]:
    """The first model against each later one, all from one bootstrap (the same draws and splits).

    :func:`compare_revealed` passes two models; the simulation test passes a base and two trained
    variants, which shares the base's fits between its two scenarios.
    """
    with _one_blas_thread():
        replicates = bootstrap_replicates(
            data,
            rounds=settings["rounds"],
            seed=settings["seed"],
            splits=settings["splits"],
            prior_sd=settings["prior_sd"],
        )
    return [
        summarise_pair(data.pick(0, model), replicates.pick(0, model), names, settings)
        for model in range(1, len(data.judged))
    ]


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Hold BLAS to one thread while fitting, when threadpoolctl (a scikit-learn dependency) is there.

    The fit's matrix products are small (144 traits) and many. With the machine's cores busy
    elsewhere (a test suite, a second job), OpenBLAS's threads spin waiting for each other: on two
    busy cores one comparison took 5.6 s with two BLAS threads against 0.8 s with one. On idle
    cores a second thread saves little here. Without threadpoolctl the fit runs all the same.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn, an octrain dependency, brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
