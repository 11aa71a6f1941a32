"""Elo ratings, bootstrap intervals, win rates and Spearman correlation."""

from __future__ import annotations

import random

import pytest

from octrain.evaluation.elo import (
    Match,
    bootstrap_elo,
    elo_ratings,
    expected_score,
    match_from_verdict,
    spearman,
    win_rate,
)


def random_matches(seed: int, players: str = "ABCDE", count: int = 60) -> list[Match]:
    rng = random.Random(seed)
    matches = []
    for _ in range(count):
        a, b = rng.sample(players, 2)
        matches.append(Match(a, b, rng.choice([0.0, 0.5, 1.0])))
    return matches


# --- single-order Elo, checked against hand calculations ---------------------------------------


def test_first_win_between_equals_moves_half_of_k() -> None:
    # Equal ratings: expected = 1 / (1 + 10**0) = 0.5, so the winner gains 32 * (1 - 0.5) = 16.
    assert elo_ratings([Match("A", "B", 1.0)]) == {"A": 1016.0, "B": 984.0}


def test_return_match_uses_updated_ratings() -> None:
    # After A's win: A 1016, B 984. B now beats A.
    # expected_A = 1 / (1 + 10**((984 - 1016) / 400)) = 1 / (1 + 10**-0.08)
    #            = 1 / (1 + 0.831763771...) = 0.545921923...
    # delta = 32 * (0 - 0.545921923) = -17.469501529...
    # A = 1016 - 17.469501529 = 998.530498471, B = 984 + 17.469501529 = 1001.469501529
    ratings = elo_ratings([Match("A", "B", 1.0), Match("B", "A", 1.0)])
    assert ratings["A"] == pytest.approx(998.530498471, abs=1e-6)
    assert ratings["B"] == pytest.approx(1001.469501529, abs=1e-6)


def test_start_and_k_are_configurable() -> None:
    # start 1500, K 16. First win between equals: +-16 * 0.5 = 8 -> A 1508, B 1492.
    # Second A win: expected_A = 1 / (1 + 10**(-16 / 400)) = 1 / (1 + 0.912010839) = 0.523009587
    # delta = 16 * (1 - 0.523009587) = 7.631846603 -> A 1515.631846603, B 1484.368153397
    ratings = elo_ratings([Match("A", "B", 1.0), Match("A", "B", 1.0)], start=1500.0, k=16.0)
    assert ratings["A"] == pytest.approx(1515.631846603, abs=1e-6)
    assert ratings["B"] == pytest.approx(1484.368153397, abs=1e-6)


def test_tie_between_unequal_players_favours_the_weaker() -> None:
    # A player 200 points ahead is expected to score 1 / (1 + 10**(-200 / 400)):
    # expected(1200, 1000) = 1 / (1 + 10**-0.5) = 1 / 1.316227766 = 0.759746927
    assert expected_score(1200.0, 1000.0) == pytest.approx(0.759746927, abs=1e-9)
    # so a tie between them would cost the stronger one 32 * (0.5 - 0.759746927) = 8.311901653 points.
    # Same idea after one match: A (1016) is ahead of B (984), so a tie must lower A.
    ratings = elo_ratings([Match("A", "B", 1.0), Match("A", "B", 0.5)])
    expected_a = expected_score(1016.0, 984.0)
    assert ratings["A"] == pytest.approx(1016.0 + 32 * (0.5 - expected_a), abs=1e-9)
    assert ratings["A"] < 1016.0


def test_listed_players_without_matches_keep_start() -> None:
    ratings = elo_ratings([Match("A", "B", 1.0)], players=["A", "B", "C"], start=1200.0)
    assert ratings["C"] == 1200.0
    assert set(ratings) == {"A", "B", "C"}
    assert elo_ratings([], players=["X"]) == {"X": 1000.0}


@pytest.mark.parametrize("seed", range(5))
def test_ratings_are_zero_sum(seed: int) -> None:
    matches = random_matches(seed, players="ABCDEFG", count=200)
    ratings = elo_ratings(matches, players="ABCDEFGH", start=1234.5, k=24.0)
    assert sum(ratings.values()) == pytest.approx(8 * 1234.5, abs=1e-9)


def test_bad_matches_are_rejected() -> None:
    with pytest.raises(ValueError, match="two different players"):
        Match("A", "A", 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Match("A", "B", 1.5)


def test_match_from_verdict() -> None:
    assert match_from_verdict("x", "y", "A") == Match("x", "y", 1.0)
    assert match_from_verdict("x", "y", "B") == Match("x", "y", 0.0)
    assert match_from_verdict("x", "y", "tie") == Match("x", "y", 0.5)
    with pytest.raises(ValueError, match="verdict"):
        match_from_verdict("x", "y", "a")


# --- bootstrap --------------------------------------------------------------------------------


def test_single_orders_differ_but_the_bootstrap_mean_does_not() -> None:
    matches = random_matches(1)
    shuffled = list(matches)
    random.Random(99).shuffle(shuffled)
    one, other = elo_ratings(matches), elo_ratings(shuffled)
    # Plain Elo depends on the order the same matches are played in...
    assert max(abs(one[p] - other[p]) for p in one) > 5.0
    # ...while the mean over many random orders barely depends on which orders were drawn.
    first = bootstrap_elo(matches, rounds=2000, seed=1)
    second = bootstrap_elo(matches, rounds=2000, seed=2)
    assert set(first) == set(second) == set("ABCDE")
    for player in first:
        assert abs(first[player].rating - second[player].rating) < 2.0


def test_bootstrap_is_reproducible_and_counts_matches() -> None:
    matches = [Match("A", "B", 1.0), Match("A", "C", 0.5), Match("B", "C", 0.0)]
    first = bootstrap_elo(matches, rounds=50, seed=7)
    assert first == bootstrap_elo(matches, rounds=50, seed=7)
    assert {p: s.matches for p, s in first.items()} == {"A": 2, "B": 2, "C": 2}
    for summary in first.values():
        assert summary.low <= summary.high
    # The mean over orderings keeps Elo's zero-sum property.
    assert sum(s.rating for s in first.values()) == pytest.approx(3000.0, abs=1e-9)


def test_rigged_player_is_rated_top_with_interval_above_start() -> None:
    rng = random.Random(3)
    matches = []
    for other in "BCDE":
        for _ in range(20):
            # X wins 90% of its matches; which side it sits on alternates, as a judge would see it.
            x_wins = rng.random() < 0.9
            if rng.random() < 0.5:
                matches.append(Match("X", other, 1.0 if x_wins else 0.0))
            else:
                matches.append(Match(other, "X", 0.0 if x_wins else 1.0))
    matches.extend(random_matches(4, players="BCDE", count=40))
    summary = bootstrap_elo(matches, rounds=300, seed=0)
    top = max(summary, key=lambda player: summary[player].rating)
    assert top == "X"
    assert summary["X"].low > 1000.0
    assert summary["X"].low <= summary["X"].rating <= summary["X"].high


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_elo([]) == {}
    with pytest.raises(ValueError, match="rounds"):
        bootstrap_elo([Match("A", "B", 1.0)], rounds=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_elo([Match("A", "B", 1.0)], confidence=1.0)


# --- win rate ---------------------------------------------------------------------------------


def test_win_rate_mean_and_interval() -> None:
    scores = [1.0] * 70 + [0.0] * 20 + [0.5] * 10  # mean (70 + 5) / 100 = 0.75
    mean, low, high = win_rate(scores, seed=5)
    assert mean == pytest.approx(0.75)
    assert low < mean < high
    assert low > 0.6
    assert high < 0.9
    assert (mean, low, high) == win_rate(scores, seed=5)


def test_win_rate_degenerate_and_bad_input() -> None:
    assert win_rate([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        win_rate([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate([0.5, 2.0])


# --- Spearman ---------------------------------------------------------------------------------


def test_spearman_identical_and_reversed() -> None:
    a = {"w": 1.0, "x": 2.0, "y": 3.0, "z": 4.0}
    assert spearman(a, {"w": 10.0, "x": 20.0, "y": 35.0, "z": 1000.0}) == pytest.approx(1.0)
    assert spearman(a, {"w": 4.0, "x": 3.0, "y": 2.0, "z": 1.0}) == pytest.approx(-1.0)


def test_spearman_uses_common_keys_only() -> None:
    a = {"w": 1.0, "x": 2.0, "y": 3.0, "only_a": 0.0}
    b = {"w": 1.0, "x": 2.0, "y": 3.0, "only_b": 99.0}
    assert spearman(a, b) == pytest.approx(1.0)


def test_spearman_with_ties_uses_average_ranks() -> None:
    # a ranks: w 1, x 2.5, y 2.5, z 4.   b ranks: w 1, x 2, y 3, z 4.
    # Deviations from the mean rank 2.5: a (-1.5, 0, 0, 1.5), b (-1.5, -0.5, 0.5, 1.5).
    # Covariance sum 2.25 + 0 + 0 + 2.25 = 4.5; sums of squares 4.5 and 5.0.
    # rho = 4.5 / sqrt(4.5 * 5.0) = 0.948683298
    a = {"w": 1.0, "x": 2.0, "y": 2.0, "z": 3.0}
    b = {"w": 1.0, "x": 2.0, "y": 3.0, "z": 4.0}
    assert spearman(a, b) == pytest.approx(0.948683298, abs=1e-9)


def test_spearman_matches_pearson_of_ranks_without_ties() -> None:
    # With distinct values rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)).
    # Ranks a (1,2,3,4,5), b (2,1,4,3,5): sum d^2 = 4 -> rho = 1 - 24 / 120 = 0.8
    a = dict(zip("vwxyz", [1.0, 2.0, 3.0, 4.0, 5.0], strict=True))
    b = dict(zip("vwxyz", [20.0, 10.0, 40.0, 30.0, 50.0], strict=True))
    assert spearman(a, b) == pytest.approx(0.8, abs=1e-12)


def test_spearman_needs_two_common_keys_and_variation() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        spearman({"a": 1.0}, {"a": 2.0})
    with pytest.raises(ValueError, match="at least 2"):
        spearman({"a": 1.0, "b": 2.0}, {"c": 1.0, "d": 2.0})
    with pytest.raises(ValueError, match="same value"):
        spearman({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 2.0})
