"""PNG plots of a selection: each layer's (R, F) scatter and the pruned count per layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pareto_prune.selection import LayerAnalysis, Selection  # noqa: E402

# Fronts drawn as lines in a scatter plot; later fronts are only grey points.
DRAWN_FRONTS = 3


def _layer_label(key: str) -> str:
    return key.removeprefix("model.").removesuffix(".mlp")


def _draw_layer(axes, layer: LayerAnalysis) -> None:
    retain, forget = layer.scores.retain, layer.scores.forget
    axes.scatter(retain, forget, s=2, c="lightgrey", label="neurons", rasterized=True)
    colors = ["tab:blue", "tab:green", "tab:purple"]
    for rank in range(1, min(DRAWN_FRONTS, len(layer.front_sizes)) + 1):
        members = np.flatnonzero(layer.ranks == rank)
        members = members[np.argsort(retain[members], kind="stable")]
        axes.plot(retain[members], forget[members], "-o", ms=2.5, lw=1, color=colors[rank - 1], label=f"front {rank}")
    if layer.all_pruned.size:
        axes.scatter(retain[layer.all_pruned], forget[layer.all_pruned], s=14, facecolors="none", edgecolors="tab:red", label="pruned")
    if layer.knee is not None:
        axes.scatter([retain[layer.knee]], [forget[layer.knee]], marker="*", s=120, c="orange", edgecolors="black", label="knee", zorder=5)
    axes.set_title(f"{_layer_label(layer.key)}: {layer.all_pruned.size} pruned, HV {layer.hypervolume:.3f}", fontsize=9)
    axes.set_xlabel("R (retain importance, normalised)")
    axes.set_ylabel("F (forget importance, normalised)")


def plot_layer(layer: LayerAnalysis, path: str | Path) -> None:
    """Write one layer's (R, F) scatter with fronts 1 to 3, the knee and the pruned neurons."""
    figure, axes = plt.subplots(figsize=(5, 4.5))
    _draw_layer(axes, layer)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_pruned_per_layer(selection: Selection, path: str | Path) -> None:
    """Write a bar chart of pruned neurons per layer, with each layer's budget as a marker."""
    labels = [_layer_label(layer.key) for layer in selection.layers]
    pruned = [layer.all_pruned.size for layer in selection.layers]
    figure, axes = plt.subplots(figsize=(max(6, 0.3 * len(labels)), 4))
    positions = np.arange(len(labels))
    axes.bar(positions, pruned, color="tab:red", label="pruned")
    axes.set_xticks(positions, labels, rotation=90, fontsize=7)
    axes.set_ylabel("pruned neurons")
    axes.set_title(f"{selection.strategy}: {selection.total_pruned} neurons pruned")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_plots(selection: Selection, directory: str | Path) -> list[Path]:
    """Write ``pruned_per_layer.png`` and ``layers/<layer>.png`` for every layer; return the paths."""
    directory = Path(directory)
    (directory / "layers").mkdir(parents=True, exist_ok=True)
    paths = [directory / "pruned_per_layer.png"]
    plot_pruned_per_layer(selection, paths[0])
    for layer in selection.layers:
        path = directory / "layers" / f"{_layer_label(layer.key).replace('.', '_')}.png"
        plot_layer(layer, path)
        paths.append(path)
    return paths
