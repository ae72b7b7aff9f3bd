"""Data-parallel scans: two gloo processes on 127.0.0.1 give the statistics of one process.

scan_activations gives each rank every world-size-th batch and all-reduces the sums, so
only the order of float64 additions differs from a one-process scan.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pareto_prune.data import TokenizedSample, length_grouped_batches
from pareto_prune.distributed import (
    init_from_environment,
    is_main_process,
    process_group_from_environment,
    rank_and_world_size,
)
from pareto_prune.scan import scan_activations
from pareto_prune.statistics import SUM_FIELDS, NeuronStatistics

WORLD_SIZE = 2
VOCAB_SIZE = 96
BATCH_SIZE = 2
NUM_SAMPLES = 21  # 11 batches: rank 0 scans 6 and rank 1 scans 5
SUBPROCESS_TIMEOUT = 120

# A torchrun worker: joins the group from torchrun's environment, scans, and writes the
# statistics on rank 0 only. With "nan" it first puts a NaN into an answer token of
# batch 1, which rank 1 scans.
TORCHRUN_SCRIPT = """
import json, sys
import torch
from transformers import AutoModelForCausalLM
from pareto_prune.data import TokenizedSample, length_grouped_batches
from pareto_prune.distributed import is_main_process, process_group_from_environment, rank_and_world_size
from pareto_prune.scan import scan_activations

torch.set_num_threads(1)
model_dir, samples_path, output, batch_size, mode = sys.argv[1:6]
model = AutoModelForCausalLM.from_pretrained(model_dir)
samples = [TokenizedSample(**fields) for fields in json.loads(open(samples_path).read())]
batches = length_grouped_batches(samples, int(batch_size), 0)
if mode == "nan":
    with torch.no_grad():
        model.model.embed_tokens.weight[0] = float("nan")
    position = int(batches[1].answer_mask[0].nonzero()[0])
    batches[1].input_ids[0, position] = 0

with process_group_from_environment() as joined:
    rank, world_size = rank_and_world_size()
    statistics = scan_activations(model, batches, show_progress=False)
    report = {"rank": rank, "world_size": world_size, "joined": joined, "tokens": statistics.total_tokens}
    sys.stdout.write(json.dumps(report) + "\\n")
    sys.stdout.flush()
    if is_main_process():
        statistics.save(output)
"""


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_samples() -> list[TokenizedSample]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(NUM_SAMPLES):
        length = int(torch.randint(6, 40, (1,), generator=generator))
        ids = torch.randint(1, VOCAB_SIZE, (length,), generator=generator).tolist()
        samples.append(TokenizedSample(input_ids=ids, prompt_length=int(torch.randint(1, length, (1,), generator=generator))))
    return samples


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Save a tiny Llama and the samples, so every process loads the same ones."""
    directory = tmp_path_factory.mktemp("distributed-inputs")
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
    LlamaForCausalLM(config).save_pretrained(directory / "model")
    (directory / "samples.json").write_text(json.dumps([vars(sample) for sample in make_samples()]))
    return directory / "model", directory / "samples.json"


def load_model_and_batches(model_dir: Path, samples_path: Path):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    samples = [TokenizedSample(**fields) for fields in json.loads(samples_path.read_text())]
    return model, length_grouped_batches(samples, BATCH_SIZE, 0)


def assert_statistics_close(actual: NeuronStatistics, expected: NeuronStatistics) -> None:
    assert actual.sizes == expected.sizes
    for key in expected.keys:
        assert torch.equal(actual.count[key], expected.count[key]), f"{key} count"
        for field in SUM_FIELDS:
            torch.testing.assert_close(actual.sums[field][key], expected.sums[field][key], rtol=1e-12, atol=0, msg=f"{key} {field}")


def scan_in_process_group(rank: int, port: int, model_dir: Path, samples_path: Path, output: Path) -> None:
    """Worker of torch.multiprocessing.spawn: scan as one of WORLD_SIZE gloo ranks and save the results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        model, batches = load_model_and_batches(model_dir, samples_path)
        checkpoint = output / "scan.safetensors"
        scanned = scan_activations(model, batches, checkpoint_path=checkpoint, checkpoint_every=2, show_progress=False)
        scanned.save(output / f"scanned.rank{rank}.safetensors")
        resumed = scan_activations(model, batches, checkpoint_path=checkpoint, resume=True, show_progress=False)
        resumed.save(output / f"resumed.rank{rank}.safetensors")
        # One batch leaves rank 1 with nothing to scan, but it must still join the all-reduce.
        scan_activations(model, batches[:1], show_progress=False).save(output / f"one-batch.rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned_scan(inputs, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("spawned-scan")
    model_dir, samples_path = inputs
    mp.spawn(scan_in_process_group, args=(free_port(), model_dir, samples_path, output), nprocs=WORLD_SIZE, join=True)
    return output


@pytest.fixture(scope="module")
def one_process(inputs) -> tuple[NeuronStatistics, NeuronStatistics]:
    # Module fixtures run before the autouse single_thread fixture. The ranks use one thread,
    # and float32 matmuls with another thread count round differently, so match them here.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batches = load_model_and_batches(*inputs)
        return scan_activations(model, batches, show_progress=False), scan_activations(model, batches[:1], show_progress=False)
    finally:
        torch.set_num_threads(previous)


def test_two_ranks_match_one_process(spawned_scan, one_process):
    full, _ = one_process
    for rank in range(WORLD_SIZE):
        scanned, _ = NeuronStatistics.load(spawned_scan / f"scanned.rank{rank}.safetensors")
        assert_statistics_close(scanned, full)


def test_ranks_get_identical_sums(spawned_scan):
    # Every rank selects its own masks from these sums, so they must agree bit for bit.
    first, _ = NeuronStatistics.load(spawned_scan / "scanned.rank0.safetensors")
    second, _ = NeuronStatistics.load(spawned_scan / "scanned.rank1.safetensors")
    for key in first.keys:
        assert torch.equal(first.count[key], second.count[key]), f"{key} count"
        for field in SUM_FIELDS:
            assert torch.equal(first.sums[field][key], second.sums[field][key]), f"{key} {field}"


def test_rank_with_no_batches_joins_reduce(spawned_scan, one_process):
    _, one_batch = one_process
    for rank in range(WORLD_SIZE):
        scanned, _ = NeuronStatistics.load(spawned_scan / f"one-batch.rank{rank}.safetensors")
        assert_statistics_close(scanned, one_batch)


def test_rank_checkpoints_contain_own_share(spawned_scan, one_process):
    full, _ = one_process
    batches_per_rank = {0: 6, 1: 5}
    shares = []
    for rank in range(WORLD_SIZE):
        share, metadata = NeuronStatistics.load(spawned_scan / f"scan.rank{rank}.safetensors")
        assert metadata["world_size"] == str(WORLD_SIZE)
        assert metadata["batches_done"] == str(batches_per_rank[rank])
        shares.append(share)
    assert not (spawned_scan / "scan.safetensors").exists()
    assert_statistics_close(NeuronStatistics.sum(shares), full)


def test_two_ranks_resume_from_checkpoints(spawned_scan):
    for rank in range(WORLD_SIZE):
        scanned, _ = NeuronStatistics.load(spawned_scan / f"scanned.rank{rank}.safetensors")
        resumed, _ = NeuronStatistics.load(spawned_scan / f"resumed.rank{rank}.safetensors")
        for key in scanned.keys:
            for field in SUM_FIELDS:
                assert torch.equal(resumed.sums[field][key], scanned.sums[field][key]), f"rank {rank} {key} {field}"


def test_resume_with_other_world_size_rejected(spawned_scan, inputs, tmp_path):
    # A rank file renamed to the one-process name has the right fingerprint but the
    # batch count of a two-process scan.
    checkpoint = tmp_path / "scan.safetensors"
    shutil.copy(spawned_scan / "scan.rank0.safetensors", checkpoint)
    model, batches = load_model_and_batches(*inputs)
    with pytest.raises(ValueError, match="scan with 2 processes, but this scan has 1"):
        scan_activations(model, batches, checkpoint_path=checkpoint, resume=True, show_progress=False)


def test_helpers_outside_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world_size() == (0, 1)
    assert is_main_process()
    assert init_from_environment() is False
    with process_group_from_environment() as joined:
        assert joined is False
    assert not dist.is_initialized()


# ---------------------------------------------------------------------------------------
# Under torchrun


def torchrun(*arguments: str, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *arguments,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)


def checkpoint_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def rank_reports(stdout: str) -> dict[int, dict]:
    # The ranks share one stdout pipe, so two reports can end up on one line.
    reports = [json.loads(text) for text in re.findall(r'\{"rank"[^{}]*\}', stdout)]
    return {report["rank"]: report for report in reports}


def test_torchrun_scan_writes_on_rank_zero(inputs, one_process, tmp_path):
    model_dir, samples_path = inputs
    script = tmp_path / "scan_worker.py"
    script.write_text(TORCHRUN_SCRIPT)
    output = tmp_path / "out" / "statistics.safetensors"
    output.parent.mkdir()

    result = torchrun(str(script), str(model_dir), str(samples_path), str(output), str(BATCH_SIZE), "clean")
    assert result.returncode == 0, result.stderr[-3000:]

    full, _ = one_process
    reports = rank_reports(result.stdout)
    assert sorted(reports) == [0, 1]
    for report in reports.values():
        assert report["joined"] is True
        assert report["world_size"] == WORLD_SIZE
        assert report["tokens"] == full.total_tokens
    assert [path.name for path in output.parent.iterdir()] == [output.name]
    saved, _ = NeuronStatistics.load(output)
    assert_statistics_close(saved, full)


def test_torchrun_overflow_on_one_rank_fails_job(inputs, tmp_path):
    model_dir, samples_path = inputs
    script = tmp_path / "scan_worker.py"
    script.write_text(TORCHRUN_SCRIPT)
    output = tmp_path / "statistics.safetensors"

    started = time.monotonic()
    result = torchrun(str(script), str(model_dir), str(samples_path), str(output), str(BATCH_SIZE), "nan")
    assert result.returncode != 0
    assert time.monotonic() - started < 90, "the rank without the error must not wait for a timeout"
    log = result.stdout + result.stderr
    assert "NonFiniteActivationError" in log
    assert "model.layers.0.mlp on batch 1" in log
    assert not output.exists()


def test_torchrun_cli_prune_writes_once(tiny_checkpoint, qa_files, tmp_path):
    result = torchrun(
        "-m", "hf_integration.cli", "prune", "--model", str(tiny_checkpoint), "--output", str(tmp_path / "pruned"),
        "--forget", str(qa_files.forget), "--retain", str(qa_files.retain), "--batch-size", "2",
        "--check-samples", "0", "--checkpoint-dir", str(tmp_path / "progress"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "pruned" / "model.safetensors").is_file()
    assert result.stdout.count("Pruned checkpoint written to") == 1, "only rank 0 may write and report"
    assert not list(tmp_path.glob(".pruned.*")), "no rank may leave a staging directory"

    # 10 pairs per set in batches of 2 give 5 batches: rank 0 scans 3 and rank 1 scans 2.
    for rank, batches_done in ((0, "3"), (1, "2")):
        for set_name in ("forget", "retain"):
            metadata = checkpoint_metadata(tmp_path / "progress" / f"{set_name}.partial.rank{rank}.safetensors")
            assert metadata["world_size"] == str(WORLD_SIZE)
            assert metadata["batches_done"] == batches_done
