"""Tests for pareto_prune.statistics.NeuronStatistics: sums, statistics, merging and files."""

from __future__ import annotations

import math

import pytest
import torch

from pareto_prune.data import TextFormat, length_grouped_batches, tokenize_pairs
from pareto_prune.masking import full_masks, save_masks
from pareto_prune.scan import scan_activations
from pareto_prune.statistics import STATISTIC_NAMES, SUM_FIELDS, NeuronStatistics

KEYS = ("model.layers.0.mlp", "model.layers.1.mlp")


@pytest.fixture(scope="module")
def batches(smollm2_tokenizer, forget_pairs):
    samples = tokenize_pairs(smollm2_tokenizer, forget_pairs, TextFormat())
    return length_grouped_batches(samples, 3, smollm2_tokenizer.pad_token_id)


def scan(model, batches) -> NeuronStatistics:
    return scan_activations(model, batches, show_progress=False)


def hand_statistics() -> NeuronStatistics:
    statistics = NeuronStatistics({"mlp": 2})
    statistics.add_batch("mlp", torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    return statistics


def random_statistics(seed: int) -> NeuronStatistics:
    generator = torch.Generator().manual_seed(seed)
    statistics = NeuronStatistics({key: 5 for key in KEYS})
    for key in KEYS:
        statistics.add_batch(key, torch.randn(7, 5, generator=generator, dtype=torch.float64))
    return statistics


def test_add_batch_sums():
    statistics = hand_statistics()

    assert float(statistics.count["mlp"]) == 2.0
    assert statistics.sums["sum"]["mlp"].tolist() == [4.0, 2.0]
    assert statistics.sums["sum_abs"]["mlp"].tolist() == [4.0, 6.0]
    assert statistics.sums["sum_sq"]["mlp"].tolist() == [10.0, 20.0]
    assert statistics.sums["sum_positive"]["mlp"].tolist() == [4.0, 4.0]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mean_abs", [2.0, 3.0]),
        ("rms", [math.sqrt(5.0), math.sqrt(10.0)]),
        ("mean", [2.0, 1.0]),
        ("mean_positive", [2.0, 2.0]),
    ],
)
def test_statistic_values(name, expected):
    values = hand_statistics().statistic(name)["mlp"]

    assert torch.allclose(values, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("name", STATISTIC_NAMES)
def test_statistic_without_tokens(name):
    values = NeuronStatistics({"mlp": 3}).statistic(name)["mlp"]

    assert torch.equal(values, torch.zeros(3, dtype=torch.float64))


def test_unknown_statistic():
    with pytest.raises(ValueError, match="'median'"):
        hand_statistics().statistic("median")


def test_round_trip_exact(tmp_path):
    original = random_statistics(seed=0)
    path = tmp_path / "statistics.safetensors"

    original.save(path, metadata={"note": "round trip"})
    loaded, metadata = NeuronStatistics.load(path)

    assert loaded.sizes == original.sizes
    assert loaded.keys == list(KEYS)
    assert metadata["note"] == "round trip"
    expected = original.to_tensors()
    actual = loaded.to_tensors()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == torch.float64, name
        assert torch.equal(actual[name], tensor), name


def test_loaded_statistics_accumulate(tmp_path):
    path = tmp_path / "statistics.safetensors"
    random_statistics(seed=0).save(path)
    loaded, _ = NeuronStatistics.load(path)

    loaded.add_batch(KEYS[0], torch.ones(2, 5))

    assert float(loaded.count[KEYS[0]]) == 9.0


def test_merge_equals_union_scan(tiny_llama, batches):
    first, second = batches[:2], batches[2:]

    merged = scan(tiny_llama, first).merge_(scan(tiny_llama, second))
    union = scan(tiny_llama, batches)

    for key in union.keys:
        assert torch.equal(merged.count[key], union.count[key]), key
        for field in SUM_FIELDS:
            assert torch.allclose(merged.sums[field][key], union.sums[field][key], rtol=1e-12, atol=1e-12), f"{field} of {key}"


def test_sum_equals_merge():
    parts = [random_statistics(seed) for seed in range(3)]

    total = NeuronStatistics.sum(parts)
    merged = random_statistics(0).merge_(random_statistics(1)).merge_(random_statistics(2))

    for name, tensor in merged.to_tensors().items():
        assert torch.equal(total.to_tensors()[name], tensor), name


def test_sum_leaves_parts_unchanged():
    parts = [random_statistics(seed) for seed in range(2)]
    before = [part.to_tensors() for part in parts]

    NeuronStatistics.sum(parts)

    for part, tensors in zip(parts, before):
        for name, tensor in part.to_tensors().items():
            assert torch.equal(tensor, tensors[name]), name


def test_merge_rejects_other_model():
    with pytest.raises(ValueError, match="different models"):
        random_statistics(0).merge_(NeuronStatistics({KEYS[0]: 5}))


def test_load_masks_file_rejected(tiny_llama, tmp_path):
    path = tmp_path / "neuron_masks.safetensors"
    save_masks(full_masks(tiny_llama), path)

    with pytest.raises(ValueError, match="neuron_masks.safetensors"):
        NeuronStatistics.load(path)


def test_load_text_file_rejected(tmp_path):
    path = tmp_path / "statistics.json"
    path.write_text('{"sum": [1, 2, 3]}\n')

    with pytest.raises(ValueError, match="statistics.json"):
        NeuronStatistics.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        NeuronStatistics.load(tmp_path / "absent.safetensors")
