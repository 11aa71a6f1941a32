"""What a revealed-preference comparison holds, and how it reads: in words and as JSON.

:func:`octrain.evaluation.trait_preferences.compare_revealed` returns a
:class:`RevealedComparison`; :meth:`RevealedComparison.lines` gives its figures as sentences for
a log or a report and :meth:`RevealedComparison.to_dict` as rounded JSON-ready values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
