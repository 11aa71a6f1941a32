"""The paired bootstrap behind every interval of a revealed-preference comparison.

Each round draws the trial indices with replacement (as multinomial counts per trial) and gives
every model the same draw, since they answered the same trials; :func:`bootstrap_replicates`
then fits everything the point estimate fits (each model on all trials, and on the two halves of
each random split, :func:`_split_halves`) on the trials and on every round. It returns the
strengths, the split-half and between-model rank correlations and the curvature's variances, for
the point and each round (:class:`Replicates`). The fits are :mod:`octrain.evaluation.trait_fit`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from octrain.evaluation.trait_fit import StackedTrials, TrialArrays, fit_strengths

DEFAULT_SPLITS = 2  # random split-halves averaged per reliability (each costs two more fits per round)

# How the fits are solved (see trait_fit.fit_strengths). Bootstrap rounds are fitted in float32: half the
# memory traffic of float64, and they only feed spreads, ranks and quantiles. The point estimates use float64.
_POINT_TOLERANCE = 1e-10  # largest Newton step, in log-strength, at which a point fit has converged
_ROUND_TOLERANCE = 1e-3  # the same for bootstrap rounds: 0.17 Elo points, far below any interval's width
_RANK_DECIMALS = 3  # log-strengths equal to this many decimals rank as ties (the rounds' solver noise is below)
_ROUND_INNER = 3  # conjugate-gradient iterations per Newton step for the rounds (2 and 4 were slower)
_ROUNDS_PER_BATCH = 100  # rounds fitted together: bounds the work arrays' memory for large ``rounds``


@dataclass
class Replicates:
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

    def pick(self, base: int, trained: int) -> Replicates:
        """Two of the models, as a pair (``raw`` holds each model's correlation with model 0)."""
        models = [base, trained]
        return Replicates(self.strengths[models], self.split_half[models], self.raw[trained], self.variances[models])


def _split_halves(data: TrialArrays, splits: int, rng: np.random.Generator) -> list[np.ndarray]:
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


def bootstrap_replicates(data: TrialArrays, *, rounds: int, seed: int, splits: int, prior_sd: float) -> Replicates:
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
    layout = StackedTrials(data, _split_halves(data, splits, rng))
    stacked = layout.groups * data.traits
    judged = data.judged[:, layout.trial].T  # (rows, models)
    first_won = data.first_won[:, layout.trial].T

    start = np.zeros((stacked, models))
    point = fit_strengths(
        layout, judged * first_won, judged, start, precision=precision, tolerance=_POINT_TOLERANCE, inner=8
    )
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
        solved = fit_strengths(
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
    return Replicates(every[0].transpose(1, 0, 2), split_half, raw, variances)


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
