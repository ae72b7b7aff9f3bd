"""Scanning, pruning and saving tiny random models of each supported architecture.

Llama, Mistral, Qwen2 and Gemma share the gated MLP layout (gate_proj, up_proj,
down_proj), so the same code must find, scan, prune and save all four. Phi-3 fuses gate
and up into one gate_up_proj and is rejected.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hf_integration.cli import main
from pareto_prune.config import PruningConfig
from pareto_prune.data import TokenizedSample, length_grouped_batches
from pareto_prune.masking import MASKS_FILENAME, full_masks, load_masks, prune_neurons, register_activation_masks
from pareto_prune.mlp import UnsupportedModelError, find_swiglu_mlps
from pareto_prune.pipeline import select_from_statistics
from pareto_prune.scan import scan_activations

VOCAB_SIZE = 96
NUM_LAYERS = 2
NUM_NEURONS = 64
MLP_KEYS = [f"model.layers.{layer}.mlp" for layer in range(NUM_LAYERS)]
# Prune 10% of all neurons, at most 30% of one layer.
SELECTION = PruningConfig(budget=0.1, max_layer_fraction=0.3)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "llama-mlp-bias": (LlamaConfig, LlamaForCausalLM, {"mlp_bias": True}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 8, "hidden_act": "gelu_pytorch_tanh"}),
}


def tiny_config(config_class, vocab_size: int = VOCAB_SIZE, **extra):
    return config_class(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=NUM_NEURONS,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **extra,
    )


def make_model(family: str):
    config_class, model_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = model_class(tiny_config(config_class, **extra)).eval()
    if extra.get("mlp_bias"):
        with torch.no_grad():
            for mlp in find_swiglu_mlps(model):
                for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                    linear.bias.normal_(std=0.1)
    return model


def make_batches(seed: int, count: int = 10):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        length = int(torch.randint(6, 30, (1,), generator=generator))
        ids = torch.randint(1, VOCAB_SIZE, (length,), generator=generator).tolist()
        samples.append(TokenizedSample(input_ids=ids, prompt_length=int(torch.randint(1, length, (1,), generator=generator))))
    return length_grouped_batches(samples, 3, 0)


def logits(model, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits for batch in batches]


def masks_from_zero_weights(model) -> dict[str, torch.Tensor]:
    """Rebuild masks from the weights: a neuron is pruned when its gate_proj row is all zero."""
    return {mlp.key: mlp.gate_proj.weight.detach().ne(0).any(dim=1) for mlp in find_swiglu_mlps(model)}


def assert_neurons_zeroed(model, original, masks) -> None:
    """Check pruned neurons are zero and every other parameter equals ``original``'s."""
    pruned_parameters = set()
    for mlp, source in zip(find_swiglu_mlps(model), find_swiglu_mlps(original)):
        pruned = ~masks[mlp.key]
        for name in ("gate_proj", "up_proj"):
            weight, source_weight = getattr(mlp, name).weight, getattr(source, name).weight
            assert torch.all(weight[pruned] == 0), f"{mlp.key}.{name} rows of pruned neurons"
            assert torch.equal(weight[~pruned], source_weight[~pruned]), f"{mlp.key}.{name} rows of kept neurons"
            pruned_parameters.add(f"{mlp.key}.{name}.weight")
            if getattr(mlp, name).bias is not None:
                assert torch.all(getattr(mlp, name).bias[pruned] == 0)
                assert torch.equal(getattr(mlp, name).bias[~pruned], getattr(source, name).bias[~pruned])
                pruned_parameters.add(f"{mlp.key}.{name}.bias")
        assert torch.all(mlp.down_proj.weight[:, pruned] == 0), f"{mlp.key}.down_proj columns of pruned neurons"
        assert torch.equal(mlp.down_proj.weight[:, ~pruned], source.down_proj.weight[:, ~pruned])
        pruned_parameters.add(f"{mlp.key}.down_proj.weight")

    source_parameters = dict(original.named_parameters())
    for name, parameter in model.named_parameters():
        if name not in pruned_parameters:
            assert torch.equal(parameter, source_parameters[name]), f"{name} must not change"


@pytest.fixture(scope="module", params=list(FAMILIES))
def pruned(request, tmp_path_factory):
    """Scan, select and prune one family's model; save it and reload it with plain transformers."""
    family = request.param
    torch.set_num_threads(1)
    original = make_model(family)
    model = copy.deepcopy(original)
    forget = scan_activations(model, make_batches(seed=1), show_progress=False)
    retain = scan_activations(model, make_batches(seed=2), show_progress=False)
    selection = select_from_statistics(forget, retain, SELECTION)
    counts = prune_neurons(model, selection.masks)

    directory = tmp_path_factory.mktemp(f"pruned-{family}")
    model.save_pretrained(directory)
    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
    return {
        "family": family,
        "original": original,
        "model": model,
        "masks": selection.masks,
        "counts": counts,
        "directory": directory,
        "reloaded": reloaded,
    }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_finds_gated_mlps(family):
    model = make_model(family)
    mlps = find_swiglu_mlps(model)
    assert [mlp.key for mlp in mlps] == MLP_KEYS
    for mlp, layer in zip(mlps, model.model.layers):
        assert mlp.module is layer.mlp
        assert mlp.gate_proj is layer.mlp.gate_proj
        assert mlp.up_proj is layer.mlp.up_proj
        assert mlp.down_proj is layer.mlp.down_proj
        assert mlp.num_neurons == NUM_NEURONS


@pytest.mark.parametrize("family", list(FAMILIES))
def test_scan_records_down_proj_input(family):
    model = make_model(family)
    batches = make_batches(seed=3)
    captured = {key: [] for key in MLP_KEYS}
    handles = []
    for mlp in find_swiglu_mlps(model):
        def capture(module, args, key=mlp.key):
            captured[key].append(args[0].detach().clone())

        handles.append(mlp.down_proj.register_forward_pre_hook(capture))
    logits(model, batches)
    for handle in handles:
        handle.remove()

    statistics = scan_activations(model, batches, token_scope="all", show_progress=False)
    for key in MLP_KEYS:
        counted = [hidden[batch.attention_mask.bool()].double() for hidden, batch in zip(captured[key], batches)]
        expected = torch.cat(counted)
        assert statistics.count[key] == expected.shape[0]
        torch.testing.assert_close(statistics.sums["sum_abs"][key], expected.abs().sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(statistics.sums["sum_sq"][key], expected.square().sum(0), rtol=1e-12, atol=1e-12)


def test_prune_zeroes_selected_neurons(pruned):
    masks = pruned["masks"]
    assert set(masks) == set(MLP_KEYS)
    assert pruned["counts"] == {key: int((~mask).sum()) for key, mask in masks.items()}
    assert sum(pruned["counts"].values()) == round(SELECTION.budget * NUM_LAYERS * NUM_NEURONS)
    assert_neurons_zeroed(pruned["model"], pruned["original"], masks)


def test_pruning_equals_activation_masks(pruned):
    batches = make_batches(seed=4)
    masked = copy.deepcopy(pruned["original"])
    handles = register_activation_masks(masked, pruned["masks"])
    expected = logits(masked, batches)
    for handle in handles:
        handle.remove()
    for actual, reference in zip(logits(pruned["model"], batches), expected):
        torch.testing.assert_close(actual, reference, rtol=1e-5, atol=1e-6)


def test_plain_reload_keeps_architecture(pruned):
    reloaded, model = pruned["reloaded"], pruned["model"]
    assert type(reloaded) is type(model)
    config = json.loads((pruned["directory"] / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__]
    assert config["model_type"] == model.config.model_type


def test_plain_reload_keeps_pruned_weights(pruned):
    reloaded = pruned["reloaded"]
    expected = pruned["model"].state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    recovered = masks_from_zero_weights(reloaded)
    for key, mask in pruned["masks"].items():
        assert torch.equal(recovered[key], mask), key

    batches = make_batches(seed=5)
    for actual, reference in zip(logits(reloaded, batches), logits(pruned["model"], batches)):
        assert torch.equal(actual, reference)


def test_rescan_sees_pruned_neurons_silent(pruned):
    statistics = scan_activations(pruned["reloaded"], make_batches(seed=6), token_scope="all", show_progress=False)
    for key, mask in pruned["masks"].items():
        sum_abs = statistics.sums["sum_abs"][key]
        assert torch.all(sum_abs[~mask] == 0), f"{key}: a pruned neuron still fires"
        assert torch.all(sum_abs[mask] > 0), f"{key}: a kept neuron went silent"


# ---------------------------------------------------------------------------------------
# Phi-3: fused gate_up_proj


def make_phi3(vocab_size: int = VOCAB_SIZE, **extra) -> Phi3ForCausalLM:
    torch.manual_seed(0)
    return Phi3ForCausalLM(tiny_config(Phi3Config, vocab_size=vocab_size, pad_token_id=0, **extra)).eval()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(find_swiglu_mlps, id="find_swiglu_mlps"),
        pytest.param(full_masks, id="full_masks"),
        pytest.param(lambda model: scan_activations(model, make_batches(seed=7), show_progress=False), id="scan_activations"),
        pytest.param(lambda model: prune_neurons(model, {}), id="prune_neurons"),
    ],
)
def test_phi3_rejected(call):
    with pytest.raises(UnsupportedModelError) as error:
        call(make_phi3())
    message = str(error.value)
    assert "'model.layers.0.mlp'" in message
    assert "Phi3MLP" in message
    assert "gate_up_proj" in message


# ---------------------------------------------------------------------------------------
# The `pareto-prune prune` command on saved checkpoints with a real tokenizer


def save_with_tokenizer(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prune_command(model_dir: Path, output: Path) -> list[str]:
    return [
        "prune", "--model", str(model_dir), "--output", str(output),
        "--forget", "tofu:forget01", "--retain", "tofu:retain99", "--max-samples", "8",
        "--batch-size", "4", "--budget", "0.1", "--max-layer-fraction", "0.3", "--check-samples", "2", "--check-max-new-tokens", "4",
    ]


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_cli_prune_output_loads_with_transformers(family, smollm2_tokenizer, tmp_path):
    tokenizer = smollm2_tokenizer
    config_class, model_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    token_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    original = model_class(tiny_config(config_class, vocab_size=len(tokenizer), **token_ids, **extra)).eval()
    model_dir = save_with_tokenizer(original, tokenizer, tmp_path / "model")
    output = tmp_path / "pruned"

    assert main(prune_command(model_dir, output)) == 0

    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == [model_class.__name__]
    assert config["model_type"] == original.config.model_type
    assert "pareto_pruning" in config
    reloaded = AutoModelForCausalLM.from_pretrained(output).eval()
    assert type(reloaded) is model_class
    AutoTokenizer.from_pretrained(output)

    masks = load_masks(output / MASKS_FILENAME)
    assert set(masks) == set(MLP_KEYS)
    assert int(sum((~mask).sum() for mask in masks.values())) == round(0.1 * NUM_LAYERS * NUM_NEURONS)
    assert_neurons_zeroed(reloaded, original, masks)
    assert load_file(str(output / "model.safetensors")).keys() == load_file(str(model_dir / "model.safetensors")).keys()


def test_cli_rejects_phi3(smollm2_tokenizer, tmp_path, capsys):
    tokenizer = smollm2_tokenizer
    token_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model_dir = save_with_tokenizer(make_phi3(vocab_size=len(tokenizer), **token_ids), tokenizer, tmp_path / "phi3")
    output = tmp_path / "pruned"

    assert main(prune_command(model_dir, output)) == 1
    error = capsys.readouterr().err
    assert "'model.layers.0.mlp'" in error
    assert "gate_up_proj" in error
    assert not output.exists()
