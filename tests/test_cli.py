"""Tests of the `pareto-prune` command line: invalid input, protected directories and --help."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hf_integration import cli
from hf_integration.job import JobOptions
from pareto_prune.config import PruningConfig

ERROR_PREFIX = "pareto-prune: error:"
VALID_RECORD = '{"question": "Where was Mirela Castellanos born?", "answer": "In Valparaíso."}'

# Options of `prune` that set a JobOptions field under another spelling, or no field.
CLI_ONLY_OPTIONS = ["--verbose", "--chat-template", "--no-chat-template"]


def fast_options() -> list[str]:
    return ["--check-samples", "2", "--check-max-new-tokens", "4", "--max-samples", "8", "--batch-size", "4"]


def prune_argv(model: Path, forget: Path, retain: Path, output: Path, *extra: str) -> list[str]:
    return [
        "prune",
        "--model", str(model),
        "--forget", str(forget),
        "--retain", str(retain),
        "--output", str(output),
        *fast_options(),
        *extra,
    ]


def error_line(stderr: str) -> str:
    """Return the one line that `pareto-prune` writes for a failed run."""
    lines = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, f"expected one error line in stderr:\n{stderr}"
    return lines[0]


def directory_digest(directory: Path) -> dict[str, str]:
    """Map every file under ``directory`` to the SHA-256 of its content."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def write_data(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# Each case: how to make the forget file or the arguments invalid, and the words the error must contain.
@dataclasses.dataclass
class ErrorCase:
    forget_text: str | None = VALID_RECORD + "\n"
    use_gpt2: bool = False
    extra: tuple[str, ...] = ()
    expected: tuple[str, ...] = ()


ERROR_CASES = {
    "missing data file": ErrorCase(forget_text=None, expected=("absent.jsonl", "not found")),
    "malformed JSON line": ErrorCase(forget_text=VALID_RECORD + '\n{"question": "Who?", "answer": \n', expected=("forget.jsonl", "line 2", "invalid JSON")),
    "missing answer field": ErrorCase(forget_text=VALID_RECORD + '\n{"question": "Who?"}\n', expected=("line 2", "'answer'")),
    "missing custom field": ErrorCase(extra=("--question-key", "prompt"), expected=("line 1", "'prompt'")),
    "empty data file": ErrorCase(forget_text="", expected=("forget.jsonl", "no records")),
    "blank data file": ErrorCase(forget_text="\n  \n", expected=("forget.jsonl", "no records")),
    "model without SwiGLU MLP": ErrorCase(use_gpt2=True, expected=("GPT2LMHeadModel", "gate_proj")),
    "budget above 1": ErrorCase(extra=("--budget", "1.5"), expected=("budget", "1.5")),
    "budget zero": ErrorCase(extra=("--budget", "0"), expected=("budget", "got 0")),
    "max layer fraction zero": ErrorCase(extra=("--max-layer-fraction", "0"), expected=("max_layer_fraction", "got 0")),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_invalid_input_fails_cleanly(case, tiny_checkpoint, tiny_gpt2_checkpoint, qa_files, tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if case.forget_text is None:
        forget = data_dir / "absent.jsonl"
    else:
        forget = write_data(data_dir, "forget.jsonl", case.forget_text)
    model = tiny_gpt2_checkpoint if case.use_gpt2 else tiny_checkpoint
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    output = runs_dir / "pruned"

    status = cli.main(prune_argv(model, forget, qa_files.retain, output, *case.extra))

    stderr = capsys.readouterr().err
    assert status == 1
    message = error_line(stderr)
    for word in case.expected:
        assert word in message
    assert "Traceback" not in stderr
    assert not output.exists()
    assert list(runs_dir.iterdir()) == []


def test_nonempty_output_rejected(tiny_checkpoint, qa_files, tmp_path, capsys):
    output = tmp_path / "pruned"
    output.mkdir()
    (output / "notes.txt").write_text("earlier run\n")
    before = directory_digest(output)

    status = cli.main(prune_argv(tiny_checkpoint, qa_files.forget, qa_files.retain, output))

    message = error_line(capsys.readouterr().err)
    assert status == 1
    assert str(output) in message
    assert "--overwrite" in message
    assert directory_digest(output) == before
    assert [path.name for path in tmp_path.iterdir()] == ["pruned"]


def test_output_file_rejected(tiny_checkpoint, qa_files, tmp_path, capsys):
    output = tmp_path / "pruned"
    output.write_text("not a directory\n")

    status = cli.main(prune_argv(tiny_checkpoint, qa_files.forget, qa_files.retain, output))

    message = error_line(capsys.readouterr().err)
    assert status == 1
    assert str(output) in message
    assert output.read_text() == "not a directory\n"


@pytest.mark.parametrize("relative_output", [".", "pruned"], ids=["model dir", "inside model dir"])
def test_output_overlapping_model_rejected(relative_output, tiny_checkpoint, qa_files, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    before = directory_digest(model)
    output = model / relative_output

    status = cli.main(prune_argv(model, qa_files.forget, qa_files.retain, output, "--overwrite"))

    message = error_line(capsys.readouterr().err)
    assert status == 1
    assert str(model) in message
    assert directory_digest(model) == before
    assert sorted(path.name for path in model.iterdir()) == sorted(before)


def test_overwrite_replaces_output(tiny_checkpoint, qa_files, tmp_path):
    output = tmp_path / "pruned"
    output.mkdir()
    (output / "notes.txt").write_text("earlier run\n")

    status = cli.main(prune_argv(tiny_checkpoint, qa_files.forget, qa_files.retain, output, "--overwrite", "--check-samples", "0"))

    assert status == 0
    assert not (output / "notes.txt").exists()
    assert (output / "model.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["pruned"]


def test_select_missing_statistics(tmp_path, capsys):
    statistics = tmp_path / "statistics"
    output = tmp_path / "pruned"

    status = cli.main(["select", "--statistics", str(statistics), "--output", str(output)])

    message = error_line(capsys.readouterr().err)
    assert status == 1
    assert str(statistics) in message
    assert not output.exists()


def test_select_corrupt_statistics(tiny_checkpoint, qa_files, tmp_path, capsys):
    statistics = tmp_path / "statistics"
    assert cli.main([
        "scan",
        "--model", str(tiny_checkpoint),
        "--forget", str(qa_files.forget),
        "--retain", str(qa_files.retain),
        "--output", str(statistics),
        "--max-samples", "2",
    ]) == 0
    (statistics / "retain.safetensors").write_text("truncated\n")
    output = tmp_path / "pruned"
    capsys.readouterr()

    status = cli.main(["select", "--statistics", str(statistics), "--output", str(output)])

    message = error_line(capsys.readouterr().err)
    assert status == 1
    assert "retain.safetensors" in message
    assert not output.exists()


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prune", "--help"])

    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0
    method_options = [option_name(field) for field in sorted(PruningConfig.field_names()) if field != "use_chat_template"]
    job_options = [option_name(field) for field in JobOptions.__dataclass_fields__]
    for option in method_options + job_options + CLI_ONLY_OPTIONS:
        assert option in help_text, option



def test_options_recorded_in_config(tiny_checkpoint, qa_files, tmp_path):
    output = tmp_path / "pruned"
    extra = ("--no-chat-template", "--answer-suffix", "", "--max-fronts", "2", "--check-samples", "0")

    status = cli.main(prune_argv(tiny_checkpoint, qa_files.forget, qa_files.retain, output, *extra))

    assert status == 0
    options = json.loads((output / "config.json").read_text())["pareto_pruning"]["options"]
    assert options["use_chat_template"] is False
    assert options["answer_suffix"] == ""
    assert options["max_fronts"] == 2
    report = json.loads((output / "pruning_report.json").read_text())
    for key, entry in report["layers"].items():
        assert entry["num_fronts"] <= 2, key
