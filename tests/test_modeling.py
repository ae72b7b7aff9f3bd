"""Tests for PrunedLlamaForCausalLM: masks, save/load round trips, dtypes, offloading, LoRA and the Hub.

Every model is a tiny random Llama (3 layers, hidden size 32, 64 MLP neurons per layer,
vocabulary of 128 characters), so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
import json
import string
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from hub_server import FakeHub, fake_hub  # noqa: F401  (fake_hub is a pytest fixture)
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_integration import ParetoPruningConfig, PrunedLlamaForCausalLM
from hf_integration.model_card import is_generated_card
from pareto_prune.masking import MASKS_FILENAME, load_masks, save_masks

NUM_LAYERS = 3
NUM_NEURONS = 64
MLP_KEYS = [f"model.layers.{index}.mlp" for index in range(NUM_LAYERS)]
BASE_MODEL = "test-org/tiny-llama-base"
REPO_ID = "test-user/tiny-llama-pruned"


# ---------------------------------------------------------------------------
# Helpers, also imported by test_callback.py
# ---------------------------------------------------------------------------


def tiny_config(num_layers: int = NUM_LAYERS) -> LlamaConfig:
    """A Llama config small enough for CPU tests; token ids match :func:`char_tokenizer`."""
    return LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=NUM_NEURONS,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=None,
    )


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (printable ASCII, 100 ids) with ``<unk>``, ``<pad>`` and ``</s>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    characters = [character for character in string.printable if character not in "\x0b\x0c\r"]
    vocabulary = {token: index for index, token in enumerate(["<unk>", "<pad>", "</s>"] + characters)}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def random_masks(seed: int, kept_fraction: float = 0.7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.rand(NUM_NEURONS, generator=generator) < kept_fraction for key in MLP_KEYS}


def new_pruned_model(seed: int = 0) -> PrunedLlamaForCausalLM:
    torch.manual_seed(seed)
    return PrunedLlamaForCausalLM(tiny_config())


def input_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_masks_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert actual[key].dtype == torch.bool, key
        assert torch.equal(actual[key].cpu(), expected[key].cpu()), key


def capture_down_proj_inputs(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` once and return the input of every ``down_proj`` as the model calls it (PEFT wrapper included)."""
    from pareto_prune.mlp import find_swiglu_mlps

    captured, handles = {}, []
    for mlp in find_swiglu_mlps(model):
        def record(module, args, key=mlp.key):
            captured[key] = args[0].detach().clone()

        handles.append(mlp.down_proj_in_model.register_forward_pre_hook(record))
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return captured


def mask_buffers(model) -> list[torch.Tensor]:
    return [layer.mlp.neuron_mask for layer in model.model.layers]


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    """A saved pruned model: (directory, its masks, its float32 logits on :func:`input_ids`)."""
    model = new_pruned_model()
    masks = random_masks(seed=3)
    model.prune_neurons(masks)
    model.pruning_config = ParetoPruningConfig(budget=0.3, forget_sources=["tofu:forget01"], retain_sources=["tofu:retain99"])
    model.pruning_base_model = BASE_MODEL
    directory = tmp_path_factory.mktemp("pruned") / "checkpoint"
    model.save_pretrained(directory)
    return directory, masks, logits(model, input_ids())


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """A plain LlamaForCausalLM checkpoint that was never pruned."""
    torch.manual_seed(5)
    directory = tmp_path_factory.mktemp("base") / "checkpoint"
    LlamaForCausalLM(tiny_config()).save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------
# Construction and pruning in memory
# ---------------------------------------------------------------------------


def test_fresh_model_has_all_true_masks():
    for model in (PrunedLlamaForCausalLM(tiny_config()), PrunedLlamaForCausalLM._from_config(tiny_config())):
        masks = model.neuron_masks()
        assert_masks_equal(masks, {key: torch.ones(NUM_NEURONS, dtype=torch.bool) for key in MLP_KEYS})
        assert model.pruned_counts() == dict.fromkeys(MLP_KEYS, 0)
        assert model.pruning_config is None


def test_masks_are_non_persistent_buffers():
    model = new_pruned_model()
    assert not any("neuron_mask" in key for key in model.state_dict())
    buffer_names = {name for name, _ in model.named_buffers()}
    for key in MLP_KEYS:
        assert f"{key}.neuron_mask" in buffer_names


def test_prune_neurons_combines_masks_with_and():
    model = new_pruned_model()
    buffers_before = [buffer.data_ptr() for buffer in mask_buffers(model)]
    first, second = random_masks(seed=1), random_masks(seed=2)

    model.prune_neurons(first)
    counts = model.prune_neurons({MLP_KEYS[0]: second[MLP_KEYS[0]]})

    expected = dict(first)
    expected[MLP_KEYS[0]] = first[MLP_KEYS[0]] & second[MLP_KEYS[0]]
    assert_masks_equal(model.neuron_masks(), expected)
    assert counts == {key: int((~mask).sum()) for key, mask in expected.items()}
    assert [buffer.data_ptr() for buffer in mask_buffers(model)] == buffers_before


def test_prune_neurons_zeroes_weights():
    model = new_pruned_model()
    masks = random_masks(seed=1)
    model.prune_neurons(masks)
    for index, key in enumerate(MLP_KEYS):
        mlp = model.model.layers[index].mlp
        pruned = ~masks[key]
        assert torch.count_nonzero(mlp.gate_proj.weight[pruned]) == 0
        assert torch.count_nonzero(mlp.up_proj.weight[pruned]) == 0
        assert torch.count_nonzero(mlp.down_proj.weight[:, pruned]) == 0
        assert torch.count_nonzero(mlp.gate_proj.weight[~pruned]) > 0


def test_mask_zeroes_activation_with_nonzero_weights():
    model = new_pruned_model()
    masks = random_masks(seed=1)
    model.prune_neurons(masks)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.normal_()
            layer.mlp.up_proj.weight.normal_()

    activations = capture_down_proj_inputs(model, input_ids())
    for key in MLP_KEYS:
        assert torch.count_nonzero(activations[key][..., ~masks[key]]) == 0
        assert torch.count_nonzero(activations[key][..., masks[key]]) > 0


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({"model.layers.9.mlp": torch.ones(NUM_NEURONS, dtype=torch.bool)}, "does not have"),
        ({MLP_KEYS[0]: torch.ones(NUM_NEURONS)}, "bool tensor"),
        ({MLP_KEYS[0]: torch.ones(NUM_NEURONS - 1, dtype=torch.bool)}, "shape"),
    ],
)
def test_prune_neurons_rejects_invalid_masks(masks, message):
    model = new_pruned_model()
    with pytest.raises(ValueError, match=message):
        model.prune_neurons(masks)
    assert model.pruned_counts() == dict.fromkeys(MLP_KEYS, 0)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_float16", "float"])
def test_masks_stay_bool_after_dtype_casts(cast):
    model = new_pruned_model()
    masks = random_masks(seed=1)
    model.prune_neurons(masks)
    if cast == "half":
        model.half()
    elif cast == "bfloat16":
        model.to(torch.bfloat16)
    elif cast == "to_float16":
        model.to(dtype=torch.float16)
    else:
        model.half().float()

    for buffer in mask_buffers(model):
        assert buffer.dtype == torch.bool
    assert_masks_equal(model.neuron_masks(), masks)


def test_deepcopy_keeps_masks_independent():
    model = new_pruned_model()
    model.prune_neurons(random_masks(seed=1))
    copied = copy.deepcopy(model)
    copied.prune_neurons({MLP_KEYS[0]: torch.zeros(NUM_NEURONS, dtype=torch.bool)})

    assert model.pruned_counts()[MLP_KEYS[0]] < NUM_NEURONS
    assert copied.pruned_counts()[MLP_KEYS[0]] == NUM_NEURONS


def test_torch_save_keeps_masks():
    import io

    model = new_pruned_model()
    masks = random_masks(seed=1)
    model.prune_neurons(masks)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)

    assert_masks_equal(restored.neuron_masks(), masks)
    assert torch.equal(logits(restored, input_ids()), logits(model, input_ids()))


# ---------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------


def test_saved_config_names_plain_llama(pruned_checkpoint):
    directory, masks, _ = pruned_checkpoint
    config = json.loads((directory / "config.json").read_text())

    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config
    assert config["pareto_pruning"]["pruned_per_layer"] == {key: int((~mask).sum()) for key, mask in masks.items()}
    assert config["pareto_pruning"]["forget_sources"] == ["tofu:forget01"]
    assert config["pareto_pruning"]["options"]["budget"] == 0.3


def test_saved_weights_have_zeros_and_no_masks(pruned_checkpoint):
    directory, masks, _ = pruned_checkpoint
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        keys = list(weights.keys())
        assert not any("mask" in key for key in keys)
        for key in MLP_KEYS:
            pruned = ~masks[key]
            assert torch.count_nonzero(weights.get_tensor(f"{key}.gate_proj.weight")[pruned]) == 0
            assert torch.count_nonzero(weights.get_tensor(f"{key}.up_proj.weight")[pruned]) == 0
            assert torch.count_nonzero(weights.get_tensor(f"{key}.down_proj.weight")[:, pruned]) == 0
            assert torch.count_nonzero(weights.get_tensor(f"{key}.gate_proj.weight")[~pruned]) > 0

    assert_masks_equal(load_masks(directory / MASKS_FILENAME), masks)


def test_saved_model_card_is_generated(pruned_checkpoint):
    directory, _, _ = pruned_checkpoint
    text = (directory / "README.md").read_text()
    card = ModelCard(text)

    assert is_generated_card(text)
    assert card.data.base_model == BASE_MODEL
    assert card.data.library_name == "transformers"
    assert {"unlearning", "pruning"} <= set(card.data.tags)


def test_round_trip_float32(pruned_checkpoint):
    directory, masks, expected_logits = pruned_checkpoint
    ids = input_ids()
    pruned = PrunedLlamaForCausalLM.from_pretrained(directory)
    plain = AutoModelForCausalLM.from_pretrained(directory)

    assert type(plain) is LlamaForCausalLM
    assert_masks_equal(pruned.neuron_masks(), masks)
    assert torch.equal(logits(pruned, ids), expected_logits)
    assert torch.equal(logits(plain, ids), expected_logits)
    assert pruned.pruning_config.budget == 0.3
    assert pruned.pruning_config.pruned_per_layer == pruned.pruned_counts()


def test_round_trip_bfloat16(pruned_checkpoint):
    directory, masks, expected_logits = pruned_checkpoint
    ids = input_ids()
    pruned = PrunedLlamaForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    plain = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)

    assert pruned.dtype == torch.bfloat16
    for buffer in mask_buffers(pruned):
        assert buffer.dtype == torch.bool
    assert_masks_equal(pruned.neuron_masks(), masks)
    assert torch.equal(logits(pruned, ids), logits(plain, ids))
    torch.testing.assert_close(logits(pruned, ids).float(), expected_logits, atol=0.05, rtol=0.05)


def test_base_checkpoint_loads_with_all_true_masks(base_checkpoint):
    ids = input_ids()
    pruned = PrunedLlamaForCausalLM.from_pretrained(base_checkpoint)
    plain = LlamaForCausalLM.from_pretrained(base_checkpoint)

    assert_masks_equal(pruned.neuron_masks(), {key: torch.ones(NUM_NEURONS, dtype=torch.bool) for key in MLP_KEYS})
    assert pruned.pruning_config is None
    assert torch.equal(logits(pruned, ids), logits(plain, ids))


def _fill_masks_with_garbage(monkeypatch) -> list[int]:
    """Make transformers' loader leave a known non-True pattern in every mask buffer; return a call counter."""
    original = PrunedLlamaForCausalLM._move_missing_keys_from_meta_to_device
    calls = []

    def move_and_fill(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        for buffer in mask_buffers(self):
            buffer.copy_(torch.arange(buffer.numel()) % 3 == 0)

    monkeypatch.setattr(PrunedLlamaForCausalLM, "_move_missing_keys_from_meta_to_device", move_and_fill)
    return calls


def test_loader_leaves_masks_uninitialised(monkeypatch, base_checkpoint):
    # The check below would fail if transformers initialised the masks itself; this shows it does not.
    calls = _fill_masks_with_garbage(monkeypatch)
    model = LlamaForCausalLM.from_pretrained.__func__(PrunedLlamaForCausalLM, base_checkpoint)

    assert calls == [1]
    assert not model.neuron_masks()[MLP_KEYS[0]].all()


def test_from_pretrained_overwrites_uninitialised_masks(monkeypatch, pruned_checkpoint, base_checkpoint):
    directory, masks, _ = pruned_checkpoint
    calls = _fill_masks_with_garbage(monkeypatch)

    pruned = PrunedLlamaForCausalLM.from_pretrained(directory)
    base = PrunedLlamaForCausalLM.from_pretrained(base_checkpoint)

    assert calls == [1, 1]
    assert_masks_equal(pruned.neuron_masks(), masks)
    assert_masks_equal(base.neuron_masks(), {key: torch.ones(NUM_NEURONS, dtype=torch.bool) for key in MLP_KEYS})


def test_from_pretrained_rejects_mismatched_mask_file(pruned_checkpoint, tmp_path):
    directory, masks, _ = pruned_checkpoint
    broken = tmp_path / "broken"
    PrunedLlamaForCausalLM.from_pretrained(directory).save_pretrained(broken)
    save_masks({key: mask[:-1] for key, mask in masks.items()}, broken / MASKS_FILENAME)

    with pytest.raises(ValueError, match=MASKS_FILENAME):
        PrunedLlamaForCausalLM.from_pretrained(broken)


def test_from_pretrained_output_loading_info(pruned_checkpoint):
    directory, masks, _ = pruned_checkpoint
    model, info = PrunedLlamaForCausalLM.from_pretrained(directory, output_loading_info=True)

    assert_masks_equal(model.neuron_masks(), masks)
    assert not info["missing_keys"]


def test_save_pretrained_keeps_user_readme(pruned_checkpoint, tmp_path):
    directory, _, _ = pruned_checkpoint
    model = PrunedLlamaForCausalLM.from_pretrained(directory)
    target = tmp_path / "resaved"
    target.mkdir()
    (target / "README.md").write_text("# My notes\n")

    model.save_pretrained(target)

    assert (target / "README.md").read_text() == "# My notes\n"
    assert (target / MASKS_FILENAME).is_file()


def test_save_pretrained_writes_report_and_plots(pruned_checkpoint, tmp_path):
    directory, _, _ = pruned_checkpoint
    model = PrunedLlamaForCausalLM.from_pretrained(directory)
    artifacts = tmp_path / "artifacts"
    (artifacts / "plots").mkdir(parents=True)
    (artifacts / "plots" / "pruned_per_layer.png").write_bytes(b"\x89PNG\r\n")
    model.pruning_artifacts_dir = artifacts
    model.pruning_report = {"strategy": "hypervolume_budget", "layers": {}}

    model.save_pretrained(tmp_path / "out")

    assert json.loads((tmp_path / "out" / "pruning_report.json").read_text())["strategy"] == "hypervolume_budget"
    assert (tmp_path / "out" / "plots" / "pruned_per_layer.png").read_bytes() == b"\x89PNG\r\n"


# ---------------------------------------------------------------------------
# Device maps and offloading
# ---------------------------------------------------------------------------


def test_device_map_auto_applies_masks(pruned_checkpoint):
    directory, masks, expected_logits = pruned_checkpoint
    model = PrunedLlamaForCausalLM.from_pretrained(directory, device_map="auto")

    assert_masks_equal(model.neuron_masks(), masks)
    assert torch.equal(logits(model, input_ids()), expected_logits)


DISK_OFFLOAD_MAPS = {
    "explicit": {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    },
    "auto_small_memory": "auto",
}


@pytest.mark.parametrize("placement", sorted(DISK_OFFLOAD_MAPS))
def test_disk_offload_masks_and_saves(placement, pruned_checkpoint, tmp_path):
    directory, masks, _ = pruned_checkpoint
    options = {"device_map": DISK_OFFLOAD_MAPS[placement], "offload_folder": str(tmp_path / "offload")}
    if placement == "auto_small_memory":
        options["max_memory"] = {"cpu": 60_000}
    offloaded = PrunedLlamaForCausalLM.from_pretrained(directory, **options)
    in_memory = PrunedLlamaForCausalLM.from_pretrained(directory)
    offloaded_mlp = offloaded.model.layers[2].mlp
    assert offloaded_mlp.gate_proj.weight.device.type == "meta"
    assert_masks_equal(offloaded.neuron_masks(), masks)

    # Prune more neurons of an offloaded layer: its weights cannot be zeroed in place.
    extra = {MLP_KEYS[2]: torch.arange(NUM_NEURONS) >= 8}
    offloaded.prune_neurons(extra)
    in_memory.prune_neurons(extra)
    ids = input_ids()
    assert torch.equal(logits(offloaded, ids), logits(in_memory, ids))

    offloaded.save_pretrained(tmp_path / "resaved")
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "resaved")
    pruned = ~in_memory.neuron_masks()[MLP_KEYS[2]]
    assert torch.count_nonzero(plain.model.layers[2].mlp.gate_proj.weight[pruned]) == 0
    assert torch.count_nonzero(plain.model.layers[2].mlp.down_proj.weight[:, pruned]) == 0
    assert torch.equal(logits(plain, ids), logits(in_memory, ids))


def test_cpu_offload_masks_and_saves(pruned_checkpoint, tmp_path):
    from accelerate import cpu_offload

    directory, _, _ = pruned_checkpoint
    offloaded = PrunedLlamaForCausalLM.from_pretrained(directory)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    in_memory = PrunedLlamaForCausalLM.from_pretrained(directory)
    assert offloaded.model.layers[0].mlp.gate_proj.weight.device.type == "meta"

    extra = {MLP_KEYS[0]: torch.arange(NUM_NEURONS) >= 8}
    offloaded.prune_neurons(extra)
    in_memory.prune_neurons(extra)
    ids = input_ids()
    assert torch.equal(logits(offloaded, ids), logits(in_memory, ids))

    offloaded.save_pretrained(tmp_path / "resaved")
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "resaved")
    assert torch.count_nonzero(plain.model.layers[0].mlp.up_proj.weight[:8]) == 0
    assert torch.equal(logits(plain, ids), logits(in_memory, ids))


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------


def _train_lora(model, ids: torch.Tensor, steps: int = 3):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # init_lora_weights=False starts with non-zero B, so the adapters change every output at once.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([parameter for parameter in peft_model.parameters() if parameter.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    return peft_model


def test_lora_keeps_pruned_activations_zero(pruned_checkpoint, tmp_path):
    directory, masks, _ = pruned_checkpoint
    ids = input_ids()
    peft_model = _train_lora(PrunedLlamaForCausalLM.from_pretrained(directory), ids)

    activations = capture_down_proj_inputs(peft_model, ids)
    assert sorted(activations) == MLP_KEYS
    for key in MLP_KEYS:
        assert torch.count_nonzero(activations[key][..., ~masks[key]]) == 0
        assert torch.count_nonzero(activations[key][..., masks[key]]) > 0

    merged = peft_model.merge_and_unload()
    assert isinstance(merged, PrunedLlamaForCausalLM)
    first_mlp = merged.model.layers[0].mlp
    # The merge adds B @ A to the pruned rows; only the mask keeps their activations at zero.
    assert torch.count_nonzero(first_mlp.gate_proj.weight[~masks[MLP_KEYS[0]]]) > 0
    activations = capture_down_proj_inputs(merged, ids)
    for key in MLP_KEYS:
        assert torch.count_nonzero(activations[key][..., ~masks[key]]) == 0

    merged_logits = logits(merged, ids)
    merged.save_pretrained(tmp_path / "merged")
    assert torch.count_nonzero(first_mlp.gate_proj.weight[~masks[MLP_KEYS[0]]]) == 0
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(plain, ids), merged_logits, rtol=0, atol=1e-6)
    assert_masks_equal(PrunedLlamaForCausalLM.from_pretrained(tmp_path / "merged").neuron_masks(), masks)


# ---------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------


@pytest.fixture
def hub(fake_hub: FakeHub, monkeypatch) -> FakeHub:
    """The fake Hub, with transformers' shared HfApi client rebuilt for it.

    transformers 5.25 keeps one HfApi in ``transformers.utils.hub._hf_api`` whose endpoint is
    fixed when it is first used. Without the reset, a test would resolve revisions against
    the fake Hub of an earlier test, whose keep-alive connections outlive its shutdown.
    """
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    return fake_hub


def test_push_to_hub_uploads_card(hub: FakeHub, pruned_checkpoint, tmp_path):
    directory, masks, expected_logits = pruned_checkpoint
    model = PrunedLlamaForCausalLM.from_pretrained(directory)
    model.pruning_base_model = BASE_MODEL
    model.pruning_report = {"strategy": "hypervolume_budget", "total_neurons": NUM_LAYERS * NUM_NEURONS, "layers": {}}

    commit_url = model.push_to_hub(REPO_ID, tokenizer=char_tokenizer())

    files = hub.files(REPO_ID)
    assert commit_url.startswith(f"{hub.url}/{REPO_ID}/commit/")
    for name in ("config.json", "model.safetensors", MASKS_FILENAME, "README.md", "pruning_report.json", "tokenizer.json"):
        assert name in files, name
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == BASE_MODEL
    assert card.data.library_name == "transformers"
    assert {"unlearning", "pruning"} <= set(card.data.tags)
    assert REPO_ID.split("/")[1] in files["README.md"].decode()
    assert json.loads(files["config.json"])["architectures"] == ["LlamaForCausalLM"]

    loaded = PrunedLlamaForCausalLM.from_pretrained(REPO_ID, cache_dir=str(tmp_path / "cache"))
    assert_masks_equal(loaded.neuron_masks(), masks)
    assert torch.equal(logits(loaded, input_ids()), expected_logits)
    cached = PrunedLlamaForCausalLM.from_pretrained(REPO_ID, cache_dir=str(tmp_path / "cache"), local_files_only=True)
    assert_masks_equal(cached.neuron_masks(), masks)


def test_hub_revision_and_missing_masks(hub: FakeHub, pruned_checkpoint, base_checkpoint, tmp_path):
    directory, masks, _ = pruned_checkpoint
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(REPO_ID)
    api.upload_folder(repo_id=REPO_ID, folder_path=str(base_checkpoint))
    model = PrunedLlamaForCausalLM.from_pretrained(directory)
    model.push_to_hub(REPO_ID, revision="pruned")

    base = PrunedLlamaForCausalLM.from_pretrained(REPO_ID, cache_dir=str(tmp_path / "cache"))
    pruned = PrunedLlamaForCausalLM.from_pretrained(REPO_ID, revision="pruned", cache_dir=str(tmp_path / "cache"))

    assert_masks_equal(base.neuron_masks(), {key: torch.ones(NUM_NEURONS, dtype=torch.bool) for key in MLP_KEYS})
    assert_masks_equal(pruned.neuron_masks(), masks)


def test_push_to_hub_requires_pruning_record():
    with pytest.raises(ValueError, match="pruning record"):
        new_pruned_model().push_to_hub(REPO_ID)
