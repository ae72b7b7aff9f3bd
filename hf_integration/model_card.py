"""Model cards (README.md) for pruned checkpoints, rendered from ``MODEL_CARD_TEMPLATE.md``.

A generated card ends with a marker comment that contains the SHA-256 of the card text
before it. :func:`write_model_card` replaces a README.md only when that marker is present
and the hash still matches, so a README that a user wrote or edited is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

logger = logging.getLogger(__name__)

TEMPLATE_FILENAME = "MODEL_CARD_TEMPLATE.md"
CARD_FILENAME = "README.md"
CONFIG_FILENAME = "config.json"
REPORT_FILENAME = "pruning_report.json"
# Headline metrics that `pareto-prune eval` writes (pareto_prune.tofu_eval.SUMMARY_FILENAME). The name
# is repeated here so that this module does not import torch and scipy.
EVAL_SUMMARY_FILENAME = "TOFU_SUMMARY.json"
PRUNING_CONFIG_KEY = "pareto_pruning"
# Highest `pareto_pruning.format_version` this module was written for.
SUPPORTED_FORMAT_VERSION = 1

TOFU_DATASET_ID = "locuslab/TOFU"
TOFU_SOURCE_PREFIX = "tofu:"
BASE_TAGS = ("unlearning", "pruning", "pareto-prune")
TOFU_TAG = "tofu"

_MARKER_PREFIX = "<!-- pareto-prune model card, sha256="
_MARKER_PATTERN = re.compile("\n" + re.escape(_MARKER_PREFIX) + r"([0-9a-f]{64}) -->\n\Z")


def find_template() -> Path:
    """Return the path of ``MODEL_CARD_TEMPLATE.md``.

    The package directory is searched first: an installed wheel contains a copy there, and in
    a source checkout ``hf_integration/MODEL_CARD_TEMPLATE.md`` is a symlink to the top-level
    file. The top level of the checkout is the fallback for checkouts where git wrote the
    symlink as a plain text file containing its target path (``core.symlinks=false``).
    """
    package_dir = Path(__file__).resolve().parent
    candidates = [package_dir / TEMPLATE_FILENAME, package_dir.parent / TEMPLATE_FILENAME]
    for candidate in candidates:
        if candidate.is_file() and "{{ card_data }}" in candidate.read_text(encoding="utf-8"):
            return candidate
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(
        f"Model card template {TEMPLATE_FILENAME} not found (searched {searched}). "
        "Reinstall pareto-prune, or restore the file at the top level of the source checkout."
    )


def build_model_card(
    pruning_info: Mapping[str, Any],
    report: Mapping[str, Any] | None,
    base_model: str | None,
    eval_results: Mapping[str, Any] | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    *,
    repo_id: str | None = None,
) -> ModelCard:
    """Render the model card of a pruned checkpoint.

    Args:
        pruning_info: The ``pareto_pruning`` entry of the pruned model's config.json. Keys
            that this version does not know are ignored.
        report: Content of ``pruning_report.json``, or ``None``. Without it the per-layer
            table has only the pruned counts.
        base_model: Hub repo id of the model that was pruned. A local path is named in the
            card text but left out of the metadata, because the Hub accepts only repo ids there.
        eval_results: Metric name to value, for example ``{"forget_quality": 0.8}``. ``None``
            values are skipped. The metrics go into the metadata as ``model-index`` results.
        license: Licence identifier for the metadata (for example ``"llama3.1"``), or ``None``.
        datasets: Hub dataset ids to list in addition to ``locuslab/TOFU``, which is added
            when a forget or retain source starts with ``tofu:``.
        repo_id: Repo id that the card is published under. It names the model and appears in
            the loading examples, which show a placeholder path without it.

    Raises:
        ValueError: if ``pruning_info`` records no pruned counts and ``report`` has none either,
            or if an evaluation value is not a number.
    """
    forget_sources = _string_list(pruning_info.get("forget_sources"))
    retain_sources = _string_list(pruning_info.get("retain_sources"))
    tofu_used = any(source.startswith(TOFU_SOURCE_PREFIX) for source in forget_sources + retain_sources)
    hub_base_model = base_model if base_model is not None and is_hub_repo_id(base_model) else None
    model_name = _model_name(repo_id, base_model)

    format_version = pruning_info.get("format_version")
    if isinstance(format_version, int) and format_version > SUPPORTED_FORMAT_VERSION:
        logger.warning(
            "pareto_pruning format_version %d is newer than this pareto-prune supports (%d); "
            "the model card may leave out new fields.",
            format_version,
            SUPPORTED_FORMAT_VERSION,
        )

    metrics = _metric_values(eval_results)
    card_data = ModelCardData(
        base_model=hub_base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,
        datasets=_dataset_ids(tofu_used, datasets) or None,
        tags=list(BASE_TAGS) + ([TOFU_TAG] if tofu_used else []),
        model_name=model_name,
        eval_results=_eval_results(metrics, forget_sources, tofu_used) or None,
    )

    layers = _layer_rows(pruning_info.get("pruned_per_layer"), report)
    total_pruned = sum(layer["pruned"] for layer in layers)
    total_neurons = _total_neurons(layers, report)
    options = pruning_info.get("options")
    card = ModelCard.from_template(
        card_data,
        template_path=str(find_template()),
        **_template_context(
            model_name=model_name,
            base_model=base_model,
            hub_base_model=hub_base_model,
            repo_id=repo_id,
            method=str(pruning_info.get("method") or "pareto_neuron_pruning"),
            strategy=_strategy(options, report),
            format_version=format_version,
            forget_sources=forget_sources,
            retain_sources=retain_sources,
            tofu_used=tofu_used,
            layers=layers,
            total_pruned=total_pruned,
            total_neurons=total_neurons,
            options=options,
            metrics=metrics,
            has_report=report is not None,
            license=license,
        ),
    )
    return ModelCard(_seal(str(card)))


def write_model_card(
    directory: str | Path,
    *,
    pruning_info: Mapping[str, Any] | None = None,
    report: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    eval_results: Mapping[str, Any] | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path | None:
    """Write README.md into a pruned-model directory and return its path.

    Arguments left as ``None`` are read from the directory: ``pruning_info`` from the
    ``pareto_pruning`` entry of config.json, ``report`` from pruning_report.json and
    ``eval_results`` from TOFU_SUMMARY.json (each when present), and ``base_model`` from
    ``pruning_info["base_model"]`` (when present). The card is then built by
    :func:`build_model_card`.

    An existing README.md is replaced only if it is an unedited card from this function.
    Any other README.md is kept, a warning is logged, and ``None`` is returned, unless
    ``overwrite`` is true.

    Raises:
        FileNotFoundError: if ``pruning_info`` is not given and the directory has no config.json.
        ValueError: if config.json has no ``pareto_pruning`` entry, if pruning_report.json or
            TOFU_SUMMARY.json is not a JSON object, or as :func:`build_model_card`.
    """
    directory = Path(directory)
    if pruning_info is None:
        pruning_info = read_pruning_info(directory)
    if report is None and (directory / REPORT_FILENAME).is_file():
        report = _read_json_object(directory / REPORT_FILENAME)
    if eval_results is None and (directory / EVAL_SUMMARY_FILENAME).is_file():
        eval_results = _read_json_object(directory / EVAL_SUMMARY_FILENAME)
    if base_model is None and isinstance(pruning_info.get("base_model"), str):
        base_model = pruning_info["base_model"]

    card_path = directory / CARD_FILENAME
    if card_path.exists() and not overwrite:
        existing = card_path.read_text(encoding="utf-8", errors="replace")
        if not is_generated_card(existing):
            logger.warning(
                "Keeping %s because it was not generated by pareto-prune or was edited since. "
                "To replace it with a generated card, delete it or call "
                "write_model_card(%r, overwrite=True).",
                card_path,
                str(directory),
            )
            return None

    card = build_model_card(
        pruning_info,
        report,
        base_model,
        eval_results=eval_results,
        license=license,
        datasets=datasets,
        repo_id=repo_id,
    )
    card.save(card_path)
    logger.debug("Wrote model card %s", card_path)
    return card_path


def read_pruning_info(directory: str | Path) -> dict[str, Any]:
    """Return the ``pareto_pruning`` entry of ``directory/config.json``.

    Raises:
        FileNotFoundError: if config.json does not exist.
        ValueError: if config.json is not a JSON object or has no ``pareto_pruning`` object.
    """
    config_path = Path(directory) / CONFIG_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found. Save the pruned model into {directory} first, so that its "
            f"config.json contains the '{PRUNING_CONFIG_KEY}' entry."
        )
    pruning_info = _read_json_object(config_path).get(PRUNING_CONFIG_KEY)
    if not isinstance(pruning_info, dict):
        raise ValueError(
            f"{config_path} has no '{PRUNING_CONFIG_KEY}' object, so {directory} is not a pareto-prune "
            "output. Prune the model with pareto-prune and save it with save_pretrained."
        )
    return pruning_info


def is_generated_card(text: str) -> bool:
    """Return whether ``text`` is a card written by this module and not edited since."""
    match = _MARKER_PATTERN.search(text)
    if match is None:
        return False
    body = text[: match.start()]
    return hashlib.sha256(body.encode("utf-8")).hexdigest() == match.group(1)


def is_hub_repo_id(value: str) -> bool:
    """Return whether ``value`` passes huggingface_hub's repo id check and is not an existing local path."""
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return not Path(value).expanduser().exists()


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} must contain a JSON object, got {type(value).__name__}.")
    return value


def _seal(content: str) -> str:
    """Append the marker comment with the SHA-256 of ``content`` (see :func:`is_generated_card`)."""
    body = content.rstrip("\n") + "\n"
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f"{body}\n{_MARKER_PREFIX}{digest} -->\n"


def _string_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def _model_name(repo_id: str | None, base_model: str | None) -> str:
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    if base_model:
        return f"{Path(base_model.rstrip('/')).name}-pareto-pruned"
    return "pareto-pruned-model"


def _dataset_ids(tofu_used: bool, extra: Sequence[str] | None) -> list[str]:
    ids = [TOFU_DATASET_ID] if tofu_used else []
    for dataset_id in extra or []:
        if dataset_id not in ids:
            ids.append(dataset_id)
    return ids


def _metric_values(eval_results: Mapping[str, Any] | None) -> dict[str, float]:
    """Return the numeric evaluation results as floats, in their given order, without ``None`` values."""
    metrics: dict[str, float] = {}
    for name, value in (eval_results or {}).items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"Evaluation result {name!r} must be a number, got {value!r} ({type(value).__name__})."
            )
        metrics[str(name)] = float(value)
    return metrics


def _eval_results(metrics: Mapping[str, float], forget_sources: list[str], tofu_used: bool) -> list[EvalResult]:
    if tofu_used:
        dataset_type, dataset_name = TOFU_DATASET_ID, "TOFU"
        # TOFU's Hub configs are named like the bundled splits (forget01, forget05, forget10).
        tofu_forget = [source[len(TOFU_SOURCE_PREFIX) :] for source in forget_sources if source.startswith(TOFU_SOURCE_PREFIX)]
        dataset_config = tofu_forget[0] if len(tofu_forget) == 1 else None
    else:
        dataset_type, dataset_name, dataset_config = "custom", "Custom question-answer data", None
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Unlearning",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_config=dataset_config,
            metric_type=name,
            metric_name=name,
            metric_value=value,
        )
        for name, value in metrics.items()
    ]


def _layer_rows(pruned_per_layer: Any, report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Return one row per MLP, in the order of ``pruned_per_layer`` and then of the report."""
    report_layers = report.get("layers") if report is not None else None
    if not isinstance(report_layers, Mapping):
        report_layers = {}
    if not isinstance(pruned_per_layer, Mapping):
        pruned_per_layer = {key: entry.get("pruned") for key, entry in report_layers.items() if isinstance(entry, Mapping)}
    if not pruned_per_layer:
        raise ValueError(
            "pruning_info has no 'pruned_per_layer' counts and the report has no 'layers', so the card "
            "cannot say which neurons were pruned. Pass the 'pareto_pruning' entry of the pruned model's config.json."
        )

    rows = []
    keys = list(pruned_per_layer) + [key for key in report_layers if key not in pruned_per_layer]
    # config.json stores keys sorted as strings (layers.10 before layers.2); order by layer number.
    keys.sort(key=lambda key: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)])
    for key in keys:
        entry = report_layers.get(key)
        entry = entry if isinstance(entry, Mapping) else {}
        pruned = pruned_per_layer.get(key, entry.get("pruned"))
        neurons = entry.get("neurons")
        fronts = entry.get("num_fronts")
        if fronts is None and isinstance(entry.get("front_sizes"), list):
            fronts = len(entry["front_sizes"])
        hypervolume = entry.get("hypervolume")
        rows.append(
            {
                "key": key,
                "pruned": int(pruned or 0),
                "neurons": neurons,
                "percent": _percent(int(pruned or 0), neurons),
                "budget": entry.get("budget"),
                "fronts": fronts,
                "hypervolume": f"{hypervolume:.4g}" if isinstance(hypervolume, numbers.Real) else None,
            }
        )
    return rows


def _total_neurons(layers: list[dict[str, Any]], report: Mapping[str, Any] | None) -> int | None:
    if report is not None and isinstance(report.get("total_neurons"), int):
        return report["total_neurons"]
    if layers and all(isinstance(layer["neurons"], int) for layer in layers):
        return sum(layer["neurons"] for layer in layers)
    return None


def _percent(part: int, whole: Any) -> str | None:
    if not isinstance(whole, int) or whole <= 0:
        return None
    return f"{100 * part / whole:.2f}%"


def _strategy(options: Any, report: Mapping[str, Any] | None) -> str | None:
    if isinstance(options, Mapping) and options.get("strategy"):
        return str(options["strategy"])
    if report is not None and report.get("strategy"):
        return str(report["strategy"])
    return None


def _table_cell(value: Any) -> str:
    """Format an option value as inline code for a Markdown table cell."""
    text = json.dumps(value, ensure_ascii=False)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _describe_source(source: str) -> str:
    if source.startswith(TOFU_SOURCE_PREFIX):
        return f"split `{source[len(TOFU_SOURCE_PREFIX):]}` of the TOFU benchmark (`{TOFU_DATASET_ID}`)"
    return "question-answer file supplied by the user"


def _template_context(
    *,
    model_name: str,
    base_model: str | None,
    hub_base_model: str | None,
    repo_id: str | None,
    method: str,
    strategy: str | None,
    format_version: Any,
    forget_sources: list[str],
    retain_sources: list[str],
    tofu_used: bool,
    layers: list[dict[str, Any]],
    total_pruned: int,
    total_neurons: int | None,
    options: Any,
    metrics: Mapping[str, float],
    has_report: bool,
    license: str | None,
) -> dict[str, Any]:
    """Return every variable that MODEL_CARD_TEMPLATE.md uses."""
    option_rows = []
    if isinstance(options, Mapping):
        option_rows = [{"name": str(name), "value": _table_cell(value)} for name, value in options.items()]
    return {
        "model_name": model_name,
        "base_model": base_model,
        "hub_base_model": hub_base_model,
        "load_target": repo_id or "path/to/pruned-model",
        "method": method,
        "strategy": strategy,
        "format_version": format_version,
        "forget_sources": [{"spec": source, "description": _describe_source(source)} for source in forget_sources],
        "retain_sources": [{"spec": source, "description": _describe_source(source)} for source in retain_sources],
        "tofu_used": tofu_used,
        "layers": layers,
        "has_report": has_report,
        "total_pruned": total_pruned,
        "total_neurons": total_neurons,
        "total_percent": _percent(total_pruned, total_neurons),
        "option_rows": option_rows,
        "metric_rows": [{"name": name, "value": f"{value:.4g}"} for name, value in metrics.items()],
        "license": license,
    }
