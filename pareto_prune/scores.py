"""Turn neuron statistics into the two objectives of the Pareto analysis.

Each neuron gets F, its importance on the forget set (to be maximised among pruned
neurons), and R, its importance on the retain set (to be minimised). Both are put on a
scale shared by all layers so that one reference point and one budget serve the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from pareto_prune.statistics import NeuronStatistics

NORMALIZATIONS = ("global_quantile", "global_max")


@dataclass
class LayerScores:
    """Objectives of one MLP's neurons.

    Attributes:
        key: MLP key, for example ``"model.layers.3.mlp"``.
        retain_raw: Retain-set statistic per neuron, before normalisation.
        forget_raw: Forget-set statistic per neuron, before normalisation.
        retain: Normalised retain importance R in [0, 1].
        forget: Normalised forget importance F in [0, 1].
    """

    key: str
    retain_raw: np.ndarray
    forget_raw: np.ndarray
    retain: np.ndarray
    forget: np.ndarray


def _normalize(values: np.ndarray, method: str) -> np.ndarray:
    if values.size == 0:
        return values.astype(np.float64)
    if method == "global_quantile":
        # Average ranks keep tied neurons tied; (rank - 1) / (n - 1) maps onto [0, 1].
        ranks = rankdata(values, method="average")
        return (ranks - 1.0) / max(values.size - 1, 1)
    peak = float(np.max(np.abs(values)))
    return values / peak if peak > 0 else np.zeros_like(values, dtype=np.float64)


def layer_scores(
    retain: NeuronStatistics,
    forget: NeuronStatistics,
    statistic: str = "mean_abs",
    normalization: str = "global_quantile",
) -> list[LayerScores]:
    """Compute normalised (R, F) per neuron for every MLP.

    Normalisation runs over all neurons of all layers together:

    * ``global_quantile``: x -> (rank(x) - 1) / (N - 1), with average ranks for ties, so
      each objective becomes uniform on [0, 1]. Robust to a few outlier neurons.
    * ``global_max``: x -> x / max |x| over the model, which keeps ratios between neurons.

    Raises:
        ValueError: for an unknown normalisation, or statistics of different models.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}.")
    if retain.sizes != forget.sizes:
        raise ValueError("Retain and forget statistics come from models with different MLPs; scan both with the same model.")
    for name, stats in (("retain", retain), ("forget", forget)):
        if stats.total_tokens == 0:
            raise ValueError(f"The {name} scan counted no tokens; check that the {name} set is not empty.")

    retain_values = retain.statistic(statistic)
    forget_values = forget.statistic(statistic)
    keys = retain.keys
    sizes = [retain.sizes[key] for key in keys]
    retain_all = np.concatenate([retain_values[key].numpy() for key in keys])
    forget_all = np.concatenate([forget_values[key].numpy() for key in keys])
    retain_norm = np.split(_normalize(retain_all, normalization), np.cumsum(sizes)[:-1])
    forget_norm = np.split(_normalize(forget_all, normalization), np.cumsum(sizes)[:-1])

    return [
        LayerScores(key, retain_values[key].numpy(), forget_values[key].numpy(), r, f)
        for key, r, f in zip(keys, retain_norm, forget_norm)
    ]
