"""Pareto neuron pruning for unlearning in Llama-family language models.

The method works on any ``torch.nn.Module`` with gated (SwiGLU-style) MLPs:

>>> from pareto_prune import PruningConfig, load_qa_pairs, prune_model
>>> result = prune_model(model, tokenizer, load_qa_pairs("tofu:forget10"),
...                      load_qa_pairs("tofu:retain90")[:400], PruningConfig(budget=0.01))
>>> result.masks["model.layers.0.mlp"]  # bool vector, True = kept

Saving checkpoints, model cards and the Hub live in the ``hf_integration`` package.
"""

from pareto_prune.config import PruningConfig
from pareto_prune.data import QAPair, TextFormat, load_qa_pairs, load_qa_sources
from pareto_prune.masking import full_masks, load_masks, prune_neurons, register_activation_masks, save_masks
from pareto_prune.mlp import UnsupportedModelError, find_swiglu_mlps
from pareto_prune.pipeline import PruningResult, prune_model, scan_pairs, select_from_statistics
from pareto_prune.scan import NonFiniteActivationError, scan_activations
from pareto_prune.selection import Selection, select_neurons
from pareto_prune.statistics import NeuronStatistics

__all__ = [
    "NeuronStatistics",
    "NonFiniteActivationError",
    "PruningConfig",
    "PruningResult",
    "QAPair",
    "Selection",
    "TextFormat",
    "UnsupportedModelError",
    "find_swiglu_mlps",
    "full_masks",
    "load_masks",
    "load_qa_pairs",
    "load_qa_sources",
    "prune_model",
    "prune_neurons",
    "register_activation_masks",
    "save_masks",
    "scan_activations",
    "scan_pairs",
    "select_from_statistics",
    "select_neurons",
]
