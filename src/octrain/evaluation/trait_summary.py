"""From bootstrap replicates to what a revealed-preference comparison reports.

Ratings on the Elo scale with standard errors, each model's split-half reliability stepped up by
Spearman-Brown, the rank agreement corrected for the trials' noise (Spearman's disattenuation),
per-trait deltas with marginal and Bonferroni-simultaneous intervals, and the notes a reader
needs, in words. The reasons behind each interval are in the functions' docstrings and in
docs/revealed-preferences.md.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from octrain.evaluation.trait_bootstrap import Replicates
from octrain.evaluation.trait_comparison import (
    Agreement,
    Interval,
    Reliability,
    RevealedComparison,
    TraitDelta,
    TraitRating,
)
from octrain.evaluation.trait_fit import TrialArrays

ELO_PER_LOG_STRENGTH = 400.0 / math.log(10.0)  # Elo's expected score is a logistic in rating / this
ELO_MEAN = 1000.0
# Below this stepped-up reliability for either model, the disattenuated agreement is not reported:
# dividing by sqrt(reliabilities) this small turns noise into numbers outside [-1, 1]. In the
# simulation, at 4 trials per trait (reliability about 0.38) it was estimable in 60% of studies and
# its interval still covered the truth; at 2 (about 0.2) it almost never is.
MIN_RELIABILITY = 0.3
FEW_TRIALS_PER_TRAIT = 8  # judged trials per trait (median) below which the notes warn
FEW_ROUNDS = 100  # bootstrap rounds below which the notes say the interval ends are rough
MODELS = ("base", "trained")


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


def summarise_pair(
    data: TrialArrays, replicates: Replicates, names: list[str], settings: dict[str, Any]
) -> RevealedComparison:
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
