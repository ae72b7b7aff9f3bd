"""The whole method on an in-memory model: scan, score, select and prune.

Nothing here reads or writes checkpoints; :mod:`hf_integration.job` adds loading,
saving, reports and plots around :func:`prune_model`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pareto_prune.config import PruningConfig
from pareto_prune.data import QAPair, length_grouped_batches, tokenize_pairs
from pareto_prune.masking import prune_neurons
from pareto_prune.scan import scan_activations
from pareto_prune.scores import layer_scores
from pareto_prune.selection import Selection, select_neurons
from pareto_prune.statistics import NeuronStatistics

logger = logging.getLogger(__name__)


@dataclass
class PruningResult:
    """Outcome of :func:`prune_model`.

    Attributes:
        selection: Masks (``True`` = kept) and the per-layer Pareto analysis.
        forget_statistics: Activation statistics on the forget set (before pruning).
        retain_statistics: Activation statistics on the retain set (before pruning).
        config: The options used.
    """

    selection: Selection
    forget_statistics: NeuronStatistics
    retain_statistics: NeuronStatistics
    config: PruningConfig

    @property
    def masks(self):
        return self.selection.masks


def scan_pairs(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[QAPair],
    config: PruningConfig,
    batch_size: int = 8,
    description: str = "scan",
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
) -> NeuronStatistics:
    """Tokenize question-answer pairs with the config's text format and scan ``model`` over them.

    See :func:`pareto_prune.scan.scan_activations` for checkpointing and resuming.
    """
    if not pairs:
        raise ValueError(f"The {description} set is empty; give at least one question-answer pair.")
    samples = tokenize_pairs(tokenizer, pairs, config.text_format(), max_length=config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = length_grouped_batches(samples, batch_size, pad_id)
    return scan_activations(
        model,
        batches,
        token_scope=config.token_scope,
        description=description,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )


def select_from_statistics(
    forget: NeuronStatistics,
    retain: NeuronStatistics,
    config: PruningConfig,
    pruned_before: dict | None = None,
) -> Selection:
    """Score neurons from saved statistics and select those to prune (no model needed).

    ``pruned_before`` contains the masks of earlier rounds in an iterative run; see
    :func:`pareto_prune.selection.select_neurons`.
    """
    scores = layer_scores(retain, forget, statistic=config.statistic, normalization=config.normalization)
    return select_neurons(scores, config, pruned_before)


def prune_model(
    model: nn.Module,
    tokenizer,
    forget_pairs: Sequence[QAPair],
    retain_pairs: Sequence[QAPair],
    config: PruningConfig | None = None,
    batch_size: int = 8,
) -> PruningResult:
    """Scan, select and prune ``model`` in place.

    With ``config.rounds`` = k > 1 the run is iterative, as in selective pruning: scan,
    prune 1/k of the budget, scan the pruned model again, and repeat k times. The returned
    statistics are those of the last round.

    The model's gated-MLP weights of the selected neurons are set to zero (see
    :func:`pareto_prune.masking.prune_neurons`); everything else is unchanged.

    Returns:
        A :class:`PruningResult` with the masks, the per-layer analysis and both sets'
        statistics.
    """
    config = config or PruningConfig()
    masks = None
    budget = config.budget
    for round_index in range(1, config.rounds + 1):
        forget = scan_pairs(model, tokenizer, forget_pairs, config, batch_size, description=f"forget scan {round_index}/{config.rounds}")
        retain = scan_pairs(model, tokenizer, retain_pairs, config, batch_size, description=f"retain scan {round_index}/{config.rounds}")
        # Each round raises the cumulative budget by an equal slice.
        round_config = dataclasses.replace(config, budget=budget * round_index / config.rounds)
        selection = select_from_statistics(forget, retain, round_config, pruned_before=masks)
        prune_neurons(model, selection.masks)
        masks = selection.masks
    selection.strategy = config.strategy
    return PruningResult(selection, forget, retain, config)
