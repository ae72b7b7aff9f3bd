"""Resuming an activation scan from its checkpoint, after a real SIGKILL and through the CLI."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_integration.job as job
from hf_integration.cli import main
from pareto_prune.data import TokenizedSample, length_grouped_batches
from pareto_prune.scan import scan_activations
from pareto_prune.statistics import SUM_FIELDS, NeuronStatistics

VOCAB_SIZE = 96
BATCH_SIZE = 2
NUM_SAMPLES = 24
# Seconds each forward pass sleeps in the subprocess, so the test can kill it mid-scan.
FORWARD_DELAY = 0.25
SUBPROCESS_TIMEOUT = 120.0

# Runs in a fresh interpreter: scans with a checkpoint after every batch until killed.
SCAN_SCRIPT = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
from pareto_prune.data import TokenizedSample, length_grouped_batches
from pareto_prune.scan import scan_activations

torch.set_num_threads(1)
model_dir, samples_path, checkpoint_path, batch_size, delay = sys.argv[1:6]
model = AutoModelForCausalLM.from_pretrained(model_dir)
samples = [TokenizedSample(**fields) for fields in json.loads(open(samples_path).read())]
batches = length_grouped_batches(samples, int(batch_size), 0)
model.register_forward_hook(lambda *args: time.sleep(float(delay)))
scan_activations(model, batches, checkpoint_path=checkpoint_path, checkpoint_every=1, show_progress=False)
"""


@pytest.fixture(autouse=True)
def single_thread():
    """Use one intra-op thread, as the subprocess does, so float sums match bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_samples(seed: int, count: int = NUM_SAMPLES) -> list[TokenizedSample]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        length = int(torch.randint(6, 40, (1,), generator=generator))
        ids = torch.randint(1, VOCAB_SIZE, (length,), generator=generator).tolist()
        prompt_length = int(torch.randint(1, length, (1,), generator=generator))
        samples.append(TokenizedSample(input_ids=ids, prompt_length=prompt_length))
    return samples


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir)


def checkpoint_metadata(path: Path) -> dict[str, str] | None:
    """Return the checkpoint's metadata, or None while the file does not exist yet."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata()
    except FileNotFoundError:
        return None


def assert_statistics_equal(actual: NeuronStatistics, expected: NeuronStatistics) -> None:
    assert actual.sizes == expected.sizes
    for key in expected.keys:
        assert torch.equal(actual.count[key], expected.count[key]), f"{key} count"
        for field in SUM_FIELDS:
            assert actual.sums[field][key].dtype == torch.float64
            assert torch.equal(actual.sums[field][key], expected.sums[field][key]), f"{key} {field}"


def count_forward_passes(model) -> list[int]:
    calls = [0]

    def count(*args):
        calls[0] += 1

    model.register_forward_hook(count)
    return calls


def kill_scan_after(process: subprocess.Popen, checkpoint: Path, min_batches: int) -> int:
    """Poll the checkpoint until it records ``min_batches``, SIGKILL the scan, return batches done."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"The scan exited with status {process.returncode} before it was killed:\n{stderr}")
        metadata = checkpoint_metadata(checkpoint)
        if metadata is not None and int(metadata["batches_done"]) >= min_batches:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            assert process.returncode == -signal.SIGKILL
            return int(checkpoint_metadata(checkpoint)["batches_done"])
        time.sleep(0.02)
    process.kill()
    process.communicate()
    pytest.fail(f"No checkpoint with {min_batches} batches at {checkpoint} after {SUBPROCESS_TIMEOUT} s.")


def test_killed_scan_resumes_exactly(tmp_path, model_dir, model):
    samples = make_samples(seed=1)
    batches = length_grouped_batches(samples, BATCH_SIZE, 0)
    samples_path = tmp_path / "samples.json"
    samples_path.write_text(json.dumps([vars(sample) for sample in samples]))
    script = tmp_path / "scan_until_killed.py"
    script.write_text(SCAN_SCRIPT)
    checkpoint = tmp_path / "scan.safetensors"

    environment = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(script), str(model_dir), str(samples_path), str(checkpoint), str(BATCH_SIZE), str(FORWARD_DELAY)]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done_before_kill = kill_scan_after(process, checkpoint, min_batches=2)
    assert 2 <= done_before_kill < len(batches), "the scan must be killed part-way"

    forward_passes = count_forward_passes(model)
    resumed = scan_activations(model, batches, checkpoint_path=checkpoint, checkpoint_every=1, resume=True, show_progress=False)
    assert forward_passes[0] == len(batches) - done_before_kill
    assert int(checkpoint_metadata(checkpoint)["batches_done"]) == len(batches)

    uninterrupted = scan_activations(model, batches, show_progress=False)
    assert_statistics_equal(resumed, uninterrupted)


def test_completed_checkpoint_resumes_without_forward(tmp_path, model):
    batches = length_grouped_batches(make_samples(seed=2), BATCH_SIZE, 0)
    checkpoint = tmp_path / "scan.safetensors"
    first = scan_activations(model, batches, checkpoint_path=checkpoint, show_progress=False)

    forward_passes = count_forward_passes(model)
    again = scan_activations(model, batches, checkpoint_path=checkpoint, resume=True, show_progress=False)
    assert forward_passes[0] == 0
    assert_statistics_equal(again, first)


def test_resume_without_checkpoint_starts_fresh(tmp_path, model):
    batches = length_grouped_batches(make_samples(seed=3), BATCH_SIZE, 0)
    resumed = scan_activations(model, batches, checkpoint_path=tmp_path / "new.safetensors", resume=True, show_progress=False)
    assert_statistics_equal(resumed, scan_activations(model, batches, show_progress=False))


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({"seed": 5}, id="other-samples"),
        pytest.param({"batch_size": BATCH_SIZE + 1}, id="other-batch-size"),
        pytest.param({"token_scope": "all"}, id="other-token-scope"),
    ],
)
def test_resume_with_other_data_rejected(tmp_path, model, changed):
    checkpoint = tmp_path / "scan.safetensors"
    batches = length_grouped_batches(make_samples(seed=4), BATCH_SIZE, 0)
    scan_activations(model, batches, checkpoint_path=checkpoint, show_progress=False)

    other_batches = length_grouped_batches(make_samples(seed=changed.get("seed", 4)), changed.get("batch_size", BATCH_SIZE), 0)
    with pytest.raises(ValueError, match="written for other data") as error:
        scan_activations(
            model, other_batches, token_scope=changed.get("token_scope", "answer"),
            checkpoint_path=checkpoint, resume=True, show_progress=False,
        )
    assert str(checkpoint) in str(error.value)


def test_invalid_checkpoint_interval_rejected(tmp_path, model):
    batches = length_grouped_batches(make_samples(seed=6, count=4), BATCH_SIZE, 0)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive number"):
        scan_activations(model, batches, checkpoint_path=tmp_path / "scan.safetensors", checkpoint_every=0, show_progress=False)


def test_checkpoint_is_safetensors(tmp_path, model):
    checkpoint = tmp_path / "scan.safetensors"
    batches = length_grouped_batches(make_samples(seed=7), BATCH_SIZE, 0)
    scan_activations(model, batches, checkpoint_path=checkpoint, show_progress=False)

    raw = checkpoint.read_bytes()
    assert not raw.startswith(b"\x80"), "pickle protocol header"
    assert not raw.startswith(b"PK\x03\x04"), "torch.save zip archive"
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])
    metadata = header.pop("__metadata__")
    assert metadata["format"] == "pareto-prune-statistics"
    assert metadata["batches_done"] == str(len(batches))
    assert metadata["world_size"] == "1"
    assert len(metadata["fingerprint"]) == 64
    assert {entry["dtype"] for entry in header.values()} == {"F64"}
    assert set(header) == {f"model.layers.{layer}.mlp/{field}" for layer in (0, 1) for field in ("count", *SUM_FIELDS)}


# ---------------------------------------------------------------------------------------
# The `pareto-prune scan --checkpoint-dir DIR --resume` command


class ScanInterrupted(RuntimeError):
    """Simulates a crash or Ctrl-C in the middle of a scan."""


def hook_loaded_model(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Count the forward passes of the model that the CLI loads, optionally raising at one of them."""
    calls = [0]
    load = job.load_model_and_tokenizer

    def load_with_hook(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)

        def count(*hook_args):
            calls[0] += 1
            if calls[0] == interrupt_at:
                raise ScanInterrupted(f"interrupted at forward pass {calls[0]}")

        model.register_forward_pre_hook(count)
        return model, tokenizer

    monkeypatch.setattr(job, "load_model_and_tokenizer", load_with_hook)
    return calls


def scan_command(model_dir: Path, output: Path, *extra: str) -> list[str]:
    return [
        "scan", "--model", str(model_dir), "--output", str(output),
        "--forget", "tofu:forget01", "--retain", "tofu:retain99",
        "--max-samples", "8", "--batch-size", "2", *extra,
    ]


def test_cli_scan_resumes(tmp_path, monkeypatch, tiny_checkpoint):
    checkpoint_dir = tmp_path / "progress"
    checkpoint_args = ("--checkpoint-dir", str(checkpoint_dir), "--checkpoint-every", "1")
    forget_batches = retain_batches = 4  # 8 pairs per set in batches of 2

    # The third forward pass is the forget scan's third batch, so two batches are saved.
    hook_loaded_model(monkeypatch, interrupt_at=3)
    with pytest.raises(ScanInterrupted):
        main(scan_command(tiny_checkpoint, tmp_path / "interrupted", *checkpoint_args))
    assert not (tmp_path / "interrupted").exists()
    assert checkpoint_metadata(checkpoint_dir / "forget.partial.safetensors")["batches_done"] == "2"
    assert not (checkpoint_dir / "retain.partial.safetensors").exists()

    calls = hook_loaded_model(monkeypatch)
    assert main(scan_command(tiny_checkpoint, tmp_path / "resumed", *checkpoint_args, "--resume")) == 0
    assert calls[0] == (forget_batches - 2) + retain_batches

    calls = hook_loaded_model(monkeypatch)
    assert main(scan_command(tiny_checkpoint, tmp_path / "uninterrupted")) == 0
    assert calls[0] == forget_batches + retain_batches
    for name in ("forget.safetensors", "retain.safetensors"):
        resumed, _ = NeuronStatistics.load(tmp_path / "resumed" / name)
        uninterrupted, _ = NeuronStatistics.load(tmp_path / "uninterrupted" / name)
        assert_statistics_equal(resumed, uninterrupted)


def test_cli_resume_with_other_data_fails(tmp_path, capsys, tiny_checkpoint):
    checkpoint_args = ("--checkpoint-dir", str(tmp_path / "progress"))
    assert main(scan_command(tiny_checkpoint, tmp_path / "first", *checkpoint_args)) == 0
    capsys.readouterr()

    command = scan_command(tiny_checkpoint, tmp_path / "second", *checkpoint_args, "--resume")
    command[command.index("--max-samples") + 1] = "6"
    assert main(command) == 1
    error = capsys.readouterr().err
    assert "written for other data" in error
    assert "forget.partial.safetensors" in error
    assert not (tmp_path / "second").exists()
