"""Bradley-Terry strengths of traits, fitted for every model, split-half and bootstrap round at once.

Part of the revealed-preference comparison (:mod:`octrain.evaluation.trait_preferences`). The
trials become arrays (:class:`TrialArrays`); :class:`StackedTrials` stacks every fit of one
comparison into a single problem, and :func:`fit_strengths` solves all its columns together:
maximum a posteriori log-strengths under a weak Gaussian prior (:data:`PRIOR_SD`), by inexact
Newton steps with preconditioned conjugate gradients. numpy only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Gaussian prior on each trait's log-strength, mean 0, this standard deviation (about 350 Elo).
# Near 0 its curvature (1 / 4) equals the information of one drawn game against an average trait,
# while the method gives every trait 16 real ones: enough to keep an undefeated trait (whose
# maximum-likelihood strength is infinite) finite and to keep the fit defined for a trait that a
# bootstrap round leaves without trials, and weak enough that its pull on a trait's delta (a
# shrinkage of roughly 7% at 16 trials per trait) stays small against the delta's own noise,
# which the simulation's per-trait coverage checks.
PRIOR_SD = 2.0

_MAX_NEWTON = 100  # Newton steps before the fit gives up (never reached in practice)
_MAX_STEP = 2.0  # no Newton step moves a log-strength further than this (a trust region)
_NARROW = 8  # up to this many columns, scatter by counting (np.bincount), not by matrix products


@dataclass(frozen=True)
class TrialArrays:
    """The trials as arrays: ``first``/``second`` trait indices, and per model (row 0 the base)
    whether the judge named the first trait and whether the verdict was read at all."""

    first: np.ndarray  # (trials,) int
    second: np.ndarray  # (trials,) int
    first_won: np.ndarray  # (models, trials) float: 1 the first trait was named, 0 the second (or unjudged)
    judged: np.ndarray  # (models, trials) float: 1 when the verdict was read
    traits: int

    def pick(self, *models: int) -> TrialArrays:
        return TrialArrays(
            self.first, self.second, self.first_won[list(models)], self.judged[list(models)], self.traits
        )


def trait_names(offered_pairs: Sequence[tuple[str, str]], traits: Sequence[str] | None) -> list[str]:
    """The traits to rate: ``traits`` without repeats, or those offered, in order of first appearance.

    Raises:
        ValueError: a trial offers a trait missing from ``traits``, or there are fewer than two.
    """
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


def encode_trials(
    pairs: Sequence[tuple[str, str]], verdicts: Sequence[Sequence[str | None]], names: Sequence[str]
) -> TrialArrays:
    """Arrays from the trait pairs and, per model, the trait named in each trial (None: unreadable)."""
    index = {name: i for i, name in enumerate(names)}
    first = np.array([index[pair[0]] for pair in pairs], dtype=np.intp)
    second = np.array([index[pair[1]] for pair in pairs], dtype=np.intp)
    judged = np.array([[chosen is not None for chosen in model] for model in verdicts], dtype=np.float64)
    first_won = np.array(
        [[chosen == pair[0] for pair, chosen in zip(pairs, model, strict=True)] for model in verdicts],
        dtype=np.float64,
    )
    return TrialArrays(first, second, first_won, judged, len(names))


# --- the fit -------------------------------------------------------------------------------------


class StackedTrials:
    """Every fit of one comparison stacked into a single problem, so one batch of array operations advances all.

    Group 0 holds all the trials; groups ``1 + 2k`` and ``2 + 2k`` the two halves of split ``k``.
    Each group has its own copy of the traits (stacked trait ``group * traits + i``), and each split
    repeats every trial once, in the group of the half it fell in. Groups share no trait, so the
    stacked fit is exactly the separate fits side by side. Columns are independent fits as well:
    one per model for the point estimates, one per model and bootstrap round after that.
    """

    def __init__(self, data: TrialArrays, masks: Sequence[np.ndarray]) -> None:
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


def fit_strengths(
    layout: StackedTrials,
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
    costs more than it saves with few trials per trait; see
    :func:`octrain.evaluation.trait_bootstrap.bootstrap_replicates`). No step moves a
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
    layout: StackedTrials,
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
