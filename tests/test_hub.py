"""Tests for push_pruned_folder against the local fake Hub in tests/hub_server.py."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from hub_server import FakeHub, fake_hub  # noqa: F401  (fake_hub is a pytest fixture)

from hf_integration.hub import push_pruned_folder, validate_pruned_folder
from hf_integration.model_card import is_generated_card, write_model_card
from pareto_prune.masking import MASKS_FILENAME, prune_neurons, save_masks

REPO_ID = "test-user/tiny-llama-pruned"
BASE_MODEL = "test-org/tiny-llama-base"
EVAL_RESULTS = {"forget_Q_A_Prob": 0.0123, "model_utility": 0.456, "forget_quality": 0.789}


def _png_bytes(width: int = 4, height: int = 3) -> bytes:
    """Return a valid grey PNG image. The Hub stores it with LFS because its header is binary."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([40 * x % 256 for x in range(width)]) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _build_pruned_folder(folder: Path) -> None:
    """Write a tiny pruned Llama checkpoint the way a pareto-prune run lays it out."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    masks = {f"model.layers.{index}.mlp": torch.ones(32, dtype=torch.bool) for index in range(2)}
    masks["model.layers.0.mlp"][[1, 5, 7]] = False
    masks["model.layers.1.mlp"][[30]] = False
    pruned_per_layer = prune_neurons(model, masks)

    model.config.pareto_pruning = {
        "format_version": 1,
        "method": "pareto_neuron_pruning",
        "options": {"strategy": "hypervolume_budget", "budget": 0.0625, "max_layer_fraction": 0.1},
        "pruned_per_layer": pruned_per_layer,
        "forget_sources": ["tofu:forget10"],
        "retain_sources": ["tofu:retain90"],
    }
    model.save_pretrained(folder)

    vocabulary = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(folder)

    save_masks(masks, folder / MASKS_FILENAME)
    report = {
        "strategy": "hypervolume_budget",
        "total_neurons": 64,
        "total_pruned": 4,
        "layers": {
            "model.layers.0.mlp": {"neurons": 32, "pruned": 3, "budget": 3, "num_fronts": 6, "front_sizes": [4, 5], "hypervolume": 0.31, "knee": None},
            "model.layers.1.mlp": {"neurons": 32, "pruned": 1, "budget": 1, "num_fronts": 5, "front_sizes": [3, 6], "hypervolume": 0.12, "knee": None},
        },
    }
    (folder / "pruning_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / "plots").mkdir()
    (folder / "plots" / "front_model.layers.0.mlp.png").write_bytes(_png_bytes())
    (folder / "plots" / "front_model.layers.1.mlp.png").write_bytes(_png_bytes(5, 2))
    write_model_card(folder, base_model=BASE_MODEL, eval_results=EVAL_RESULTS, license="apache-2.0", repo_id=REPO_ID)


@pytest.fixture(scope="module")
def built_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("built") / "pruned"
    folder.mkdir()
    _build_pruned_folder(folder)
    return folder


@pytest.fixture
def pruned_folder(built_folder: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pruned checkpoint that a test may change."""
    return Path(shutil.copytree(built_folder, tmp_path / "pruned"))


def _local_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_push_uploads_every_file_byte_identical(fake_hub: FakeHub, pruned_folder: Path) -> None:
    commit_url = push_pruned_folder(pruned_folder, REPO_ID)

    local = _local_files(pruned_folder)
    remote = fake_hub.files(REPO_ID)
    assert set(remote) == set(local) | {".gitattributes"}
    for path, content in local.items():
        assert remote[path] == content, path
    assert commit_url.startswith(f"{fake_hub.url}/{REPO_ID}/commit/")
    assert fake_hub.commit_titles(REPO_ID)[0] == "Upload model pruned with pareto-prune"
    assert fake_hub.unhandled_requests == []


def test_push_sends_binary_files_through_lfs(fake_hub: FakeHub, pruned_folder: Path) -> None:
    push_pruned_folder(pruned_folder, REPO_ID)

    lfs_paths = fake_hub.lfs_paths(REPO_ID)
    assert "model.safetensors" in lfs_paths
    assert MASKS_FILENAME in lfs_paths
    assert "plots/front_model.layers.0.mlp.png" in lfs_paths
    assert "README.md" not in lfs_paths
    assert "config.json" not in lfs_paths
    assert any(path.endswith(".git/info/lfs/objects/batch") for _, path in fake_hub.requests)


def test_pushed_readme_is_model_card(fake_hub: FakeHub, pruned_folder: Path) -> None:
    push_pruned_folder(pruned_folder, REPO_ID)

    readme = fake_hub.files(REPO_ID)["README.md"].decode("utf-8")
    assert is_generated_card(readme)
    card = ModelCard(readme)
    assert card.data.base_model == BASE_MODEL
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["locuslab/TOFU"]
    assert {"unlearning", "pruning", "pareto-prune", "tofu"} <= set(card.data.tags)
    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == EVAL_RESULTS
    assert f'from_pretrained("{REPO_ID}")' in card.text

    info = HfApi(endpoint=fake_hub.url).model_info(REPO_ID)
    assert info.pipeline_tag == "text-generation"
    assert "pareto-prune" in info.tags
    assert info.card_data.base_model == BASE_MODEL


def test_pushed_files_listed_and_downloadable(fake_hub: FakeHub, pruned_folder: Path, tmp_path: Path) -> None:
    push_pruned_folder(pruned_folder, REPO_ID)

    local = _local_files(pruned_folder)
    listed = HfApi(endpoint=fake_hub.url).list_repo_files(REPO_ID)
    assert set(listed) == set(local) | {".gitattributes"}
    for path, content in local.items():
        downloaded = hf_hub_download(REPO_ID, path, cache_dir=tmp_path / "cache", endpoint=fake_hub.url)
        assert Path(downloaded).read_bytes() == content, path


def test_pushed_model_loads_with_transformers(fake_hub: FakeHub, pruned_folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    push_pruned_folder(pruned_folder, REPO_ID)

    remote_model = AutoModelForCausalLM.from_pretrained(REPO_ID)
    local_model = AutoModelForCausalLM.from_pretrained(pruned_folder)
    remote_state = remote_model.state_dict()
    for name, tensor in local_model.state_dict().items():
        assert torch.equal(remote_state[name], tensor), name
    gate = remote_model.model.layers[0].mlp.gate_proj.weight
    assert torch.count_nonzero(gate[[1, 5, 7]]) == 0
    assert remote_model.config.pareto_pruning["pruned_per_layer"] == {"model.layers.0.mlp": 3, "model.layers.1.mlp": 1}
    tokenizer = AutoTokenizer.from_pretrained(REPO_ID)
    assert tokenizer.eos_token == "</s>"


def test_push_to_new_branch(fake_hub: FakeHub, pruned_folder: Path) -> None:
    commit_url = push_pruned_folder(pruned_folder, REPO_ID, revision="experiment", commit_message="Try budget 0.0625")

    assert "README.md" in fake_hub.files(REPO_ID, revision="experiment")
    assert set(fake_hub.files(REPO_ID, revision="main")) == {".gitattributes"}
    assert fake_hub.commit_titles(REPO_ID, revision="experiment")[0] == "Try budget 0.0625"
    assert commit_url.rsplit("/", 1)[-1] == fake_hub.get_repo(REPO_ID).branches["experiment"]


def test_push_bare_name_uses_token_namespace(fake_hub: FakeHub, pruned_folder: Path) -> None:
    commit_url = push_pruned_folder(pruned_folder, "tiny-llama-pruned", private=True)

    repo = fake_hub.get_repo(f"{fake_hub.user}/tiny-llama-pruned")
    assert repo.private
    assert f"/{fake_hub.user}/tiny-llama-pruned/commit/" in commit_url


def test_push_twice_makes_no_empty_commit(fake_hub: FakeHub, pruned_folder: Path) -> None:
    first_url = push_pruned_folder(pruned_folder, REPO_ID)
    second_url = push_pruned_folder(pruned_folder, REPO_ID)

    assert second_url == first_url
    assert len(fake_hub.commit_titles(REPO_ID)) == 2  # the repo's initial commit and one upload


def test_push_reads_hf_endpoint_at_call_time(fake_hub: FakeHub, pruned_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # If push_pruned_folder used constants.ENDPOINT, its requests would go to port 9 of 127.0.0.1,
    # where nothing serves the Hub API, and the push would fail.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")

    push_pruned_folder(pruned_folder, REPO_ID)

    assert "README.md" in fake_hub.files(REPO_ID)


def test_push_with_wrong_token_fails(fake_hub: FakeHub, pruned_folder: Path) -> None:
    with pytest.raises(HfHubHTTPError) as error:
        push_pruned_folder(pruned_folder, REPO_ID, token="hf_wrong_token")

    assert error.value.response.status_code == 401
    assert fake_hub.repos == {}


def test_push_without_create_repo_needs_existing_repo(fake_hub: FakeHub, pruned_folder: Path) -> None:
    with pytest.raises(HfHubHTTPError):
        push_pruned_folder(pruned_folder, REPO_ID, create_repo=False)

    assert fake_hub.repos == {}


def test_push_through_xet_pipeline_with_regular_files(
    fake_hub: FakeHub, pruned_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With hf_xet installed, upload_folder in huggingface_hub 2.4 takes the multi-commit pipeline.
    # FakeHub has no Xet storage, so every file is declared "regular" here.
    pytest.importorskip("hf_xet")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    fake_hub.upload_mode = "regular"

    push_pruned_folder(pruned_folder, REPO_ID)

    remote = fake_hub.files(REPO_ID)
    for path, content in _local_files(pruned_folder).items():
        assert remote[path] == content, path
    assert fake_hub.unhandled_requests == []


def test_push_rejects_folder_without_masks(fake_hub: FakeHub, pruned_folder: Path) -> None:
    (pruned_folder / MASKS_FILENAME).unlink()

    with pytest.raises(FileNotFoundError, match=MASKS_FILENAME) as error:
        push_pruned_folder(pruned_folder, REPO_ID)

    assert "save_pretrained" in str(error.value)
    assert fake_hub.requests == []


def test_validate_lists_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# not a checkpoint\n", encoding="utf-8")

    with pytest.raises(FileNotFoundError) as error:
        validate_pruned_folder(tmp_path)

    message = str(error.value)
    assert "config.json" in message
    assert "model.safetensors" in message
    assert MASKS_FILENAME in message


def test_validate_rejects_config_without_pruning_entry(pruned_folder: Path) -> None:
    config_path = pruned_folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    del config["pareto_pruning"]
    config_path.write_text(json.dumps(config), encoding="utf-8")

    with pytest.raises(ValueError, match="pareto_pruning"):
        validate_pruned_folder(pruned_folder)


def test_validate_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        validate_pruned_folder(tmp_path / "absent")
