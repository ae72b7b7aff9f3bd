"""Screen variants of the neuron selection on the SmolLM2 TOFU testbed, without generation.

``benchmarks/unlearning.py`` measures the shipped strategies with the full TOFU evaluation.
This script tries changes to the inputs of the selection, and measures each with the parts of
the evaluation that need no generation. Its forget_quality, forget answer probability and
forget truth ratio equal those of ``pareto-prune eval`` on the same items. Its utility is the
harmonic mean of the six probability and truth-ratio components of model_utility, so the
three ROUGE components are left out. Skipping generation makes one evaluation about
as fast as a pruning run, so more variants fit in a session.

Variants (``--variants``), each at every ``--budgets`` fraction:

* ``hypervolume_budget``: the default strategy on mean |activation|.
* ``forget_leaning``: the same, with candidates restricted to neurons whose normalised
  forget importance exceeds their retain importance (F > R); the others are moved to the
  worst point (R = 1, F = 0), so they come last.
* ``taylor``: the default strategy on first-order Taylor importance instead of activations,
  mean over answer tokens of sum_t |a_t * dL/da_t| with L the summed answer-token
  cross-entropy (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning").

Retain scan sets (``--retain-scan``):

* ``sampled``: 400 pairs drawn from retain90, real_authors and world_facts (seed 0), as
  ``pareto-prune prune`` scans by default.
* ``trained``: the 100 retain90 rows the testbed learnt, plus all of real_authors and
  world_facts.
* ``trained_only``: the 100 learnt retain90 rows alone.

Run (from the repository root, after building the testbed):

    python benchmarks/selection_variants.py --testbed runs/testbed --results runs/variants \\
        --variants hypervolume_budget forget_leaning --budgets 0.01 0.03
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import pareto_prune.tofu_eval as tofu_eval
from hf_integration.job import DEFAULT_RETAIN
from hf_integration.loading import load_model_and_tokenizer
from pareto_prune.config import PruningConfig
from pareto_prune.data import IGNORE_INDEX, length_grouped_batches, load_qa_pairs, load_qa_sources, tokenize_pairs
from pareto_prune.masking import prune_neurons
from pareto_prune.mlp import find_swiglu_mlps
from pareto_prune.pipeline import scan_pairs
from pareto_prune.scores import LayerScores, layer_scores
from pareto_prune.selection import select_neurons
from pareto_prune.statistics import NeuronStatistics

logger = logging.getLogger("selection_variants")

VARIANTS = ("hypervolume_budget", "forget_leaning", "taylor")
RETAIN_SCANS = ("sampled", "trained", "trained_only")
# The testbed learnt the first 100 rows of retain90 (examples/tofu_smollm2/build_testbed.py).
TESTBED_RETAIN_ROWS = 100
UTILITY_COMPONENTS = (
    "retain_Q_A_Prob", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised",
    "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Screen selection variants on the SmolLM2 TOFU testbed.")
    parser.add_argument("--testbed", required=True, help="Directory with the full/ and retain/ checkpoints.")
    parser.add_argument("--results", default="runs/variants", help="Directory for statistics, logs and rows.jsonl.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="Variants to run.")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.03], help="Fractions of all MLP neurons to prune.")
    parser.add_argument("--retain-scan", default="sampled", choices=RETAIN_SCANS, help="Retain set scanned (default: %(default)s).")
    parser.add_argument("--eval-samples", type=int, default=80, help="Forget items evaluated (default: %(default)s).")
    parser.add_argument("--utility-samples", type=int, default=40, help="Items per utility split (default: %(default)s).")
    parser.add_argument("--batch-size", type=int, default=16, help="Samples per forward pass (default: %(default)s).")
    return parser.parse_args(argv)


def _no_generations(model, tokenizer, pairs, *args, **kwargs) -> list[str]:
    return ["" for _ in pairs]


def retain_pairs(retain_scan: str) -> list:
    """Return the retain pairs scanned for ``retain_scan``."""
    if retain_scan == "sampled":
        return load_qa_sources(DEFAULT_RETAIN, max_samples=400, seed=0)
    learnt = load_qa_pairs("tofu:retain90")[:TESTBED_RETAIN_ROWS]
    if retain_scan == "trained_only":
        return learnt
    return learnt + load_qa_pairs("tofu:real_authors") + load_qa_pairs("tofu:world_facts")


def taylor_statistics(model, tokenizer, pairs, config: PruningConfig, batch_size: int, description: str) -> NeuronStatistics:
    """Return first-order Taylor importance per neuron, stored as the ``mean_abs`` statistic.

    For each batch the summed answer-token cross-entropy L is back-propagated, and
    |a_t * dL/da_t| is added over every non-padding position t. The sums are divided by the
    number of answer tokens. Parameters get no gradients: the embedding output is the leaf.
    """
    mlps = find_swiglu_mlps(model)
    statistics = NeuronStatistics({mlp.key: mlp.num_neurons for mlp in mlps})
    activations = {}

    def keep_activation(key):
        def hook(module, args):
            args[0].retain_grad()
            activations[key] = args[0]
        return hook

    handles = [mlp.down_proj_in_model.register_forward_pre_hook(keep_activation(mlp.key)) for mlp in mlps]
    handles.append(model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_()))
    requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    model.requires_grad_(False)
    answer_tokens = 0
    try:
        samples = tokenize_pairs(tokenizer, pairs, config.text_format(), max_length=config.max_length)
        for batch in tqdm(length_grouped_batches(samples, batch_size, tokenizer.pad_token_id), desc=description):
            labels = batch.labels()
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            loss.backward()

            real = batch.attention_mask.bool()
            for key, activation in activations.items():
                statistics.sums["sum_abs"][key] += (activation.detach() * activation.grad)[real].abs().sum(0).double()
            answer_tokens += int((labels != IGNORE_INDEX).sum())
            activations.clear()
    finally:
        for handle in handles:
            handle.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad[name])

    for key in statistics.count:
        statistics.count[key] += answer_tokens
    return statistics


def forget_leaning(scores: list[LayerScores]) -> list[LayerScores]:
    """Move every neuron with F <= R to the worst point (R = 1, F = 0), so only F > R are chosen first."""
    result = []
    for layer in scores:
        leaning = layer.forget > layer.retain
        result.append(dataclasses.replace(
            layer, retain=np.where(leaning, layer.retain, 1.0), forget=np.where(leaning, layer.forget, 0.0)
        ))
    return result


def screen(model, tokenizer, args, retain_log: Path | None = None) -> tuple[tofu_eval.TofuEvalResult, dict]:
    """Evaluate without generation and return the log and a row of the screen's metrics."""
    result = tofu_eval.evaluate_tofu(
        model, tokenizer, PruningConfig().text_format(), forget_split="forget05", retain_model_log=retain_log,
        max_samples=args.eval_samples, utility_max_samples=args.utility_samples,
        batch_size=args.batch_size, max_new_tokens=1,
    )
    logs = result.logs
    components = [logs[name]["agg_value"] for name in UTILITY_COMPONENTS]
    row = {
        "forget_quality": logs["forget_quality"]["agg_value"],
        "forget_Q_A_Prob": logs["forget_Q_A_Prob"]["agg_value"],
        "forget_truth_ratio": logs["forget_truth_ratio"]["agg_value"],
        "probability_utility": tofu_eval.harmonic_mean(components),
        "retain_Q_A_Prob": logs["retain_Q_A_Prob"]["agg_value"],
        "ra_Q_A_Prob_normalised": logs["ra_Q_A_Prob_normalised"]["agg_value"],
        "wf_Q_A_Prob_normalised": logs["wf_Q_A_Prob_normalised"]["agg_value"],
    }
    return result, row


def cached_statistics(path: Path, compute) -> NeuronStatistics:
    if path.is_file():
        return NeuronStatistics.load(path)[0]
    statistics = compute()
    statistics.save(path)
    return statistics


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # The screen skips generation, which only the ROUGE metrics use.
    tofu_eval.greedy_generations = _no_generations
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    config = PruningConfig()
    rows_path = results / "rows.jsonl"
    done = {json.loads(line)["name"] for line in rows_path.open()} if rows_path.exists() else set()

    retain_log = results / "retain"
    if not (retain_log / tofu_eval.EVAL_FILENAME).exists():
        retain_model, retain_tokenizer = load_model_and_tokenizer(str(Path(args.testbed) / "retain"), dtype="float32")
        screen(retain_model, retain_tokenizer, args)[0].save(retain_log)
        del retain_model

    model, tokenizer = load_model_and_tokenizer(str(Path(args.testbed) / "full"), dtype="float32")
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    forget, retain = load_qa_pairs("tofu:forget05"), retain_pairs(args.retain_scan)
    rows = [("full model", None, None)] + [(variant, budget, variant) for budget in args.budgets for variant in args.variants]

    for label, budget, variant in rows:
        name = label if budget is None else f"{variant}-{args.retain_scan}-{budget}"
        if name in done:
            continue
        started = time.time()
        model.load_state_dict(original)
        pruned = 0
        if variant is not None:
            # Both scans take (model, tokenizer, pairs, config, batch_size, description).
            # The Taylor scan back-propagates, so it uses smaller batches.
            if variant == "taylor":
                scan, prefix, batch_size = taylor_statistics, "taylor_", 8
            else:
                scan, prefix, batch_size = scan_pairs, "", args.batch_size
            forget_stats = cached_statistics(results / f"{prefix}forget.safetensors", lambda: scan(
                model, tokenizer, forget, config, batch_size, f"{prefix}forget scan"))
            retain_stats = cached_statistics(results / f"{prefix}retain_{args.retain_scan}.safetensors", lambda: scan(
                model, tokenizer, retain, config, batch_size, f"{prefix}retain scan"))
            scores = layer_scores(retain_stats, forget_stats)
            if variant == "forget_leaning":
                scores = forget_leaning(scores)
            selection = select_neurons(scores, dataclasses.replace(config, budget=budget))
            prune_neurons(model, selection.masks)
            pruned = selection.total_pruned

        _, row = screen(model, tokenizer, args, retain_log)
        row.update(name=name, variant=variant, retain_scan=args.retain_scan, budget=budget, pruned=pruned,
                   seconds=round(time.time() - started))
        logger.info("%s", json.dumps(row))
        with rows_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
