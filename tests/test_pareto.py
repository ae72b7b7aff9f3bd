"""Tests for pareto_prune.pareto against brute-force O(n^2) references."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pareto_prune.pareto as pareto
from pareto_prune.pareto import (
    LayerFrontSummary,
    analyze_layer,
    first_front_indices,
    hypervolume_2d,
    knee_cut_indices,
    knee_index,
    non_dominated_ranks,
)

SEEDS = range(40)


# ---------------------------------------------------------------------------------------
# Brute-force references


def brute_dominance(r, f):
    """Return D with D[j, i] True when point j dominates point i."""
    r = np.asarray(r, dtype=float)
    f = np.asarray(f, dtype=float)
    weakly = (r[:, None] <= r[None, :]) & (f[:, None] >= f[None, :])
    identical = (r[:, None] == r[None, :]) & (f[:, None] == f[None, :])
    return weakly & ~identical


def brute_ranks(r, f):
    """Rank by repeatedly removing the points that no remaining point dominates."""
    dominates = brute_dominance(r, f)
    n = len(r)
    ranks = np.zeros(n, dtype=np.int64)
    remaining = np.ones(n, dtype=bool)
    rank = 0
    while remaining.any():
        rank += 1
        dominated = (dominates & remaining[:, None]).any(axis=0)
        front = remaining & ~dominated
        ranks[front] = rank
        remaining &= ~front
    return ranks


def brute_hypervolume(r, f, reference):
    """Sum the cells of the grid on all coordinates that some point covers."""
    r_ref, f_ref = reference
    r = np.asarray(r, dtype=float)
    f = np.asarray(f, dtype=float)
    xs = np.unique(np.append(r[r < r_ref], r_ref))
    ys = np.unique(np.append(f[f > f_ref], f_ref))
    total = 0.0
    for a in range(len(xs) - 1):
        for b in range(len(ys) - 1):
            # A point covers the whole cell when its rectangle contains the cell's
            # lower-left (x) and upper (y) corner.
            covers = (r <= xs[a]) & (f >= ys[b + 1]) & (r < r_ref) & (f > f_ref)
            if covers.any():
                total += (xs[a + 1] - xs[a]) * (ys[b + 1] - ys[b])
    return total


def brute_chord_distance(r, f):
    """Signed distance of each normalised point from the chord (0, 0)-(1, 1)."""
    r_norm = (r - r.min()) / (r.max() - r.min())
    f_norm = (f - f.min()) / (f.max() - f.min())
    return (f_norm - r_norm) / math.sqrt(2.0)


def random_points(seed, integer=False):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    if integer:
        high = int(rng.integers(1, 6))
        return rng.integers(0, high, n).astype(float), rng.integers(0, high, n).astype(float)
    return rng.random(n), rng.random(n)


@pytest.fixture(params=["auto", "peel", "sweep"])
def ranking_path(request, monkeypatch):
    """Run a test with the automatic switch, with peeling only, and with sweeping only."""
    if request.param == "peel":
        monkeypatch.setattr(pareto, "_SWEEP_SWITCH_PASSES", math.inf)
    elif request.param == "sweep":
        monkeypatch.setattr(pareto, "_SWEEP_SWITCH_PASSES", -1)
    return request.param


# ---------------------------------------------------------------------------------------
# non_dominated_ranks


@pytest.mark.parametrize("integer", [False, True])
def test_ranks_match_brute_force(ranking_path, integer):
    for seed in SEEDS:
        r, f = random_points(seed, integer)
        expected = brute_ranks(r, f)
        got = non_dominated_ranks(r, f)
        assert np.array_equal(got, expected), f"seed {seed}"


@pytest.mark.parametrize("max_fronts", [1, 2, 3, 7])
def test_ranks_max_fronts_truncation(ranking_path, max_fronts):
    for seed in SEEDS:
        r, f = random_points(seed, integer=seed % 2 == 0)
        expected = np.minimum(brute_ranks(r, f), max_fronts + 1)
        got = non_dominated_ranks(r, f, max_fronts=max_fronts)
        assert np.array_equal(got, expected), f"seed {seed}"


def test_ranks_large_layer(ranking_path):
    rng = np.random.default_rng(123)
    r = rng.random(600)
    f = 1.0 - r + 0.1 * rng.standard_normal(600)
    assert np.array_equal(non_dominated_ranks(r, f), brute_ranks(r, f))


def test_ranks_chain_one_point_per_front(ranking_path):
    r = np.arange(300, dtype=float)
    f = -r
    assert np.array_equal(non_dominated_ranks(r, f), np.arange(1, 301))


def test_ranks_chain_truncated(ranking_path):
    r = np.arange(300, dtype=float)
    got = non_dominated_ranks(r, -r, max_fronts=5)
    assert np.array_equal(got, np.minimum(np.arange(1, 301), 6))


def test_ranks_single_front():
    r = np.linspace(0.0, 1.0, 50)
    assert np.array_equal(non_dominated_ranks(r, r**2), np.ones(50, dtype=np.int64))


def test_ranks_all_equal():
    got = non_dominated_ranks(np.full(7, 0.3), np.full(7, 0.3))
    assert np.array_equal(got, np.ones(7, dtype=np.int64))


def test_ranks_duplicates_share_rank():
    r = [0.0, 0.0, 1.0, 1.0, 1.0]
    f = [1.0, 1.0, 0.0, 0.0, 0.5]
    assert non_dominated_ranks(r, f).tolist() == [1, 1, 3, 3, 2]


def test_ranks_single_point():
    assert non_dominated_ranks([0.4], [0.2]).tolist() == [1]


def test_ranks_empty():
    got = non_dominated_ranks([], [])
    assert got.shape == (0,)
    assert got.dtype == np.int64


def test_ranks_dtype_int64():
    assert non_dominated_ranks([0.1, 0.2], [0.3, 0.1]).dtype == np.int64


def test_ranks_accept_infinity():
    r = [-np.inf, 0.0, np.inf]
    f = [0.0, np.inf, -np.inf]
    assert non_dominated_ranks(r, f).tolist() == [1, 1, 2]


def test_ranks_reject_nan():
    with pytest.raises(ValueError, match="forget contains 1 NaN"):
        non_dominated_ranks([0.1, 0.2], [0.3, np.nan])


def test_ranks_reject_length_mismatch():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        non_dominated_ranks([0.1, 0.2, 0.3], [0.3, 0.1])


def test_ranks_reject_2d():
    with pytest.raises(ValueError, match="retain must be a 1-D array"):
        non_dominated_ranks(np.zeros((2, 2)), np.zeros(4))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_ranks_reject_bad_max_fronts(bad):
    with pytest.raises(ValueError, match="max_fronts must be a positive integer"):
        non_dominated_ranks([0.1, 0.2], [0.3, 0.1], max_fronts=bad)


def test_ranks_accept_numpy_int_max_fronts():
    got = non_dominated_ranks([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], max_fronts=np.int64(1))
    assert got.tolist() == [1, 2, 2]


# ---------------------------------------------------------------------------------------
# first_front_indices


def test_first_front_matches_brute_force():
    for seed in SEEDS:
        r, f = random_points(seed, integer=seed % 2 == 1)
        expected = set(np.flatnonzero(brute_ranks(r, f) == 1).tolist())
        got = first_front_indices(r, f)
        assert set(got.tolist()) == expected, f"seed {seed}"
        assert len(got) == len(expected), f"seed {seed}"
        assert np.all(np.diff(r[got]) >= 0), f"seed {seed}"


def test_first_front_order():
    r = [0.9, 0.1, 0.5, 0.5, 0.7]
    f = [0.9, 0.1, 0.6, 0.6, 0.3]
    assert first_front_indices(r, f).tolist() == [1, 2, 3, 0]


def test_first_front_empty():
    assert first_front_indices([], []).size == 0


# ---------------------------------------------------------------------------------------
# hypervolume_2d


@pytest.mark.parametrize("reference", [(1.0, 0.0), (0.7, 0.2), (5.0, -1.0)])
def test_hypervolume_matches_brute_force(reference):
    for seed in SEEDS:
        for integer in (False, True):
            r, f = random_points(seed, integer)
            if integer:
                r, f = r / 4.0, f / 4.0
            expected = brute_hypervolume(r, f, reference)
            got = hypervolume_2d(r, f, reference=reference)
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), f"seed {seed}"


def test_hypervolume_hand_example():
    # Rectangles [0.2, 1] x [0, 0.5] and [0.6, 1] x [0, 0.9] overlap in [0.6, 1] x [0, 0.5].
    got = hypervolume_2d([0.2, 0.6], [0.5, 0.9])
    assert got == pytest.approx(0.4 + 0.36 - 0.2)


def test_hypervolume_single_point():
    assert hypervolume_2d([0.25], [0.5]) == pytest.approx(0.375)


def test_hypervolume_ignores_dominated_points():
    alone = hypervolume_2d([0.2, 0.6], [0.5, 0.9])
    more = hypervolume_2d([0.2, 0.6, 0.3, 0.7, 0.6], [0.5, 0.9, 0.4, 0.1, 0.9])
    assert more == pytest.approx(alone)


def test_hypervolume_empty():
    assert hypervolume_2d([], []) == 0.0


def test_hypervolume_nothing_beats_reference():
    assert hypervolume_2d([1.0, 2.0, 0.5], [0.5, 0.9, 0.0]) == 0.0


def test_hypervolume_returns_float():
    assert type(hypervolume_2d([0.5], [0.5])) is float


def test_hypervolume_infinite_point():
    assert hypervolume_2d([0.5, 0.5], [np.inf, 0.2]) == np.inf


@pytest.mark.parametrize("reference", [(1.0,), (1.0, np.nan), (1.0, 2.0, 3.0)])
def test_hypervolume_reject_bad_reference(reference):
    with pytest.raises(ValueError, match="reference must be two non-NaN numbers"):
        hypervolume_2d([0.5], [0.5], reference=reference)


def test_hypervolume_reject_nan():
    with pytest.raises(ValueError, match="retain contains 1 NaN"):
        hypervolume_2d([np.nan], [0.5])


# ---------------------------------------------------------------------------------------
# knee_index


def test_knee_piecewise_linear_elbow():
    # Two segments (0, 0)-(1, 8) and (1, 8)-(10, 10) with the knee at the elbow (1, 8).
    first = np.linspace(0.0, 1.0, 11)
    second = np.linspace(1.0, 10.0, 31)[1:]
    r = np.concatenate([first, second])
    f = np.concatenate([8.0 * first, 8.0 + (second - 1.0) * 2.0 / 9.0])
    order = np.random.default_rng(0).permutation(r.size)
    r, f = r[order], f[order]

    knee = knee_index(r, f)

    assert r[knee] == 1.0
    assert f[knee] == 8.0


def test_knee_concave_curve_analytic():
    # R = 2 + 3x and F = 10 + 50 * sqrt(1 - (1 - x)^2) for x in [0, 1]. After min-max
    # normalisation r = x and f = sqrt(1 - (1 - x)^2), so f - r peaks where
    # (1 - x) / sqrt(1 - (1 - x)^2) = 1, at x = 1 - 1 / sqrt(2). The axes have different
    # scales, so the result depends on the normalisation.
    x = np.linspace(0.0, 1.0, 1001)
    r = 2.0 + 3.0 * x
    f = 10.0 + 50.0 * np.sqrt(1.0 - (1.0 - x) ** 2)
    order = np.random.default_rng(1).permutation(x.size)
    r, f, x = r[order], f[order], x[order]

    knee = knee_index(r, f)

    assert abs(x[knee] - (1.0 - 1.0 / math.sqrt(2.0))) <= 1e-3
    assert knee == int(np.argmax(brute_chord_distance(r, f)))


def test_knee_matches_max_chord_distance():
    rng = np.random.default_rng(7)
    for _ in range(20):
        x = np.sort(rng.random(40))
        r = 0.01 * x
        f = 100.0 * x ** rng.uniform(0.2, 0.9) + 1e-9 * np.arange(40)
        assert knee_index(r, f) == int(np.argmax(brute_chord_distance(r, f)))


def test_knee_tie_prefers_lower_retain():
    # Normalised f - r is 0, 0.5, 0.5, 0, and the tied points are listed higher R first.
    r = [0.0, 0.375, 0.125, 1.0]
    f = [0.0, 0.875, 0.625, 1.0]
    assert knee_index(r, f) == 2


def test_knee_prefers_ideal_side():
    # Normalised f - r is 0, 0.25, -0.375, 0: the point below the chord is farther from
    # it, but the knee is the point on the side of low R and high F.
    r = [0.0, 0.125, 0.875, 1.0]
    f = [0.0, 0.375, 0.5, 1.0]
    assert knee_index(r, f) == 1


def test_knee_straight_front_returns_low_end():
    r = np.array([0.5, 0.25, 0.0, 1.0, 0.75])
    assert knee_index(r, 2.0 * r) == 2


def test_knee_single_point():
    assert knee_index([0.3], [0.7]) == 0


def test_knee_all_identical():
    assert knee_index([0.3, 0.3, 0.3], [0.7, 0.7, 0.7]) == 0


def test_knee_two_point_front():
    # Both points score 0 after normalisation, so the lower-R point wins even though
    # its raw F - R is smaller.
    assert knee_index([0.009, 0.001], [800.0, 200.0]) == 1


def test_knee_two_points_one_dominating():
    assert knee_index([1.0, 0.0], [0.0, 1.0]) == 1


def test_knee_empty():
    with pytest.raises(ValueError, match="at least one point"):
        knee_index([], [])


def test_knee_reject_infinite():
    with pytest.raises(ValueError, match="finite"):
        knee_index([0.0, np.inf], [0.0, 1.0])


# ---------------------------------------------------------------------------------------
# analyze_layer


def test_analyze_layer_fields():
    rng = np.random.default_rng(3)
    r = rng.random(200)
    f = rng.random(200)
    expected_ranks = brute_ranks(r, f)

    summary = analyze_layer(r, f, reference=(1.0, 0.0))

    assert isinstance(summary, LayerFrontSummary)
    assert np.array_equal(summary.ranks, expected_ranks)
    assert summary.front_sizes == np.bincount(expected_ranks)[1:].tolist()
    assert summary.unranked_count == 0
    assert np.array_equal(summary.first_front, first_front_indices(r, f))
    assert summary.hypervolume == pytest.approx(brute_hypervolume(r, f, (1.0, 0.0)))
    front = summary.first_front
    assert summary.knee_neuron == int(front[knee_index(r[front], f[front])])
    assert summary.knee_point == (r[summary.knee_neuron], f[summary.knee_neuron])
    assert summary.reference == (1.0, 0.0)


def test_analyze_layer_knee_is_layer_index():
    # Layer indices 0 and 3 are dominated. The front by ascending R is 1, 4, 2, 5.
    r = [0.6, 0.0, 0.5, 0.9, 0.125, 1.0]
    f = [0.5, 0.0, 0.75, 0.1, 0.625, 1.0]

    summary = analyze_layer(r, f)

    assert summary.first_front.tolist() == [1, 4, 2, 5]
    assert summary.knee_neuron == 4
    assert summary.knee_point == (0.125, 0.625)


def test_analyze_layer_max_fronts():
    r = np.arange(10, dtype=float)

    summary = analyze_layer(r, -r, max_fronts=3)

    assert summary.front_sizes == [1, 1, 1]
    assert summary.unranked_count == 7
    assert summary.ranks.tolist() == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]


def test_analyze_layer_max_fronts_above_count():
    summary = analyze_layer([0.0, 1.0], [0.0, 1.0], max_fronts=5)
    assert summary.front_sizes == [2]
    assert summary.unranked_count == 0


def test_analyze_layer_empty():
    summary = analyze_layer([], [])
    assert summary.ranks.size == 0
    assert summary.front_sizes == []
    assert summary.unranked_count == 0
    assert summary.first_front.size == 0
    assert summary.hypervolume == 0.0
    assert summary.knee_neuron is None
    assert summary.knee_point is None


def test_analyze_layer_reject_bad_reference():
    with pytest.raises(ValueError, match="reference"):
        analyze_layer([0.5], [0.5], reference=(np.nan, 0.0))


# ---------------------------------------------------------------------------------------
# knee_cut_indices


def test_knee_cut_hand_example():
    # Front by ascending R: 1 (0, 0), knee 4 and its duplicate 6 (0.125, 0.625),
    # 2 (0.5, 0.75), 5 (1, 1). Indices 0 and 3 are dominated. f - r on the front is
    # 0, 0.5, 0.5, 0.25, 0, so the knee is index 4 and the cut keeps F >= 0.625.
    r = [0.6, 0.0, 0.5, 0.9, 0.125, 1.0, 0.125]
    f = [0.5, 0.0, 0.75, 0.1, 0.625, 1.0, 0.625]
    assert knee_cut_indices(r, f).tolist() == [4, 6, 2, 5]


def test_knee_cut_straight_front_selects_all():
    r = [1.0, 0.0, 0.5]
    assert knee_cut_indices(r, r).tolist() == [1, 2, 0]


def test_knee_cut_single_point():
    assert knee_cut_indices([0.5], [0.5]).tolist() == [0]


def test_knee_cut_empty():
    got = knee_cut_indices([], [])
    assert got.size == 0
    assert got.dtype == np.int64
