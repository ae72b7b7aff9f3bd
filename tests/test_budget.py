"""Tests for pareto_prune.budget.allocate_budget."""

from __future__ import annotations

import numpy as np
import pytest

from pareto_prune.budget import allocate_budget


def allocate(total, weights, caps) -> list[int]:
    return allocate_budget(total, np.array(weights, dtype=float), np.array(caps)).tolist()


@pytest.mark.parametrize(
    "total, weights, caps",
    [
        (10, [1, 1, 2, 0], [10, 10, 10, 10]),
        (37, [0.3, 0.05, 0.2, 0.45], [20, 20, 20, 20]),
        (100, [5, 1, 1, 1, 1], [30, 30, 30, 30, 30]),
        (7, [1, 1, 1], [3, 3, 3]),
        (0, [1, 2], [5, 5]),
    ],
)
def test_sums_to_total(total, weights, caps):
    assert sum(allocate(total, weights, caps)) == total


def test_proportional_shares():
    assert allocate(12, [1, 2, 3], [100, 100, 100]) == [2, 4, 6]


def test_caps_respected():
    counts = allocate(30, [10, 1, 1], [5, 20, 20])

    assert counts[0] == 5
    assert all(count <= cap for count, cap in zip(counts, [5, 20, 20]))
    assert sum(counts) == 30


def test_capped_share_redistributed():
    # Layer 0 would get 8 of 10 but is capped at 2, so the other 8 split 1:1.
    assert allocate(10, [8, 1, 1], [2, 10, 10]) == [2, 4, 4]


def test_zero_weight_gets_nothing():
    assert allocate(6, [0, 1, 2], [10, 10, 10]) == [0, 2, 4]


def test_zero_weight_gets_nothing_under_caps():
    assert allocate(100, [1, 0, 2], [3, 50, 5]) == [3, 0, 5]


def test_caps_below_total_fill_caps():
    assert allocate(100, [1, 2, 3], [3, 5, 7]) == [3, 5, 7]


def test_caps_below_total_logs_warning(caplog):
    with caplog.at_level("WARNING", logger="pareto_prune.budget"):
        allocate(100, [1, 2, 3], [3, 5, 7])

    assert "100" in caplog.text


def test_largest_remainder_rounding():
    # Shares 2.6, 2.6 and 4.8 floor to 2, 2 and 4. The 2 neurons left go to the largest
    # remainders: 0.8 first, then the earlier of the tied 0.6. Rounding each share would give 11.
    assert allocate(10, [13, 13, 24], [10, 10, 10]) == [3, 2, 5]


def test_cap_below_share():
    # Layer 0's share of 1.5 exceeds its cap of 1, so it gets 1 and layer 1 the other 2.
    assert allocate(3, [1, 1], [1, 10]) == [1, 2]


def test_all_zero_weights():
    assert allocate(5, [0, 0], [10, 10]) == [0, 0]


@pytest.mark.parametrize(
    "total, weights, caps",
    [(-1, [1], [1]), (1, [-1.0], [1]), (1, [1], [-1])],
    ids=["negative total", "negative weight", "negative cap"],
)
def test_negative_input_rejected(total, weights, caps):
    with pytest.raises(ValueError, match="non-negative"):
        allocate(total, weights, caps)


def test_random_cases_consistent():
    rng = np.random.default_rng(0)
    for case in range(500):
        layers = int(rng.integers(1, 8))
        weights = rng.uniform(size=layers) * (rng.uniform(size=layers) > 0.2)
        caps = rng.integers(0, 30, size=layers)
        total = int(rng.integers(0, 120))
        eligible = weights > 0

        counts = allocate_budget(total, weights, caps)

        context = f"case {case}: total={total}, weights={weights.tolist()}, caps={caps.tolist()}, got {counts.tolist()}"
        assert counts.sum() == min(total, caps[eligible].sum()), context
        assert np.all(counts <= caps), context
        assert np.all(counts >= 0), context
        assert np.all(counts[~eligible] == 0), context
