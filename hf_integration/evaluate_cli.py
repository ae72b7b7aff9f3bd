"""The ``pareto-prune eval`` subcommand: TOFU evaluation of a saved or Hub model."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from hf_integration.loading import DTYPES, cache_dir, load_model_and_tokenizer
from hf_integration.output_dir import check_outside_protected
from pareto_prune.data import TextFormat
from pareto_prune.tofu_eval import (
    EVAL_FILENAME,
    FORGET_SPLITS,
    MODEL_UTILITY_COMPONENTS,
    SUMMARY_FILENAME,
    SUMMARY_METRICS,
    TofuEvalResult,
    evaluate_tofu,
)

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = TextFormat().system_prompt


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand, which dispatches to :func:`run_eval`, to ``subparsers`` and return its parser."""
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a model on TOFU with Open-Unlearning's metrics.",
        description=(
            "Evaluate a model on the bundled TOFU splits and write TOFU_EVAL.json (every metric, per item) "
            "and TOFU_SUMMARY.json (headline metrics) in Open-Unlearning's layout."
        ),
    )
    parser.add_argument(
        "--model", default=None,
        help="Local model directory or Hugging Face Hub id (default: SmolLM2-135M-Instruct, the embedded base model).",
    )
    parser.add_argument(
        "--forget-split",
        choices=FORGET_SPLITS,
        default="forget10",
        help="TOFU forget split. Its _perturbed version is evaluated (default: %(default)s).",
    )
    parser.add_argument(
        "--retain-log",
        type=Path,
        default=None,
        metavar="PATH",
        help=(
            f"{EVAL_FILENAME} of the retain model (or its directory), evaluated on the same forget split "
            "with at least as many items. Needed for forget_quality, which is left out without it."
        ),
    )

    parser.add_argument(
        "--output", type=Path, required=True, metavar="DIR", help=f"Directory for {EVAL_FILENAME} and {SUMMARY_FILENAME}."
    )
    parser.add_argument("--overwrite", action="store_true", help="Write into --output even if it is not empty.")

    parser.add_argument(
        "--max-samples",
        type=int,
        default=None,
        metavar="N",
        help="Evaluate only the first N items of each split (default: all).",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Samples per forward pass (default: %(default)s).")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=200,
        help="Generation length in tokens for the ROUGE metrics (default: %(default)s, as in Open-Unlearning).",
    )

    parser.add_argument(
        "--system-prompt",
        default=DEFAULT_SYSTEM_PROMPT,
        help="System message for the chat template. An empty string sends none (default: %(default)r).",
    )
    parser.add_argument(
        "--chat-template-kwargs",
        type=json_object_argument,
        default=None,
        metavar="JSON",
        help='Extra chat template variables as a JSON object, for example \'{"date_string": "10 Apr 2025"}\'.',
    )

    parser.add_argument(
        "--device",
        default=None,
        help="Device such as cpu, cuda or cuda:1, or auto to spread the model over the GPUs (default: cuda if available, else cpu).",
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="Weight dtype. auto keeps the checkpoint's dtype (default: %(default)s).",
    )

    parser.set_defaults(func=run_eval)
    return parser


def json_object_argument(text: str) -> dict[str, Any]:
    """Parse an argparse value that must be a JSON object, such as ``--chat-template-kwargs``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {error.msg}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": \"value\"}}', got {text!r}")
    return value


def _check_arguments(args: argparse.Namespace) -> None:
    for name in ("max_samples", "batch_size", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    output = Path(args.output)
    check_outside_protected(output, [args.model, cache_dir()])
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file. Pass a directory.")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--output {output} is not empty. Pass --overwrite to write into it, or choose another directory.")
    if args.retain_log is not None and not Path(args.retain_log).exists():
        raise FileNotFoundError(
            f"--retain-log {args.retain_log} not found. Pass the {EVAL_FILENAME} of the retain model or its directory."
        )


def format_summary_table(result: TofuEvalResult) -> str:
    """Return the headline metrics and the model-utility components as an aligned two-column table."""
    summary = result.summary
    rows = []
    for name in SUMMARY_METRICS:
        if name in summary:
            rows.append((name, f"{summary[name]:.4g}"))
        elif name == "forget_quality":
            rows.append((name, "not computed (pass --retain-log)"))
    rows.append(("model_utility components", ""))
    for name in MODEL_UTILITY_COMPONENTS:
        rows.append((f"  {name}", f"{result.logs[name]['agg_value']:.4g}"))

    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 6}"]
    lines += [f"{name:<{width}}  {value}".rstrip() for name, value in rows]
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``pareto-prune eval``: load the model, evaluate on TOFU, write the logs and print the summary."""
    _check_arguments(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, device)

    text_format = TextFormat(
        system_prompt=args.system_prompt or None,
        chat_template_kwargs=args.chat_template_kwargs or {},
    )
    result = evaluate_tofu(
        model,
        tokenizer,
        text_format,
        forget_split=args.forget_split,
        retain_model_log=args.retain_log,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    result.config["model"] = args.model
    result.config["dtype"] = args.dtype
    eval_path, summary_path = result.save(args.output)

    print(format_summary_table(result))
    print(f"\nWrote {eval_path} and {summary_path}.")
    return 0
