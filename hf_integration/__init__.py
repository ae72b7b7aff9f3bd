"""Hugging Face transformers and Hub integration for pareto-prune."""

from hf_integration.callback import ParetoPruningCallback
from hf_integration.configuration import ParetoPruningConfig
from hf_integration.modeling import PrunedLlamaForCausalLM

__all__ = ["ParetoPruningCallback", "ParetoPruningConfig", "PrunedLlamaForCausalLM"]
