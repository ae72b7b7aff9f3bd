"""Turn the unlearning benchmark's rows into a Markdown table and a forget-quality/utility plot.

    python benchmarks/plot_unlearning.py --results benchmarks/results --plot docs/unlearning_tradeoff.png

prints the table (for ``docs/benchmarks.md``) and writes the plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("forget_quality", "model_utility", "retain_utility", "forget_Q_A_ROUGE", "forget_Q_A_Prob")
RETAIN_COMPONENTS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio")


def add_retain_utility(rows: list[dict], results: Path) -> None:
    """Add ``retain_utility``: the harmonic mean of the three retain-split components of model_utility.

    The real-authors and world-facts ROUGE of a 135M model are near zero on a few items, so
    the nine-way harmonic mean swings with one answer; the retain split alone is steadier.
    """
    for row in rows:
        # Rows written before the benchmark recorded run names have no "run" and get no retain utility.
        if "run" not in row:
            continue
        path = results / row["run"] / "TOFU_EVAL.json"
        if not path.is_file():
            continue
        logs = json.loads(path.read_text())
        values = [logs[name]["agg_value"] for name in RETAIN_COMPONENTS]
        row["retain_utility"] = 0.0 if min(values) <= 0 else len(values) / sum(1 / value for value in values)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and (value < 1e-3 and value != 0):
        return f"{value:.2e}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict]) -> str:
    """Return the rows as a Markdown table: method, budget, pruned count, metrics and seconds."""
    lines = [
        "| method | budget | pruned neurons | forget_quality | model_utility | retain utility | forget ROUGE-L | forget probability | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        budget = "" if row.get("budget") is None else f"{100 * row['budget']:g}%"
        metrics = " | ".join(_cell(row.get(name)) for name in COLUMNS)
        lines.append(f"| {row['method']} | {budget} | {row.get('pruned', 0)} | {metrics} | {row.get('seconds', 0):.0f} |")
    return "\n".join(lines)


def plot_tradeoff(rows: list[dict], path: Path, utility: str = "model_utility") -> None:
    """Plot forget_quality (log scale) against a utility column, one line per method across budgets."""
    figure, axes = plt.subplots(figsize=(7, 5))
    methods = []
    for row in rows:
        if row["method"] not in methods:
            methods.append(row["method"])
    for method in methods:
        points = [row for row in rows if row["method"] == method and row.get("forget_quality") is not None]
        points.sort(key=lambda row: (row.get("budget") or 0, row.get("seconds", 0)))
        if not points:
            continue
        style = "*" if method in ("full model", "retain model") else "-o"
        axes.plot([p.get(utility, 0.0) for p in points], [p["forget_quality"] for p in points], style, label=method, ms=8)
    axes.set_yscale("log")
    axes.set_xlabel(f"{utility} (higher is better)")
    axes.set_ylabel("forget_quality, KS p-value (higher is better)")
    axes.axhline(0.05, color="grey", lw=0.8, ls="--")
    axes.legend(fontsize=8, loc="upper right")
    axes.set_title("TOFU testbed (SmolLM2-135M): unlearning trade-off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="benchmarks/results", help="Directory with rows.json.")
    parser.add_argument("--plot", default="docs/unlearning_tradeoff.png", help="PNG file to write.")
    args = parser.parse_args(argv)
    rows = json.loads((Path(args.results) / "rows.json").read_text())
    add_retain_utility(rows, Path(args.results))
    plot_tradeoff(rows, Path(args.plot), "model_utility")
    plot_tradeoff(rows, Path(args.plot).with_name(Path(args.plot).stem + "_retain.png"), "retain_utility")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
