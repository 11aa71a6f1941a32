"""Elo ratings from pairwise judgements, with bootstrap intervals.

The evaluation asks a judge which of two things it prefers (two model answers, or two
traits in the revealed-preference study) and turns the verdicts into ratings. Plain Elo
is sequential: the same set of matches played in a different order gives different
ratings, because each update uses the ratings as they stand at that moment. A single
ordering is therefore an arbitrary draw, so :func:`bootstrap_elo` reports

* a point estimate: the mean rating over many random orderings of *all* the matches, and
* an interval: percentiles over bootstrap resamples (matches drawn with replacement,
  which also come out in random order), so it reflects both which matches happened to be
  judged and the order they were fed in.

Everything here is pure Python plus the standard library, so it runs anywhere the rest of
octrain's CPU code does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VERDICT_SCORES = {"A": 1.0, "B": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class Match:
    """One judged comparison between players ``a`` and ``b``.

    Attributes:
        a: the first player.
        b: the second player; must differ from ``a``.
        score: the result for ``a``: 1 a win, 0 a loss, 0.5 a tie (any value in [0, 1]).
    """

    a: str
    b: str
    score: float

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"a match needs two different players, got {self.a!r} twice")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"match score must lie in [0, 1], got {self.score!r} for {self.a!r} vs {self.b!r}")


def match_from_verdict(a: str, b: str, verdict: str) -> Match:
    """Build a :class:`Match` from a pairwise verdict as :func:`parse_verdict` returns it.

    Args:
        a: the player shown to the judge as "A".
        b: the player shown as "B".
        verdict: ``"A"``, ``"B"`` or ``"tie"``.

    Raises:
        ValueError: the verdict is none of those (an unparseable answer is ``None`` and must
            be counted as such by the caller, not turned into a match).
    """
    if verdict not in VERDICT_SCORES:
        raise ValueError(f"verdict must be one of {', '.join(VERDICT_SCORES)}, got {verdict!r}")
    return Match(a, b, VERDICT_SCORES[verdict])


def expected_score(rating_a: float, rating_b: float) -> float:
    """The score Elo expects ``a`` to get against ``b``: ``1 / (1 + 10 ** ((Rb - Ra) / 400))``."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))


def elo_ratings(
    matches: Sequence[Match],
    *,
    start: float = 1000.0,
    k: float = 32.0,
    players: Iterable[str] = (),
) -> dict[str, float]:
    """Play ``matches`` in the order given and return each player's final Elo rating.

    Each match moves ``k * (score - expected)`` points from ``b`` to ``a`` (or back), so the
    total over all players always stays ``len(players) * start``.

    Args:
        matches: the comparisons, in the order they should be applied.
        start: the rating every player begins with.
        k: the update step; larger values react faster and fluctuate more.
        players: players to include even if they appear in no match (they keep ``start``).

    Returns:
        A rating for every player named in ``players`` or in any match.
    """
    ratings = dict.fromkeys(players, start)
    for match in matches:
        rating_a = ratings.setdefault(match.a, start)
        rating_b = ratings.setdefault(match.b, start)
        delta = k * (match.score - expected_score(rating_a, rating_b))
        ratings[match.a] = rating_a + delta
        ratings[match.b] = rating_b - delta
    return ratings


@dataclass
class RatingSummary:
    """A player's bootstrapped rating.

    Attributes:
        rating: mean rating over random orderings of all the matches.
        low: lower end of the percentile interval over bootstrap resamples.
        high: upper end of that interval.
        matches: how many of the original matches the player took part in.
    """

    rating: float
    low: float
    high: float
    matches: int


def _check_bootstrap_args(rounds: int, confidence: float) -> None:
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of an already sorted list."""
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1.0 - weight) + sorted_values[upper] * weight


def _interval(values: Iterable[float], confidence: float) -> tuple[float, float]:
    ordered = sorted(values)
    tail = (1.0 - confidence) / 2.0
    return _percentile(ordered, tail), _percentile(ordered, 1.0 - tail)


def bootstrap_elo(
    matches: Sequence[Match],
    *,
    rounds: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    start: float = 1000.0,
    k: float = 32.0,
) -> dict[str, RatingSummary]:
    """Order-robust Elo ratings with percentile intervals.

    For each of ``rounds`` rounds two rating tables are computed:

    * all ``matches`` in a fresh random order -- the mean over rounds is the point estimate;
    * ``len(matches)`` matches drawn with replacement (hence also in random order) -- the
      spread of these gives the ``confidence`` interval.

    Every player of the full set is rated in every round, so a player that a resample
    happens to leave out counts at ``start`` in that round rather than disappearing.

    Args:
        matches: the judged comparisons.
        rounds: how many orderings and how many resamples to draw.
        seed: seed for ``random.Random``; the same inputs and seed give the same output.
        confidence: width of the percentile interval, e.g. 0.95.
        start: initial rating, as in :func:`elo_ratings`.
        k: update step, as in :func:`elo_ratings`.

    Returns:
        A :class:`RatingSummary` per player (empty when there are no matches).

    Raises:
        ValueError: ``rounds`` below 1 or ``confidence`` outside (0, 1).
    """
    _check_bootstrap_args(rounds, confidence)
    if not matches:
        return {}
    counts: dict[str, int] = {}
    for match in matches:
        counts[match.a] = counts.get(match.a, 0) + 1
        counts[match.b] = counts.get(match.b, 0) + 1
    players = sorted(counts)

    rng = random.Random(seed)
    totals = dict.fromkeys(players, 0.0)
    resampled: dict[str, list[float]] = {player: [] for player in players}
    order = list(matches)
    for _ in range(rounds):
        rng.shuffle(order)
        for player, rating in elo_ratings(order, start=start, k=k, players=players).items():
            totals[player] += rating
        sample = rng.choices(matches, k=len(matches))
        for player, rating in elo_ratings(sample, start=start, k=k, players=players).items():
            resampled[player].append(rating)

    summaries = {}
    for player in players:
        low, high = _interval(resampled[player], confidence)
        summaries[player] = RatingSummary(totals[player] / rounds, low, high, counts[player])
    return summaries


def win_rate(
    scores: Sequence[float],
    *,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean score (ties count 0.5) with a bootstrap percentile interval.

    Args:
        scores: one result per comparison, each in [0, 1].
        rounds: number of bootstrap resamples.
        seed: seed for ``random.Random``.
        confidence: width of the interval.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: no scores, a score outside [0, 1], or bad ``rounds``/``confidence``.
    """
    _check_bootstrap_args(rounds, confidence)
    if not scores:
        raise ValueError("win_rate needs at least one score")
    for score in scores:
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"scores must lie in [0, 1], got {score!r}")
    rng = random.Random(seed)
    n = len(scores)
    means = (sum(rng.choices(scores, k=n)) / n for _ in range(rounds))
    low, high = _interval(means, confidence)
    return sum(scores) / n, low, high


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, where tied values all get the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        shared = (i + j) / 2.0 + 1.0
        for position in range(i, j + 1):
            ranks[order[position]] = shared
        i = j + 1
    return ranks


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    """Spearman rank correlation between two ratings over the keys they share.

    Ties get average ranks, and the result is the Pearson correlation of those ranks
    (which is what scipy's ``spearmanr`` computes too).

    Raises:
        ValueError: fewer than two common keys, or one side gives all of them the same
            value (the correlation is then undefined, and we refuse to invent one).
    """
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise ValueError(f"spearman needs at least 2 common keys, got {len(common)}")
    ranks_a = _average_ranks([a[key] for key in common])
    ranks_b = _average_ranks([b[key] for key in common])
    mean = (len(common) + 1) / 2.0  # average ranks always have this mean
    dev_a = [r - mean for r in ranks_a]
    dev_b = [r - mean for r in ranks_b]
    var_a = sum(d * d for d in dev_a)
    var_b = sum(d * d for d in dev_b)
    if var_a == 0.0 or var_b == 0.0:
        raise ValueError("spearman is undefined when one ranking gives every key the same value")
    return sum(x * y for x, y in zip(dev_a, dev_b, strict=True)) / math.sqrt(var_a * var_b)
