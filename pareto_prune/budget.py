"""Share a global pruning budget between layers in proportion to their hypervolume."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def allocate_budget(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` neurons between layers in proportion to ``weights``, within ``caps``.

    Layer l gets n_l = total * w_l / sum_j w_j, computed by water-filling: a layer whose
    share exceeds its cap c_l is fixed at c_l, and the rest of the budget is shared again
    among the remaining layers, until no share exceeds its cap. The real-valued shares are
    then rounded by the largest-remainder (Hamilton) method, so ``sum(n) == total`` when
    the caps allow it. Layers with zero weight get nothing. If the caps of the layers with
    positive weight sum to less than ``total``, every such layer gets its cap and the
    shortfall is logged.

    Args:
        total: Neurons to prune in the whole model (non-negative).
        weights: Non-negative weight per layer, here the hypervolume of its first front.
        caps: Maximum neurons per layer (non-negative integers).

    Returns:
        Integer neurons per layer.
    """
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    if total < 0 or np.any(weights < 0) or np.any(caps < 0):
        raise ValueError("allocate_budget needs a non-negative total, weights and caps.")

    eligible = weights > 0
    if caps[eligible].sum() <= total:
        if caps[eligible].sum() < total:
            logger.warning(
                "Budget of %d neurons exceeds the per-layer caps (%d in all); pruning %d. Raise the "
                "per-layer cap to prune more.", total, int(caps[eligible].sum()), int(caps[eligible].sum()),
            )
        return np.where(eligible, caps, 0)

    shares = np.zeros_like(weights)
    free = eligible.copy()
    remaining = float(total)
    while True:
        proposal = remaining * weights * free / weights[free].sum()
        over = free & (proposal > caps)
        if not over.any():
            shares[free] = proposal[free]
            break
        shares[over] = caps[over]
        remaining -= caps[over].sum()
        free &= ~over

    counts = np.floor(shares).astype(np.int64)
    leftover = total - int(counts.sum())
    room = (counts < caps) & eligible
    order = np.argsort(-(shares - counts) * room, kind="stable")
    counts[order[:leftover]] += 1
    return counts
