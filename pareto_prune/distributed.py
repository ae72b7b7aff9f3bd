"""Run pareto-prune in several processes started by ``torchrun``.

:func:`pareto_prune.scan.scan_activations` shards its batches over the ranks of the
default ``torch.distributed`` process group and all-reduces the sums, so every rank ends
with the statistics of the whole data set. A job only has to join that group first
(:func:`process_group_from_environment`) and let one rank write files
(:func:`is_main_process`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def rank_and_world_size() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of the default process group, or ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Return whether this process is rank 0, the one that should write outputs and print summaries."""
    return rank_and_world_size()[0] == 0


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if there is one.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``. Without ``WORLD_SIZE``, or with ``WORLD_SIZE=1``, nothing is started.
    A group that is already initialized is kept as it is.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when CUDA is available and
            gloo otherwise. With NCCL the process uses GPU ``LOCAL_RANK``.

    Returns:
        Whether a process group with more than one process is active after the call.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return False

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, init_method="env://")
    logger.info("Joined a %s process group as rank %d of %d.", backend, dist.get_rank(), world_size)
    return True


@contextmanager
def process_group_from_environment(backend: str | None = None) -> Iterator[bool]:
    """Join the ``torchrun`` process group for the duration of a ``with`` block.

    Yields whether more than one process takes part. A group that this call started is
    destroyed on exit, also after an error. Without that, a process that exits with an
    initialized gloo group can abort with "terminate called without an active exception".
    A group that was initialized before the call is left alone.
    """
    started = dist.is_available() and not dist.is_initialized()
    active = init_from_environment(backend)
    try:
        yield active
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
