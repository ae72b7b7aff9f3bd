"""Upload a pruned-model directory to the Hugging Face Hub.

transformers' ``push_to_hub`` uploads only what ``save_pretrained`` writes, so it leaves out
the generated README.md, the neuron masks, the pruning report and the plots. This module
uploads the whole directory instead.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata
from pathlib import Path

from huggingface_hub import HfApi, constants

from hf_integration.model_card import CARD_FILENAME, CONFIG_FILENAME, PRUNING_CONFIG_KEY
from pareto_prune.masking import MASKS_FILENAME

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload model pruned with pareto-prune"
# Any one of these counts as model weights. Sharded checkpoints have an index file.
WEIGHTS_FILENAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HOW_TO_PRODUCE = (
    "Write the directory with the pareto-prune command or with PrunedLlamaForCausalLM.save_pretrained(), "
    "which save the pruned weights, config.json with its 'pareto_pruning' entry and "
    f"{MASKS_FILENAME} together."
)


def validate_pruned_folder(folder: str | Path) -> Path:
    """Check that ``folder`` is a pruned-model directory and return it as a Path.

    The directory must contain config.json with a ``pareto_pruning`` object, the model
    weights (one of :data:`WEIGHTS_FILENAMES`) and ``neuron_masks.safetensors``.

    Raises:
        FileNotFoundError: if the directory or any required file is missing. The message
            lists every missing file.
        NotADirectoryError: if ``folder`` is a file.
        ValueError: if config.json is not valid JSON or has no ``pareto_pruning`` object.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"Pruned-model directory {folder} not found. {_HOW_TO_PRODUCE}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; push_pruned_folder expects the directory that contains it.")

    missing = []
    if not (folder / CONFIG_FILENAME).is_file():
        missing.append(f"{CONFIG_FILENAME} (the model configuration with its '{PRUNING_CONFIG_KEY}' entry)")
    if not any((folder / name).is_file() for name in WEIGHTS_FILENAMES):
        missing.append(f"the model weights ({' or '.join(WEIGHTS_FILENAMES)})")
    if not (folder / MASKS_FILENAME).is_file():
        missing.append(f"{MASKS_FILENAME} (the neuron masks)")
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete pruned-model directory: missing {'; '.join(missing)}. {_HOW_TO_PRODUCE}")

    config_path = folder / CONFIG_FILENAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or not isinstance(config.get(PRUNING_CONFIG_KEY), dict):
        raise ValueError(
            f"{config_path} has no '{PRUNING_CONFIG_KEY}' object, so {folder} was not written by pareto-prune. "
            f"{_HOW_TO_PRODUCE}"
        )
    return folder


def push_pruned_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    revision: str | None = None,
    create_repo: bool = True,
    endpoint: str | None = None,
) -> str:
    """Upload every file of a pruned-model directory to a Hub model repo and return the commit URL.

    Args:
        folder: Directory written by pareto-prune; see :func:`validate_pruned_folder`.
        repo_id: Target repo, ``"namespace/name"``. A bare ``"name"`` is created in the
            namespace of the token's user when ``create_repo`` is true.
        token: Hub token; ``None`` uses the ``HF_TOKEN`` variable or the stored login.
        private: Visibility of a newly created repo. It does not change an existing repo.
        commit_message: Message of the upload commit.
        revision: Branch to upload to. It is created from the default branch if it does not
            exist. ``None`` uploads to the default branch.
        create_repo: Create the repo when it does not exist. With ``False`` the repo must exist.
        endpoint: Hub URL. Defaults to the ``HF_ENDPOINT`` variable as it is now, then to
            ``huggingface_hub.constants.ENDPOINT``, which huggingface_hub reads at import.

    The upload is one commit for directories of up to 256 files. With ``hf_xet`` installed,
    huggingface_hub 2.4 commits larger directories in several parts; the URL is that of the last.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: as :func:`validate_pruned_folder`.
        huggingface_hub.errors.HfHubHTTPError: if the Hub rejects a request, for example for a
            missing or read-only token.
    """
    folder = validate_pruned_folder(folder)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token, library_name="pareto-prune", library_version=_package_version())

    if not (folder / CARD_FILENAME).is_file():
        logger.warning(
            "%s has no %s, so the Hub repo will have no model card. "
            "Call hf_integration.model_card.write_model_card(%r) before pushing to add one.",
            folder,
            CARD_FILENAME,
            str(folder),
        )

    if create_repo:
        repo_url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        repo_id = repo_url.repo_id
    elif private is not None:
        logger.warning("Ignoring private=%s because create_repo is False; the visibility of %s is unchanged.", private, repo_id)

    if revision is not None and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)

    # NOTE: with hf_xet installed, huggingface_hub uploads LFS-mode files (weights, masks, plots)
    # through Xet storage. The tests cover the Git LFS path and the Xet pipeline with regular
    # files only, because the local test server does not implement Xet storage.
    file_count = sum(1 for path in folder.rglob("*") if path.is_file())
    logger.info("Uploading %d files from %s to %s/%s", file_count, folder, endpoint, repo_id)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
    )
    logger.info("Uploaded %s to %s: %s", folder, repo_id, commit.commit_url)
    return commit.commit_url


def _package_version() -> str | None:
    try:
        return metadata.version("pareto-prune")
    except metadata.PackageNotFoundError:
        return None
