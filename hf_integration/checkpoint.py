"""Write a pruned model as an ordinary Hugging Face checkpoint plus pareto-prune's extra files.

Directory layout:

* ``config.json`` and ``model.safetensors``: the model as loaded (``architectures`` is
  unchanged, so a Llama stays ``LlamaForCausalLM``), with pruned weights exactly zero and
  the options under ``config.json["pareto_pruning"]``;
* tokenizer and generation-config files;
* ``neuron_masks.safetensors``: one bool vector per MLP, ``True`` = kept;
* ``pruning_report.json``: per-layer fronts, hypervolume, knee, budget and pruned count;
* ``plots/``: PNG scatter plots per layer and a pruned-per-layer bar chart;
* ``README.md``: a model card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hf_integration.configuration import CONFIG_KEY, ParetoPruningConfig
from hf_integration.loading import DEFAULT_MODEL_HUB_ID, DEFAULT_MODEL_LICENSE
from hf_integration.model_card import write_model_card
from pareto_prune.masking import MASKS_FILENAME, save_masks
from pareto_prune.plots import write_plots
from pareto_prune.selection import Selection

logger = logging.getLogger(__name__)

REPORT_FILENAME = "pruning_report.json"
PLOTS_DIRNAME = "plots"


def write_pruned_checkpoint(
    model,
    tokenizer,
    directory: str | Path,
    selection: Selection,
    config: ParetoPruningConfig,
    report: dict,
    base_model: str | None = None,
) -> None:
    """Save ``model`` (already pruned in place) and everything that documents the pruning into ``directory``.

    ``base_model`` names the pruned model in the card; ``None`` means the embedded SmolLM2 default.
    """
    directory = Path(directory)
    setattr(model.config, CONFIG_KEY, config.to_config_dict())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    save_masks(selection.masks, directory / MASKS_FILENAME)
    (directory / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    write_plots(selection, directory / PLOTS_DIRNAME)
    license = None
    if base_model is None:
        # No --model: the embedded SmolLM2 default, published under Apache-2.0.
        base_model, license = DEFAULT_MODEL_HUB_ID, DEFAULT_MODEL_LICENSE
    write_model_card(directory, base_model=base_model, license=license, overwrite=True)

