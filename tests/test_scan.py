"""Tests for pareto_prune.scan.scan_activations on a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pareto_prune.data import TextFormat, length_grouped_batches, tokenize_pairs
from pareto_prune.mlp import find_swiglu_mlps
from pareto_prune.scan import NonFiniteActivationError, scan_activations
from pareto_prune.statistics import SUM_FIELDS, NeuronStatistics

# Tolerances for float64 sums of float32 activations computed in different batch shapes.
RTOL = 1e-5
ATOL = 1e-6


@pytest.fixture(scope="module")
def samples(smollm2_tokenizer, forget_pairs):
    return tokenize_pairs(smollm2_tokenizer, forget_pairs, TextFormat())


def make_batches(samples, tokenizer, batch_size: int):
    return length_grouped_batches(samples, batch_size, tokenizer.pad_token_id)


def scan(model, batches, token_scope: str = "answer") -> NeuronStatistics:
    return scan_activations(model, batches, token_scope=token_scope, show_progress=False)


def assert_statistics_close(actual: NeuronStatistics, expected: NeuronStatistics) -> None:
    assert actual.sizes == expected.sizes
    for key in expected.keys:
        assert torch.equal(actual.count[key], expected.count[key]), f"count of {key}"
        for field in SUM_FIELDS:
            assert torch.allclose(actual.sums[field][key], expected.sums[field][key], rtol=RTOL, atol=ATOL), f"{field} of {key}"


@pytest.mark.parametrize("token_scope", ["answer", "all"])
def test_padding_not_counted(tiny_llama, smollm2_tokenizer, samples, token_scope):
    by_length = sorted(samples, key=len)
    shortest, longer = by_length[0], by_length[-2:]
    padded_batch = make_batches([shortest, *longer], smollm2_tokenizer, batch_size=3)
    assert len(padded_batch) == 1
    assert not padded_batch[0].attention_mask.bool().all(), "the batch must contain padding"

    alone = [scan(tiny_llama, make_batches([sample], smollm2_tokenizer, 1), token_scope) for sample in [shortest, *longer]]
    batched = scan(tiny_llama, padded_batch, token_scope)

    assert_statistics_close(batched, NeuronStatistics.sum(alone))


def test_answer_scope_counts_answer_positions(tiny_llama, smollm2_tokenizer, samples):
    batches = make_batches(samples, smollm2_tokenizer, batch_size=4)
    expected = sum(int(batch.answer_mask.sum()) for batch in batches)

    statistics = scan(tiny_llama, batches, "answer")

    for key in statistics.keys:
        assert int(statistics.count[key]) == expected, key


def test_all_scope_counts_real_tokens(tiny_llama, smollm2_tokenizer, samples):
    batches = make_batches(samples, smollm2_tokenizer, batch_size=4)
    expected = sum(int(batch.attention_mask.sum()) for batch in batches)

    statistics = scan(tiny_llama, batches, "all")

    for key in statistics.keys:
        assert int(statistics.count[key]) == expected, key


@pytest.mark.parametrize("token_scope", ["answer", "all"])
def test_sums_match_hand_computation(tiny_llama, smollm2_tokenizer, samples, token_scope):
    batches = make_batches(samples, smollm2_tokenizer, batch_size=4)
    mlps = find_swiglu_mlps(tiny_llama)

    # Capture each MLP's input with a separate hook and recompute silu(gate(x)) * up(x) in float64.
    captured = {mlp.key: [] for mlp in mlps}
    handles = [
        mlp.module.register_forward_pre_hook(lambda module, args, key=mlp.key: captured[key].append(args[0].detach().clone()))
        for mlp in mlps
    ]
    with torch.no_grad():
        for batch in batches:
            tiny_llama(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for handle in handles:
        handle.remove()

    statistics = scan(tiny_llama, batches, token_scope)

    for mlp in mlps:
        gate = mlp.gate_proj.weight.double()
        up = mlp.up_proj.weight.double()
        rows = []
        for batch, hidden in zip(batches, captured[mlp.key]):
            counted = batch.answer_mask if token_scope == "answer" else batch.attention_mask.bool()
            x = hidden[counted].double()
            rows.append(F.silu(x @ gate.T) * (x @ up.T))
        activations = torch.cat(rows)
        expected = {
            "sum": activations.sum(0),
            "sum_abs": activations.abs().sum(0),
            "sum_sq": activations.square().sum(0),
            "sum_positive": activations.clamp_min(0).sum(0),
        }
        assert int(statistics.count[mlp.key]) == activations.shape[0], mlp.key
        for field, value in expected.items():
            assert torch.allclose(statistics.sums[field][mlp.key], value, rtol=RTOL, atol=ATOL), f"{field} of {mlp.key}"


def test_scan_deterministic(tiny_llama, smollm2_tokenizer, samples):
    batches = make_batches(samples, smollm2_tokenizer, batch_size=4)

    first = scan(tiny_llama, batches).to_tensors()
    second = scan(tiny_llama, batches).to_tensors()

    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_statistics_are_float64(tiny_llama, smollm2_tokenizer, samples):
    statistics = scan(tiny_llama, make_batches(samples, smollm2_tokenizer, batch_size=4))

    for name, tensor in statistics.to_tensors().items():
        assert tensor.dtype == torch.float64, name


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored(tiny_llama, smollm2_tokenizer, samples, training):
    tiny_llama.train(training)

    scan(tiny_llama, make_batches(samples[:2], smollm2_tokenizer, batch_size=2))

    assert tiny_llama.training == training
    assert all(module.training == training for module in tiny_llama.modules())


def test_hooks_removed(tiny_llama, smollm2_tokenizer, samples):
    mlps = find_swiglu_mlps(tiny_llama)
    before = {mlp.key: len(mlp.down_proj._forward_pre_hooks) for mlp in mlps}

    scan(tiny_llama, make_batches(samples[:2], smollm2_tokenizer, batch_size=2))

    for mlp in mlps:
        assert len(mlp.down_proj._forward_pre_hooks) == before[mlp.key] == 0, mlp.key


def test_failed_scan_cleans_up(tiny_llama, smollm2_tokenizer, samples):
    mlps = find_swiglu_mlps(tiny_llama)
    with torch.no_grad():
        mlps[0].up_proj.weight.fill_(float("inf"))
    tiny_llama.train()

    with pytest.raises(NonFiniteActivationError, match=mlps[0].key):
        scan(tiny_llama, make_batches(samples[:2], smollm2_tokenizer, batch_size=2))

    assert tiny_llama.training
    for mlp in mlps:
        assert len(mlp.down_proj._forward_pre_hooks) == 0, mlp.key


def test_statistics_size_constant(tiny_llama, smollm2_tokenizer, samples):
    one_batch = make_batches(samples[:1], smollm2_tokenizer, batch_size=1)
    many_batches = make_batches(samples, smollm2_tokenizer, batch_size=1)
    assert len(many_batches) == len(samples) > 1

    small = scan(tiny_llama, one_batch).to_tensors()
    large = scan(tiny_llama, many_batches).to_tensors()

    assert {name: tensor.shape for name, tensor in small.items()} == {name: tensor.shape for name, tensor in large.items()}
    assert sum(t.numel() for t in small.values()) == sum(t.numel() for t in large.values())


def test_invalid_token_scope(tiny_llama, smollm2_tokenizer, samples):
    with pytest.raises(ValueError, match="'prompt'"):
        scan(tiny_llama, make_batches(samples[:1], smollm2_tokenizer, batch_size=1), token_scope="prompt")
