"""Neuron masks: zeroing pruned neurons in the weights and in the forward pass.

A mask is a 1-D bool tensor per gated MLP, keyed by the MLP's canonical module name
(see :func:`pareto_prune.mlp.canonical_key`). ``True`` means the neuron is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.hooks import RemovableHandle

from pareto_prune.mlp import SwiGLUMLP, find_swiglu_mlps

logger = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]

MASKS_FILENAME = "neuron_masks.safetensors"


def full_masks(model: nn.Module) -> Masks:
    """Return all-True masks (nothing pruned) for every gated MLP of ``model``."""
    return {mlp.key: torch.ones(mlp.num_neurons, dtype=torch.bool) for mlp in find_swiglu_mlps(model)}


@torch.no_grad()
def weight_masks(model: nn.Module) -> Masks:
    """Return masks read off the weights: a neuron counts as pruned when its ``gate_proj`` row,
    ``up_proj`` row and ``down_proj`` column are all zero. Offloaded (meta) layers count as kept."""
    masks = {}
    for mlp in find_swiglu_mlps(model):
        if mlp.gate_proj.weight.device.type == "meta":
            masks[mlp.key] = torch.ones(mlp.num_neurons, dtype=torch.bool)
            continue
        used = mlp.gate_proj.weight.ne(0).any(dim=1) | mlp.up_proj.weight.ne(0).any(dim=1)
        used |= mlp.down_proj.weight.ne(0).any(dim=0).to(used.device)
        masks[mlp.key] = used.cpu()
    return masks


def count_pruned(masks: Mapping[str, torch.Tensor]) -> int:
    """Return the number of ``False`` entries over all masks."""
    return sum(int((~mask).sum()) for mask in masks.values())


def validate_masks(mlps: list[SwiGLUMLP], masks: Mapping[str, torch.Tensor]) -> None:
    """Check that ``masks`` has one bool vector of the right length for each MLP.

    Raises:
        ValueError: naming the first missing, unknown or mis-shaped mask.
    """
    expected = {mlp.key: mlp.num_neurons for mlp in mlps}
    unknown = sorted(set(masks) - set(expected))
    if unknown:
        raise ValueError(
            f"Masks name MLPs that the model does not have: {unknown[:3]}. The model's MLPs are "
            f"{list(expected)[:3]}...; were the masks made for another model?"
        )
    for key, size in expected.items():
        if key not in masks:
            raise ValueError(f"No mask for MLP {key!r}; give one bool vector per MLP.")
        mask = masks[key]
        if mask.dtype != torch.bool or mask.shape != (size,):
            raise ValueError(
                f"Mask for {key!r} must be a bool tensor of shape ({size},), "
                f"got {mask.dtype} of shape {tuple(mask.shape)}."
            )


@torch.no_grad()
def _zero_neurons(mlp: SwiGLUMLP, pruned: torch.Tensor) -> None:
    for linear in (mlp.gate_proj, mlp.up_proj):
        index = pruned.to(linear.weight.device)
        linear.weight[index] = 0
        if linear.bias is not None:
            linear.bias[index] = 0
    mlp.down_proj.weight[:, pruned.to(mlp.down_proj.weight.device)] = 0


def prune_neurons(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Zero the weights of every neuron whose mask entry is ``False``, in place.

    For each pruned neuron ``i`` of an MLP this sets ``gate_proj.weight[i]``,
    ``up_proj.weight[i]`` (and their biases, if any) and ``down_proj.weight[:, i]`` to
    zero. ``down_proj``'s bias is shared by all neurons and stays. A weight on the meta
    device (an offloaded layer) cannot be changed here; use
    :func:`register_activation_masks` so such layers are masked in the forward pass.

    Returns:
        The number of pruned neurons per MLP key.
    """
    mlps = find_swiglu_mlps(model)
    validate_masks(mlps, masks)

    counts = {}
    for mlp in mlps:
        pruned = (~masks[mlp.key]).nonzero().flatten()
        counts[mlp.key] = int(pruned.numel())
        if pruned.numel() == 0:
            continue
        if mlp.gate_proj.weight.device.type == "meta":
            logger.warning("Weights of %s are offloaded; its neurons are masked only in forward.", mlp.key)
            continue
        _zero_neurons(mlp, pruned)
    return counts


def register_activation_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[RemovableHandle]:
    """Multiply each MLP's intermediate activation by its mask on every forward pass.

    A forward pre-hook on ``down_proj`` zeroes pruned neurons even when their weights
    are non-zero, so offloaded layers and further fine-tuning of the base weights cannot
    bring them back. The mask is read from ``masks`` on each call, so a caller may update
    the tensors in place. Returns the hook handles; call ``handle.remove()`` to undo.

    NOTE: a hook registered before PEFT wraps ``down_proj`` sits on the base layer, and
    peft 0.21's LoRA branch reads the unmasked input; a hook on the wrapper is lost by
    ``merge_and_unload()``. ``PrunedLlamaForCausalLM`` masks inside the MLP forward instead.
    """
    mlps = find_swiglu_mlps(model)
    validate_masks(mlps, masks)

    handles = []
    for mlp in mlps:
        mask = masks[mlp.key]

        def mask_input(module, args, mask=mask):
            hidden = args[0]
            keep = mask.to(device=hidden.device, dtype=hidden.dtype)
            return (hidden * keep,) + tuple(args[1:])

        handles.append(mlp.down_proj_in_model.register_forward_pre_hook(mask_input))
    return handles


def save_masks(masks: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write masks to a safetensors file, one bool tensor per MLP key."""
    tensors = {key: mask.detach().to("cpu", torch.bool).contiguous() for key, mask in masks.items()}
    save_file(tensors, str(path), metadata={"format": "pareto-prune-masks", "meaning": "True=kept"})


def load_masks(path: str | Path) -> Masks:
    """Read masks written by :func:`save_masks`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not in safetensors format, or a tensor in it is not a
            1-D bool vector.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask file {path} not found; it is written next to the pruned weights as {MASKS_FILENAME}.")
    try:
        masks = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"{path} is not a safetensors mask file ({error}). Write masks with save_masks.") from error
    for key, mask in masks.items():
        if mask.dtype != torch.bool or mask.dim() != 1:
            raise ValueError(f"{path}: entry {key!r} is {mask.dtype} of shape {tuple(mask.shape)}, expected a 1-D bool vector.")
    return masks
