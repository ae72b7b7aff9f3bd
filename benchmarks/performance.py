"""Measure the cost of pareto-prune's activation scan and Pareto analysis on the default model.

One run reports four ratios against their targets:

(a) scan throughput over plain-forward throughput on the same batches, once with the
    forward options the scan uses (``use_cache=False, logits_to_keep=1``) and once with
    a default forward pass (cache and all logits); target >= 0.95;
(b) real tokens over processed token positions for length-grouped batches, next to
    batches padded to 512 positions; target >= 0.85;
(c) seconds for ``layer_scores`` + ``select_neurons`` with the default options on
    synthetic statistics of 32 x 14336 and 80 x 28672 neurons; targets < 1 s and < 5 s;
(d) peak resident memory of the scan above the resident memory before it, as a
    fraction of the model's parameter and buffer bytes; target < 0.10.

Usage::

    python benchmarks/performance.py [--pairs 64] [--batch-size 8] [--rounds 2] [--threads N] [--json results.json]

The model is SmolLM2-135M-Instruct as loaded by
``hf_integration.loading.load_model_and_tokenizer()``; the first run converts and caches it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from hf_integration.loading import load_model_and_tokenizer
from pareto_prune.config import PruningConfig
from pareto_prune.data import length_grouped_batches, load_qa_sources, padding_efficiency, tokenize_pairs
from pareto_prune.scan import scan_activations
from pareto_prune.scores import layer_scores
from pareto_prune.selection import select_neurons
from pareto_prune.statistics import NeuronStatistics

FIXED_WIDTH = 512
TARGETS = {
    "scan_vs_plain_same_kwargs": (">=", 0.95),
    "length_grouped_efficiency": (">=", 0.85),
    "pareto_32x14336_seconds": ("<", 1.0),
    "pareto_80x28672_seconds": ("<", 5.0),
    "scan_memory_fraction": ("<", 0.10),
}
# Forward options of the scan (see pareto_prune.scan._forward_kwargs) and of a default call.
SCAN_KWARGS = {"use_cache": False, "logits_to_keep": 1}
DEFAULT_KWARGS: dict = {}


def machine_description() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        model_names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = model_names[0] if model_names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def make_batches(tokenizer, specs: list[str], pairs: int, batch_size: int):
    config = PruningConfig()
    qa_pairs = load_qa_sources(specs, max_samples=pairs, seed=config.seed)
    samples = tokenize_pairs(tokenizer, qa_pairs, config.text_format(), max_length=config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return samples, length_grouped_batches(samples, batch_size, pad_id)


def plain_forward(model, batches, kwargs: dict) -> None:
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)


def run_scan(model, batches) -> None:
    scan_activations(model, batches, show_progress=False)


# ---------------------------------------------------------------------------------------
# (a) throughput


def measure_throughput(model, batches, rounds: int) -> dict:
    """Time each method ``rounds`` times, rotating the order, and keep each method's fastest pass."""
    methods = {
        "scan": lambda: run_scan(model, batches),
        "plain_same_kwargs": lambda: plain_forward(model, batches, SCAN_KWARGS),
        "plain_default": lambda: plain_forward(model, batches, DEFAULT_KWARGS),
    }
    # Warm-up on the smallest batch: loads kernels and pages the weights in.
    run_scan(model, batches[-1:])
    plain_forward(model, batches[-1:], SCAN_KWARGS)
    plain_forward(model, batches[-1:], DEFAULT_KWARGS)

    names = list(methods)
    seconds = {name: [] for name in names}
    for round_index in range(rounds):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            start = time.perf_counter()
            methods[name]()
            seconds[name].append(time.perf_counter() - start)

    tokens = sum(int(batch.attention_mask.sum()) for batch in batches)
    best = {name: min(times) for name, times in seconds.items()}
    return {
        "real_tokens": tokens,
        "seconds_per_pass": seconds,
        "tokens_per_second": {name: tokens / value for name, value in best.items()},
        "scan_vs_plain_same_kwargs": best["plain_same_kwargs"] / best["scan"],
        "scan_vs_plain_default": best["plain_default"] / best["scan"],
    }


# ---------------------------------------------------------------------------------------
# (b) padding


def padding_report(samples, batches) -> dict:
    real = sum(len(sample) for sample in samples)
    return {
        "samples": len(samples),
        "real_tokens": real,
        "length_grouped_efficiency": padding_efficiency(batches),
        "fixed_512_efficiency": real / (len(samples) * FIXED_WIDTH),
    }


# ---------------------------------------------------------------------------------------
# (c) Pareto analysis


def synthetic_statistics(layers: int, neurons: int, seed: int) -> tuple[NeuronStatistics, NeuronStatistics]:
    """Return (retain, forget) statistics whose mean |activation| are correlated log-normal values.

    Each neuron has a shared log-normal scale, and each set multiplies it by its own
    log-normal noise, as neurons that fire strongly tend to do so on both sets.
    """
    rng = np.random.default_rng(seed)
    sizes = {f"model.layers.{layer}.mlp": neurons for layer in range(layers)}
    retain, forget = NeuronStatistics(sizes), NeuronStatistics(sizes)
    tokens = 10_000.0
    for key in sizes:
        scale = rng.lognormal(mean=-2.0, sigma=1.0, size=neurons)
        for statistics in (retain, forget):
            mean_abs = scale * rng.lognormal(mean=0.0, sigma=0.5, size=neurons)
            statistics.count[key] = torch.tensor(tokens, dtype=torch.float64)
            statistics.sums["sum_abs"][key] = torch.from_numpy(mean_abs * tokens)
    return retain, forget


def time_pareto(layers: int, neurons: int) -> dict:
    retain, forget = synthetic_statistics(layers, neurons, seed=0)
    config = PruningConfig()
    start = time.perf_counter()
    scores = layer_scores(retain, forget, statistic=config.statistic, normalization=config.normalization)
    scored = time.perf_counter()
    selection = select_neurons(scores, config)
    done = time.perf_counter()
    return {
        "layers": layers,
        "neurons_per_layer": neurons,
        "layer_scores_seconds": scored - start,
        "select_neurons_seconds": done - scored,
        "seconds": done - start,
        "pruned": selection.total_pruned,
    }


# ---------------------------------------------------------------------------------------
# (d) memory


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line.")
    return int(match.group(1))


def memory_probe(method: str, pairs: int, batch_size: int) -> dict:
    """Measure, in this fresh process, the resident-memory peak of one pass above the memory before it.

    Linux keeps the peak resident set size in VmHWM, and writing 5 to /proc/self/clear_refs
    resets it to the current size. A warm-up forward on the smallest batch first pages in
    the weights and kernels, so that the pass itself adds only its activations, the
    statistics and any allocator growth.
    """
    model, tokenizer = load_model_and_tokenizer()
    _, batches = make_batches(tokenizer, ["tofu:forget10"], pairs, batch_size)
    plain_forward(model, batches[-1:], SCAN_KWARGS)
    gc.collect()

    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if method == "scan":
        run_scan(model, batches)
    else:
        plain_forward(model, batches, SCAN_KWARGS)
    peak = _status_kib("VmHWM")
    return {"model_bytes": model_bytes, "rss_before_kib": before, "peak_kib": peak, "peak_above_before_bytes": (peak - before) * 1024}


def measure_memory(pairs: int, batch_size: int) -> dict:
    """Run :func:`memory_probe` for the scan and for a plain forward, each in a fresh interpreter."""
    results = {}
    for method in ("scan", "plain_same_kwargs"):
        command = [
            sys.executable, __file__, "--memory-probe", method, "--pairs", str(pairs),
            "--batch-size", str(batch_size), "--threads", str(torch.get_num_threads()),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"Memory probe for {method} failed:\n{completed.stderr[-2000:]}")
        results[method] = json.loads(completed.stdout.strip().splitlines()[-1])
    model_bytes = results["scan"]["model_bytes"]
    return {
        "model_bytes": model_bytes,
        "scan_peak_above_before_bytes": results["scan"]["peak_above_before_bytes"],
        "plain_peak_above_before_bytes": results["plain_same_kwargs"]["peak_above_before_bytes"],
        "scan_memory_fraction": results["scan"]["peak_above_before_bytes"] / model_bytes,
        "plain_memory_fraction": results["plain_same_kwargs"]["peak_above_before_bytes"] / model_bytes,
    }


# ---------------------------------------------------------------------------------------
# Report


def check(name: str, value: float) -> tuple[str, str]:
    operator, target = TARGETS[name]
    passed = value >= target if operator == ">=" else value < target
    return f"{operator} {target:g}", "yes" if passed else "NO"


def print_table(results: dict) -> None:
    machine = results["machine"]
    print(f"\nMachine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, "
          f"1-minute load average {machine['load_average_1min']:.2f} at start; torch {machine['torch']}, "
          f"transformers {machine['transformers']}.")
    settings = results["settings"]
    model = results["model"]
    print(f"Model: {model['name']} ({model['parameters'] / 1e6:.0f}M parameters, {model['dtype']}). "
          f"Data: {settings['pairs']} pairs of tofu:forget10, "
          f"batch size {settings['batch_size']}, best of {settings['rounds']} timed passes per method.\n")

    throughput, padding, memory = results["throughput"], results["padding"], results["memory"]
    rows = [
        ("(a) scan / plain forward, same kwargs", throughput["scan_vs_plain_same_kwargs"], "scan_vs_plain_same_kwargs"),
        ("(a) scan / plain forward, default kwargs", throughput["scan_vs_plain_default"], None),
        ("(b) real / processed, length-grouped", padding["benchmark_sample"]["length_grouped_efficiency"], "length_grouped_efficiency"),
        ("(b) real / processed, padded to 512", padding["benchmark_sample"]["fixed_512_efficiency"], None),
        ("(b) length-grouped, job default sets", padding["job_default_sets"]["length_grouped_efficiency"], None),
        ("(b) padded to 512, job default sets", padding["job_default_sets"]["fixed_512_efficiency"], None),
        ("(c) Pareto analysis 32 x 14336 [s]", results["pareto"]["32x14336"]["seconds"], "pareto_32x14336_seconds"),
        ("(c) Pareto analysis 80 x 28672 [s]", results["pareto"]["80x28672"]["seconds"], "pareto_80x28672_seconds"),
        ("(d) scan peak memory / model memory", memory["scan_memory_fraction"], "scan_memory_fraction"),
        ("(d) plain forward peak / model memory", memory["plain_memory_fraction"], None),
    ]
    print(f"{'measure':<44}{'value':>10}  {'target':<8}{'met':>4}")
    for label, value, target_name in rows:
        target, met = check(target_name, value) if target_name else ("", "")
        print(f"{label:<44}{value:>10.3f}  {target:<8}{met:>4}")

    speeds = throughput["tokens_per_second"]
    print(f"\nThroughput (real tokens/s): scan {speeds['scan']:.0f}, plain same kwargs {speeds['plain_same_kwargs']:.0f}, "
          f"plain default {speeds['plain_default']:.0f}; {throughput['real_tokens']} real tokens per pass.")
    print(f"Model memory {memory['model_bytes'] / 2**20:.0f} MiB; peak above the resident set before the pass: "
          f"scan {memory['scan_peak_above_before_bytes'] / 2**20:.1f} MiB, "
          f"plain forward {memory['plain_peak_above_before_bytes'] / 2**20:.1f} MiB "
          "(Linux VmHWM after resetting it through /proc/self/clear_refs, one fresh process each).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="Forget pairs to scan (default: %(default)s).")
    parser.add_argument("--batch-size", type=int, default=8, help="Samples per batch (default: %(default)s).")
    parser.add_argument("--rounds", type=int, default=2, help="Timed passes per method; the fastest counts (default: %(default)s).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every measurement (default: torch's own choice).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results as JSON to this file.")
    parser.add_argument("--memory-probe", choices=["scan", "plain_same_kwargs"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.pairs, args.batch_size)))
        return 0

    results = {
        "machine": machine_description(),
        "settings": {"pairs": args.pairs, "batch_size": args.batch_size, "rounds": args.rounds, "threads": torch.get_num_threads()},
    }
    model, tokenizer = load_model_and_tokenizer()
    results["model"] = {
        "name": Path(getattr(model.config, "name_or_path", "") or type(model).__name__).name,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    samples, batches = make_batches(tokenizer, ["tofu:forget10"], args.pairs, args.batch_size)
    # The sets `pareto-prune prune` scans by default: 400 forget pairs and 400 retain pairs.
    job_samples, job_batches = [], []
    for specs in (["tofu:forget10"], ["tofu:retain90", "tofu:real_authors", "tofu:world_facts"]):
        set_samples, set_batches = make_batches(tokenizer, specs, 400, args.batch_size)
        job_samples += set_samples
        job_batches += set_batches
    results["padding"] = {
        "benchmark_sample": padding_report(samples, batches),
        "job_default_sets": padding_report(job_samples, job_batches),
    }

    results["throughput"] = measure_throughput(model, batches, args.rounds)
    del model
    gc.collect()
    results["pareto"] = {f"{layers}x{neurons}": time_pareto(layers, neurons) for layers, neurons in ((32, 14336), (80, 28672))}
    results["memory"] = measure_memory(args.pairs, args.batch_size)
    results["targets"] = {name: {"operator": operator, "target": target} for name, (operator, target) in TARGETS.items()}

    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nResults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
