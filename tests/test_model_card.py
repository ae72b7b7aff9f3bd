"""Tests for the model card template, build_model_card and write_model_card."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest
from huggingface_hub import ModelCard

from hf_integration import model_card
from hf_integration.model_card import build_model_card, find_template, is_generated_card, write_model_card

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL = "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"


def pruning_info(**changes: Any) -> dict[str, Any]:
    info = {
        "format_version": 1,
        "method": "pareto_neuron_pruning",
        "options": {
            "strategy": "hypervolume_budget",
            "budget": 0.02,
            "plain_template": "Question: {question}\nAnswer: ",
            "chat_template_kwargs": {"date_string": "10 Apr 2025"},
            "max_fronts": None,
        },
        "pruned_per_layer": {"model.layers.0.mlp": 12, "model.layers.1.mlp": 0, "model.layers.10.mlp": 7},
        "forget_sources": ["tofu:forget10"],
        "retain_sources": ["tofu:retain90", "data/world_facts.jsonl"],
    }
    info.update(changes)
    return info


def report() -> dict[str, Any]:
    layer = {"neurons": 8192, "budget": 20, "num_fronts": 31, "front_sizes": [9, 14, 20], "hypervolume": 0.1234567, "knee": None}
    return {
        "strategy": "hypervolume_budget",
        "total_neurons": 3 * 8192,
        "total_pruned": 19,
        "layers": {
            "model.layers.0.mlp": {**layer, "pruned": 12},
            "model.layers.1.mlp": {**layer, "pruned": 0},
            "model.layers.10.mlp": {**layer, "pruned": 7},
        },
    }


EVAL_RESULTS = {"forget_Q_A_Prob": 0.0812, "model_utility": 0.5931, "forget_quality": 0.00123}


def table_rows(text: str) -> dict[str, list[str]]:
    """Return the cells of every Markdown table row whose first cell is an inline-code name."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_card_parses_with_metadata() -> None:
    card = build_model_card(pruning_info(), report(), BASE_MODEL, license="llama3.2", repo_id="me/tofu-pruned")

    parsed = ModelCard(str(card))
    assert parsed.data.base_model == BASE_MODEL
    assert parsed.data.library_name == "transformers"
    assert parsed.data.pipeline_tag == "text-generation"
    assert parsed.data.license == "llama3.2"
    assert parsed.data.datasets == ["locuslab/TOFU"]
    assert parsed.data.tags == ["unlearning", "pruning", "pareto-prune", "tofu"]
    assert parsed.data.model_name == "tofu-pruned"
    assert parsed.text.lstrip().startswith("# tofu-pruned\n")


def test_card_loads_from_file(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    build_model_card(pruning_info(), report(), BASE_MODEL).save(path)

    loaded = ModelCard.load(path)

    assert loaded.data.base_model == BASE_MODEL
    assert "pareto-prune" in loaded.data.tags


def test_layer_table_lists_counts() -> None:
    card = build_model_card(pruning_info(), report(), BASE_MODEL)

    rows = table_rows(card.text)
    assert rows["model.layers.0.mlp"][:4] == ["8192", "12", "0.15%", "20"]
    assert rows["model.layers.1.mlp"][1] == "0"
    assert rows["model.layers.10.mlp"][1] == "7"
    assert rows["model.layers.0.mlp"][4:] == ["31", "0.1235"]
    assert "19 of 24576 MLP neurons (0.08%) were pruned." in card.text
    layer_keys = [key for key in rows if key.startswith("model.layers.")]
    assert layer_keys == ["model.layers.0.mlp", "model.layers.1.mlp", "model.layers.10.mlp"]


def test_layer_table_without_report() -> None:
    card = build_model_card(pruning_info(), None, BASE_MODEL)

    rows = table_rows(card.text)
    assert rows["model.layers.0.mlp"] == ["12"]
    assert rows["model.layers.10.mlp"] == ["7"]
    assert "19 MLP neurons were pruned." in card.text
    assert "pruning_report.json" not in card.text


def test_layers_from_report_when_counts_missing() -> None:
    info = pruning_info()
    del info["pruned_per_layer"]

    card = build_model_card(info, report(), BASE_MODEL)

    assert table_rows(card.text)["model.layers.10.mlp"][1] == "7"


def test_card_without_any_counts_rejected() -> None:
    info = pruning_info()
    del info["pruned_per_layer"]

    with pytest.raises(ValueError, match="pruned_per_layer"):
        build_model_card(info, None, BASE_MODEL)


def test_options_table_shows_values_as_json() -> None:
    card = build_model_card(pruning_info(), report(), BASE_MODEL)

    rows = table_rows(card.text)
    assert rows["budget"] == ["`0.02`"]
    assert rows["plain_template"] == ['`"Question: {question}\\nAnswer: "`']
    assert rows["chat_template_kwargs"] == ['`{"date_string": "10 Apr 2025"}`']
    assert rows["max_fronts"] == ["`null`"]
    assert "selection strategy `hypervolume_budget`" in card.text


def test_sources_listed() -> None:
    card = build_model_card(pruning_info(), None, BASE_MODEL)

    forgotten = card.text.split("## What was forgotten")[1].split("## Pruned neurons")[0]
    assert "- `tofu:forget10`: split `forget10` of the TOFU benchmark" in forgotten
    assert "- `tofu:retain90`" in forgotten
    assert "- `data/world_facts.jsonl`: question-answer file supplied by the user" in forgotten


def test_eval_results_present_when_given() -> None:
    card = build_model_card(pruning_info(), report(), BASE_MODEL, eval_results=EVAL_RESULTS, repo_id="me/tofu-pruned")

    parsed = ModelCard(str(card))
    results = parsed.data.eval_results
    assert {result.metric_type: result.metric_value for result in results} == EVAL_RESULTS
    assert {result.metric_name for result in results} == set(EVAL_RESULTS)
    assert {result.task_type for result in results} == {"text-generation"}
    assert {result.dataset_type for result in results} == {"locuslab/TOFU"}
    assert {result.dataset_config for result in results} == {"forget10"}
    assert parsed.data.model_name == "tofu-pruned"
    assert "## Evaluation" in card.text
    assert table_rows(card.text)["forget_quality"] == ["0.00123"]


def test_eval_results_absent_when_not_given() -> None:
    card = build_model_card(pruning_info(), report(), BASE_MODEL)

    assert card.data.eval_results is None
    assert "model-index" not in str(card)
    assert "## Evaluation" not in card.text


def test_eval_results_skip_none_and_reject_text() -> None:
    card = build_model_card(pruning_info(), None, BASE_MODEL, eval_results={"model_utility": 0.5, "forget_quality": None})
    assert [result.metric_type for result in card.data.eval_results] == ["model_utility"]

    with pytest.raises(ValueError, match="forget_quality"):
        build_model_card(pruning_info(), None, BASE_MODEL, eval_results={"forget_quality": "high"})


def test_card_without_tofu_sources() -> None:
    info = pruning_info(forget_sources=["secrets.jsonl"], retain_sources=["keep.jsonl"])

    card = build_model_card(info, None, BASE_MODEL, eval_results={"model_utility": 0.5}, datasets=["me/secrets"])

    assert "tofu" not in card.data.tags
    assert card.data.datasets == ["me/secrets"]
    assert card.data.eval_results[0].dataset_type == "custom"
    assert "MIT" not in card.text


def test_card_tolerates_unknown_and_missing_keys() -> None:
    info = {"pruned_per_layer": {"model.layers.0.mlp": 3}, "format_version": 1, "future_field": {"a": 1}}

    card = build_model_card(info, None, None)

    assert card.data.model_name == "pareto-pruned-model"
    assert card.data.base_model is None
    assert "- not recorded" in card.text
    assert "a Llama-family language model with 3 MLP neurons pruned" in card.text


def test_newer_format_version_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hf_integration.model_card"):
        build_model_card(pruning_info(format_version=2), None, BASE_MODEL)

    assert "format_version 2" in caplog.text


def test_local_base_model_kept_out_of_metadata(tmp_path: Path) -> None:
    card = build_model_card(pruning_info(), None, str(tmp_path))

    assert card.data.base_model is None
    assert f"This is `{tmp_path}` with 19 MLP neurons pruned" in card.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [("org/model", True), ("gpt2", True), ("/no/such/model/dir", False), ("org/model/extra", False), ("org/mo..del", False)],
)
def test_hub_repo_id_detection(value: str, expected: bool) -> None:
    assert model_card.is_hub_repo_id(value) is expected


def test_loading_examples_name_repo() -> None:
    card = build_model_card(pruning_info(), None, BASE_MODEL, repo_id="me/tofu-pruned")

    assert 'AutoModelForCausalLM.from_pretrained("me/tofu-pruned")' in card.text
    assert 'PrunedLlamaForCausalLM.from_pretrained("me/tofu-pruned")' in card.text
    assert "from hf_integration import PrunedLlamaForCausalLM" in card.text


def test_citation_and_licence() -> None:
    card = build_model_card(pruning_info(), None, BASE_MODEL)

    assert "@article{maini2024tofu," in card.text
    assert "arXiv:2401.06121" in card.text
    assert "No licence was given" in card.text
    assert f"It is derived from `{BASE_MODEL}`" in card.text


def test_template_found_in_package() -> None:
    path = find_template()

    assert path == Path(model_card.__file__).resolve().parent / "MODEL_CARD_TEMPLATE.md"
    assert path.read_bytes() == (REPO_ROOT / "MODEL_CARD_TEMPLATE.md").read_bytes()


def test_package_template_is_relative_symlink() -> None:
    link = REPO_ROOT / "hf_integration" / "MODEL_CARD_TEMPLATE.md"

    assert link.is_symlink()
    assert str(link.readlink()) == "../MODEL_CARD_TEMPLATE.md"


def test_template_fallback_when_symlink_is_text(tmp_path: Path) -> None:
    # In a checkout with core.symlinks=false, the file contains the link target as text.
    package = tmp_path / "hf_integration"
    package.mkdir()
    (package / "MODEL_CARD_TEMPLATE.md").write_text("../MODEL_CARD_TEMPLATE.md", encoding="utf-8")
    shutil.copyfile(model_card.__file__, package / "model_card.py")
    shutil.copyfile(REPO_ROOT / "MODEL_CARD_TEMPLATE.md", tmp_path / "MODEL_CARD_TEMPLATE.md")
    spec = importlib.util.spec_from_file_location("copied_model_card", package / "model_card.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)

    assert copied.find_template() == tmp_path / "MODEL_CARD_TEMPLATE.md"


def test_template_variables_all_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    # jinja2.Template renders an unknown variable as an empty string, so check the names.
    captured: dict[str, Any] = {}
    original = ModelCard.from_template.__func__

    def spy(cls, card_data, template_path=None, template_str=None, **kwargs):
        captured.update(kwargs)
        return original(cls, card_data, template_path, template_str, **kwargs)

    monkeypatch.setattr(ModelCard, "from_template", classmethod(spy))
    build_model_card(pruning_info(), None, BASE_MODEL)

    template = find_template().read_text(encoding="utf-8")
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    assert used - {"card_data"} <= set(captured)


def test_write_reads_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "pareto_pruning": pruning_info()}), encoding="utf-8")
    (tmp_path / "pruning_report.json").write_text(json.dumps(report()), encoding="utf-8")

    path = write_model_card(tmp_path, base_model=BASE_MODEL, eval_results=EVAL_RESULTS)

    assert path == tmp_path / "README.md"
    text = path.read_text(encoding="utf-8")
    assert is_generated_card(text)
    loaded = ModelCard.load(path)
    assert loaded.data.base_model == BASE_MODEL
    assert len(loaded.data.eval_results) == 3
    assert table_rows(loaded.text)["model.layers.0.mlp"][0] == "8192"


def test_write_reads_eval_summary(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"pareto_pruning": pruning_info()}), encoding="utf-8")
    (tmp_path / model_card.EVAL_SUMMARY_FILENAME).write_text(json.dumps(EVAL_RESULTS), encoding="utf-8")

    card = ModelCard.load(write_model_card(tmp_path))

    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == EVAL_RESULTS


def test_eval_summary_filename_matches_eval_command() -> None:
    tofu_eval = pytest.importorskip("pareto_prune.tofu_eval")

    assert model_card.EVAL_SUMMARY_FILENAME == tofu_eval.SUMMARY_FILENAME


def test_write_rejects_report_that_is_not_object(tmp_path: Path) -> None:
    (tmp_path / "pruning_report.json").write_text("[1, 2]", encoding="utf-8")

    with pytest.raises(ValueError, match="pruning_report.json must contain a JSON object"):
        write_model_card(tmp_path, pruning_info=pruning_info())


def test_write_requires_pruning_entry(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_model_card(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(ValueError, match="pareto_pruning"):
        write_model_card(tmp_path)


def test_write_keeps_user_readme(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# My own notes\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="hf_integration.model_card"):
        result = write_model_card(tmp_path, pruning_info=pruning_info())

    assert result is None
    assert readme.read_text(encoding="utf-8") == "# My own notes\n"
    assert "overwrite=True" in caplog.text


def test_write_keeps_edited_card(tmp_path: Path) -> None:
    readme = write_model_card(tmp_path, pruning_info=pruning_info())
    edited = readme.read_text(encoding="utf-8").replace("## How to use", "## How to use\n\nMy extra note.")
    readme.write_text(edited, encoding="utf-8")

    assert write_model_card(tmp_path, pruning_info=pruning_info(), eval_results=EVAL_RESULTS) is None
    assert readme.read_text(encoding="utf-8") == edited

    assert write_model_card(tmp_path, pruning_info=pruning_info(), eval_results=EVAL_RESULTS, overwrite=True) == readme
    assert "My extra note." not in readme.read_text(encoding="utf-8")


def test_write_replaces_unedited_card(tmp_path: Path) -> None:
    readme = write_model_card(tmp_path, pruning_info=pruning_info())

    assert write_model_card(tmp_path, pruning_info=pruning_info(), eval_results=EVAL_RESULTS) == readme
    assert "## Evaluation" in readme.read_text(encoding="utf-8")


def test_generated_card_detection() -> None:
    text = str(build_model_card(pruning_info(), None, BASE_MODEL))

    assert is_generated_card(text)
    assert not is_generated_card(text.replace("pruned", "removed", 1))
    assert not is_generated_card("# A card\n")
