"""Tests for pareto_prune.masking and pareto_prune.mlp on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pareto_prune.masking import full_masks, load_masks, prune_neurons, register_activation_masks, save_masks, validate_masks
from pareto_prune.mlp import UnsupportedModelError, find_swiglu_mlps

# Neurons pruned in the tests, per MLP key of the two-layer tiny Llama.
PRUNED = {"model.layers.0.mlp": [3, 17, 63], "model.layers.1.mlp": [0, 40]}


def pruning_masks(model) -> dict[str, torch.Tensor]:
    masks = full_masks(model)
    for key, neurons in PRUNED.items():
        masks[key][neurons] = False
    return masks


def token_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("Where was the author Mirela Castellanos born? In Valparaíso.")["input_ids"]])


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def without_neurons(model, masks) -> nn.Module:
    """Return a copy of ``model`` whose MLPs lack the masked neurons: smaller gate, up and down projections."""
    smaller = copy.deepcopy(model)
    for mlp in find_swiglu_mlps(smaller):
        keep = masks[mlp.key]
        kept_count = int(keep.sum())
        gate = nn.Linear(mlp.gate_proj.in_features, kept_count, bias=False)
        up = nn.Linear(mlp.up_proj.in_features, kept_count, bias=False)
        down = nn.Linear(kept_count, mlp.down_proj.out_features, bias=False)
        with torch.no_grad():
            gate.weight.copy_(mlp.gate_proj.weight[keep])
            up.weight.copy_(mlp.up_proj.weight[keep])
            down.weight.copy_(mlp.down_proj.weight[:, keep])
        mlp.module.gate_proj, mlp.module.up_proj, mlp.module.down_proj = gate, up, down
    return smaller


def tiny_config_kwargs(**overrides):
    settings = dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    settings.update(overrides)
    return settings


def test_pruned_equals_removed(tiny_llama, smollm2_tokenizer):
    masks = pruning_masks(tiny_llama)
    input_ids = token_ids(smollm2_tokenizer)
    original = logits_of(tiny_llama, input_ids)
    removed = logits_of(without_neurons(tiny_llama, masks), input_ids)

    prune_neurons(tiny_llama, masks)
    pruned = logits_of(tiny_llama, input_ids)

    assert not torch.allclose(removed, original, atol=1e-4), "removing the neurons must change the logits"
    assert torch.allclose(pruned, removed, rtol=1e-5, atol=1e-6)


def test_prune_returns_counts(tiny_llama):
    counts = prune_neurons(tiny_llama, pruning_masks(tiny_llama))

    assert counts == {key: len(neurons) for key, neurons in PRUNED.items()}


def test_prune_zeroes_only_pruned(tiny_llama):
    before = {name: tensor.clone() for name, tensor in tiny_llama.state_dict().items()}
    masks = pruning_masks(tiny_llama)

    prune_neurons(tiny_llama, masks)

    after = tiny_llama.state_dict()
    mlp_weights = set()
    for key, keep in masks.items():
        gate, up, down = (f"{key}.{name}.weight" for name in ("gate_proj", "up_proj", "down_proj"))
        mlp_weights |= {gate, up, down}
        assert torch.all(after[gate][~keep] == 0), gate
        assert torch.all(after[up][~keep] == 0), up
        assert torch.all(after[down][:, ~keep] == 0), down
        assert torch.equal(after[gate][keep], before[gate][keep]), gate
        assert torch.equal(after[up][keep], before[up][keep]), up
        assert torch.equal(after[down][:, keep], before[down][:, keep]), down
    for name in before.keys() - mlp_weights:
        assert torch.equal(after[name], before[name]), name


def test_prune_zeroes_biases(tiny_llama):
    mlp = find_swiglu_mlps(tiny_llama)[0]
    for attribute in ("gate_proj", "up_proj", "down_proj"):
        old = getattr(mlp.module, attribute)
        new = nn.Linear(old.in_features, old.out_features, bias=True)
        setattr(mlp.module, attribute, new)
    down_bias = mlp.module.down_proj.bias.detach().clone()

    prune_neurons(tiny_llama, pruning_masks(tiny_llama))

    pruned = PRUNED[mlp.key]
    assert torch.all(mlp.module.gate_proj.bias[pruned] == 0)
    assert torch.all(mlp.module.up_proj.bias[pruned] == 0)
    assert torch.equal(mlp.module.down_proj.bias, down_bias), "down_proj's bias is shared by all neurons"


def test_activation_masks_zero_input(tiny_llama, smollm2_tokenizer):
    masks = pruning_masks(tiny_llama)
    mlps = find_swiglu_mlps(tiny_llama)
    seen = {}
    capture = [
        mlp.down_proj.register_forward_hook(lambda module, args, output, key=mlp.key: seen.__setitem__(key, args[0].detach()))
        for mlp in mlps
    ]

    handles = register_activation_masks(tiny_llama, masks)
    logits_of(tiny_llama, token_ids(smollm2_tokenizer))

    for mlp in mlps:
        pruned = ~masks[mlp.key]
        assert torch.all(mlp.gate_proj.weight[pruned] != 0), "weights must stay non-zero"
        assert torch.all(seen[mlp.key][..., pruned] == 0), mlp.key
        assert torch.all(seen[mlp.key][..., masks[mlp.key]] != 0), mlp.key
    for handle in handles + capture:
        handle.remove()


def test_activation_masks_match_pruning(tiny_llama, smollm2_tokenizer):
    masks = pruning_masks(tiny_llama)
    input_ids = token_ids(smollm2_tokenizer)
    pruned_copy = copy.deepcopy(tiny_llama)
    prune_neurons(pruned_copy, masks)
    original = logits_of(tiny_llama, input_ids)

    handles = register_activation_masks(tiny_llama, masks)
    masked = logits_of(tiny_llama, input_ids)
    for handle in handles:
        handle.remove()
    unmasked = logits_of(tiny_llama, input_ids)

    assert torch.allclose(masked, logits_of(pruned_copy, input_ids), rtol=1e-5, atol=1e-6)
    assert torch.equal(unmasked, original), "removing the hooks must restore the original forward"


def test_activation_masks_read_in_place_updates(tiny_llama, smollm2_tokenizer):
    masks = full_masks(tiny_llama)
    input_ids = token_ids(smollm2_tokenizer)
    expected_model = copy.deepcopy(tiny_llama)
    prune_neurons(expected_model, pruning_masks(tiny_llama))
    handles = register_activation_masks(tiny_llama, masks)

    for key, neurons in PRUNED.items():
        masks[key][neurons] = False
    masked = logits_of(tiny_llama, input_ids)
    for handle in handles:
        handle.remove()

    assert torch.allclose(masked, logits_of(expected_model, input_ids), rtol=1e-5, atol=1e-6)


def test_masks_round_trip(tiny_llama, tmp_path):
    masks = pruning_masks(tiny_llama)
    path = tmp_path / "masks.safetensors"

    save_masks(masks, path)
    loaded = load_masks(path)

    assert loaded.keys() == masks.keys()
    for key, mask in masks.items():
        assert loaded[key].dtype == torch.bool, key
        assert torch.equal(loaded[key], mask), key


def test_load_masks_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"

    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_masks(path)


def test_load_masks_not_safetensors(tmp_path):
    path = tmp_path / "masks.json"
    path.write_text('{"model.layers.0.mlp": [true, false]}\n')

    with pytest.raises(ValueError, match="masks.json"):
        load_masks(path)


@pytest.mark.parametrize(
    "change, key",
    [
        pytest.param(lambda masks: masks.__setitem__("model.layers.9.mlp", torch.ones(64, dtype=torch.bool)), "model.layers.9.mlp", id="unknown key"),
        pytest.param(lambda masks: masks.pop("model.layers.1.mlp"), "model.layers.1.mlp", id="missing key"),
        pytest.param(lambda masks: masks.__setitem__("model.layers.1.mlp", torch.ones(63, dtype=torch.bool)), "model.layers.1.mlp", id="wrong shape"),
        pytest.param(lambda masks: masks.__setitem__("model.layers.0.mlp", torch.ones(64)), "model.layers.0.mlp", id="wrong dtype"),
    ],
)
def test_validate_masks_names_key(tiny_llama, change, key):
    masks = full_masks(tiny_llama)
    change(masks)

    with pytest.raises(ValueError) as error:
        validate_masks(find_swiglu_mlps(tiny_llama), masks)

    assert key in str(error.value)


def test_prune_rejects_invalid_masks(tiny_llama):
    before = {name: tensor.clone() for name, tensor in tiny_llama.state_dict().items()}
    masks = pruning_masks(tiny_llama)
    masks["model.layers.1.mlp"] = masks["model.layers.1.mlp"][:-1]

    with pytest.raises(ValueError, match="model.layers.1.mlp"):
        prune_neurons(tiny_llama, masks)

    for name, tensor in tiny_llama.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_full_masks_keep_everything(tiny_llama):
    masks = full_masks(tiny_llama)

    assert list(masks) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    for key, mask in masks.items():
        assert mask.dtype == torch.bool, key
        assert mask.shape == (64,), key
        assert bool(mask.all()), key


def test_gpt2_rejected():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=64))

    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        find_swiglu_mlps(model)


@pytest.mark.parametrize(
    "model_class, config_class",
    [(MistralForCausalLM, MistralConfig), (Qwen2ForCausalLM, Qwen2Config)],
    ids=["mistral", "qwen2"],
)
def test_finds_mlps(model_class, config_class):
    torch.manual_seed(0)
    model = model_class(config_class(**tiny_config_kwargs(num_hidden_layers=3)))

    mlps = find_swiglu_mlps(model)

    assert [mlp.key for mlp in mlps] == [f"model.layers.{index}.mlp" for index in range(3)]
    assert [mlp.num_neurons for mlp in mlps] == [64, 64, 64]
    assert all(mlp.down_proj is mlp.module.down_proj for mlp in mlps)
