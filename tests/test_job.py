"""End-to-end tests of `pareto-prune prune`, `scan` and `select` on a tiny random Llama checkpoint.

Every run goes through ``hf_integration.cli.main``, as the console script does, with small
data, batch and check sizes so that one run takes a few seconds on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_integration import cli
from hf_integration.loading import load_model_and_tokenizer
from pareto_prune.config import PruningConfig
from pareto_prune.data import load_qa_sources
from pareto_prune.masking import load_masks
from pareto_prune.pipeline import prune_model

BUDGET = 0.08
MAX_SAMPLES = 8
BATCH_SIZE = 4
# The tiny model has 2 layers of 64 neurons. round(0.08 * 128) = 10 fits under the default caps of 6 per layer.
TOTAL_NEURONS = 128
EXPECTED_PRUNED = 10
LAYER_KEYS = ["model.layers.0.mlp", "model.layers.1.mlp"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fast_options(check_samples: int = 2) -> list[str]:
    return [
        "--check-samples", str(check_samples),
        "--check-max-new-tokens", "4",
        "--max-samples", str(MAX_SAMPLES),
        "--batch-size", str(BATCH_SIZE),
    ]


def prune_argv(model: Path, qa_files, output: Path, *extra: str) -> list[str]:
    return [
        "prune",
        "--model", str(model),
        "--forget", str(qa_files.forget),
        "--retain", str(qa_files.retain),
        "--output", str(output),
        "--budget", str(BUDGET),
        *fast_options(),
        *extra,
    ]


@dataclass
class PruneRun:
    status: int
    output: Path


@pytest.fixture(scope="module")
def prune_run(tiny_checkpoint, qa_files, tmp_path_factory) -> PruneRun:
    output = tmp_path_factory.mktemp("prune_run") / "pruned"
    status = cli.main(prune_argv(tiny_checkpoint, qa_files, output))
    return PruneRun(status, output)


@pytest.fixture(scope="module")
def pruned_dir(prune_run) -> Path:
    if prune_run.status != 0:
        pytest.fail(f"pareto-prune prune exited with status {prune_run.status}")
    return prune_run.output


@pytest.fixture(scope="module")
def written_masks(pruned_dir) -> dict[str, torch.Tensor]:
    return load_masks(pruned_dir / "neuron_masks.safetensors")


@pytest.fixture(scope="module")
def written_weights(pruned_dir) -> dict[str, torch.Tensor]:
    return load_file(pruned_dir / "model.safetensors")


@pytest.fixture(scope="module")
def pruning_record(pruned_dir) -> dict:
    return json.loads((pruned_dir / "config.json").read_text())["pareto_pruning"]


@pytest.fixture(scope="module")
def report(pruned_dir) -> dict:
    return json.loads((pruned_dir / "pruning_report.json").read_text())


@pytest.fixture(scope="module")
def in_memory_result(tiny_checkpoint, qa_files):
    """The same pruning done by pareto_prune.pipeline.prune_model on a model loaded in memory."""
    model, tokenizer = load_model_and_tokenizer(str(tiny_checkpoint))
    forget = load_qa_sources([str(qa_files.forget)], max_samples=MAX_SAMPLES, seed=0)
    retain = load_qa_sources([str(qa_files.retain)], max_samples=MAX_SAMPLES, seed=0)
    result = prune_model(model, tokenizer, forget, retain, PruningConfig(budget=BUDGET), batch_size=BATCH_SIZE)
    return model, tokenizer, result


def test_prune_exit_status(prune_run):
    assert prune_run.status == 0


def test_config_architecture(pruned_dir):
    config = json.loads((pruned_dir / "config.json").read_text())

    assert config["architectures"] == ["LlamaForCausalLM"]


def test_config_pruning_record(pruning_record, written_masks, qa_files):
    assert pruning_record["method"] == "pareto_neuron_pruning"
    assert pruning_record["options"]["budget"] == BUDGET
    assert pruning_record["forget_sources"] == [str(qa_files.forget)]
    assert pruning_record["retain_sources"] == [str(qa_files.retain)]
    assert pruning_record["pruned_per_layer"] == {key: int((~mask).sum()) for key, mask in written_masks.items()}


def test_masks_cover_every_mlp(written_masks):
    assert list(written_masks) == LAYER_KEYS
    for key, mask in written_masks.items():
        assert mask.dtype == torch.bool, key
        assert mask.shape == (64,), key


def test_pruned_count_meets_budget(written_masks):
    assert sum(int((~mask).sum()) for mask in written_masks.values()) == EXPECTED_PRUNED


def test_pruned_weights_zero(written_weights, written_masks):
    for key, keep in written_masks.items():
        pruned = ~keep
        assert torch.all(written_weights[f"{key}.gate_proj.weight"][pruned] == 0), key
        assert torch.all(written_weights[f"{key}.up_proj.weight"][pruned] == 0), key
        assert torch.all(written_weights[f"{key}.down_proj.weight"][:, pruned] == 0), key


def test_kept_weights_unchanged(written_weights, written_masks, tiny_checkpoint):
    original = load_file(tiny_checkpoint / "model.safetensors")
    mlp_weights = set()
    for key, keep in written_masks.items():
        gate, up, down = (f"{key}.{name}.weight" for name in ("gate_proj", "up_proj", "down_proj"))
        mlp_weights |= {gate, up, down}
        assert torch.equal(written_weights[gate][keep], original[gate][keep]), gate
        assert torch.equal(written_weights[up][keep], original[up][keep]), up
        assert torch.equal(written_weights[down][:, keep], original[down][:, keep]), down

    assert written_weights.keys() == original.keys()
    for name in original.keys() - mlp_weights:
        assert torch.equal(written_weights[name], original[name]), name


def test_report_layers(report, written_masks):
    assert report["total_pruned"] == EXPECTED_PRUNED
    assert report["total_neurons"] == TOTAL_NEURONS
    assert list(report["layers"]) == LAYER_KEYS
    for key, entry in report["layers"].items():
        assert entry["neurons"] == 64, key
        assert entry["pruned"] == int((~written_masks[key]).sum()), key
        assert entry["budget"] == entry["pruned"], key
        assert sum(entry["front_sizes"]) == 64, key
        assert 0.0 < entry["hypervolume"] <= 1.0, key
        assert 0 <= entry["knee"]["neuron"] < 64, key


def test_report_has_check(report):
    assert set(report["check"]) >= {"samples_per_set", "forget", "retain"}


def test_plots_written(pruned_dir):
    plots = sorted((pruned_dir / "plots").rglob("*.png"))

    assert len(plots) == 1 + len(LAYER_KEYS)
    for path in plots:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path


def test_model_card_written(pruned_dir):
    card = pruned_dir / "README.md"

    assert card.is_file()
    assert card.read_text().strip()


def test_no_staging_left(pruned_dir):
    leftovers = [path.name for path in pruned_dir.parent.iterdir() if path.name.startswith(".")]

    assert leftovers == []


def test_loads_with_auto_class(pruned_dir):
    model = AutoModelForCausalLM.from_pretrained(pruned_dir)

    assert isinstance(model, LlamaForCausalLM)


def test_masks_equal_in_memory(written_masks, in_memory_result):
    _, _, result = in_memory_result

    assert result.masks.keys() == written_masks.keys()
    for key, mask in written_masks.items():
        assert torch.equal(result.masks[key], mask), key


def test_logits_equal_in_memory(pruned_dir, in_memory_result):
    in_memory, tokenizer, _ = in_memory_result
    loaded = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    inputs = tokenizer(["Where was the author Mirela Castellanos born?", "Name a colour."], return_tensors="pt", padding=True)

    with torch.no_grad():
        expected = in_memory(**inputs).logits
        actual = loaded(**inputs).logits

    assert torch.equal(actual, expected)


def test_pruned_model_generates(pruned_dir):
    model, tokenizer = load_model_and_tokenizer(str(pruned_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where was Mirela Castellanos born?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )

    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    new_tokens = generated[0, prompt["input_ids"].shape[1]:]
    assert new_tokens.numel() >= 1
    assert isinstance(tokenizer.decode(new_tokens), str)


def test_scan_then_select_matches_prune(tiny_checkpoint, qa_files, written_masks, written_weights, tmp_path):
    statistics_dir = tmp_path / "statistics"
    selected_dir = tmp_path / "selected"
    scan_status = cli.main([
        "scan",
        "--model", str(tiny_checkpoint),
        "--forget", str(qa_files.forget),
        "--retain", str(qa_files.retain),
        "--output", str(statistics_dir),
        "--max-samples", str(MAX_SAMPLES),
        "--batch-size", str(BATCH_SIZE),
    ])
    select_status = cli.main([
        "select",
        "--statistics", str(statistics_dir),
        "--output", str(selected_dir),
        "--budget", str(BUDGET),
        "--check-samples", "2",
        "--check-max-new-tokens", "4",
        "--batch-size", str(BATCH_SIZE),
    ])

    assert scan_status == 0
    assert select_status == 0
    selected_masks = load_masks(selected_dir / "neuron_masks.safetensors")
    assert selected_masks.keys() == written_masks.keys()
    for key, mask in written_masks.items():
        assert torch.equal(selected_masks[key], mask), key
    selected_weights = load_file(selected_dir / "model.safetensors")
    for name, tensor in written_weights.items():
        assert torch.equal(selected_weights[name], tensor), name


def test_scan_writes_statistics(tiny_checkpoint, qa_files, tmp_path):
    statistics_dir = tmp_path / "statistics"

    status = cli.main([
        "scan",
        "--model", str(tiny_checkpoint),
        "--forget", str(qa_files.forget),
        "--retain", str(qa_files.retain),
        "--output", str(statistics_dir),
        "--max-samples", "3",
        "--batch-size", str(BATCH_SIZE),
    ])

    assert status == 0
    assert sorted(path.name for path in statistics_dir.iterdir()) == ["forget.safetensors", "retain.safetensors", "scan.json"]
    record = json.loads((statistics_dir / "scan.json").read_text())
    assert record["forget_pairs"] == 3
    assert record["retain_pairs"] == 3


def raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def raise_disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_interrupted_run_leaves_nothing(tiny_checkpoint, qa_files, tmp_path, monkeypatch):
    monkeypatch.setattr("hf_integration.checkpoint.write_plots", raise_interrupt)
    output = tmp_path / "pruned"

    with pytest.raises(KeyboardInterrupt):
        cli.main(prune_argv(tiny_checkpoint, qa_files, output, "--check-samples", "0"))

    assert not output.exists()
    assert [path.name for path in tmp_path.iterdir()] == []


def test_failed_write_exit_status(tiny_checkpoint, qa_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("hf_integration.checkpoint.write_plots", raise_disk_full)
    output = tmp_path / "pruned"

    status = cli.main(prune_argv(tiny_checkpoint, qa_files, output, "--check-samples", "0"))

    assert status == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not output.exists()
    assert [path.name for path in tmp_path.iterdir()] == []


def test_interrupted_overwrite_keeps_old(tiny_checkpoint, qa_files, tmp_path, monkeypatch):
    monkeypatch.setattr("hf_integration.checkpoint.write_plots", raise_interrupt)
    output = tmp_path / "pruned"
    output.mkdir()
    (output / "notes.txt").write_text("earlier run\n")

    with pytest.raises(KeyboardInterrupt):
        cli.main(prune_argv(tiny_checkpoint, qa_files, output, "--check-samples", "0", "--overwrite"))

    assert [path.name for path in output.iterdir()] == ["notes.txt"]
    assert (output / "notes.txt").read_text() == "earlier run\n"
    assert [path.name for path in tmp_path.iterdir()] == ["pruned"]


def test_output_inside_model_cache_rejected(tiny_checkpoint, qa_files, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    (cache / "SmolLM2-135M-Instruct").mkdir(parents=True)
    (cache / "SmolLM2-135M-Instruct" / "config.json").write_text("{}")
    monkeypatch.setenv("PARETO_PRUNE_CACHE", str(cache))

    status = cli.main(prune_argv(tiny_checkpoint, qa_files, cache / "SmolLM2-135M-Instruct", "--overwrite"))

    assert status == 1
    assert "overlaps" in capsys.readouterr().err
    assert (cache / "SmolLM2-135M-Instruct" / "config.json").read_text() == "{}"


def test_pruning_pruned_model_records_old_zeros(pruned_dir, qa_files, written_masks, tmp_path):
    output = tmp_path / "pruned-twice"

    status = cli.main(prune_argv(pruned_dir, qa_files, output))

    assert status == 0
    masks = load_masks(output / "neuron_masks.safetensors")
    for key in LAYER_KEYS:
        assert not (masks[key] & ~written_masks[key]).any(), f"{key}: an earlier zero neuron is marked kept"
    report = json.loads((output / "pruning_report.json").read_text())
    assert report["previously_pruned"] == EXPECTED_PRUNED
    assert report["total_pruned"] == sum(int((~mask).sum()) for mask in masks.values())


def test_select_custom_keys_other_directory(tiny_checkpoint, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("forget", "retain"):
        rows = [{"q": f"{name} question {i}?", "a": f"{name} answer number {i}."} for i in range(6)]
        (data / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    monkeypatch.chdir(data)
    scan_status = cli.main([
        "scan", "--model", str(tiny_checkpoint), "--forget", "forget.jsonl", "--retain", "retain.jsonl",
        "--question-key", "q", "--answer-key", "a", "--output", str(tmp_path / "stats"), "--max-samples", "6",
    ])
    monkeypatch.chdir(tmp_path)

    select_status = cli.main([
        "select", "--statistics", str(tmp_path / "stats"), "--output", str(tmp_path / "pruned"),
        "--check-samples", "2", "--check-max-new-tokens", "2",
    ])

    assert scan_status == 0
    assert select_status == 0
    assert (tmp_path / "pruned" / "neuron_masks.safetensors").is_file()


def test_unavailable_device_rejected(tiny_checkpoint, qa_files, tmp_path, capsys):
    status = cli.main(prune_argv(tiny_checkpoint, qa_files, tmp_path / "out", "--device", "gpu"))

    assert status == 1
    assert "Invalid device 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
