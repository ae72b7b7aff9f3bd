"""``PrunedLlamaForCausalLM``: a Llama causal LM that keeps its pruned MLP neurons at zero.

Where the masks live: every MLP of the model is a :class:`PrunedLlamaMLP`, which stores
its mask as a bool buffer ``neuron_mask`` (``True`` = kept), so the buffer of
``model.layers.3.mlp`` is ``model.layers.3.mlp.neuron_mask``. A buffer on the MLP moves
with its layer under ``.to()`` and ``device_map`` placement. It is registered with
``persistent=False``, so it never enters ``model.safetensors``. ``Module._apply`` casts
only floating-point tensors, so ``.half()`` and ``.to(torch.bfloat16)`` leave it bool, and
``from_pretrained(dtype=...)`` creates it as bool as well.

Where the mask is applied: :class:`PrunedLlamaMLP` sets the intermediate activation
``act(gate_proj(x)) * up_proj(x)`` to zero where the mask is ``False``, inside its own
``forward`` and before ``down_proj`` receives it. This is what
:func:`pareto_prune.masking.register_activation_masks` does with a forward pre-hook on
``down_proj``, but a hook is not enough here (checked with peft 0.21). When PEFT wraps
``down_proj`` for a LoRA adapter, a hook registered earlier stays on ``base_layer``, so the
LoRA branch of ``down_proj`` reads the unmasked activation. A hook registered on the
wrapper instead is lost when ``merge_and_unload()`` replaces the wrapper by its base layer.
Masking in the MLP's forward survives both, and ``copy.deepcopy`` and ``torch.save``
copy it with the model.

On disk a pruned model is a vanilla Llama checkpoint. ``config.json`` names
``LlamaForCausalLM``, the weights of pruned neurons are exactly zero, and
``neuron_masks.safetensors`` sits beside the weights. A model with a pruning record also
gets the ``pareto_pruning`` entry of ``config.json`` and a README.md model card.
``AutoModelForCausalLM`` loads the directory as a plain ``LlamaForCausalLM`` with the same
logits, and :meth:`PrunedLlamaForCausalLM.from_pretrained` also restores the masks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from hf_integration.configuration import CONFIG_KEY, ParetoPruningConfig
from pareto_prune.masking import MASKS_FILENAME, load_masks, prune_neurons as zero_neuron_weights, save_masks
from pareto_prune.mlp import find_swiglu_mlps

logger = logging.getLogger(__name__)

MASK_BUFFER_NAME = "neuron_mask"
SAVED_ARCHITECTURE = "LlamaForCausalLM"
REPORT_FILENAME = "pruning_report.json"
PLOTS_DIRNAME = "plots"


class PrunedLlamaMLP(LlamaMLP):
    """A Llama MLP whose intermediate activation is zeroed where ``neuron_mask`` is ``False``.

    It has the parameters and state-dict keys of ``LlamaMLP``, so checkpoints and PEFT
    ``target_modules`` names are unchanged.
    """

    neuron_mask: torch.Tensor

    @classmethod
    def convert(cls, mlp: LlamaMLP) -> PrunedLlamaMLP:
        """Turn ``mlp`` into a :class:`PrunedLlamaMLP` in place, with an all-True mask.

        Only the class changes, so the existing parameters, hooks and PEFT wrappers stay.
        """
        if not isinstance(mlp, cls):
            mlp.__class__ = cls
        if MASK_BUFFER_NAME not in mlp._buffers:
            device = mlp.gate_proj.weight.device
            mlp.register_buffer(MASK_BUFFER_NAME, torch.ones(mlp.intermediate_size, dtype=torch.bool, device=device), persistent=False)
        return mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        mask = self.neuron_mask
        if mask.device != hidden.device:
            mask = mask.to(hidden.device)
        # masked_fill gives an exact zero even where the activation overflowed to inf or NaN.
        return self.down_proj(hidden.masked_fill(~mask, 0))


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` with a bool neuron mask per MLP that keeps pruned neurons at zero.

    Pruned neurons have zero weights (``gate_proj`` and ``up_proj`` rows, ``down_proj``
    columns) and a zero activation in every forward pass, so LoRA adapters, offloaded
    layers and further fine-tuning cannot bring them back. See the module docstring for
    where the masks live.

    Attributes:
        pruning_config: Options and record of the pruning run, written to
            ``config.json["pareto_pruning"]`` by :meth:`save_pretrained`; ``None`` if unknown.
        pruning_report: Content of ``pruning_report.json`` (per-layer fronts, hypervolume,
            knee, budget), or ``None``. Saved beside the weights and used by the model card.
        pruning_artifacts_dir: Directory whose ``pruning_report.json`` and ``plots/`` are
            copied into every saved or pushed checkpoint, or ``None``.
        pruning_base_model: Hub id or path of the model that was pruned, for the model
            card. :meth:`prune_neurons` sets it to ``config.name_or_path`` when it prunes a
            model without pruned neurons. ``None`` if unknown, as after loading a pruned
            checkpoint.
    """

    pruning_config: ParetoPruningConfig | None
    pruning_report: dict[str, Any] | None
    pruning_artifacts_dir: str | Path | None
    pruning_base_model: str | None

    def post_init(self) -> None:
        # LlamaForCausalLM.__init__ ends with post_init(); the MLPs exist by then.
        for layer in self.model.layers:
            PrunedLlamaMLP.convert(layer.mlp)
        # setdefault keeps the values when post_init runs again on a model that was pruned.
        self.__dict__.setdefault("pruning_config", None)
        self.__dict__.setdefault("pruning_report", None)
        self.__dict__.setdefault("pruning_artifacts_dir", None)
        self.__dict__.setdefault("pruning_base_model", None)
        super().post_init()

    # ------------------------------------------------------------------ masks

    def _mask_modules(self) -> dict[str, PrunedLlamaMLP]:
        """Return the MLPs by their canonical key (``model.layers.<i>.mlp``)."""
        return {f"model.layers.{index}.mlp": layer.mlp for index, layer in enumerate(self.model.layers)}

    def neuron_masks(self) -> dict[str, torch.Tensor]:
        """Return a CPU copy of every MLP's mask, keyed by MLP key (``True`` = kept)."""
        return {key: mlp.neuron_mask.detach().to("cpu", copy=True) for key, mlp in self._mask_modules().items()}

    def pruned_counts(self) -> dict[str, int]:
        """Return the number of pruned neurons per MLP key."""
        return {key: int((~mlp.neuron_mask).sum()) for key, mlp in self._mask_modules().items()}

    def prune_neurons(self, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Prune the neurons whose entry in ``masks`` is ``False``, in addition to those already pruned.

        ``masks`` maps MLP keys to bool vectors (``True`` = kept) and may name only some
        MLPs. The new masks are combined with the current ones by logical AND, the mask
        buffers are updated in place, and the weights of every pruned neuron are set to
        zero. Weights on the meta device (offloaded by accelerate) cannot be zeroed here.
        Their neurons are still masked in every forward pass, and :meth:`save_pretrained`
        writes their weights as zero.

        Returns:
            The total number of pruned neurons per MLP key.

        Raises:
            ValueError: for an unknown MLP key, or a mask that is not a bool vector of the
                MLP's width.
        """
        modules = self._mask_modules()
        unknown = sorted(set(masks) - set(modules))
        if unknown:
            raise ValueError(
                f"Masks name MLPs that this model does not have: {unknown[:3]}. Its MLP keys are "
                f"{list(modules)[:2]}..., without a PEFT prefix such as 'base_model.model.'."
            )
        for key, mask in masks.items():
            size = modules[key].intermediate_size
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (size,):
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                dtype = mask.dtype if isinstance(mask, torch.Tensor) else ""
                raise ValueError(f"Mask for {key!r} must be a bool tensor of shape ({size},), got {dtype} {shape}.")

        if self.pruning_base_model is None and not any(self.pruned_counts().values()):
            self.pruning_base_model = self.config.name_or_path or None
        with torch.no_grad():
            for key, mask in masks.items():
                buffer = modules[key].neuron_mask
                buffer.logical_and_(mask.to(buffer.device))
        self.zero_pruned_weights()
        return self.pruned_counts()

    def zero_pruned_weights(self) -> None:
        """Set the weights of all pruned neurons to zero again, in place.

        Training leaves them at zero because the masked activation gives them zero
        gradients, but merging a LoRA adapter (``merge_and_unload``) adds its update to
        pruned rows. Offloaded weights on the meta device are skipped.
        """
        masks = self.neuron_masks()
        for mlp in find_swiglu_mlps(self):
            if mlp.gate_proj.weight.device.type == "meta" or mlp.down_proj.weight.device.type == "meta":
                # Such neurons are masked in forward, and save_pretrained zeroes them in the written tensors.
                masks[mlp.key] = torch.ones_like(masks[mlp.key])
        if any(not mask.all() for mask in masks.values()):
            zero_neuron_weights(self, masks)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a checkpoint with ``LlamaForCausalLM.from_pretrained`` and restore its neuron masks.

        transformers 5.25 builds the model on the meta device and leaves non-persistent
        buffers uninitialised, so every mask is set here explicitly. The masks come from
        ``neuron_masks.safetensors`` in the same local directory or Hub repo, downloaded
        with the ``subfolder``, ``revision``, ``cache_dir``, ``token``, ``local_files_only``
        and ``force_download`` arguments. A checkpoint without that file gets all-True
        masks. The weights of pruned neurons are then
        set to zero, and ``config.json["pareto_pruning"]`` becomes :attr:`pruning_config`.
        Every other argument is that of ``PreTrainedModel.from_pretrained``.

        Raises:
            ValueError: if the mask file does not match the model's MLPs, or the
                ``pareto_pruning`` entry is invalid.
        """
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded

        masks_path = _find_masks_file(pretrained_model_name_or_path, kwargs)
        if masks_path is None:
            masks = {key: torch.ones(mlp.intermediate_size, dtype=torch.bool) for key, mlp in model._mask_modules().items()}
        else:
            masks = load_masks(masks_path)
            try:
                model._check_complete_masks(masks)
            except ValueError as error:
                raise ValueError(f"{masks_path} does not fit this model: {error}") from error
        model._write_masks(masks)
        model.zero_pruned_weights()

        stored = getattr(model.config, CONFIG_KEY, None)
        if stored is not None:
            model.pruning_config = ParetoPruningConfig.from_config_dict(stored)
            recorded = {key: int(count) for key, count in model.pruning_config.pruned_per_layer.items()}
            if recorded and recorded != {key: count for key, count in model.pruned_counts().items() if key in recorded}:
                logger.warning(
                    "config.json['%s'] records other pruned counts than %s (%s). The masks are used.",
                    CONFIG_KEY,
                    MASKS_FILENAME,
                    "not found" if masks_path is None else masks_path,
                )
        return loaded

    def _check_complete_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        modules = self._mask_modules()
        unknown = sorted(set(masks) - set(modules))
        if unknown:
            raise ValueError(f"unknown MLP keys {unknown[:3]}, but the model's MLPs are {list(modules)[:2]}...")
        for key, mlp in modules.items():
            mask = masks.get(key)
            if mask is None:
                raise ValueError(f"no mask for MLP {key!r}")
            if mask.dtype != torch.bool or tuple(mask.shape) != (mlp.intermediate_size,):
                raise ValueError(f"mask for {key!r} is {mask.dtype} of shape {tuple(mask.shape)}, expected bool ({mlp.intermediate_size},)")

    def _write_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Overwrite every mask buffer with ``masks``, replacing meta or uninitialised buffers."""
        for key, mlp in self._mask_modules().items():
            value = masks[key].to(torch.bool)
            buffer = mlp.neuron_mask
            if buffer.device.type == "meta":
                device = mlp.gate_proj.weight.device
                device = device if device.type != "meta" else torch.device("cpu")
                mlp.register_buffer(MASK_BUFFER_NAME, value.to(device).clone(), persistent=False)
            else:
                with torch.no_grad():
                    buffer.copy_(value.to(buffer.device))

    # ------------------------------------------------------------------ saving

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """Save a vanilla Llama checkpoint plus the masks, the pruning record and a model card.

        The directory receives what ``LlamaForCausalLM.save_pretrained`` writes, with
        ``config.json["architectures"] == ["LlamaForCausalLM"]`` so that plain transformers
        loads it. The weights of pruned neurons are written as zero, also after a LoRA merge
        added to them. The model's own pruned weights are set to zero in place first, which
        does not change its outputs because their activations are masked. Added files:

        * ``neuron_masks.safetensors``;
        * ``pruning_report.json`` and ``plots/`` copied from :attr:`pruning_artifacts_dir`,
          and ``pruning_report.json`` written from :attr:`pruning_report` when it is set;
        * README.md when the config has a ``pareto_pruning`` entry, from
          :func:`hf_integration.model_card.write_model_card`, which keeps a README.md that
          it did not write.

        ``config.json["pareto_pruning"]`` is :attr:`pruning_config` with the current pruned
        counts, when a pruning config is attached. As in transformers, existing files in
        ``save_directory`` are overwritten, also when it is the directory the model was
        loaded from. ``push_to_hub=True`` then uploads the directory with
        :func:`hf_integration.hub.push_pruned_folder`, taking ``repo_id`` (default: the
        directory name), ``token``, ``private``, ``commit_message`` and ``revision`` from
        ``kwargs``. Other arguments are those of ``PreTrainedModel.save_pretrained``.
        """
        hub_options = {name: kwargs.pop(name) for name in ("repo_id", "private", "commit_message", "revision") if name in kwargs}
        directory = Path(save_directory)
        repo_id = hub_options.pop("repo_id", None) or directory.resolve().name
        self._save_checkpoint(directory, is_main_process, state_dict, card_repo_id=repo_id if push_to_hub else None, **kwargs)
        if push_to_hub and is_main_process:
            from hf_integration.hub import push_pruned_folder

            push_pruned_folder(directory, repo_id, token=kwargs.get("token"), **hub_options)

    def _save_checkpoint(
        self,
        directory: Path,
        is_main_process: bool,
        state_dict: dict[str, torch.Tensor] | None,
        card_repo_id: str | None,
        **kwargs,
    ) -> None:
        self.zero_pruned_weights()
        state_dict = self._state_dict_for_saving(state_dict)
        if self.pruning_config is not None:
            record = dataclasses.replace(self.pruning_config, pruned_per_layer=self.pruned_counts())
            setattr(self.config, CONFIG_KEY, record.to_config_dict())

        super().save_pretrained(directory, is_main_process=is_main_process, state_dict=state_dict, **kwargs)
        if not is_main_process:
            return
        save_masks(self.neuron_masks(), directory / MASKS_FILENAME)
        if getattr(self, "_hf_peft_config_loaded", False):
            # transformers wrote only the adapter and its config, so there is no config.json to fix.
            return
        # transformers wrote this class's name, but plain transformers must be able to load the checkpoint.
        self.config.architectures = [SAVED_ARCHITECTURE]
        self.config.save_pretrained(directory)
        self._write_artifacts(directory)
        self._write_card(directory, card_repo_id)

    def _state_dict_for_saving(self, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Return the state dict to save, with offloaded weights loaded and pruned rows and columns zero.

        Returns ``None``, which lets transformers build the state dict, when no weight is on
        the meta device and the caller gave none. With an ``hf_device_map``, transformers
        loads offloaded weights shard by shard, so only the MLP weights of pruned neurons are
        loaded here. Without one (accelerate's ``cpu_offload``), transformers 5.25 cannot save
        offloaded weights, so all of them are loaded here.
        """
        # NOTE: every loaded weight stays in CPU memory until the save ends.
        from_caller = state_dict is not None
        state_dict = dict(state_dict if from_caller else self.state_dict())
        offloaded_names = [name for name, tensor in state_dict.items() if tensor.device.type == "meta"]
        if not from_caller and not offloaded_names:
            return None

        from transformers.integrations.accelerate import load_offloaded_parameter

        if not getattr(self, "hf_device_map", None):
            for name in offloaded_names:
                state_dict[name] = load_offloaded_parameter(self, name)

        masks = self.neuron_masks()
        for key, mask in masks.items():
            if mask.all():
                continue
            pruned = ~mask
            for name, pruned_dim in _pruned_tensor_names(key, state_dict):
                tensor = state_dict[name]
                if tensor.device.type == "meta":
                    tensor = load_offloaded_parameter(self, name)
                tensor = tensor.detach().clone()
                index = pruned.to(tensor.device)
                if pruned_dim == 0:
                    tensor[index] = 0
                else:
                    tensor[:, index] = 0
                state_dict[name] = tensor
        return state_dict

    def _write_artifacts(self, directory: Path) -> None:
        if self.pruning_artifacts_dir is not None:
            source = Path(self.pruning_artifacts_dir)
            if not source.is_dir():
                raise FileNotFoundError(
                    f"pruning_artifacts_dir {source} not found. Set it to the directory that contains "
                    f"{REPORT_FILENAME} and {PLOTS_DIRNAME}/, or to None."
                )
            if (source / REPORT_FILENAME).is_file() and source.resolve() != directory.resolve():
                shutil.copy2(source / REPORT_FILENAME, directory / REPORT_FILENAME)
            if (source / PLOTS_DIRNAME).is_dir() and source.resolve() != directory.resolve():
                shutil.copytree(source / PLOTS_DIRNAME, directory / PLOTS_DIRNAME, dirs_exist_ok=True)
        if self.pruning_report is not None:
            (directory / REPORT_FILENAME).write_text(json.dumps(self.pruning_report, indent=2) + "\n", encoding="utf-8")

    def _write_card(self, directory: Path, repo_id: str | None) -> None:
        pruning_info = getattr(self.config, CONFIG_KEY, None)
        if not isinstance(pruning_info, dict):
            return
        from hf_integration.model_card import write_model_card

        report = self.pruning_report
        if report is None and (directory / REPORT_FILENAME).is_file():
            report = json.loads((directory / REPORT_FILENAME).read_text(encoding="utf-8"))
        write_model_card(directory, pruning_info=pruning_info, report=report, base_model=self.pruning_base_model, repo_id=repo_id)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        tokenizer=None,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        create_repo: bool = True,
        max_shard_size: int | str = "50GB",
        endpoint: str | None = None,
    ) -> str:
        """Save the model into a temporary directory and upload all of it to a Hub model repo.

        transformers' own ``push_to_hub`` uploads only what its ``save_pretrained`` writes,
        so it would leave out the masks, the report, the plots and the model card. This
        method uploads everything :meth:`save_pretrained` writes, plus the tokenizer files
        when ``tokenizer`` is given, with :func:`hf_integration.hub.push_pruned_folder`.

        Returns:
            The URL of the upload commit.
        """
        from hf_integration.hub import DEFAULT_COMMIT_MESSAGE, push_pruned_folder

        if not isinstance(getattr(self.config, CONFIG_KEY, None), dict) and self.pruning_config is None:
            raise ValueError(
                f"The model has no pruning record (config.{CONFIG_KEY} or pruning_config), so it is not a "
                "pareto-prune output. Prune it with ParetoPruningCallback or set model.pruning_config first."
            )
        with tempfile.TemporaryDirectory(prefix="pareto-prune-push-") as staging:
            self._save_checkpoint(Path(staging), True, None, card_repo_id=repo_id, max_shard_size=max_shard_size)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            return push_pruned_folder(
                staging,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
                revision=revision,
                create_repo=create_repo,
                endpoint=endpoint,
            )


def _pruned_tensor_names(key: str, state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, int]]:
    """Return ``(name, dimension)`` for every tensor of MLP ``key`` indexed by neuron: gate/up rows, down columns."""
    candidates = [
        (f"{key}.gate_proj.weight", 0),
        (f"{key}.gate_proj.bias", 0),
        (f"{key}.up_proj.weight", 0),
        (f"{key}.up_proj.bias", 0),
        (f"{key}.down_proj.weight", 1),
    ]
    return [(name, dimension) for name, dimension in candidates if name in state_dict]


def _find_masks_file(pretrained_model_name_or_path, kwargs: Mapping[str, Any]) -> Path | None:
    """Return the local path of the checkpoint's mask file, or ``None`` if it has none."""
    if pretrained_model_name_or_path is None or kwargs.get("gguf_file"):
        return None
    subfolder = kwargs.get("subfolder") or ""
    location = str(pretrained_model_name_or_path)
    if os.path.isdir(location):
        path = Path(location) / subfolder / MASKS_FILENAME
        return path if path.is_file() else None

    download = {
        "subfolder": subfolder or None,
        "revision": kwargs.get("revision") or None,
        "cache_dir": kwargs.get("cache_dir"),
        "token": kwargs.get("token"),
        "local_files_only": bool(kwargs.get("local_files_only", False)),
        "force_download": bool(kwargs.get("force_download", False)),
    }
    try:
        return Path(hf_hub_download(location, MASKS_FILENAME, **download))
    except LocalEntryNotFoundError:
        # Offline and not cached: an earlier download may have recorded that the file does not exist.
        filename = f"{subfolder}/{MASKS_FILENAME}" if subfolder else MASKS_FILENAME
        cached = try_to_load_from_cache(location, filename, cache_dir=download["cache_dir"], revision=download["revision"])
        if isinstance(cached, str):
            return Path(cached)
        if cached is None:
            logger.warning(
                "Could not check %s for %s while offline, so every mask is set to True. The pruned weights "
                "in the checkpoint are still zero, but further training could change them. Load it once "
                "online to cache the masks.",
                location,
                MASKS_FILENAME,
            )
        return None
    except EntryNotFoundError:
        # The Hub returned 404 for the file, so the checkpoint was never pruned.
        return None
