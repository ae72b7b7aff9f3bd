"""Locate gated (SwiGLU-style) MLP blocks in a model by their structure.

A gated MLP computes ``down_proj(act(gate_proj(x)) * up_proj(x))``. Neuron ``i`` of such
a block owns row ``i`` of ``gate_proj``, row ``i`` of ``up_proj`` and column ``i`` of
``down_proj``, and its activation is element ``i`` of the input of ``down_proj``. Llama,
Mistral, Qwen2, Gemma and SmolLM all name these three projections the same way, so the
search needs no model-specific code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# PEFT wraps the base model as ``base_model.model.<original names>``.
_WRAPPER_PREFIXES = ("base_model.model.",)
_FUSED_GATE_UP = "gate_up_proj"


class UnsupportedModelError(ValueError):
    """Raised when a model has no gated MLP that pareto-prune can prune."""


@dataclass
class SwiGLUMLP:
    """One gated MLP block and its three projections.

    Attributes:
        key: Qualified module name with any PEFT wrapper prefix removed, for example
            ``"model.layers.0.mlp"``. Masks and statistics are keyed by it.
        module: The MLP module itself.
        gate_proj: The base ``nn.Linear`` of the gate projection (unwrapped from PEFT).
        up_proj: The base ``nn.Linear`` of the up projection.
        down_proj: The base ``nn.Linear`` of the down projection.
        down_proj_in_model: The down projection as it sits in the model, which is a
            PEFT wrapper when an adapter is attached. Hooks go on this module so they
            see the activation that actually flows through the model.
    """

    key: str
    module: nn.Module
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    down_proj_in_model: nn.Module

    @property
    def num_neurons(self) -> int:
        """Number of intermediate neurons (the width of ``gate_proj``'s output)."""
        return self.gate_proj.out_features


def canonical_key(name: str) -> str:
    """Strip wrapper prefixes such as PEFT's ``base_model.model.`` from a module name."""
    for prefix in _WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _base_linear(module: nn.Module, owner: str, attribute: str) -> nn.Linear:
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise UnsupportedModelError(
            f"{owner}.{attribute} is a {type(base).__name__}, not torch.nn.Linear, so its "
            "neurons cannot be zeroed. Load the model without weight quantization "
            "(for example in float32 or bfloat16) and try again."
        )
    return base


def find_swiglu_mlps(model: nn.Module) -> list[SwiGLUMLP]:
    """Return every gated MLP of ``model`` in module order.

    A module counts as a gated MLP when it has ``gate_proj``, ``up_proj`` and
    ``down_proj`` children whose shapes agree: ``gate_proj`` and ``up_proj`` map the
    hidden size to the same intermediate size, which ``down_proj`` maps back.

    Raises:
        UnsupportedModelError: if the model has a fused ``gate_up_proj`` (Phi-3 style),
            a projection that is not ``nn.Linear``, inconsistent shapes, or no gated MLP.
    """
    mlps = []
    for name, module in model.named_modules():
        if hasattr(module, _FUSED_GATE_UP) and hasattr(module, "down_proj"):
            raise UnsupportedModelError(
                f"Module {name!r} ({type(module).__name__}) fuses the gate and up projections "
                f"into one {_FUSED_GATE_UP!r} weight. pareto-prune supports MLPs with separate "
                "gate_proj, up_proj and down_proj, as in Llama, Mistral, Qwen2 and Gemma."
            )
        if not all(hasattr(module, attr) for attr in ("gate_proj", "up_proj", "down_proj")):
            continue

        key = canonical_key(name)
        gate = _base_linear(module.gate_proj, key, "gate_proj")
        up = _base_linear(module.up_proj, key, "up_proj")
        down = _base_linear(module.down_proj, key, "down_proj")
        if not (gate.out_features == up.out_features == down.in_features):
            raise UnsupportedModelError(
                f"Module {key!r} has gate_proj, up_proj and down_proj with inconsistent "
                f"intermediate sizes ({gate.out_features}, {up.out_features}, "
                f"{down.in_features}), so it is not a gated MLP that can be pruned."
            )
        mlps.append(SwiGLUMLP(key, module, gate, up, down, module.down_proj))

    if not mlps:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no gated MLP (a module with gate_proj, up_proj and "
            "down_proj). pareto-prune prunes SwiGLU-style MLP neurons as found in Llama, "
            "Mistral, Qwen2, Gemma and SmolLM models."
        )
    return mlps
