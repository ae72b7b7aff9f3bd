"""Hugging Face transformers and Hub integration for pareto-prune."""
