"""Pareto neuron pruning for unlearning in Llama-family language models."""
