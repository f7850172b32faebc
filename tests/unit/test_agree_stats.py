"""raysel agree's statistics against hand computations on fixed score vectors, and the interval's coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysel.agree.stats import agreement, bootstrap, filter_agreement, kendall, spearman, top_overlap, verdict


def test_rank_correlations_by_hand() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert spearman(a, b) == pytest.approx(1 - 6 * 2 / (4 * 15))  # one swap: sum d^2 = 2 -> 0.8
    assert kendall(a, b) == pytest.approx((5 - 1) / 6)  # 6 pairs, one discordant


def test_ties_use_average_ranks_and_tau_b() -> None:
    a, b = np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])
    # ranks of a: 1.5 1.5 3 4; deviations (-1 -1 .5 1.5) and (-1.5 -.5 .5 1.5): 4.5 / sqrt(4.5 x 5)
    assert spearman(a, b) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # 5 concordant pairs, 0 discordant, 1 pair tied in a only: 5 / sqrt((6 - 1) x 6)
    assert kendall(a, b) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(spearman(np.ones(4), b)) and math.isnan(kendall(np.ones(4), b))


def test_selection_overlap_and_filter_by_hand() -> None:
    # 10 rows; IFD > 1 never selected. small passes 8 rows, large passes 9; ratio 0.25 -> k = int(0.25 x passed) = 2
    small = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 1.5, 1.2])
    large = np.array([0.9, 0.1, 0.95, 0.6, 0.5, 0.4, 0.3, 0.2, 0.85, 1.1])
    # small picks rows {0, 1}; large picks {2, 0}: Jaccard 1/3, recall 1/2
    assert top_overlap(small, large, 0.25) == pytest.approx((1 / 3, 1 / 2))
    # the filter sides differ on row 8 only (1.5 vs 0.85): 9 of 10 agree
    assert filter_agreement(small, large) == pytest.approx(0.9)


def test_identical_scorers_agree_exactly_with_a_degenerate_interval() -> None:
    x = np.random.default_rng(1).random(300) * 1.3
    r = agreement(x, x.copy(), ratio=0.1, rounds=200, seed=3)
    for name in ("spearman", "kendall", "top_jaccard", "top_recall", "filter_agreement"):
        assert r[name] == pytest.approx({"value": 1.0, "low": 1.0, "high": 1.0}), name
    assert verdict(r) == ("the small scorer recovers 100% [100%, 100%] of the large scorer's top 10%; "
                          "Spearman 1.00 [1.00, 1.00] on 300 rows")  # fmt: skip
    r = agreement(x, x.copy(), ratio=0.025, rounds=0)
    assert verdict(r) == "the small scorer recovers 100% of the large scorer's top 2.5%; Spearman 1.00 on 300 rows"
    flat = agreement(np.full(5, 0.5), np.full(5, 0.5), rounds=0)  # no ranking to correlate
    assert verdict(flat).endswith("Spearman n/a on 5 rows")


def test_unscored_rows_are_counted_and_left_out() -> None:
    small = np.array([0.5, np.nan, 0.7, 0.2, 0.9])
    large = np.array([0.4, 0.6, np.nan, 0.1, 0.8])
    r = agreement(small, large, rounds=0)
    assert (r["rows"], r["both_scored"], r["unscored_small"], r["unscored_large"]) == (5, 3, 1, 1)
    assert r["spearman"]["value"] == pytest.approx(1.0) and math.isnan(r["spearman"]["low"])  # rows 0, 3, 4
    with pytest.raises(ValueError, match="different rows"):
        agreement(small, large[:4])


def test_the_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a + rng.normal(0, 0.3, 200)
    one = agreement(a, b, rounds=100, seed=5)
    assert one == agreement(a, b, rounds=100, seed=5)
    assert one["spearman"] != agreement(a, b, rounds=100, seed=6)["spearman"]
    assert one["spearman"]["low"] < one["spearman"]["value"] < one["spearman"]["high"]


def test_the_95_percent_interval_covers_the_true_spearman_about_95_percent_of_the_time() -> None:
    """Bivariate normal with correlation r: the population Spearman is 6/pi x asin(r/2)."""
    r, n, trials = 0.6, 150, 100
    truth = 6 / math.pi * math.asin(r / 2)
    rng = np.random.default_rng(11)
    cov = [[1.0, r], [r, 1.0]]
    covered = 0
    for t in range(trials):
        x = rng.multivariate_normal([0.0, 0.0], cov, size=n)
        low, high = bootstrap(lambda a, b: np.array([spearman(a, b)]), x[:, 0], x[:, 1], rounds=200, seed=t)
        covered += bool(low[0] <= truth <= high[0])
    # binomial(100, 0.95) has sd ~2.2 rows: 0.88 is ~3 sd below; 1.0 would mean intervals far too wide
    assert 0.88 <= covered / trials < 1.0
