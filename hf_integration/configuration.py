"""``ParetoPruningConfig``: the method's options as stored in a model's ``config.json``.

transformers serialises ``config.json`` from plain values only, so the options live
there as a dict under the ``pareto_pruning`` key, in the way quantizers record their
``quantization_config``:

    "pareto_pruning": {
        "format_version": 1,
        "method": "pareto_neuron_pruning",
        "options": {... every PruningConfig field ...},
        "pruned_per_layer": {"model.layers.0.mlp": 12, ...},
        "forget_sources": ["tofu:forget10"],
        "retain_sources": ["tofu:retain90", ...]
    }
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from pareto_prune.config import PruningConfig

logger = logging.getLogger(__name__)

CONFIG_KEY = "pareto_pruning"
FORMAT_VERSION = 1
METHOD_NAME = "pareto_neuron_pruning"


@dataclass
class ParetoPruningConfig(PruningConfig):
    """All options of Pareto neuron pruning plus what a pruned checkpoint records about its run.

    Inherits every method option, with its meaning, unit and default, from
    :class:`pareto_prune.config.PruningConfig`. The extra fields describe one run.

    Attributes:
        forget_sources: Data the model was made to forget, as given on the command line
            (``"tofu:forget10"`` or file paths). Default empty.
        retain_sources: Data whose knowledge was protected. Default empty.
        pruned_per_layer: Pruned neurons per MLP key, filled in after selection. Default empty.
    """

    forget_sources: list[str] = field(default_factory=list)
    retain_sources: list[str] = field(default_factory=list)
    pruned_per_layer: dict[str, int] = field(default_factory=dict)

    def method_options(self) -> dict[str, Any]:
        """Return only the options that decide the selection (no run record)."""
        return {name: value for name, value in self.to_dict().items() if name in PruningConfig.field_names()}

    def to_config_dict(self) -> dict[str, Any]:
        """Return the plain dict stored as ``config.json["pareto_pruning"]``."""
        return {
            "format_version": FORMAT_VERSION,
            "method": METHOD_NAME,
            "options": self.method_options(),
            "pruned_per_layer": {key: int(count) for key, count in self.pruned_per_layer.items()},
            "forget_sources": list(self.forget_sources),
            "retain_sources": list(self.retain_sources),
        }

    @classmethod
    def from_config_dict(cls, stored: dict[str, Any]) -> ParetoPruningConfig:
        """Rebuild the config from ``config.json["pareto_pruning"]``.

        Keys this version does not know (written by a newer pareto-prune) are dropped
        with a warning, so older code can still load newer checkpoints.

        Raises:
            ValueError: if ``stored`` is not a dict or names another method.
        """
        if not isinstance(stored, dict):
            raise ValueError(f"config.json['{CONFIG_KEY}'] must be a dict, got {type(stored).__name__}.")
        method = stored.get("method", METHOD_NAME)
        if method != METHOD_NAME:
            raise ValueError(f"config.json['{CONFIG_KEY}'] describes method {method!r}, not {METHOD_NAME!r}.")
        version = stored.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            logger.warning("Pruning config has format_version %s, newer than this pareto-prune (%s).", version, FORMAT_VERSION)

        known_top = {"format_version", "method", "options", "pruned_per_layer", "forget_sources", "retain_sources"}
        options = dict(stored.get("options", {}))
        unknown = sorted(set(stored) - known_top) + sorted(set(options) - PruningConfig.field_names())
        if unknown:
            warnings.warn(
                f"Ignoring unknown pareto_pruning keys {unknown}; they were probably written by a newer "
                "pareto-prune. Upgrade pareto-prune to use them.",
                stacklevel=2,
            )
        options = {name: value for name, value in options.items() if name in PruningConfig.field_names()}
        return cls(
            **options,
            forget_sources=list(stored.get("forget_sources", [])),
            retain_sources=list(stored.get("retain_sources", [])),
            pruned_per_layer=dict(stored.get("pruned_per_layer", {})),
        )
