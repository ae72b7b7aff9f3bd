"""Choose the neurons to prune from their (R, F) objectives.

All strategies return a :class:`Selection`: bool masks (``True`` = kept) and a per-layer
record of the Pareto analysis for the report and plots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from pareto_prune.budget import allocate_budget
from pareto_prune.config import PruningConfig
from pareto_prune.pareto import hypervolume_2d, knee_index, non_dominated_ranks
from pareto_prune.scores import LayerScores

logger = logging.getLogger(__name__)

# R is minimised and F maximised, and both are normalised onto [0, 1], so (R=1, F=0) is
# the worst possible point; every layer's hypervolume is measured against it.
REFERENCE_POINT = (1.0, 0.0)
# How many front sizes per layer the report lists.
REPORTED_FRONTS = 20


@dataclass
class LayerAnalysis:
    """Pareto analysis of one MLP.

    Attributes:
        scores: The layer's objectives.
        ranks: Front rank per neuron (1 = non-dominated).
        front_sizes: Neurons in fronts 1, 2, ... (all fronts that were ranked).
        hypervolume: Area dominated by the first front against :data:`REFERENCE_POINT`.
        knee: Neuron index of the first front's knee, or ``None`` for an empty layer.
        quota: Neurons this layer was allowed to prune.
        pruned: Indices of the neurons pruned by this selection, in selection order.
        pruned_before: Indices pruned by an earlier round of an iterative run. They are
            not candidates: their rank is 0 and they are left out of fronts and hypervolume.
        cap: Most neurons this selection may add in this layer.
    """

    scores: LayerScores
    ranks: np.ndarray
    front_sizes: list[int]
    hypervolume: float
    knee: int | None
    quota: int = 0
    pruned: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pruned_before: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cap: int = 0

    @property
    def key(self) -> str:
        return self.scores.key

    @property
    def all_pruned(self) -> np.ndarray:
        """Neurons pruned in this layer by this selection and by earlier rounds."""
        return np.concatenate([self.pruned_before, self.pruned]).astype(np.int64)

    def report(self) -> dict:
        """Return this layer's entry of ``pruning_report.json``."""
        knee = None
        if self.knee is not None:
            knee = {
                "neuron": int(self.knee),
                "retain": float(self.scores.retain[self.knee]),
                "forget": float(self.scores.forget[self.knee]),
            }
        return {
            "neurons": int(self.ranks.size),
            "pruned": int(self.all_pruned.size),
            "budget": int(self.quota),
            "num_fronts": len(self.front_sizes),
            "front_sizes": [int(size) for size in self.front_sizes[:REPORTED_FRONTS]],
            "hypervolume": float(self.hypervolume),
            "knee": knee,
        }


@dataclass
class Selection:
    """Result of a selection: masks per MLP key (``True`` = kept) and the analysis behind them."""

    masks: dict[str, torch.Tensor]
    layers: list[LayerAnalysis]
    strategy: str

    @property
    def pruned_per_layer(self) -> dict[str, int]:
        """Pruned neurons per MLP key, earlier rounds included."""
        return {layer.key: int((~mask).sum()) for layer, mask in zip(self.layers, self.masks.values())}

    @property
    def total_pruned(self) -> int:
        """Pruned neurons in the whole model, earlier rounds included."""
        return sum(self.pruned_per_layer.values())

    def report(self) -> dict:
        """Return the content of ``pruning_report.json``."""
        total = sum(int(layer.ranks.size) for layer in self.layers)
        return {
            "strategy": self.strategy,
            "total_neurons": total,
            "total_pruned": self.total_pruned,
            "pruned_fraction": self.total_pruned / total if total else 0.0,
            "reference_point": {"retain": REFERENCE_POINT[0], "forget": REFERENCE_POINT[1]},
            "layers": {layer.key: layer.report() for layer in self.layers},
        }


def analyze_layer_scores(
    scores: LayerScores, max_fronts: int | None = None, pruned_before: np.ndarray | None = None
) -> LayerAnalysis:
    """Rank one layer's candidate neurons into fronts and measure the first front's hypervolume and knee.

    Neurons in ``pruned_before`` are not candidates and get rank 0.
    """
    excluded = np.zeros(scores.retain.size, dtype=bool)
    if pruned_before is not None:
        excluded[pruned_before] = True
    candidates = np.flatnonzero(~excluded)
    ranks = np.zeros(scores.retain.size, dtype=np.int64)
    ranks[candidates] = non_dominated_ranks(scores.retain[candidates], scores.forget[candidates], max_fronts=max_fronts)
    before = np.flatnonzero(excluded)
    if candidates.size == 0:
        return LayerAnalysis(scores, ranks, [], 0.0, None, pruned_before=before)

    front_sizes = np.bincount(ranks[candidates])[1:].tolist()
    if max_fronts is not None:
        # Neurons past the last ranked front share rank max_fronts + 1; they are not a front.
        front_sizes = front_sizes[:max_fronts]
    first = np.flatnonzero(ranks == 1)
    hypervolume = hypervolume_2d(scores.retain[first], scores.forget[first], reference=REFERENCE_POINT)
    knee = int(first[knee_index(scores.retain[first], scores.forget[first])])
    return LayerAnalysis(scores, ranks, front_sizes, hypervolume, knee, pruned_before=before)


def _order_by_front_and_knee(layer: LayerAnalysis, limit: int) -> np.ndarray:
    """Return up to ``limit`` neurons: front 1 first, and within a front nearest its knee first."""
    chosen: list[np.ndarray] = []
    taken = 0
    # The extra rank past the last front contains unranked neurons (when max_fronts is set);
    # they come last, ordered by distance to the knee of that group.
    for rank in range(1, len(layer.front_sizes) + 2):
        if taken >= limit:
            break
        members = np.flatnonzero(layer.ranks == rank)
        if members.size == 0:
            continue
        retain, forget = layer.scores.retain[members], layer.scores.forget[members]
        knee = knee_index(retain, forget)
        distance = np.hypot(retain - retain[knee], forget - forget[knee])
        ordered = members[np.lexsort((members, distance))]
        chosen.append(ordered[: limit - taken])
        taken += len(chosen[-1])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def _set_caps(layers: list[LayerAnalysis], config: PruningConfig) -> np.ndarray:
    """Cap each layer at max_layer_fraction of its neurons, minus those pruned in earlier rounds."""
    for layer in layers:
        limit = int(np.floor(config.max_layer_fraction * layer.ranks.size))
        layer.cap = max(0, limit - int(layer.pruned_before.size))
    return np.array([layer.cap for layer in layers])


def _total_budget(layers: list[LayerAnalysis], config: PruningConfig) -> int:
    """Neurons to add in this selection: the budget minus those pruned in earlier rounds."""
    total = int(round(config.budget * sum(layer.ranks.size for layer in layers)))
    return max(0, total - sum(int(layer.pruned_before.size) for layer in layers))


def _select_hypervolume_budget(layers: list[LayerAnalysis], config: PruningConfig) -> None:
    hypervolumes = np.array([layer.hypervolume for layer in layers])
    quotas = allocate_budget(_total_budget(layers, config), hypervolumes, _set_caps(layers, config))
    for layer, quota in zip(layers, quotas):
        layer.quota = int(quota)
        layer.pruned = _order_by_front_and_knee(layer, layer.quota)


def _select_front_past_knee(layers: list[LayerAnalysis], config: PruningConfig) -> None:
    for layer, cap in zip(layers, _set_caps(layers, config)):
        if layer.knee is None:
            continue
        first = np.flatnonzero(layer.ranks == 1)
        beyond = first[layer.scores.forget[first] >= layer.scores.forget[layer.knee]]
        # Highest forget importance first, so a cap keeps the most forget-specific neurons.
        beyond = beyond[np.argsort(-layer.scores.forget[beyond], kind="stable")]
        layer.quota = int(min(beyond.size, cap))
        layer.pruned = beyond[: layer.quota]


def _select_global_top(layers: list[LayerAnalysis], config: PruningConfig, scores: np.ndarray) -> None:
    sizes = [layer.ranks.size for layer in layers]
    scores = np.where(np.concatenate([layer.ranks for layer in layers]) == 0, -np.inf, scores)
    top = np.argsort(-scores, kind="stable")[: _total_budget(layers, config)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for index, layer in enumerate(layers):
        members = top[(top >= offsets[index]) & (top < offsets[index + 1])] - offsets[index]
        layer.pruned = members
        layer.quota = int(members.size)


def _activation_ratio_scores(layers: list[LayerAnalysis]) -> np.ndarray:
    # Selective pruning (Pochinkov and Schoots 2024) ranks neurons by forget over retain
    # importance; the epsilon keeps neurons silent on the retain set finite.
    forget = np.concatenate([layer.scores.forget_raw for layer in layers])
    retain = np.concatenate([layer.scores.retain_raw for layer in layers])
    return np.abs(forget) / (np.abs(retain) + 1e-8)


def select_neurons(
    scores: list[LayerScores], config: PruningConfig, pruned_before: dict[str, torch.Tensor] | None = None
) -> Selection:
    """Analyse every layer and choose neurons to prune with ``config.strategy``.

    Args:
        scores: Objectives per MLP from :func:`pareto_prune.scores.layer_scores`.
        config: Strategy, budget and caps.
        pruned_before: Masks from an earlier round (``False`` = already pruned). Those
            neurons stay pruned, count against the budget and caps, and are not candidates.

    Returns:
        A :class:`Selection` whose masks hold ``False`` at every pruned neuron.
    """
    layers = []
    for layer in scores:
        before = None if pruned_before is None else (~pruned_before[layer.key]).nonzero().flatten().numpy()
        layers.append(analyze_layer_scores(layer, config.max_fronts, before))

    if config.strategy == "hypervolume_budget":
        _select_hypervolume_budget(layers, config)
    elif config.strategy == "front_past_knee":
        _select_front_past_knee(layers, config)
    elif config.strategy == "activation_ratio":
        _select_global_top(layers, config, _activation_ratio_scores(layers))
    else:
        total = sum(layer.ranks.size for layer in layers)
        random_scores = np.random.default_rng(config.seed).permutation(total).astype(np.float64)
        _select_global_top(layers, config, random_scores)

    masks = {}
    for layer in layers:
        mask = torch.ones(layer.ranks.size, dtype=torch.bool)
        mask[torch.as_tensor(layer.pruned, dtype=torch.long)] = False
        mask[torch.as_tensor(layer.pruned_before, dtype=torch.long)] = False
        masks[layer.key] = mask
    selection = Selection(masks, layers, config.strategy)
    logger.info("Strategy %s selected %d neurons to prune.", config.strategy, selection.total_pruned)
    return selection
