"""The main job: load a checkpoint, prune it with the Pareto method and write a new checkpoint.

:func:`run_prune` is what ``pareto-prune prune`` runs. :func:`run_scan` and
:func:`run_select` split it in two, so statistics computed once can be reused with other
strategies and budgets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hf_integration.checkpoint import write_pruned_checkpoint
from hf_integration.configuration import ParetoPruningConfig
from hf_integration.loading import cache_dir, load_model_and_tokenizer
from hf_integration.output_dir import check_output_dir, staged_directory
from pareto_prune.distributed import is_main_process
from pareto_prune.data import QAPair, load_qa_sources
from pareto_prune.masking import count_pruned, prune_neurons, weight_masks
from pareto_prune.metrics import answer_probabilities, greedy_rouge_recall
from pareto_prune.pipeline import prune_model, scan_pairs, select_from_statistics
from pareto_prune.selection import Selection
from pareto_prune.statistics import NeuronStatistics

logger = logging.getLogger(__name__)

DEFAULT_FORGET = ["tofu:forget10"]
DEFAULT_RETAIN = ["tofu:retain90", "tofu:real_authors", "tofu:world_facts"]
STATISTICS_FILES = {"forget": "forget.safetensors", "retain": "retain.safetensors"}
SCAN_RECORD = "scan.json"


@dataclass
class JobOptions:
    """Everything a pruning run needs besides the method options.

    Attributes:
        output: Directory for the pruned checkpoint (``prune`` and ``select``) or for the
            statistics (``scan``).
        model: Local checkpoint directory or Hub id; ``None`` for SmolLM2-135M-Instruct.
        forget: Forget-set sources: ``tofu:<split>`` names or JSON / JSON Lines files.
        retain: Retain-set sources; all are merged into one retain set.
        question_key: Field holding the question in data files.
        answer_key: Field holding the answer in data files.
        max_samples: Maximum question-answer pairs per set (forget and retain each), drawn
            deterministically from the sources; ``None`` for all.
        batch_size: Samples per forward pass.
        dtype: ``auto`` (the checkpoint's dtype), ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda``, ``auto`` or ``None`` (CPU).
        overwrite: Replace a non-empty output directory.
        check_samples: Pairs per set in the before/after check; 0 skips the check.
        check_max_new_tokens: Tokens generated per answer in the check.
        checkpoint_dir: Where a long scan saves its progress; ``None`` to not save.
        checkpoint_every: Batches between progress saves.
        resume: Continue a scan from ``checkpoint_dir``.
    """

    output: str
    model: str | None = None
    forget: list[str] = field(default_factory=lambda: list(DEFAULT_FORGET))
    retain: list[str] = field(default_factory=lambda: list(DEFAULT_RETAIN))
    question_key: str = "question"
    answer_key: str = "answer"
    max_samples: int | None = 400
    batch_size: int = 8
    dtype: str = "auto"
    device: str | None = None
    overwrite: bool = False
    check_samples: int = 16
    check_max_new_tokens: int = 48
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    resume: bool = False


@dataclass
class CheckResult:
    """Before/after numbers: set name -> metric name -> (original, pruned)."""

    values: dict[str, dict[str, tuple[float, float]]]

    def table(self) -> str:
        """Return the numbers as an aligned text table."""
        lines = [f"{'set':<8}{'metric':<30}{'original':>10}{'pruned':>10}"]
        for set_name, metrics in self.values.items():
            for metric, (before, after) in metrics.items():
                lines.append(f"{set_name:<8}{metric:<30}{before:>10.4f}{after:>10.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            set_name: {metric: {"original": before, "pruned": after} for metric, (before, after) in metrics.items()}
            for set_name, metrics in self.values.items()
        }


@dataclass
class JobResult:
    """Outcome of a run: the output directory, the report and the before/after check."""

    output: Path
    report: dict
    check: CheckResult | None


def _protected_paths(options: JobOptions) -> list:
    """Paths an output directory must not overlap: the input model and pareto-prune's model cache."""
    return [options.model, cache_dir()]


def _absolute_sources(sources: list[str]) -> list[str]:
    """Make file sources absolute so a scan record stays valid from another working directory."""
    return [str(Path(source).resolve()) if Path(source).exists() else source for source in sources]


def _load_sets(options: JobOptions, seed: int) -> tuple[list[QAPair], list[QAPair]]:
    keys = {"question_key": options.question_key, "answer_key": options.answer_key}
    forget = load_qa_sources(options.forget, max_samples=options.max_samples, seed=seed, **keys)
    retain = load_qa_sources(options.retain, max_samples=options.max_samples, seed=seed, **keys)
    logger.info("Forget set: %d pairs from %s; retain set: %d pairs from %s.", len(forget), options.forget, len(retain), options.retain)
    return forget, retain


def _check_sample(pairs: list[QAPair], size: int) -> list[QAPair]:
    if size >= len(pairs):
        return list(pairs)
    positions = np.linspace(0, len(pairs) - 1, size).round().astype(int)
    return [pairs[i] for i in positions]


def _measure(model, tokenizer, samples: dict[str, list[QAPair]], config, options: JobOptions) -> dict[str, dict[str, float]]:
    text_format = config.text_format()
    measured = {}
    for set_name, pairs in samples.items():
        probability = answer_probabilities(model, tokenizer, pairs, text_format, options.batch_size)
        rouge = greedy_rouge_recall(model, tokenizer, pairs, text_format, options.batch_size, options.check_max_new_tokens)
        measured[set_name] = {"answer probability": float(np.mean(probability)), "ROUGE-L recall": float(np.mean(rouge))}
    return measured


def _combine(before: dict, after: dict) -> CheckResult:
    return CheckResult(
        {name: {metric: (value, after[name][metric]) for metric, value in metrics.items()} for name, metrics in before.items()}
    )


def _scan_both(model, tokenizer, forget, retain, config, options: JobOptions) -> tuple[NeuronStatistics, NeuronStatistics]:
    statistics = []
    for set_name, pairs in (("forget", forget), ("retain", retain)):
        checkpoint = None
        if options.checkpoint_dir:
            Path(options.checkpoint_dir).mkdir(parents=True, exist_ok=True)
            checkpoint = Path(options.checkpoint_dir) / f"{set_name}.partial.safetensors"
        statistics.append(
            scan_pairs(
                model, tokenizer, pairs, config, options.batch_size, description=f"{set_name} scan",
                checkpoint_path=checkpoint, checkpoint_every=options.checkpoint_every, resume=options.resume,
            )
        )
    return statistics[0], statistics[1]


def _prune_and_write(model, tokenizer, target: Path, prune: Callable[[], Selection], config, options, check_samples) -> JobResult:
    """Measure, prune with ``prune`` (which changes the model in place), measure again and write."""
    # Under torchrun every rank prunes its own copy identically, but only rank 0 measures and writes.
    main = is_main_process()
    check_samples = check_samples if main else None
    before = _measure(model, tokenizer, check_samples, config, options) if check_samples else None

    previously_pruned = count_pruned(weight_masks(model))
    selection = prune()
    _fold_zero_neurons(model, selection, previously_pruned)
    config.pruned_per_layer = selection.pruned_per_layer
    config.forget_sources, config.retain_sources = list(options.forget), list(options.retain)

    check = _combine(before, _measure(model, tokenizer, check_samples, config, options)) if check_samples else None
    report = selection.report()
    report["previously_pruned"] = previously_pruned
    if check is not None:
        report["check"] = {"samples_per_set": options.check_samples, **check.to_dict()}

    if main:
        with staged_directory(target) as staging:
            write_pruned_checkpoint(model, tokenizer, staging, selection, config, report, base_model=options.model)
    _wait_for_main_process()
    return JobResult(target, report, check)


def _wait_for_main_process() -> None:
    """Keep every rank alive until rank 0 has written, so torchrun does not end the job early."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _fold_zero_neurons(model, selection: Selection, previously_pruned: int) -> None:
    """Mark neurons whose weights were already zero (a model pruned before) as pruned in the masks."""
    if previously_pruned == 0:
        return
    selected = selection.total_pruned
    for key, kept in weight_masks(model).items():
        selection.masks[key] &= kept
    logger.warning(
        "%d neurons of the input model already had zero weights (was it pruned before?). They are "
        "recorded as pruned in the masks, on top of the %d selected now.", previously_pruned, selected,
    )


def _select_and_prune(model, forget_stats, retain_stats, config) -> Callable[[], Selection]:
    def prune() -> Selection:
        selection = select_from_statistics(forget_stats, retain_stats, config)
        prune_neurons(model, selection.masks)
        return selection

    return prune


def run_prune(options: JobOptions, config: ParetoPruningConfig | None = None) -> JobResult:
    """Scan, select, prune and write the pruned checkpoint to ``options.output``.

    The output directory is checked before anything is loaded and written in full to a
    temporary directory beside it first; on any error nothing is left at ``options.output``.
    """
    config = config or ParetoPruningConfig()
    target = check_output_dir(options.output, options.overwrite, protected=_protected_paths(options))
    forget, retain = _load_sets(options, config.seed)

    model, tokenizer = load_model_and_tokenizer(options.model, options.dtype, options.device)
    samples = None
    if options.check_samples > 0:
        samples = {"forget": _check_sample(forget, options.check_samples), "retain": _check_sample(retain, options.check_samples)}

    if config.rounds > 1:
        # Iterative runs scan again after each round, so they cannot reuse saved statistics.
        def prune() -> Selection:
            return prune_model(model, tokenizer, forget, retain, config, options.batch_size).selection

        return _prune_and_write(model, tokenizer, target, prune, config, options, samples)

    forget_stats, retain_stats = _scan_both(model, tokenizer, forget, retain, config, options)
    prune = _select_and_prune(model, forget_stats, retain_stats, config)
    return _prune_and_write(model, tokenizer, target, prune, config, options, samples)


def run_scan(options: JobOptions, config: ParetoPruningConfig | None = None) -> Path:
    """Scan both sets and write their statistics and a ``scan.json`` record to ``options.output``."""
    config = config or ParetoPruningConfig()
    target = check_output_dir(options.output, options.overwrite, protected=_protected_paths(options))
    forget, retain = _load_sets(options, config.seed)
    model, tokenizer = load_model_and_tokenizer(options.model, options.dtype, options.device)
    forget_stats, retain_stats = _scan_both(model, tokenizer, forget, retain, config, options)

    record = {
        "model": options.model,
        "forget_sources": _absolute_sources(options.forget),
        "retain_sources": _absolute_sources(options.retain),
        "max_samples": options.max_samples,
        "question_key": options.question_key,
        "answer_key": options.answer_key,
        "forget_pairs": len(forget),
        "retain_pairs": len(retain),
        "options": config.method_options(),
    }
    if is_main_process():
        with staged_directory(target) as staging:
            forget_stats.save(staging / STATISTICS_FILES["forget"])
            retain_stats.save(staging / STATISTICS_FILES["retain"])
            (staging / SCAN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    _wait_for_main_process()
    return target


def load_scan(directory: str | Path) -> tuple[NeuronStatistics, NeuronStatistics, dict]:
    """Read the statistics and record written by :func:`run_scan`."""
    directory = Path(directory)
    record_path = directory / SCAN_RECORD
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} not found; create the statistics with `pareto-prune scan --output {directory}`.")
    forget, _ = NeuronStatistics.load(directory / STATISTICS_FILES["forget"])
    retain, _ = NeuronStatistics.load(directory / STATISTICS_FILES["retain"])
    return forget, retain, json.loads(record_path.read_text())


def run_select(statistics_dir: str | Path, options: JobOptions, config: ParetoPruningConfig | None = None) -> JobResult:
    """Select neurons from saved statistics, prune the scanned model and write it to ``options.output``.

    The model, data sources and scan options (token scope, text format) come from the
    scan's record; ``config`` supplies the selection options (strategy, budget, ...).
    """
    forget_stats, retain_stats, record = load_scan(statistics_dir)
    config = config or ParetoPruningConfig()
    for name in ("token_scope", "system_prompt", "use_chat_template", "chat_template_kwargs", "plain_template", "answer_suffix", "max_length"):
        setattr(config, name, record["options"][name])
    options.model = record["model"]
    options.forget, options.retain = record["forget_sources"], record["retain_sources"]
    options.max_samples = record["max_samples"]
    options.question_key = record.get("question_key", options.question_key)
    options.answer_key = record.get("answer_key", options.answer_key)

    target = check_output_dir(options.output, options.overwrite, protected=[*_protected_paths(options), statistics_dir])
    model, tokenizer = load_model_and_tokenizer(options.model, options.dtype, options.device)
    samples = None
    if options.check_samples > 0:
        forget, retain = _load_sets(options, config.seed)
        samples = {"forget": _check_sample(forget, options.check_samples), "retain": _check_sample(retain, options.check_samples)}
    prune = _select_and_prune(model, forget_stats, retain_stats, config)
    return _prune_and_write(model, tokenizer, target, prune, config, options, samples)
