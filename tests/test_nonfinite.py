"""A scan that meets an inf or NaN activation stops with NonFiniteActivationError naming the MLP and batch."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_integration.cli import main
from pareto_prune.data import TokenizedSample, length_grouped_batches
from pareto_prune.scan import NonFiniteActivationError, scan_activations
from pareto_prune.statistics import NeuronStatistics

VOCAB_SIZE = 96
# Token whose embedding points along hidden dimension 0 only. After RMSNorm that
# dimension is about sqrt(hidden_size) = 5.7, where other tokens give values near 1.
TRIGGER_TOKEN = 7
# Weight of neuron 0 in layer 1 on hidden dimension 0, for gate_proj and up_proj. The
# neuron's activation is then about (60 * x0)^2: about 1.2e5 for the trigger token, above
# float16's maximum of 65504. The clean scan in test_float16_overflow_names_batch checks
# that the other tokens of these batches stay below it.
OVERFLOW_WEIGHT = 60.0


def make_llama(vocab_size: int = VOCAB_SIZE, **token_ids) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **token_ids,
    )
    return LlamaForCausalLM(config).eval()


def make_batches(trigger_sample: int | None = None):
    """Return 4 batches of 2 samples, with the trigger token in an answer of ``trigger_sample``."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(8):
        # Distinct lengths, longest first, so sample i lands in batch i // 2.
        length = 30 - 2 * index
        ids = torch.randint(TRIGGER_TOKEN + 1, VOCAB_SIZE, (length,), generator=generator).tolist()
        samples.append(TokenizedSample(input_ids=ids, prompt_length=5))
    if trigger_sample is not None:
        samples[trigger_sample].input_ids[10] = TRIGGER_TOKEN
    return length_grouped_batches(samples, 2, 0)


@torch.no_grad()
def make_overflowing_float16_model() -> LlamaForCausalLM:
    model = make_llama()
    model.model.embed_tokens.weight[TRIGGER_TOKEN] = 0
    model.model.embed_tokens.weight[TRIGGER_TOKEN, 0] = 1.0
    mlp = model.model.layers[1].mlp
    for projection in (mlp.gate_proj, mlp.up_proj):
        projection.weight[0] = 0
        projection.weight[0, 0] = OVERFLOW_WEIGHT
    return model.half()


def test_inf_weight_names_layer_and_batch():
    model = make_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.gate_proj.weight[3] = float("inf")

    with pytest.raises(NonFiniteActivationError) as error:
        scan_activations(model, make_batches(), show_progress=False)
    message = str(error.value)
    assert "model.layers.1.mlp" in message
    assert "batch 0" in message


def test_float16_overflow_names_batch():
    model = make_overflowing_float16_model()
    clean = scan_activations(model, make_batches(), show_progress=False)
    assert all(torch.isfinite(values).all() for values in clean.sums["sum_sq"].values())

    with pytest.raises(NonFiniteActivationError) as error:
        scan_activations(model, make_batches(trigger_sample=5), show_progress=False)
    message = str(error.value)
    assert "model.layers.1.mlp" in message
    assert "batch 2" in message
    assert "float16" in message
    assert "--dtype float32" in message


def test_overflow_ignored_outside_token_scope():
    # The trigger sits in the prompt, which token_scope="answer" does not count. Layer 1
    # is the last layer, so the inf reaches no other counted activation.
    batches = make_batches()
    batches[2].input_ids[1, 2] = TRIGGER_TOKEN
    model = make_overflowing_float16_model()

    statistics = scan_activations(model, batches, token_scope="answer", show_progress=False)
    assert torch.isfinite(statistics.sums["sum_sq"]["model.layers.1.mlp"]).all()
    with pytest.raises(NonFiniteActivationError, match="batch 2"):
        scan_activations(model, batches, token_scope="all", show_progress=False)


def test_overflow_keeps_checkpoint_and_model_state(tmp_path):
    model = make_overflowing_float16_model().train()
    checkpoint = tmp_path / "scan.safetensors"

    with pytest.raises(NonFiniteActivationError):
        scan_activations(model, make_batches(trigger_sample=5), checkpoint_path=checkpoint, checkpoint_every=1, show_progress=False)

    assert model.training, "the scan must restore training mode after an error"
    for layer in model.model.layers:
        assert not layer.mlp.down_proj._forward_pre_hooks, "the scan must remove its hooks after an error"
    saved, metadata = NeuronStatistics.load(checkpoint)
    assert metadata["batches_done"] == "2"
    assert all(torch.isfinite(values).all() for values in saved.sums["sum_sq"].values())


def test_cli_reports_overflow_as_error(tmp_path, capsys, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    model = make_llama(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        # Neurons 0 and 1 overflow float16 for every token whose normalized hidden state
        # sums to more than about 0.3 in absolute value: neuron 0 when positive, 1 when negative.
        mlp = model.model.layers[1].mlp
        for neuron, sign in ((0, 1.0), (1, -1.0)):
            mlp.gate_proj.weight[neuron] = sign * 1000.0
            mlp.up_proj.weight[neuron] = sign * 1000.0
    model.half().save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    command = [
        "scan", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "statistics"),
        "--forget", "tofu:forget01", "--retain", "tofu:retain99", "--max-samples", "4",
    ]
    assert main(command) == 1
    error = capsys.readouterr().err
    assert "model.layers.1.mlp" in error
    assert "--dtype float32" in error
    assert not (tmp_path / "statistics").exists()
