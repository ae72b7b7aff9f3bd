"""Tests for pareto_prune.selection.select_neurons on synthetic (R, F) scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pareto_prune.config import STRATEGIES, PruningConfig
from pareto_prune.pareto import knee_cut_indices, knee_index, non_dominated_ranks
from pareto_prune.scores import LayerScores
from pareto_prune.selection import select_neurons

NEURONS_PER_LAYER = 200
LAYER_FIELDS = {"neurons", "pruned", "budget", "num_fronts", "front_sizes", "hypervolume", "knee"}
REPORT_FIELDS = {"strategy", "total_neurons", "total_pruned", "pruned_fraction", "reference_point", "layers"}


def random_layer(key: str, rng: np.random.Generator, forget_scale: float = 1.0) -> LayerScores:
    """Uniform normalised objectives, and raw statistics drawn independently of them."""
    retain = rng.uniform(size=NEURONS_PER_LAYER)
    forget = rng.uniform(size=NEURONS_PER_LAYER) * forget_scale
    retain_raw = rng.uniform(0.05, 2.0, size=NEURONS_PER_LAYER)
    forget_raw = rng.uniform(0.05, 2.0, size=NEURONS_PER_LAYER)
    return LayerScores(key, retain_raw, forget_raw, retain, forget)


def random_scores(seed: int = 0, layers: int = 3, forget_scales: list[float] | None = None) -> list[LayerScores]:
    rng = np.random.default_rng(seed)
    scales = forget_scales or [1.0] * layers
    return [random_layer(f"model.layers.{index}.mlp", rng, scale) for index, scale in enumerate(scales)]


def select(scores, **options):
    return select_neurons(scores, PruningConfig(**options))


def test_budget_met_exactly():
    scores = random_scores()

    selection = select(scores, budget=0.05, max_layer_fraction=0.1)

    assert selection.total_pruned == round(0.05 * 3 * NEURONS_PER_LAYER)


def test_budget_counts_mask_entries():
    selection = select(random_scores(), budget=0.05, max_layer_fraction=0.1)

    assert sum(int((~mask).sum()) for mask in selection.masks.values()) == 30


def test_layer_cap_respected():
    cap = int(0.1 * NEURONS_PER_LAYER)

    selection = select(random_scores(forget_scales=[1.0, 0.2, 0.2]), budget=0.2, max_layer_fraction=0.1)

    for key, count in selection.pruned_per_layer.items():
        assert count <= cap, key


def test_larger_hypervolume_prunes_more():
    selection = select(random_scores(forget_scales=[1.0, 0.3]), budget=0.1, max_layer_fraction=0.5)
    strong, weak = selection.layers

    assert strong.hypervolume > weak.hypervolume
    assert strong.pruned.size > weak.pruned.size


def test_quota_recorded():
    selection = select(random_scores(), budget=0.05, max_layer_fraction=0.1)

    for layer in selection.layers:
        assert layer.quota == layer.pruned.size, layer.key


def test_fronts_taken_in_order():
    selection = select(random_scores(), budget=0.08, max_layer_fraction=0.5)

    for layer in selection.layers:
        pruned_ranks = layer.ranks[layer.pruned]
        deepest = int(pruned_ranks.max())
        assert deepest >= 2, f"{layer.key}: the budget must reach past front 1 for this test"
        assert np.all(np.diff(pruned_ranks) >= 0), f"{layer.key}: selection order {pruned_ranks.tolist()}"
        shallower = np.flatnonzero(layer.ranks < deepest)
        assert set(shallower) <= set(layer.pruned.tolist()), f"{layer.key}: a front before {deepest} was not taken whole"


def test_partial_front_nearest_knee():
    selection = select(random_scores(), budget=0.08, max_layer_fraction=0.5)

    partial_layers = 0
    for layer in selection.layers:
        deepest = int(layer.ranks[layer.pruned].max())
        members = np.flatnonzero(layer.ranks == deepest)
        taken = layer.pruned[layer.ranks[layer.pruned] == deepest]
        if taken.size == members.size:
            continue
        partial_layers += 1
        retain, forget = layer.scores.retain[members], layer.scores.forget[members]
        knee = knee_index(retain, forget)
        distance = np.hypot(retain - retain[knee], forget - forget[knee])
        nearest = members[np.argsort(distance, kind="stable")[: taken.size]]
        assert sorted(taken.tolist()) == sorted(nearest.tolist()), layer.key
    assert partial_layers > 0, "the budget must end inside a front in some layer for this test"


def test_ranks_match_pareto_module():
    scores = random_scores()

    selection = select(scores, budget=0.05)

    for layer, layer_scores in zip(selection.layers, scores):
        assert np.array_equal(layer.ranks, non_dominated_ranks(layer_scores.retain, layer_scores.forget)), layer.key


def test_front_past_knee_uncapped():
    scores = random_scores()

    selection = select(scores, strategy="front_past_knee", max_layer_fraction=1.0)

    for layer, layer_scores in zip(selection.layers, scores):
        expected = knee_cut_indices(layer_scores.retain, layer_scores.forget)
        assert sorted(layer.pruned.tolist()) == sorted(expected.tolist()), layer.key


def test_front_past_knee_capped():
    # With seed 2 every layer's knee cut has 3 neurons.
    scores = random_scores(seed=2)
    cap = 2

    selection = select(scores, strategy="front_past_knee", max_layer_fraction=cap / NEURONS_PER_LAYER)

    for layer, layer_scores in zip(selection.layers, scores):
        cut = knee_cut_indices(layer_scores.retain, layer_scores.forget)
        assert cut.size > cap, f"{layer.key}: the knee cut must exceed the cap for this test"
        highest_forget = cut[np.argsort(-layer_scores.forget[cut], kind="stable")][:cap]
        assert sorted(layer.pruned.tolist()) == sorted(highest_forget.tolist()), layer.key


def test_activation_ratio_global_top():
    scores = random_scores()
    ratio = np.concatenate([layer.forget_raw / layer.retain_raw for layer in scores])
    budget = round(0.05 * ratio.size)
    top = set(np.argsort(-ratio)[:budget].tolist())

    selection = select(scores, strategy="activation_ratio", budget=0.05, max_layer_fraction=0.1)

    chosen = {index * NEURONS_PER_LAYER + int(neuron) for index, layer in enumerate(selection.layers) for neuron in layer.pruned}
    assert chosen == top


def test_random_same_seed_same_masks():
    first = select(random_scores(), strategy="random", budget=0.05, seed=7)
    second = select(random_scores(), strategy="random", budget=0.05, seed=7)

    for key in first.masks:
        assert torch.equal(first.masks[key], second.masks[key]), key


def test_random_seed_changes_masks():
    first = select(random_scores(), strategy="random", budget=0.05, seed=7)
    second = select(random_scores(), strategy="random", budget=0.05, seed=8)

    assert any(not torch.equal(first.masks[key], second.masks[key]) for key in first.masks)


def test_random_meets_budget():
    selection = select(random_scores(), strategy="random", budget=0.05, seed=7)

    assert selection.total_pruned == 30


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masks_false_at_pruned(strategy):
    selection = select(random_scores(), strategy=strategy, budget=0.05)

    assert list(selection.masks) == [layer.key for layer in selection.layers]
    for layer in selection.layers:
        mask = selection.masks[layer.key]
        assert mask.dtype == torch.bool, layer.key
        assert mask.shape == (NEURONS_PER_LAYER,), layer.key
        assert set(torch.nonzero(~mask).flatten().tolist()) == set(layer.pruned.tolist()), layer.key
        assert len(set(layer.pruned.tolist())) == layer.pruned.size, f"{layer.key}: a neuron was selected twice"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_report_fields(strategy):
    selection = select(random_scores(), strategy=strategy, budget=0.05)

    report = selection.report()

    assert set(report) >= REPORT_FIELDS
    assert report["strategy"] == strategy
    assert report["total_neurons"] == 3 * NEURONS_PER_LAYER
    assert report["total_pruned"] == selection.total_pruned
    assert list(report["layers"]) == list(selection.masks)
    for key, entry in report["layers"].items():
        assert set(entry) >= LAYER_FIELDS, key
        assert entry["neurons"] == NEURONS_PER_LAYER, key
        assert entry["pruned"] == selection.pruned_per_layer[key], key
        assert sum(entry["front_sizes"]) <= NEURONS_PER_LAYER, key
        assert set(entry["knee"]) == {"neuron", "retain", "forget"}, key


def test_report_front_sizes():
    scores = random_scores()

    layer_report = select(scores, budget=0.05).report()["layers"]["model.layers.0.mlp"]

    ranks = non_dominated_ranks(scores[0].retain, scores[0].forget)
    expected = np.bincount(ranks)[1:].tolist()
    assert layer_report["front_sizes"] == expected[:20]
    assert layer_report["num_fronts"] == len(expected)


def test_max_fronts_limits_report():
    selection = select(random_scores(), budget=0.05, max_fronts=2)

    for layer in selection.layers:
        assert len(layer.front_sizes) == 2, layer.key
