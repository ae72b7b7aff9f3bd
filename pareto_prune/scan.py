"""Scan a model over a data set and record per-neuron activation statistics.

Hooks on each gated MLP's ``down_proj`` read its input, ``act(gate_proj(x)) * up_proj(x)``,
which is the activation of every neuron. Only counted tokens enter the sums: padding
never does, and with ``token_scope="answer"`` only positions whose next-token target is
an answer token do.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pareto_prune.data import Batch
from pareto_prune.mlp import find_swiglu_mlps
from pareto_prune.statistics import NeuronStatistics

logger = logging.getLogger(__name__)

TOKEN_SCOPES = ("answer", "all")


class NonFiniteActivationError(FloatingPointError):
    """Raised when a neuron activation is inf or NaN, usually an fp16/bf16 overflow."""


class ActivationRecorder:
    """Forward pre-hooks that add each MLP's activations to a :class:`NeuronStatistics`.

    The hooks record only while a token mask is set with :meth:`counting`, so forward
    passes outside it (training steps, evaluation, gradient-checkpoint recomputation)
    are ignored. Use as a context manager; the hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, statistics: NeuronStatistics | None = None):
        self.mlps = find_swiglu_mlps(model)
        self.statistics = statistics or NeuronStatistics({mlp.key: mlp.num_neurons for mlp in self.mlps})
        self._token_mask: torch.Tensor | None = None
        self._batch_label = ""
        self._handles = []

    def __enter__(self) -> ActivationRecorder:
        for mlp in self.mlps:
            hook = self._make_hook(mlp.key)
            self._handles.append(mlp.down_proj_in_model.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def counting(self, token_mask: torch.Tensor, label: str = ""):
        """Record activations at the ``True`` positions of ``token_mask`` ([batch, seq])."""
        self._token_mask, self._batch_label = token_mask.bool(), label
        try:
            yield
        finally:
            self._token_mask = None

    def _make_hook(self, key: str):
        def record(module, args):
            if self._token_mask is None:
                return
            hidden = args[0]
            selected = hidden[self._token_mask.to(hidden.device)]
            if not torch.isfinite(selected).all():
                raise NonFiniteActivationError(
                    f"Non-finite activation (inf or NaN) in {key} on {self._batch_label}. The model "
                    f"overflowed in {hidden.dtype}; scan in float32 (--dtype float32)."
                )
            self.statistics.add_batch(key, selected)

        return record


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def _forward_kwargs(model: nn.Module) -> dict:
    """Skip work the scan does not need: the KV cache and all but one position's logits."""
    parameters = inspect.signature(model.forward).parameters
    kwargs = {}
    if "use_cache" in parameters:
        kwargs["use_cache"] = False
    if "logits_to_keep" in parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def batches_fingerprint(batches: Sequence[Batch], token_scope: str) -> str:
    """Return a SHA-256 of the token ids and counted positions, to check that a resume reads the same data."""
    digest = hashlib.sha256(token_scope.encode())
    for batch in batches:
        digest.update(batch.input_ids.numpy().tobytes())
        digest.update(batch.answer_mask.numpy().tobytes())
    return digest.hexdigest()


def _shard(batches: Sequence[Batch]) -> tuple[list[int], int, int]:
    """Return this rank's batch positions: every world_size-th batch from its rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = 0, 1
    return list(range(rank, len(batches), world)), rank, world


def _load_checkpoint(path: Path, fingerprint: str, statistics: NeuronStatistics, world_size: int = 1) -> int:
    loaded, metadata = NeuronStatistics.load(path)
    if metadata.get("fingerprint") != fingerprint:
        raise ValueError(
            f"Checkpoint {path} was written for other data, token scope or batch size. "
            "Run with the same options as the interrupted scan, or delete the checkpoint to start over."
        )
    # batches_done counts this rank's share of the batches, which depends on the world size.
    # Checkpoints written before the world size was recorded came from single-process scans.
    saved_world_size = int(metadata.get("world_size", "1"))
    if saved_world_size != world_size:
        raise ValueError(
            f"Checkpoint {path} was written by a scan with {saved_world_size} processes, but this scan has "
            f"{world_size}. Resume with {saved_world_size} processes, or delete the checkpoint to start over."
        )
    if loaded.sizes != statistics.sizes:
        raise ValueError(f"Checkpoint {path} was written for a model with other MLPs; delete it to start over.")
    statistics.merge_(loaded)
    return int(metadata["batches_done"])


def _save_checkpoint(
    path: Path, statistics: NeuronStatistics, fingerprint: str, batches_done: int, world_size: int = 1
) -> None:
    partial = path.with_name(path.name + ".partial")
    metadata = {"fingerprint": fingerprint, "batches_done": str(batches_done), "world_size": str(world_size)}
    statistics.save(partial, metadata)
    os.replace(partial, path)


def scan_activations(
    model: nn.Module,
    batches: Sequence[Batch],
    token_scope: str = "answer",
    description: str = "scan",
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    show_progress: bool = True,
) -> NeuronStatistics:
    """Run ``model`` without gradients over ``batches`` and return neuron statistics.

    Args:
        model: Any ``nn.Module`` with gated MLPs whose forward accepts ``input_ids`` and
            ``attention_mask``. It is put in eval mode for the scan and restored after.
        batches: Right-padded batches from :func:`pareto_prune.data.length_grouped_batches`.
        token_scope: ``"answer"`` counts positions that predict an answer token;
            ``"all"`` counts every real (non-padding) token.
        description: Progress-bar label.
        checkpoint_path: If set, the sums and the number of finished batches are saved
            here (safetensors) every ``checkpoint_every`` batches and at the end.
        resume: Continue from ``checkpoint_path`` if it exists. The result equals an
            uninterrupted scan because batches are visited in the same order.
        show_progress: Show a tqdm bar.

    In a ``torch.distributed`` job each rank scans every world-size-th batch and the
    sums are all-reduced, so every rank returns the statistics of the whole data set.
    Each rank then checkpoints its own share to ``<stem>.rank<rank><suffix>`` beside
    ``checkpoint_path``, and a resume needs the same number of processes.

    Raises:
        NonFiniteActivationError: if an activation overflows, naming the MLP and batch.
        ValueError: for an invalid ``token_scope`` or ``checkpoint_every``, or a
            checkpoint written for other batches, another model or another world size.
    """
    if token_scope not in TOKEN_SCOPES:
        raise ValueError(f"token_scope must be one of {TOKEN_SCOPES}, got {token_scope!r}.")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of batches, got {checkpoint_every!r}.")
    positions, rank, world = _shard(batches)
    checkpoint = Path(checkpoint_path) if checkpoint_path else None
    if resume and checkpoint is None:
        logger.warning("resume=True has no effect without a checkpoint path, so %s starts from the first batch.", description)
    if checkpoint is not None and world > 1:
        checkpoint = checkpoint.with_name(f"{checkpoint.stem}.rank{rank}{checkpoint.suffix}")
    fingerprint = batches_fingerprint(batches, token_scope) if checkpoint else ""

    recorder = ActivationRecorder(model)
    done = 0
    if checkpoint is not None and resume and checkpoint.exists():
        done = _load_checkpoint(checkpoint, fingerprint, recorder.statistics, world)
        logger.info("Resuming %s from %s after %d of %d batches.", description, checkpoint, done, len(positions))

    device = _input_device(model)
    kwargs = _forward_kwargs(model)
    was_training = model.training
    model.eval()
    try:
        with recorder, torch.inference_mode():
            bar = tqdm(total=len(positions), initial=done, desc=description, disable=not show_progress, unit="batch")
            for step in range(done, len(positions)):
                batch = batches[positions[step]]
                counted = batch.answer_mask if token_scope == "answer" else batch.attention_mask.bool()
                with recorder.counting(counted, label=f"batch {positions[step]}"):
                    model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), **kwargs)
                bar.update(1)
                if checkpoint is not None and (step + 1) % checkpoint_every == 0:
                    _save_checkpoint(checkpoint, recorder.statistics, fingerprint, step + 1, world)
            bar.close()
    finally:
        model.train(was_training)

    if checkpoint is not None:
        _save_checkpoint(checkpoint, recorder.statistics, fingerprint, len(positions), world)
    if world > 1:
        # NOTE: a rank that raised above never reaches this all-reduce. With gloo the other
        # ranks fail here as soon as its process exits (connection closed by peer). With
        # NCCL they may wait until the process group's timeout unless torchrun stops them.
        recorder.statistics.all_reduce_()
    return recorder.statistics
