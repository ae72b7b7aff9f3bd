"""Unlearning benchmark on the SmolLM2 TOFU testbed: pruning strategies against baselines.

Needs the testbed from ``examples/tofu_smollm2/build_testbed.py`` (a ``full`` model that
learnt the forget split and a ``retain`` model that did not). For every budget in the sweep
it prunes the full model with each strategy at the same budget, evaluates it with the TOFU
metrics (``pareto_prune.tofu_eval``) against the retain model, and runs GradDiff for a few
step counts as the gradient-based anchor. Every evaluation is cached as JSON under
``--results``, so an interrupted run continues where it stopped.

Run (from the repository root, after building the testbed):

    python benchmarks/unlearning.py --testbed runs/testbed --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hf_integration.job import DEFAULT_RETAIN
from hf_integration.loading import load_model_and_tokenizer
from pareto_prune.config import PruningConfig
from pareto_prune.data import length_grouped_batches, load_qa_pairs, load_qa_sources, tokenize_pairs
from pareto_prune.masking import prune_neurons
from pareto_prune.pipeline import prune_model, scan_pairs, select_from_statistics
from pareto_prune.tofu_eval import EVAL_FILENAME, evaluate_tofu

logger = logging.getLogger("benchmark")

STRATEGIES = ("random", "activation_ratio", "front_past_knee", "hypervolume_budget")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Unlearning benchmark on the SmolLM2 TOFU testbed.")
    parser.add_argument("--testbed", required=True, help="Directory with the full/ and retain/ checkpoints.")
    parser.add_argument("--results", default="benchmarks/results", help="Directory for cached evaluations and the summary.")
    parser.add_argument("--forget-split", default="forget05", help="Forget split the testbed learnt (default: %(default)s).")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.015, 0.02, 0.03],
                        help="Fractions of all MLP neurons to prune (default: %(default)s).")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="Pruning strategies to run.")
    parser.add_argument("--iterative-rounds", type=int, default=2,
                        help="Rounds for the iterative variant of hypervolume_budget; 0 skips it (default: %(default)s).")
    parser.add_argument("--graddiff-steps", type=int, nargs="*", default=[20, 40],
                        help="GradDiff step counts to evaluate; none skips it (default: %(default)s).")
    parser.add_argument("--graddiff-lr", type=float, default=5e-5, help="GradDiff learning rate (default: %(default)s).")
    parser.add_argument("--scan-samples", type=int, default=400, help="Retain pairs scanned (default: %(default)s).")
    parser.add_argument("--eval-samples", type=int, default=100, help="Forget items evaluated (default: %(default)s).")
    parser.add_argument("--utility-samples", type=int, default=40,
                        help="Items per retain, real-authors and world-facts split (default: %(default)s).")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Generation length for ROUGE (default: %(default)s).")
    parser.add_argument("--batch-size", type=int, default=16, help="Samples per forward pass (default: %(default)s).")
    return parser.parse_args(argv)


class Benchmark:
    """Shared state: the full model, its original weights, the data and the evaluation settings."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.results = Path(args.results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.config = PruningConfig()
        self.text_format = self.config.text_format()
        self.model, self.tokenizer = load_model_and_tokenizer(str(Path(args.testbed) / "full"), dtype="float32")
        self.original = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        self.forget = load_qa_pairs(f"tofu:{args.forget_split}")
        self.retain = load_qa_sources(DEFAULT_RETAIN, max_samples=args.scan_samples, seed=0)
        self.retain_log = self.results / "retain" / EVAL_FILENAME

    def restore(self) -> None:
        self.model.load_state_dict(self.original)

    def cached(self, name: str) -> dict | None:
        """Return the cached summary of run ``name``, or ``None``."""
        path = self.results / name / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def evaluate(self, name: str, model=None, tokenizer=None, retain_log: Path | None = None, extra: dict | None = None) -> dict:
        """Evaluate ``model`` (default: the benchmark's model) unless a cached result exists.

        ``extra`` fields (such as the pruned count) are stored with the cached summary.
        """
        directory = self.results / name
        summary_path = directory / "summary.json"
        if self.cached(name) is not None:
            return self.cached(name)
        started = time.time()
        result = evaluate_tofu(
            model or self.model, tokenizer or self.tokenizer, self.text_format,
            forget_split=self.args.forget_split, retain_model_log=retain_log,
            max_samples=self.args.eval_samples, utility_max_samples=self.args.utility_samples,
            batch_size=self.args.batch_size, max_new_tokens=self.args.max_new_tokens,
        )
        result.save(directory)
        summary = {**result.summary, **(extra or {}), "eval_seconds": round(time.time() - started, 1)}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _record(bench: Benchmark, rows: list, run: str, method: str, budget, pruned, seconds, summary: dict) -> None:
    """Append a table row; ``run`` names the directory with the run's evaluation logs."""
    row = {"method": method, "run": run, "budget": budget, "pruned": pruned, "seconds": round(seconds, 1), **summary}
    rows.append(row)
    logger.info("%s", json.dumps(row))
    (bench.results / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")


def run_references(bench: Benchmark, rows: list) -> None:
    retain_model, retain_tokenizer = load_model_and_tokenizer(str(Path(bench.args.testbed) / "retain"), dtype="float32")
    _record(bench, rows, "retain", "retain model", None, 0, 0.0, bench.evaluate("retain", retain_model, retain_tokenizer))
    del retain_model
    _record(bench, rows, "full", "full model", None, 0, 0.0, bench.evaluate("full", retain_log=bench.retain_log))


def run_pruning(bench: Benchmark, rows: list) -> None:
    started = time.time()
    forget_stats = scan_pairs(bench.model, bench.tokenizer, bench.forget, bench.config, bench.args.batch_size, "forget scan")
    retain_stats = scan_pairs(bench.model, bench.tokenizer, bench.retain, bench.config, bench.args.batch_size, "retain scan")
    scan_seconds = time.time() - started

    # front_past_knee prunes what its rule selects whatever the budget, so it runs once.
    if "front_past_knee" in bench.args.strategies:
        run_strategy(bench, rows, forget_stats, retain_stats, "front_past_knee", None, scan_seconds)
    for budget in bench.args.budgets:
        for strategy in bench.args.strategies:
            if strategy != "front_past_knee":
                run_strategy(bench, rows, forget_stats, retain_stats, strategy, budget, scan_seconds)

        if bench.args.iterative_rounds > 1:
            run_iterative(bench, rows, budget)
    bench.restore()


def run_strategy(bench: Benchmark, rows: list, forget_stats, retain_stats, strategy: str, budget, scan_seconds: float) -> None:
    """Prune the full model with one strategy from the shared scans, evaluate it and record the row."""
    config = PruningConfig(strategy=strategy) if budget is None else PruningConfig(strategy=strategy, budget=budget)
    started = time.time()
    selection = select_from_statistics(forget_stats, retain_stats, config)
    select_seconds = time.time() - started
    bench.restore()
    prune_neurons(bench.model, selection.masks)
    name = strategy if budget is None else f"{strategy}-{budget}"
    summary = bench.evaluate(name, retain_log=bench.retain_log)
    _record(bench, rows, name, strategy, budget, selection.total_pruned, scan_seconds + select_seconds, summary)


def run_iterative(bench: Benchmark, rows: list, budget: float) -> None:
    """Scan, prune a slice of the budget, rescan the pruned model, and repeat."""
    rounds = bench.args.iterative_rounds
    name = f"hypervolume_budget-iterative{rounds}-{budget}"
    cached = bench.cached(name)
    if cached is None:
        bench.restore()
        started = time.time()
        config = PruningConfig(budget=budget, rounds=rounds)
        selection = prune_model(bench.model, bench.tokenizer, bench.forget, bench.retain, config, bench.args.batch_size).selection
        extra = {"pruned": selection.total_pruned, "method_seconds": round(time.time() - started, 1)}
        cached = bench.evaluate(name, retain_log=bench.retain_log, extra=extra)
    _record(bench, rows, name, f"hypervolume_budget, {rounds} rounds", budget, cached["pruned"], cached["method_seconds"], cached)


def _nll(model, batch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels()).loss


def run_graddiff(bench: Benchmark, rows: list) -> None:
    """GradDiff: gradient ascent on the forget loss plus descent on the retain loss (Liu et al. 2022)."""
    if not bench.args.graddiff_steps:
        return
    bench.restore()
    pad = bench.tokenizer.pad_token_id
    forget_batches = length_grouped_batches(tokenize_pairs(bench.tokenizer, bench.forget, bench.text_format), 8, pad)
    retain_batches = length_grouped_batches(tokenize_pairs(bench.tokenizer, bench.retain, bench.text_format), 8, pad)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW([p for p in bench.model.parameters() if p.requires_grad], lr=bench.args.graddiff_lr)
    bench.model.train()
    started = time.time()
    for step in range(1, max(bench.args.graddiff_steps) + 1):
        forget = forget_batches[rng.integers(len(forget_batches))]
        retain = retain_batches[rng.integers(len(retain_batches))]
        loss = -_nll(bench.model, forget) + _nll(bench.model, retain)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in bench.args.graddiff_steps:
            bench.model.eval()
            seconds = time.time() - started
            name = f"graddiff-{bench.args.graddiff_lr:g}-{step}"
            summary = bench.evaluate(name, retain_log=bench.retain_log)
            _record(bench, rows, name, f"GradDiff, lr {bench.args.graddiff_lr:g}, {step} steps", None, 0, seconds, summary)
            bench.model.train()
    bench.model.eval()
    bench.restore()


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    bench = Benchmark(args)
    rows: list = []
    run_references(bench, rows)
    run_pruning(bench, rows)
    run_graddiff(bench, rows)
    machine = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
               "cpu_threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    (bench.results / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    logger.info("Done: %d rows in %s", len(rows), bench.results / "rows.json")


if __name__ == "__main__":
    main()
