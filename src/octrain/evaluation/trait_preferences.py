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

How each interval is built, and why, is in the functions below and in
docs/revealed-preferences.md, with what a simulation with judges of known truth measured;
tests/test_trait_preferences.py repeats that simulation. The code is numpy and the standard
library (plus threadpoolctl, when present, to keep BLAS to one thread). It is vectorised: all
fits of one comparison (both models, the split-halves, every round) are one stacked problem,
solved by inexact Newton steps with preconditioned conjugate gradients, so the default study
(144 traits, 1,152 trials, 200 rounds) takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

ELO_PER_LOG_STRENGTH = 400.0 / math.log(10.0)  # Elo's expected score is a logistic in rating / this
ELO_MEAN = 1000.0
# Gaussian prior on each trait's log-strength, mean 0, this standard deviation (about 350 Elo).
# Near 0 its curvature (1 / 4) equals the information of one drawn game against an average trait,
# while the method gives every trait 16 real ones: enough to keep an undefeated trait (whose
# maximum-likelihood strength is infinite) finite and to keep the fit defined for a trait that a
# bootstrap round leaves without trials, and weak enough that its pull on a trait's delta (a
# shrinkage of roughly 7% at 16 trials per trait) stays small against the delta's own noise,
# which the simulation's per-trait coverage checks.
PRIOR_SD = 2.0
DEFAULT_SPLITS = 2  # random split-halves averaged per reliability (each costs two more fits per round)
# Below this stepped-up reliability for either model, the disattenuated agreement is not reported:
# dividing by sqrt(reliabilities) this small turns noise into numbers outside [-1, 1]. In the
# simulation, at 4 trials per trait (reliability about 0.38) it was estimable in 60% of studies and
# its interval still covered the truth; at 2 (about 0.2) it almost never is.
MIN_RELIABILITY = 0.3
FEW_TRIALS_PER_TRAIT = 8  # judged trials per trait (median) below which the notes warn
FEW_ROUNDS = 100  # bootstrap rounds below which the notes say the interval ends are rough
MODELS = ("base", "trained")

# The numerical fit (see _fit). Bootstrap rounds are fitted in float32: half the memory traffic
# of float64, and they only feed spreads, ranks and quantiles. The point estimates use float64.
_POINT_TOLERANCE = 1e-10  # largest Newton step, in log-strength, at which a point fit has converged
_ROUND_TOLERANCE = 1e-3  # the same for bootstrap rounds: 0.17 Elo points, far below any interval's width
_RANK_DECIMALS = 3  # log-strengths equal to this many decimals rank as ties (the rounds' solver noise is below)
_MAX_NEWTON = 100
_MAX_STEP = 2.0  # no Newton step moves a log-strength further than this (a trust region)
_ROUND_INNER = 3  # conjugate-gradient iterations per Newton step for the rounds (2 and 4 were slower)
_ROUNDS_PER_BATCH = 100  # rounds fitted together: bounds the work arrays' memory for large ``rounds``
_NARROW = 8  # up to this many columns, scatter by counting (np.bincount), not by matrix products


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


@dataclass(frozen=True)
class Interval:
    """A point estimate and its ``confidence`` interval (None where it cannot be estimated)."""

    point: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class TraitRating:
    """A trait's rating for one model, in Elo points (the mean over traits is 1000).

    Attributes:
        rating: the MAP Bradley-Terry strength on the Elo scale.
        low: ``rating - z * se``, the lower end of the ``confidence`` interval.
        high: ``rating + z * se``.
        se: the standard error: the bootstrap's, never below the fit's curvature's (see
            docs/revealed-preferences.md: resampling cannot show the doubt about a trait that
            won, or lost, all its trials).
        trials: how many of this model's judged trials offered the trait.
    """

    rating: float
    low: float
    high: float
    se: float
    trials: int


@dataclass(frozen=True)
class Reliability:
    """How well a model's ranking agrees with itself.

    Attributes:
        split_half: mean Spearman between the rankings fitted from the two halves of the trials
            (over the random splits); None when undefined.
        stepped_up: the Spearman-Brown full-length reliability ``2r / (1 + r)`` of that mean;
            None when undefined.
        low: lower end of its interval: the rounds' spread placed on the point (see
            ``_placed_interval``); None when not estimable.
        high: upper end.
    """

    split_half: float | None
    stepped_up: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Agreement:
    """The rank agreement of the two models corrected for the trials' noise (disattenuated).

    Attributes:
        estimable: False when a reliability is too low (or undefined) for the correction to mean
            anything; then ``low`` and ``high`` are None and the figure must not be read.
        point: ``raw / sqrt(rel_base * rel_trained)``, unclipped (it can pass 1 by noise).
        low: lower end of the interval, unclipped.
        high: upper end, unclipped.
        shown: ``(point, low, high)`` clipped to [-1, 1], for display; None when not estimable.
        note: why it is not estimable, or None.
    """

    estimable: bool
    point: float | None
    low: float | None
    high: float | None
    note: str | None = None

    @property
    def shown(self) -> tuple[float, float, float] | None:
        if not self.estimable or self.point is None or self.low is None or self.high is None:
            return None
        return _clip(self.point), _clip(self.low), _clip(self.high)


@dataclass(frozen=True)
class TraitDelta:
    """How a trait's rating moved with training (trained - base, Elo points).

    Attributes:
        trait: the trait.
        delta: the point estimate.
        low: ``delta - z * se``, the lower end of the marginal ``confidence`` interval.
        high: ``delta + z * se``.
        se: the standard error: the bootstrap's, never below the one from the fits' curvature
            (as for :class:`TraitRating`).
        simultaneous: ``delta -/+ z * se`` with ``z`` the normal quantile at ``alpha / (2 * traits)``:
            all traits' intervals hold together with probability ``confidence`` (Bonferroni).
            ``rose`` and ``fell`` list a trait only when this interval excludes zero.
    """

    trait: str
    delta: float
    low: float
    high: float
    se: float
    simultaneous: tuple[float, float]

    @property
    def significant(self) -> bool:
        return self.simultaneous[0] > 0.0 or self.simultaneous[1] < 0.0


@dataclass(frozen=True)
class RevealedComparison:
    """Base against trained on the same trials; :meth:`to_dict` is JSON-ready.

    Attributes:
        traits: every trait rated, in the order given.
        trials: how many paired trials.
        unparseable: per model, the judgements left out (that model's side only).
        ratings: per model (``"base"``, ``"trained"``), per trait, a :class:`TraitRating`.
        spearman: the raw Spearman between the two fitted rankings, with a bootstrap interval
            placed around the point (see docs/revealed-preferences.md); None where undefined.
        reliability: per model, a :class:`Reliability`.
        agreement: the disattenuated agreement, an :class:`Agreement`.
        deltas: per trait, a :class:`TraitDelta`.
        rose: the traits whose simultaneous interval lies above 0, largest delta first.
        fell: the traits whose simultaneous interval lies below 0, largest drop first.
        changed: the data show that training changed the ranking: the agreement's interval lies
            below 1, or a trait rose or fell.
        notes: what a reader must know before trusting the numbers, in words.
        settings: rounds, seed, confidence, splits and prior used.
    """

    traits: list[str]
    trials: int
    unparseable: dict[str, int]
    ratings: dict[str, dict[str, TraitRating]]
    spearman: Interval
    reliability: dict[str, Reliability]
    agreement: Agreement
    deltas: dict[str, TraitDelta]
    rose: list[TraitDelta]
    fell: list[TraitDelta]
    changed: bool
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def lines(self, top: int = 10) -> list[str]:
        """The comparison in words, a line per figure (at most ``top`` traits per list), for a log or report."""
        level = f"{100 * self.settings.get('confidence', 0.95):g}%"
        raw, reliability, agreement = self.spearman, self.reliability, self.agreement
        out = [
            "training changed the trait ranking" if self.changed else "no sign that training changed the trait ranking",
            f"Spearman base vs trained {_text(raw.point)} ({level} interval {_text(raw.low)} to {_text(raw.high)}), "
            "lowered by the trials' noise; reliability (split-half, stepped up) base "
            f"{_text(reliability['base'].stepped_up)}, trained {_text(reliability['trained'].stepped_up)}",
        ]
        shown = agreement.shown
        if shown is None:
            out.append("agreement corrected for that noise: not estimable")
        else:
            out.append(
                f"agreement corrected for that noise: {shown[0]:.2f} ({level} interval {shown[1]:.2f} to "
                f"{shown[2]:.2f}; 1 means the same underlying ranking)"
            )
        for label, moved in (("rose", self.rose), ("fell", self.fell)):
            listed = ", ".join(
                f"{d.trait} {d.delta:+.0f} ({d.simultaneous[0]:+.0f} to {d.simultaneous[1]:+.0f})" for d in moved[:top]
            )
            more = f" and {len(moved) - top} more" if len(moved) > top else ""
            out.append(f"{label} (Elo, with simultaneous {level} intervals): {listed or 'none'}{more}")
        return out + [f"note: {note}" for note in self.notes]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, dicts, numbers and strings, rounded for reading (Elo to 0.1, correlations to 0.001)."""
        shown = self.agreement.shown
        return {
            "trials": self.trials,
            "traits": len(self.traits),
            "unparseable": dict(self.unparseable),
            "ratings": {
                model: {
                    trait: {
                        "rating": _round(r.rating, 1),
                        "low": _round(r.low, 1),
                        "high": _round(r.high, 1),
                        "se": _round(r.se, 1),
                        "trials": r.trials,
                    }
                    for trait, r in table.items()
                }
                for model, table in self.ratings.items()
            },
            "spearman": {key: _round(value, 3) for key, value in asdict(self.spearman).items()},
            "reliability": {
                model: {key: _round(value, 3) for key, value in asdict(rel).items()}
                for model, rel in self.reliability.items()
            },
            "agreement": {
                "estimable": self.agreement.estimable,
                "point": _round(self.agreement.point, 3),
                "low": _round(self.agreement.low, 3),
                "high": _round(self.agreement.high, 3),
                "shown": None if shown is None else [_round(value, 3) for value in shown],
                "note": self.agreement.note,
            },
            "deltas": {trait: _delta_dict(delta) for trait, delta in self.deltas.items()},
            # [trait, delta, simultaneous low, simultaneous high]: the interval that put the trait on the list
            "rose": [[d.trait, *(_round(v, 1) for v in (d.delta, *d.simultaneous))] for d in self.rose],
            "fell": [[d.trait, *(_round(v, 1) for v in (d.delta, *d.simultaneous))] for d in self.fell],
            "changed": self.changed,
            "notes": list(self.notes),
            "settings": dict(self.settings),
        }


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
    names = _trait_names([trial.traits for trial in trials], traits)
    verdicts = [[trial.base for trial in trials], [trial.trained for trial in trials]]
    data = _encode([trial.traits for trial in trials], verdicts, names)
    settings = {"rounds": rounds, "seed": seed, "confidence": confidence, "splits": splits, "prior_sd": prior_sd}
    return _against_first(data, names, settings)[0]


def _against_first(data: _Data, names: list[str], settings: dict[str, Any]) -> list[RevealedComparison]:
    """The first model against each later one, all from one bootstrap (the same draws and splits).

    :func:`compare_revealed` passes two models; the simulation test passes a base and two trained
    variants, which shares the base's fits between its two scenarios.
    """
    with _one_blas_thread():
        replicates = _bootstrap(
            data,
            rounds=settings["rounds"],
            seed=settings["seed"],
            splits=settings["splits"],
            prior_sd=settings["prior_sd"],
        )
    return [
        _summarise(data.pick(0, model), replicates.pick(0, model), names, settings)
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


# --- encoding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """The trials as arrays: ``first``/``second`` trait indices, and per model (row 0 the base)
    whether the judge named the first trait and whether the verdict was read at all."""

    first: np.ndarray  # (trials,) int
    second: np.ndarray  # (trials,) int
    first_won: np.ndarray  # (models, trials) float: 1 the first trait was named, 0 the second (or unjudged)
    judged: np.ndarray  # (models, trials) float: 1 when the verdict was read
    traits: int

    def pick(self, *models: int) -> _Data:
        return _Data(self.first, self.second, self.first_won[list(models)], self.judged[list(models)], self.traits)


def _trait_names(offered_pairs: Sequence[tuple[str, str]], traits: Sequence[str] | None) -> list[str]:
    offered = list(dict.fromkeys(t for pair in offered_pairs for t in pair))
    if traits is None:
        names = offered
    else:
        names = list(dict.fromkeys(traits))
        missing = sorted(set(offered) - set(names))
        if missing:
            raise ValueError(f"trials offer traits missing from the trait list: {', '.join(missing[:5])}")
    if len(names) < 2:
        raise ValueError("revealed preferences need at least two traits")
    return names


def _encode(pairs: Sequence[tuple[str, str]], verdicts: Sequence[Sequence[str | None]], names: Sequence[str]) -> _Data:
    """Arrays from the trait pairs and, per model, the trait named in each trial (None: unreadable)."""
    index = {name: i for i, name in enumerate(names)}
    first = np.array([index[pair[0]] for pair in pairs], dtype=np.intp)
    second = np.array([index[pair[1]] for pair in pairs], dtype=np.intp)
    judged = np.array([[chosen is not None for chosen in model] for model in verdicts], dtype=np.float64)
    first_won = np.array(
        [[chosen == pair[0] for pair, chosen in zip(pairs, model, strict=True)] for model in verdicts],
        dtype=np.float64,
    )
    return _Data(first, second, first_won, judged, len(names))


# --- the fit -------------------------------------------------------------------------------------


class _Layout:
    """Every fit of one comparison stacked into a single problem, so one batch of array operations advances all.

    Group 0 holds all the trials; groups ``1 + 2k`` and ``2 + 2k`` the two halves of split ``k``.
    Each group has its own copy of the traits (stacked trait ``group * traits + i``), and each split
    repeats every trial once, in the group of the half it fell in. Groups share no trait, so the
    stacked fit is exactly the separate fits side by side. Columns are independent fits as well:
    one per model for the point estimates, one per model and bootstrap round after that.
    """

    def __init__(self, data: _Data, masks: Sequence[np.ndarray]) -> None:
        count = len(data.first)
        members = [np.arange(count)]
        for mask in masks:
            members += [np.flatnonzero(mask), np.flatnonzero(~mask)]
        self.traits = data.traits
        self.groups = len(members)
        self.trial = np.concatenate(members)  # the original trial behind each stacked row
        group = np.concatenate([np.full(len(m), g) for g, m in enumerate(members)])
        self.first = group * data.traits + data.first[self.trial]
        self.second = group * data.traits + data.second[self.trial]
        bounds = np.cumsum([0, *map(len, members)])
        self.rows = [slice(int(start), int(stop)) for start, stop in itertools.pairwise(bounds)]
        self._incidence: dict[Any, list[tuple[np.ndarray, np.ndarray]]] = {}

    def incidence(self, dtype: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group, the signed (+1 first trait, -1 second) and absolute (traits x rows) incidence matrices."""
        if dtype not in self._incidence:
            blocks = []
            for rows in self.rows:
                local = np.arange(rows.stop - rows.start)
                signed = np.zeros((self.traits, len(local)), dtype=dtype)
                signed[self.first[rows] % self.traits, local] = 1.0
                signed[self.second[rows] % self.traits, local] = -1.0
                blocks.append((signed, np.abs(signed)))
            self._incidence[dtype] = blocks
        return self._incidence[dtype]

    def logits(
        self, strengths: np.ndarray, out: np.ndarray | None = None, spare: np.ndarray | None = None
    ) -> np.ndarray:
        """Per stacked row and column: the first trait's log-strength minus the second's (into ``out``)."""
        if out is None or spare is None:
            return strengths[self.first] - strengths[self.second]
        np.take(strengths, self.first, axis=0, out=out)
        np.take(strengths, self.second, axis=0, out=spare)
        out -= spare
        return out

    def scatter(self, per_row: np.ndarray, which: int) -> np.ndarray:
        """Sum per-row values onto the traits: signed (``which`` 0) or absolute (1) incidence.

        A dense matrix product per group: with 144 traits it is as fast as numpy's sparse
        alternatives (add.at, reduceat), and it runs on BLAS.
        """
        columns = per_row.shape[1]
        if columns <= _NARROW:  # a few columns (the point fits): counting beats reading the dense matrices
            sign = 1.0 if which else -1.0
            out = np.empty((self.groups * self.traits, columns), dtype=per_row.dtype)
            for column in range(columns):
                values = per_row[:, column]
                out[:, column] = np.bincount(self.first, values, len(out)) + sign * np.bincount(
                    self.second, values, len(out)
                )
            return out
        out = np.empty((self.groups * self.traits, columns), dtype=per_row.dtype)
        for group, (rows, matrices) in enumerate(zip(self.rows, self.incidence(per_row.dtype), strict=True)):
            out[group * self.traits : (group + 1) * self.traits] = matrices[which] @ per_row[rows]
        return out

    def dense_hessians(self, curvature: np.ndarray, precision: float, groups: int) -> np.ndarray:
        """The (groups, columns, traits, traits) Hessians of the negative log-posterior of the first
        ``groups`` groups, in float64."""
        columns = curvature.shape[1]
        out = np.empty((groups, columns, self.traits, self.traits))
        blocks = zip(self.rows[:groups], self.incidence(np.float64)[:groups], strict=True)
        for group, (rows, (signed, _)) in enumerate(blocks):
            for column in range(columns):
                out[group, column] = (signed * curvature[rows, column]) @ signed.T
        out += precision * np.eye(self.traits)
        return out


def _by_block(inverses: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Multiply each (group, model) block of ``values`` (stacked traits x model-major columns) by its matrix."""
    groups, models, traits, _ = inverses.shape
    rounds = values.shape[1] // models
    out = np.empty_like(values)
    for group in range(groups):
        rows = slice(group * traits, (group + 1) * traits)
        for model in range(models):
            columns = slice(model * rounds, (model + 1) * rounds)
            out[rows, columns] = inverses[group, model] @ values[rows, columns]
    return out


def _fit(
    layout: _Layout,
    won: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    *,
    precision: float,
    tolerance: float,
    inner: int,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """MAP log-strengths for every column of every group at once.

    Each column maximises, independently of the others,

        sum over rows of weight * (win * logit - log(1 + exp(logit))) - precision * |s|^2 / 2,

    ``logit = s[first] - s[second]``, where ``won`` is ``weight * win`` (win: the first trait was
    named) and the weight counts how often the trial enters this fit (0 when unjudged; the
    bootstrap count otherwise). The prior makes the objective strictly concave, so the optimum
    is unique; and since every trial adds to one trait what it takes from the other, the optimum
    has mean 0 without any constraint.

    Inexact Newton: each step runs ``inner`` preconditioned conjugate-gradient iterations on the
    Newton system, which needs only products with the sparse Hessian, never a dense solve per
    column. The preconditioner is the Hessian's diagonal, or with ``reference`` (per group and
    model, the inverse of a nearby dense Hessian and that Hessian's diagonal, spread over the
    columns) that inverse rescaled to each column's own diagonal: close to exact for a bootstrap
    round near its point fit, it saves about a third of the time at the method's size (and
    costs more than it saves with few trials per trait; see ``_bootstrap``). No step moves a
    log-strength by more than :data:`_MAX_STEP`, a trust region for rounds that start far from
    their optimum.

    Args:
        layout: the stacked trials.
        won: (rows, columns) ``weight * win``.
        weights: (rows, columns).
        start: (stacked traits, columns) where to start.
        precision: the prior's ``1 / sd**2``.
        tolerance: stop once no Newton step moves any log-strength by more than this.
        inner: conjugate-gradient iterations per Newton step.
        reference: (inverses (groups, models, traits, traits), base diagonal (stacked traits, columns)).

    Raises:
        RuntimeError: no convergence in :data:`_MAX_NEWTON` steps (not seen in practice).
    """
    strengths = start.copy()
    # Work arrays the size of (rows, columns), reused: fresh temporaries of a few MB each cost a
    # page fault per 4 kB on first touch, which adds up over the iterations.
    chance, work, other = (np.empty_like(weights) for _ in range(3))
    curvature = np.empty_like(weights)
    previous = math.inf
    for _ in range(_MAX_NEWTON):
        layout.logits(strengths, out=chance, spare=other)
        _sigmoid(chance)  # P(first named)
        np.multiply(weights, chance, out=work)
        np.subtract(won, work, out=work)
        gradient = layout.scatter(work, 0)
        gradient -= precision * strengths
        np.subtract(1.0, chance, out=curvature)
        curvature *= chance
        curvature *= weights
        if reference is None:
            inverse_diagonal = 1.0 / (layout.scatter(curvature, 1) + precision)

            def precondition(residual: np.ndarray, factor: np.ndarray = inverse_diagonal) -> np.ndarray:
                return residual * factor

        else:
            scale = np.sqrt(reference[1] / (layout.scatter(curvature, 1) + precision))

            def precondition(residual: np.ndarray, scale: np.ndarray = scale) -> np.ndarray:
                return scale * _by_block(reference[0], scale * residual)

        step = _conjugate_gradient(layout, curvature, gradient, precondition, precision, inner, (work, other))
        np.clip(step, -_MAX_STEP, _MAX_STEP, out=step)
        strengths += step
        largest = float(np.abs(step).max(initial=0.0))
        # Converged when the step was small, or when the steps shrink fast enough that all the
        # steps still to come (a geometric series at the latest rate) add up to less than that.
        rate = largest / previous  # 0 on the first step (previous is infinite): no prediction then
        if largest < tolerance or (0 < rate < 0.5 and largest * rate / (1.0 - rate) < tolerance):
            return strengths
        previous = largest
    raise RuntimeError(f"the Bradley-Terry fit did not converge in {_MAX_NEWTON} Newton steps")


def _sigmoid(values: np.ndarray) -> None:
    """In place: ``1 / (1 + exp(-x)) = (1 + tanh(x / 2)) / 2``, which cannot overflow."""
    values *= 0.5
    np.tanh(values, out=values)
    values *= 0.5
    values += 0.5


def _conjugate_gradient(
    layout: _Layout,
    curvature: np.ndarray,
    gradient: np.ndarray,
    precondition: Callable[[np.ndarray], np.ndarray],
    precision: float,
    iterations: int,
    buffers: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """``iterations`` preconditioned CG steps towards ``H x = gradient``, every column at once.

    ``H v`` is the Hessian of the negative log-posterior: ``sum over rows of curvature * (v[first] -
    v[second])`` scattered back onto the two traits, plus ``precision * v``. ``buffers``: two work
    arrays of the rows' shape.
    """
    solution = np.zeros_like(gradient)
    residual = gradient.copy()
    direction = precondition(residual)
    fit = (residual * direction).sum(axis=0)
    tiny = np.finfo(gradient.dtype).tiny
    rows, spare = buffers
    for iteration in range(iterations):
        layout.logits(direction, out=rows, spare=spare)
        rows *= curvature
        product = layout.scatter(rows, 0)
        product += precision * direction
        # A column that has converged has a zero residual: its step length is 0, not 0 / 0.
        length = fit / np.maximum((direction * product).sum(axis=0), tiny)
        solution += length * direction
        if iteration == iterations - 1:
            break
        residual -= length * product
        preconditioned = precondition(residual)
        new_fit = (residual * preconditioned).sum(axis=0)
        direction = preconditioned + (new_fit / np.maximum(fit, tiny)) * direction
        fit = new_fit
    return solution


# --- the bootstrap -------------------------------------------------------------------------------


@dataclass
class _Replicates:
    """Everything the summary reads; along the last axis, index 0 is the point, then one per round.

    Attributes:
        strengths: (models, traits, 1 + rounds) centred log-strengths of the fit on all trials.
        split_half: (models, 1 + rounds) split-half Spearman, averaged over the splits.
        raw: Spearman between the strengths of model 0 and another: (models, 1 + rounds), or, for
            a pair (:meth:`pick`), (1 + rounds,).
        variances: (models, traits) each centred point strength's variance from the curvature of
            the log-posterior (the inverse Hessian's diagonal).
    """

    strengths: np.ndarray
    split_half: np.ndarray
    raw: np.ndarray
    variances: np.ndarray

    def pick(self, base: int, trained: int) -> _Replicates:
        """Two of the models, as a pair (``raw`` holds each model's correlation with model 0)."""
        models = [base, trained]
        return _Replicates(self.strengths[models], self.split_half[models], self.raw[trained], self.variances[models])


def _split_halves(data: _Data, splits: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``splits`` random partitions of the trials in two, each trait's trials split as evenly as possible.

    Each partition is a boolean mask over the *original* trials (True: first half), so that a
    trial a bootstrap round draws several times lands in one half with all its copies. Trials are
    dealt in random order, each to the half where its two traits have fewer trials so far (ties:
    the smaller half, then a coin): the halves come out as parallel as Spearman-Brown assumes.
    """
    count = len(data.first)
    first, second = data.first.tolist(), data.second.tolist()
    masks = []
    for _ in range(splits):
        load = [[0] * data.traits, [0] * data.traits]
        sizes = [0, 0]
        mask = np.zeros(count, dtype=bool)
        coins = (rng.random(count) < 0.5).tolist()
        for trial in rng.permutation(count).tolist():
            a, b = first[trial], second[trial]
            key = [(load[h][a] + load[h][b], sizes[h]) for h in (0, 1)]
            half = 0 if key[0] < key[1] else 1 if key[1] < key[0] else int(coins[trial])
            load[half][a] += 1
            load[half][b] += 1
            sizes[half] += 1
            mask[trial] = half == 0
        masks.append(mask)
    return masks


def _bootstrap(data: _Data, *, rounds: int, seed: int, splits: int, prior_sd: float) -> _Replicates:
    """Fit everything on the trials (float64) and on ``rounds`` paired resamples of them (float32).

    Rounds are fitted in float32, which halves the memory traffic; they only feed spreads, ranks
    and quantiles, and they start from their model's point fit, preconditioned by its Hessian.
    """
    rng = np.random.default_rng(seed)
    count = len(data.first)
    models = len(data.judged)
    precision = 1.0 / prior_sd**2
    # Multinomial counts per trial are exactly "draw len(trials) trial indices with replacement";
    # the same counts weight every model's verdicts, which keeps each trial paired.
    counts = rng.multinomial(count, np.full(count, 1.0 / count), size=rounds).T  # (trials, rounds)
    layout = _Layout(data, _split_halves(data, splits, rng))
    stacked = layout.groups * data.traits
    judged = data.judged[:, layout.trial].T  # (rows, models)
    first_won = data.first_won[:, layout.trial].T

    start = np.zeros((stacked, models))
    point = _fit(layout, judged * first_won, judged, start, precision=precision, tolerance=_POINT_TOLERANCE, inner=8)
    chance = 1.0 / (1.0 + np.exp(-layout.logits(point)))
    # The rounds' preconditioner: the point fits' inverse Hessians, when applying them (traits x
    # stacked traits per column) costs less than a product with the sparse Hessian (traits x rows
    # per column); with few trials per trait, the diagonal. Group 0's inverse gives the variances.
    dense = len(layout.trial) > stacked
    hessians = layout.dense_hessians(judged * chance * (1.0 - chance), precision, layout.groups if dense else 1)
    inverses = np.linalg.inv(hessians)  # (groups or 1, models, traits, traits)
    # H 1 = precision 1, so every row of H^-1 sums to 1 / precision: centring takes 1 / (precision * traits) off.
    variances = np.diagonal(inverses[0], axis1=1, axis2=2) - 1.0 / (precision * data.traits)
    if dense:
        base_diagonal = np.diagonal(hessians, axis1=2, axis2=3).transpose(0, 2, 1).reshape(stacked, models)
        reference_inverses = inverses.astype(np.float32)
    fitted = np.empty((stacked, models, rounds), dtype=np.float32)
    # A batch of rounds at a time: it bounds the work arrays' memory when ``rounds`` is large, and
    # each batch stops as soon as its own rounds have converged.
    for begin in range(0, rounds, _ROUNDS_PER_BATCH):
        drawn = counts[layout.trial, begin : begin + _ROUNDS_PER_BATCH]  # (rows, batch)
        batch = drawn.shape[1]

        def spread(values: np.ndarray, batch: int = batch) -> np.ndarray:  # (.., models) -> (.., models * batch)
            return np.repeat(values, batch, axis=-1).astype(np.float32)

        weights = spread(judged) * np.tile(drawn, models).astype(np.float32)
        solved = _fit(
            layout,
            weights * spread(first_won),
            weights,
            spread(point),
            precision=precision,
            tolerance=_ROUND_TOLERANCE,
            inner=_ROUND_INNER,
            reference=(reference_inverses, spread(base_diagonal)) if dense else None,
        )
        fitted[:, :, begin : begin + batch] = solved.reshape(stacked, models, batch)
    # (groups, traits, models, 1 + rounds), every fit centred over its traits.
    every = np.concatenate(
        [
            point.reshape(layout.groups, data.traits, models, 1),
            fitted.reshape(layout.groups, data.traits, models, rounds),
        ],
        axis=3,
    )
    every -= every.mean(axis=1, keepdims=True)
    ranks = _average_ranks(every)
    raw = np.stack([_correlate(ranks[0, :, 0], ranks[0, :, model]) for model in range(models)])
    split_half = np.mean([_correlate(ranks[1 + 2 * k], ranks[2 + 2 * k]) for k in range(splits)], axis=0)
    return _Replicates(every[0].transpose(1, 0, 2), split_half, raw, variances)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along axis 1 (the traits); ties share their mean rank.

    Log-strengths equal to :data:`_RANK_DECIMALS` decimals count as tied: smaller differences
    are the solver's, not the data's (two traits no trial of a round touches sit exactly at 0).
    """
    moved = np.moveaxis(np.round(values, _RANK_DECIMALS), 1, 0)
    size = moved.shape[0]
    flat = moved.reshape(size, -1)
    order = np.argsort(flat, axis=0, kind="stable")
    ordered = np.take_along_axis(flat, order, axis=0)
    position = np.arange(size)[:, None]
    starts = np.ones(flat.shape, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = np.ones(flat.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, position, size - 1)[::-1], axis=0)[::-1]
    ranks = np.empty(flat.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return np.moveaxis(ranks.reshape(moved.shape), 0, 1)


def _correlate(one: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Pearson correlation along axis 0 (of ranks: Spearman); NaN where either side is constant."""
    centred = [values - values.mean(axis=0) for values in (one, other)]
    product = (centred[0] * centred[1]).sum(axis=0)
    spread = np.sqrt((centred[0] ** 2).sum(axis=0) * (centred[1] ** 2).sum(axis=0))
    defined = spread > 0
    return np.where(defined, product / np.where(defined, spread, 1.0), np.nan)


# --- from replicates to the summary --------------------------------------------------------------


def _step_up(split_half: np.ndarray) -> np.ndarray:
    """Spearman-Brown: the reliability of a ranking from twice the trials of each half."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2.0 * split_half / (1.0 + split_half)


def _standard_errors(rounds: np.ndarray, curvature_variance: np.ndarray) -> np.ndarray:
    """Per trait: the bootstrap standard deviation, but never below the curvature's standard error.

    The bootstrap cannot show how uncertain a trait is that won (or lost) every one of its trials:
    every resample keeps that record, so its rounds barely move. The log-posterior's curvature
    still sees the uncertainty there, and elsewhere the two agree (their median ratio was 1.02 in
    the simulation at 16 trials per trait); the bootstrap in turn answers for what the model
    leaves out (which trials a trait happened to get, verdicts less regular than Bradley-Terry).
    """
    return np.maximum(rounds.std(axis=-1, ddof=1), np.sqrt(np.maximum(curvature_variance, 0.0)))


def _placed_interval(point: float, rounds: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The rounds' percentile interval moved so that their median sits on the point.

    A bootstrap round's rankings carry the trials' noise twice (the data's, then the resample's),
    so correlations computed from rounds sit *below* the point: their plain percentiles gave the
    old report an interval lying wholly under its own estimate. The rounds still show the spread.
    None when more than a tail's worth of rounds is undefined.
    """
    defined = rounds[np.isfinite(rounds)]
    if math.isnan(point) or len(defined) < (1.0 - (1.0 - confidence) / 2.0) * len(rounds):
        return None
    tail = (1.0 - confidence) / 2.0
    low, centre, high = np.quantile(defined, [tail, 0.5, 1.0 - tail])
    return float(point + low - centre), float(point + high - centre)


def _summarise(data: _Data, replicates: _Replicates, names: list[str], settings: dict[str, Any]) -> RevealedComparison:
    """Everything a report prints, for two models (``data`` and ``replicates`` of exactly two)."""
    confidence, rounds = settings["confidence"], settings["rounds"]
    alpha = 1.0 - confidence
    z = _normal_quantile(1.0 - alpha / 2.0)
    trials = len(data.first)
    elo = ELO_MEAN + ELO_PER_LOG_STRENGTH * replicates.strengths  # (2, traits, 1 + rounds)
    elo_variance = ELO_PER_LOG_STRENGTH**2 * replicates.variances  # (2, traits)

    ratings: dict[str, dict[str, TraitRating]] = {}
    median_trials = []
    for row, model in enumerate(MODELS):
        offered = np.bincount(data.first, weights=data.judged[row], minlength=data.traits)
        offered += np.bincount(data.second, weights=data.judged[row], minlength=data.traits)
        median_trials.append(statistics.median(offered.tolist()))
        se = _standard_errors(elo[row, :, 1:], elo_variance[row])
        ratings[model] = {
            name: TraitRating(
                float(elo[row, i, 0]),
                float(elo[row, i, 0] - z * se[i]),
                float(elo[row, i, 0] + z * se[i]),
                float(se[i]),
                int(offered[i]),
            )
            for i, name in enumerate(names)
        }

    raw_interval = _placed_interval(float(replicates.raw[0]), replicates.raw[1:], confidence)
    spearman = Interval(
        None if math.isnan(replicates.raw[0]) else float(replicates.raw[0]),
        None if raw_interval is None else max(-1.0, raw_interval[0]),
        None if raw_interval is None else min(1.0, raw_interval[1]),
    )
    stepped = _step_up(replicates.split_half)  # (2, 1 + rounds)
    reliability = {}
    for row, model in enumerate(MODELS):
        placed = _placed_interval(float(stepped[row, 0]), stepped[row, 1:], confidence)
        reliability[model] = Reliability(
            split_half=_number(replicates.split_half[row, 0]),
            stepped_up=_number(stepped[row, 0]),
            low=None if placed is None else max(-1.0, placed[0]),
            high=None if placed is None else min(1.0, placed[1]),
        )
    agreement = _agreement(replicates.raw, stepped, confidence)

    moved = elo[1] - elo[0]  # (traits, 1 + rounds)
    se = _standard_errors(moved[:, 1:], elo_variance.sum(axis=0))  # the two models' verdicts are independent
    wide = _normal_quantile(1.0 - alpha / (2.0 * len(names)))  # Bonferroni over the traits
    deltas = {
        name: TraitDelta(
            trait=name,
            delta=float(moved[i, 0]),
            low=float(moved[i, 0] - z * se[i]),
            high=float(moved[i, 0] + z * se[i]),
            se=float(se[i]),
            simultaneous=(float(moved[i, 0] - wide * se[i]), float(moved[i, 0] + wide * se[i])),
        )
        for i, name in enumerate(names)
    }
    rose = sorted((d for d in deltas.values() if d.simultaneous[0] > 0.0), key=lambda d: -d.delta)
    fell = sorted((d for d in deltas.values() if d.simultaneous[1] < 0.0), key=lambda d: d.delta)
    below_one = agreement.estimable and agreement.high is not None and agreement.high < 1.0
    changed = bool(rose or fell or below_one)

    unparseable = {model: int(trials - data.judged[row].sum()) for row, model in enumerate(MODELS)}
    notes = _notes(unparseable, trials, min(median_trials), rounds, agreement, rose, fell, below_one)
    return RevealedComparison(
        traits=list(names),
        trials=trials,
        unparseable=unparseable,
        ratings=ratings,
        spearman=spearman,
        reliability=reliability,
        agreement=agreement,
        deltas=deltas,
        rose=rose,
        fell=fell,
        changed=changed,
        notes=notes,
        settings=dict(settings),
    )


def _notes(
    unparseable: dict[str, int],
    trials: int,
    median_trials: float,
    rounds: int,
    agreement: Agreement,
    rose: list[TraitDelta],
    fell: list[TraitDelta],
    below_one: bool,
) -> list[str]:
    """What a reader must know before trusting the numbers, and the verdict, in words."""
    notes = []
    left_out = sum(unparseable.values())
    if left_out:
        notes.append(
            f"{left_out} of {2 * trials} judge answers could not be read and were left out (base "
            f"{unparseable['base']}, trained {unparseable['trained']}), each from its own model's ratings only"
        )
    if median_trials < FEW_TRIALS_PER_TRAIT:
        notes.append(
            f"a trait has a median of {median_trials:g} judged trials per model (the method uses 16): each rating "
            "rests on a handful of judgements, so the intervals are wide and only a large change could show"
        )
    if rounds < FEW_ROUNDS:
        notes.append(f"only {rounds} bootstrap rounds: the ends of every interval are rough")
    if agreement.note:
        notes.append(agreement.note)
    if below_one or rose or fell:
        reasons = []
        if below_one:
            reasons.append(
                f"the two rankings agree less than the trials' noise explains (agreement {agreement.point:.2f}, "
                f"interval up to {agreement.high:.2f}, below 1)"
            )
        if rose or fell:
            reasons.append(
                f"{_count(len(rose), 'trait')} rose and {len(fell)} fell beyond their simultaneous intervals"
            )
        notes.append("training changed the trait ranking: " + "; ".join(reasons))
    else:
        reach = "the agreement's interval reaches 1 and " if agreement.estimable else ""
        notes.append(
            f"no sign that training changed the trait ranking: {reach}no trait moved beyond its simultaneous "
            "interval (with this many trials; a smaller change could go unseen)"
        )
    return notes


def _agreement(raw: np.ndarray, stepped: np.ndarray, confidence: float) -> Agreement:
    """The disattenuated agreement ``raw / sqrt(rel_base * rel_trained)``, with a percentile interval.

    The round values are *not* moved onto the point here (unlike the raw Spearman's): numerator
    and denominators are both attenuated by the rounds' extra noise, so the ratio's rounds already
    centre on the point (the simulation: median 1.017 against a mean point of 1.014 under no
    change). Their spread is that of a noisier study, which makes the interval conservative.
    """
    defined = (stepped[0] > 0) & (stepped[1] > 0) & np.isfinite(raw)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(defined, raw / np.sqrt(np.where(defined, stepped[0] * stepped[1], 1.0)), np.nan)
    point = _number(ratio[0])
    weakest = float(np.nanmin(stepped[:, 0])) if not np.isnan(stepped[:, 0]).all() else math.nan
    if math.isnan(raw[0]) or np.isnan(stepped[:, 0]).any():
        return Agreement(False, None, None, None, "the agreement is undefined: a ranking puts every trait level")
    if weakest < MIN_RELIABILITY:
        return Agreement(
            False,
            point,
            None,
            None,
            f"a model's ranking barely agrees with itself (reliability {weakest:.2f}, below {MIN_RELIABILITY}): "
            "the agreement corrected for noise is not estimable and is not reported; more trials per trait would "
            "make it so",
        )
    rounds = ratio[1:]
    undefined = int(np.isnan(rounds).sum())
    tail = (1.0 - confidence) / 2.0
    if undefined > tail * len(rounds):
        return Agreement(
            False,
            point,
            None,
            None,
            f"in {undefined} of {len(rounds)} bootstrap rounds a reliability fell to 0 or below: the interval of "
            "the agreement corrected for noise is not estimable; more trials per trait would make it so",
        )
    # An undefined round counts as beyond both ends: it can only widen the interval.
    padded = np.concatenate(
        [np.full(undefined, -np.inf), np.sort(rounds[~np.isnan(rounds)]), np.full(undefined, np.inf)]
    )
    low, high = np.quantile(padded, [tail, 1.0 - tail])
    return Agreement(True, point, float(low), float(high))


def _normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _clip(value: float) -> float:
    return max(-1.0, min(1.0, value))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _delta_dict(delta: TraitDelta) -> dict[str, Any]:
    return {
        "delta": _round(delta.delta, 1),
        "low": _round(delta.low, 1),
        "high": _round(delta.high, 1),
        "se": _round(delta.se, 1),
        "simultaneous": [_round(delta.simultaneous[0], 1), _round(delta.simultaneous[1], 1)],
        "significant": delta.significant,
    }
