"""Tests for ParetoPruningCallback in short Trainer runs, and a smoke test of examples/finetune_with_callback.py.

The expected masks are computed independently with pareto_prune.pipeline.scan_pairs and
select_from_statistics on a copy of the initial model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_modeling import MLP_KEYS, assert_masks_equal, capture_down_proj_inputs, char_tokenizer, input_ids, tiny_config
from transformers import DataCollatorForLanguageModeling, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from hf_integration import ParetoPruningCallback, ParetoPruningConfig, PrunedLlamaForCausalLM
from pareto_prune.config import PruningConfig
from pareto_prune.data import load_qa_pairs, tokenize_pairs
from pareto_prune.masking import MASKS_FILENAME, load_masks
from pareto_prune.pipeline import prune_model, scan_pairs, select_from_statistics

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_with_callback.py"
SCAN_BATCH_SIZE = 4


@pytest.fixture(scope="module")
def char_tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def tofu_forget():
    return load_qa_pairs("tofu:forget01")[:4]


@pytest.fixture(scope="module")
def tofu_retain():
    return load_qa_pairs("tofu:retain99")[:8]


@pytest.fixture
def pruning_config() -> ParetoPruningConfig:
    return ParetoPruningConfig(budget=0.1, max_length=192)


def new_model(model_class=PrunedLlamaForCausalLM, seed: int = 0):
    torch.manual_seed(seed)
    return model_class(tiny_config())


def expected_selection(model, tokenizer, forget, retain, config):
    """Return (masks, forget statistics, retain statistics) of the pipeline run on a copy of ``model``."""
    reference = copy.deepcopy(model)
    forget_statistics = scan_pairs(reference, tokenizer, forget, config, SCAN_BATCH_SIZE)
    retain_statistics = scan_pairs(reference, tokenizer, retain, config, SCAN_BATCH_SIZE)
    return select_from_statistics(forget_statistics, retain_statistics, config).masks, forget_statistics, retain_statistics


def assert_statistics_equal(actual, expected) -> None:
    actual_tensors, expected_tensors = actual.to_tensors(), expected.to_tensors()
    assert sorted(actual_tensors) == sorted(expected_tensors)
    for name, tensor in expected_tensors.items():
        assert torch.equal(actual_tensors[name], tensor), name


def training_set(tokenizer, pairs, config) -> list[dict[str, list[int]]]:
    return [{"input_ids": sample.input_ids} for sample in tokenize_pairs(tokenizer, pairs, config.text_format(), config.max_length)]


def make_trainer(model, tokenizer, train, callbacks, output_dir, **overrides) -> Trainer:
    options = {
        "output_dir": str(output_dir),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-2,
        "weight_decay": 0.1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    options.update(overrides)
    return Trainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=train,
        eval_dataset=train[:4],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def assert_pruned_weights_zero(model, masks) -> None:
    for index, key in enumerate(MLP_KEYS):
        mlp = model.model.layers[index].mlp
        pruned = ~masks[key]
        assert torch.count_nonzero(mlp.gate_proj.weight[pruned]) == 0, key
        assert torch.count_nonzero(mlp.up_proj.weight[pruned]) == 0, key
        assert torch.count_nonzero(mlp.down_proj.weight[:, pruned]) == 0, key


class SnapshotCallback(TrainerCallback):
    """Keeps a copy of the model as it is when training ends, before later callbacks change it."""

    snapshot = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.snapshot = copy.deepcopy(model)


# ---------------------------------------------------------------------------
# Trainer runs
# ---------------------------------------------------------------------------


def test_train_begin_prunes_expected_neurons(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    model = new_model()
    expected_masks, forget_statistics, retain_statistics = expected_selection(model, char_tok, tofu_forget, tofu_retain, pruning_config)
    initial_gate = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    train = training_set(char_tok, tofu_retain, pruning_config)
    # An evaluation after every step runs forward passes while the model is pruned.
    trainer = make_trainer(model, char_tok, train, [callback], tmp_path, eval_strategy="steps", eval_steps=1)

    trainer.train()
    trainer.evaluate()

    assert any(not mask.all() for mask in expected_masks.values())
    assert_masks_equal(model.neuron_masks(), expected_masks)
    assert_masks_equal(callback.masks, expected_masks)
    assert_statistics_equal(callback.forget_statistics, forget_statistics)
    assert_statistics_equal(callback.retain_statistics, retain_statistics)
    assert_pruned_weights_zero(model, expected_masks)
    assert not torch.equal(model.model.layers[0].mlp.gate_proj.weight, initial_gate)
    for layer in model.model.layers:
        assert len(layer.mlp.down_proj._forward_pre_hooks) == 0
        assert len(layer.mlp.down_proj._forward_hooks) == 0


def test_train_begin_records_pruning_config(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    model = new_model()
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    make_trainer(model, char_tok, training_set(char_tok, tofu_retain, pruning_config), [callback], tmp_path).train()

    counts = model.pruned_counts()
    assert isinstance(model.pruning_config, ParetoPruningConfig)
    assert model.pruning_config.pruned_per_layer == counts
    assert model.pruning_config.forget_sources == ["tofu:forget01"]
    assert model.pruning_config.retain_sources == ["tofu:retain99"]
    assert model.config.pareto_pruning == model.pruning_config.to_config_dict()
    assert model.pruning_report["total_pruned"] == sum(counts.values())

    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["pareto_pruning"]["pruned_per_layer"] == counts
    assert_masks_equal(load_masks(tmp_path / "saved" / MASKS_FILENAME), model.neuron_masks())
    assert (tmp_path / "saved" / "README.md").is_file()
    assert json.loads((tmp_path / "saved" / "pruning_report.json").read_text())["total_pruned"] == sum(counts.values())


def test_train_end_scans_trained_model(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    model = new_model()
    snapshot = SnapshotCallback()
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, when="train_end", batch_size=SCAN_BATCH_SIZE)
    train = training_set(char_tok, tofu_retain, pruning_config)
    trainer = make_trainer(model, char_tok, train, [snapshot, callback], tmp_path, eval_strategy="steps", eval_steps=1)

    trainer.train()

    expected_masks, forget_statistics, retain_statistics = expected_selection(
        snapshot.snapshot, char_tok, tofu_forget, tofu_retain, pruning_config
    )
    initial_masks, _, _ = expected_selection(new_model(), char_tok, tofu_forget, tofu_retain, pruning_config)
    assert snapshot.snapshot.pruned_counts() == dict.fromkeys(MLP_KEYS, 0)
    assert_masks_equal(model.neuron_masks(), expected_masks)
    assert_statistics_equal(callback.forget_statistics, forget_statistics)
    assert_statistics_equal(callback.retain_statistics, retain_statistics)
    assert any(not torch.equal(expected_masks[key], initial_masks[key]) for key in MLP_KEYS)
    assert_pruned_weights_zero(model, expected_masks)


def test_plain_llama_gets_mask_hooks(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    model = new_model(LlamaForCausalLM)
    expected_masks, _, _ = expected_selection(model, char_tok, tofu_forget, tofu_retain, pruning_config)
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    make_trainer(model, char_tok, training_set(char_tok, tofu_retain, pruning_config), [callback], tmp_path).train()

    assert_masks_equal(callback.masks, expected_masks)
    assert len(callback.mask_handles) == len(MLP_KEYS)
    for layer in model.model.layers:
        # One pre-hook, the activation mask; the scan's hooks are gone.
        assert len(layer.mlp.down_proj._forward_pre_hooks) == 1
    assert_pruned_weights_zero(model, expected_masks)
    assert model.config.pareto_pruning["pruned_per_layer"] == {key: int((~mask).sum()) for key, mask in expected_masks.items()}

    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.normal_()
            layer.mlp.up_proj.weight.normal_()
    activations = capture_down_proj_inputs(model, input_ids())
    for key in MLP_KEYS:
        assert torch.count_nonzero(activations[key][..., ~expected_masks[key]]) == 0


def test_lora_model_pruned_at_train_begin(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = new_model()
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]))
    expected_masks, _, _ = expected_selection(peft_model, char_tok, tofu_forget, tofu_retain, pruning_config)
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    train = training_set(char_tok, tofu_retain, pruning_config)
    make_trainer(peft_model, char_tok, train, [callback], tmp_path, learning_rate=5e-2).train()

    assert_masks_equal(base.neuron_masks(), expected_masks)
    assert base.pruning_config.pruned_per_layer == base.pruned_counts()
    lora_b = peft_model.base_model.model.model.layers[0].mlp.gate_proj.lora_B["default"].weight
    assert torch.count_nonzero(lora_b) > 0
    activations = capture_down_proj_inputs(peft_model, input_ids())
    for key in MLP_KEYS:
        assert torch.count_nonzero(activations[key][..., ~expected_masks[key]]) == 0


def test_resume_reuses_checkpoint_masks(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    model = new_model()
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    train = training_set(char_tok, tofu_retain, pruning_config)
    make_trainer(model, char_tok, train, [callback], tmp_path, save_strategy="steps", save_steps=2, max_steps=4).train()

    for step in (2, 4):
        assert_masks_equal(load_masks(tmp_path / f"checkpoint-{step}" / MASKS_FILENAME), callback.masks)

    resumed_model = new_model(seed=1)
    resumed_callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    resumed = make_trainer(resumed_model, char_tok, train, [resumed_callback], tmp_path, save_strategy="steps", save_steps=2, max_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))

    assert resumed_callback.selection is None
    assert_masks_equal(resumed_model.neuron_masks(), callback.masks)
    assert_pruned_weights_zero(resumed_model, callback.masks)


def test_rounds_match_prune_model(char_tok, tofu_forget, tofu_retain, tmp_path):
    config = ParetoPruningConfig(budget=0.15, max_length=192, rounds=2)
    model = new_model()
    expected = prune_model(copy.deepcopy(model), char_tok, tofu_forget, tofu_retain, config, batch_size=SCAN_BATCH_SIZE)
    callback = ParetoPruningCallback(config, tofu_forget, tofu_retain, batch_size=SCAN_BATCH_SIZE)
    make_trainer(model, char_tok, training_set(char_tok, tofu_retain, config), [callback], tmp_path, max_steps=1).train()

    assert_masks_equal(model.neuron_masks(), expected.masks)
    assert_statistics_equal(callback.forget_statistics, expected.forget_statistics)
    assert model.pruning_config.rounds == 2
    assert model.pruning_config.pruned_per_layer == expected.selection.pruned_per_layer


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def test_datasets_of_dicts_and_specs(tofu_forget, tofu_retain):
    rows = [{"question": pair.question, "answer": pair.answer, "source": "mine"} for pair in tofu_forget]
    callback = ParetoPruningCallback(PruningConfig(budget=0.05), rows, "tofu:retain99")

    assert [(pair.question, pair.answer) for pair in callback.forget_pairs] == [(pair.question, pair.answer) for pair in tofu_forget]
    assert len(callback.retain_pairs) == len(load_qa_pairs("tofu:retain99"))
    assert isinstance(callback.config, ParetoPruningConfig)
    assert callback.config.budget == 0.05
    assert callback.config.forget_sources == ["mine"]
    assert callback.config.retain_sources == ["tofu:retain99"]


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"forget_dataset": [{"question": "Q?"}]}, ValueError, "answer"),
        ({"forget_dataset": []}, ValueError, "empty"),
        ({"forget_dataset": [42]}, TypeError, "int"),
        ({"when": "epoch_end"}, ValueError, "when"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"retain_dataset": None}, ValueError, "retain_dataset"),
    ],
)
def test_invalid_arguments_raise(arguments, error, message, tofu_forget, tofu_retain):
    options = {"forget_dataset": tofu_forget, "retain_dataset": tofu_retain, **arguments}
    with pytest.raises(error, match=message):
        ParetoPruningCallback(ParetoPruningConfig(), **options)


def test_missing_tokenizer_raises(char_tok, tofu_forget, tofu_retain, pruning_config, tmp_path):
    callback = ParetoPruningCallback(pruning_config, tofu_forget, tofu_retain)
    trainer = make_trainer(new_model(), char_tok, training_set(char_tok, tofu_retain, pruning_config), [callback], tmp_path)
    trainer.processing_class = None
    trainer.callback_handler.processing_class = None

    with pytest.raises(ValueError, match="tokenizer"):
        trainer.train()


# ---------------------------------------------------------------------------
# Example script
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "model"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config()).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("extra_options", [[], ["--lora"]], ids=["full", "lora"])
def test_example_script_saves_pruned_model(extra_options, char_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("finetune_with_callback", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    output = tmp_path / "out"

    example.main(
        ["--model", str(char_model_dir), "--output", str(output), "--max-steps", "2", "--max-samples", "8",
         "--budget", "0.1", "--max-length", "256", "--batch-size", "4", "--cpu", *extra_options]
    )

    config = json.loads((output / "config.json").read_text())
    masks = load_masks(output / MASKS_FILENAME)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert sum(config["pareto_pruning"]["pruned_per_layer"].values()) > 0
    assert config["pareto_pruning"]["pruned_per_layer"] == {key: int((~mask).sum()) for key, mask in masks.items()}
    assert (output / "README.md").is_file()
    assert (output / "tokenizer.json").is_file()
    plain = LlamaForCausalLM.from_pretrained(output)
    assert_pruned_weights_zero(plain, masks)
