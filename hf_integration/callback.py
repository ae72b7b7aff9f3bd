"""``ParetoPruningCallback``: Pareto neuron pruning as a step of an ordinary ``Trainer`` run.

With ``when="train_begin"`` the callback prunes the model before the first training step,
so fine-tuning (for example on the retain set) adapts the rest of the network while the
pruned neurons stay at zero. With ``when="train_end"`` it prunes the fine-tuned model.

The scan runs its own no-grad loop over the forget and retain sets with the trainer's
model, in eval mode, and removes its hooks when it ends. Training steps, evaluation passes
and gradient-checkpointing recomputation therefore never enter the statistics.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from hf_integration.configuration import CONFIG_KEY, ParetoPruningConfig
from hf_integration.modeling import PrunedLlamaForCausalLM
from pareto_prune.config import PruningConfig
from pareto_prune.data import QAPair, load_qa_pairs
from pareto_prune.masking import MASKS_FILENAME, load_masks, prune_neurons, register_activation_masks, save_masks
from pareto_prune.mlp import find_swiglu_mlps
from pareto_prune.pipeline import scan_pairs, select_from_statistics
from pareto_prune.selection import Selection
from pareto_prune.statistics import NeuronStatistics

logger = logging.getLogger(__name__)

WHEN_CHOICES = ("train_begin", "train_end")

QADataset = str | os.PathLike | Iterable[QAPair | Mapping[str, Any]]


class ParetoPruningCallback(TrainerCallback):
    """Scan, select and prune the trainer's model at the start or the end of training.

    Args:
        config: Method options; a plain :class:`pareto_prune.config.PruningConfig` is
            converted to :class:`ParetoPruningConfig`. ``None`` uses the defaults.
        forget_dataset: The facts to forget: a sequence of :class:`pareto_prune.data.QAPair`,
            a sequence of dicts with ``question`` and ``answer`` keys (a ``datasets.Dataset``
            iterates as such), or a spec for :func:`pareto_prune.data.load_qa_pairs`
            (``"tofu:forget10"`` or a JSON / JSON Lines path).
        retain_dataset: The knowledge to keep, in the same forms.
        when: ``"train_begin"`` prunes before the first step, ``"train_end"`` after the last.
        batch_size: Question-answer pairs per forward pass of the scan.
        tokenizer: Tokenizer for the scan. ``None`` takes the trainer's ``processing_class``.

    After pruning, the callback records the masks and the selection in :attr:`masks`,
    :attr:`selection`, :attr:`forget_statistics` and :attr:`retain_statistics`. On the
    underlying model (the base model of a ``PeftModel``) it sets ``pruning_config``,
    ``pruning_report`` and ``config.pareto_pruning``. A :class:`PrunedLlamaForCausalLM`
    takes the masks with its ``prune_neurons`` and writes them with ``save_pretrained``.
    For any other model the callback zeroes the pruned weights and registers activation
    masks (forward pre-hooks on ``down_proj``), whose handles stay in :attr:`mask_handles`.

    While training after ``train_begin`` pruning, the weights of pruned neurons are set to
    zero again after every optimizer step, so checkpoints contain exact zeros whatever the
    optimizer does. Each checkpoint folder also receives ``neuron_masks.safetensors``.
    When training resumes from a checkpoint that has that file, its masks are applied and
    the data are not scanned again.
    """

    def __init__(
        self,
        config: PruningConfig | None,
        forget_dataset: QADataset,
        retain_dataset: QADataset,
        when: str = "train_begin",
        batch_size: int = 8,
        tokenizer=None,
    ):
        if when not in WHEN_CHOICES:
            raise ValueError(f"when must be one of {', '.join(WHEN_CHOICES)}, got {when!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if forget_dataset is None or retain_dataset is None:
            raise ValueError("ParetoPruningCallback needs both forget_dataset and retain_dataset.")

        self.config = _as_pareto_config(config)
        self.forget_pairs = _as_pairs(forget_dataset, "forget_dataset")
        self.retain_pairs = _as_pairs(retain_dataset, "retain_dataset")
        if not self.config.forget_sources:
            self.config.forget_sources = _sources(forget_dataset, self.forget_pairs)
        if not self.config.retain_sources:
            self.config.retain_sources = _sources(retain_dataset, self.retain_pairs)
        self.when = when
        self.batch_size = batch_size
        self.tokenizer = tokenizer

        self.masks: dict[str, torch.Tensor] | None = None
        self.selection: Selection | None = None
        self.forget_statistics: NeuronStatistics | None = None
        self.retain_statistics: NeuronStatistics | None = None
        self.mask_handles: list = []
        self._rezero_disabled = False

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.when != "train_begin" or self.masks is not None:
            return
        model = _require_model(model)
        if state.global_step > 0 and self._resume_from_checkpoint(model, args, state):
            return
        self.prune(model, self._tokenizer(processing_class, kwargs))

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.when != "train_end" or self.masks is not None:
            return
        self.prune(_require_model(model), self._tokenizer(processing_class, kwargs))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.masks is not None and model is not None:
            self._zero_pruned_weights(model)

    def on_save(self, args, state, control, **kwargs):
        if self.masks is None or not state.is_world_process_zero:
            return
        # NOTE: a hyperparameter search saves under output_dir/run-<id>/, which this path misses.
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir() and not (checkpoint / MASKS_FILENAME).exists():
            save_masks(self.masks, checkpoint / MASKS_FILENAME)

    # ------------------------------------------------------------------ pruning

    def prune(self, model: nn.Module, tokenizer) -> Selection:
        """Scan both sets with ``model``, select the neurons and prune them in place.

        ``model`` may be a ``PeftModel``, and the masks are keyed by the base model's MLP
        names. With ``config.rounds`` = k > 1 this repeats k times, as
        :func:`pareto_prune.pipeline.prune_model` does: each round scans the model pruned
        so far and raises the cumulative budget by another 1/k. The statistics kept are
        those of the last round. The Trainer events call this method, and it can also be
        called directly.
        """
        base = _base_model(model)
        rounds = self.config.rounds
        pruned_before = None
        for round_index in range(1, rounds + 1):
            label = "" if rounds == 1 else f" {round_index}/{rounds}"
            self.forget_statistics = scan_pairs(
                model, tokenizer, self.forget_pairs, self.config, self.batch_size, description=f"forget scan{label}"
            )
            self.retain_statistics = scan_pairs(
                model, tokenizer, self.retain_pairs, self.config, self.batch_size, description=f"retain scan{label}"
            )
            round_config = dataclasses.replace(self.config, budget=self.config.budget * round_index / rounds)
            self.selection = select_from_statistics(self.forget_statistics, self.retain_statistics, round_config, pruned_before)
            self._apply_masks(model, self.selection.masks)
            pruned_before = self.selection.masks

        record = dataclasses.replace(self.config, pruned_per_layer=self._pruned_counts())
        base.pruning_config = record
        base.pruning_report = self.selection.report()
        setattr(base.config, CONFIG_KEY, record.to_config_dict())
        logger.info(
            "Pruned %d of %d MLP neurons (%s).",
            sum(record.pruned_per_layer.values()),
            sum(mask.numel() for mask in self.masks.values()),
            self.config.strategy,
        )
        return self.selection

    def _apply_masks(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        base = _base_model(model)
        if isinstance(base, PrunedLlamaForCausalLM):
            base.prune_neurons(masks)
            self.masks = base.neuron_masks()
            return
        if self.masks is None:
            self.masks = {key: mask.detach().to("cpu", torch.bool).clone() for key, mask in masks.items()}
            prune_neurons(model, self.masks)
            # The hooks read these tensors on every forward pass, so later updates stay in place.
            self.mask_handles = register_activation_masks(model, self.masks)
        else:
            for key, mask in masks.items():
                self.masks[key].logical_and_(mask.to("cpu"))
            prune_neurons(model, self.masks)

    def _pruned_counts(self) -> dict[str, int]:
        return {key: int((~mask).sum()) for key, mask in self.masks.items()}

    def _zero_pruned_weights(self, model: nn.Module) -> None:
        if self._rezero_disabled:
            return
        mlps = find_swiglu_mlps(model)
        if any(linear.weight.numel() == 0 for mlp in mlps for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
            # DeepSpeed ZeRO-3 and similar leave each rank an empty placeholder per weight.
            logger.warning("MLP weights are sharded, so pruned weights are not re-zeroed after optimizer steps.")
            self._rezero_disabled = True
            return
        base = _base_model(model)
        if isinstance(base, PrunedLlamaForCausalLM):
            base.zero_pruned_weights()
        else:
            prune_neurons(model, self.masks)

    def _resume_from_checkpoint(self, model: nn.Module, args, state) -> bool:
        """Apply the masks saved in the checkpoint that training resumes from, and return whether that checkpoint had any."""
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / MASKS_FILENAME
        if not path.is_file():
            logger.warning(
                "Training resumes at step %d but %s does not exist, so the resumed model is scanned again.", state.global_step, path
            )
            return False
        logger.info("Training resumes at step %d with the neuron masks from %s.", state.global_step, path)
        self._apply_masks(model, load_masks(path))
        base = _base_model(model)
        stored = getattr(base.config, CONFIG_KEY, None)
        record = ParetoPruningConfig.from_config_dict(stored) if isinstance(stored, dict) else self.config
        record = dataclasses.replace(record, pruned_per_layer=self._pruned_counts())
        base.pruning_config = record
        setattr(base.config, CONFIG_KEY, record.to_config_dict())
        return True

    def _tokenizer(self, processing_class, kwargs: Mapping[str, Any]):
        tokenizer = self.tokenizer or processing_class or kwargs.get("tokenizer")
        # A multimodal processor carries its text tokenizer as an attribute.
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        if tokenizer is None:
            raise ValueError(
                "ParetoPruningCallback needs a tokenizer for its scan. Pass processing_class=tokenizer to the "
                "Trainer, or tokenizer=... to ParetoPruningCallback."
            )
        return tokenizer


def _require_model(model: nn.Module | None) -> nn.Module:
    if model is None:
        raise ValueError("The Trainer passed no model to ParetoPruningCallback, which must run inside Trainer.train().")
    return model


def _base_model(model: nn.Module) -> nn.Module:
    """Return the model under a PEFT wrapper, or ``model`` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _as_pareto_config(config: PruningConfig | None) -> ParetoPruningConfig:
    if config is None:
        return ParetoPruningConfig()
    if isinstance(config, ParetoPruningConfig):
        return dataclasses.replace(config)
    if isinstance(config, PruningConfig):
        return ParetoPruningConfig(**config.to_dict())
    raise TypeError(f"config must be a PruningConfig or ParetoPruningConfig, got {type(config).__name__}.")


def _as_pairs(dataset: QADataset, name: str) -> list[QAPair]:
    if isinstance(dataset, (str, os.PathLike)):
        return load_qa_pairs(dataset)
    pairs = []
    for index, item in enumerate(dataset):
        if isinstance(item, QAPair):
            pairs.append(item)
        elif isinstance(item, Mapping):
            missing = [key for key in ("question", "answer") if key not in item]
            if missing:
                raise ValueError(f"{name}[{index}] has no {missing[0]!r} field. Its fields are {sorted(item)}.")
            extra = {key: value for key, value in item.items() if key not in ("question", "answer", "source")}
            pairs.append(QAPair(str(item["question"]), str(item["answer"]), str(item.get("source") or ""), extra))
        else:
            raise TypeError(f"{name}[{index}] is a {type(item).__name__}, expected a QAPair or a dict with question and answer.")
    if not pairs:
        raise ValueError(f"{name} is empty. Give at least one question-answer pair.")
    return pairs


def _sources(dataset: QADataset, pairs: Sequence[QAPair]) -> list[str]:
    """Return the data sources for the pruning record: the spec, or the pairs' distinct ``source`` values."""
    if isinstance(dataset, (str, os.PathLike)):
        return [str(dataset)]
    return list(dict.fromkeys(pair.source for pair in pairs if pair.source))
