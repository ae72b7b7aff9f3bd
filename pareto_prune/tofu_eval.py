"""TOFU evaluation with Open-Unlearning's metric definitions and log layout.

The metrics and their names follow Open-Unlearning's TOFU benchmark
(github.com/locuslab/open-unlearning: ``configs/eval/tofu.yaml``, the metric configs in
``configs/eval/tofu_metrics/`` and the handlers in ``src/evals/metrics/``):

- ``forget_Q_A_Prob``: mean over forget items of ``exp(-mean answer-token NLL)``.
- ``forget_Q_A_ROUGE``: mean ROUGE-L recall of greedy generations (200 new tokens by default).
- ``forget_truth_ratio``: per item ``tr = exp(-mean_j L(perturbed_j)) / (exp(-L(paraphrased)) + 1e-10)``
  where ``L`` is the mean answer-token NLL, so the perturbed side is the geometric mean of
  the perturbed answers' probabilities. Aggregated with Open-Unlearning's
  ``closer_to_1_better``: ``mean(min(tr, 1 / (tr + 1e-10)))``.
- ``forget_quality``: p-value of the two-sample Kolmogorov-Smirnov test
  (``scipy.stats.ks_2samp``) between this model's per-item forget truth ratios and those
  stored in a retain model's ``TOFU_EVAL.json``.
- ``model_utility``: harmonic mean (``scipy.stats.hmean``) of nine values: answer
  probability, ROUGE-L recall and truth ratio on ``retain_perturbed``, ``real_authors_perturbed``
  and ``world_facts_perturbed``. On the retain split the probability is ``exp(-L(answer))``
  and the truth ratio compares perturbed with paraphrased answers. On real authors and
  world facts the probability is normalised over the options,
  ``p(answer) / (p(answer) + sum_j p(perturbed_j) + 1e-10)``, and the truth ratio compares
  perturbed answers with the answer. All three truth ratios use the ``true_better``
  aggregation, ``mean(max(0, 1 - tr))``.
- ``extraction_strength``: see :func:`pareto_prune.metrics.extraction_strengths`.

``privleak`` is not computed, because it needs the holdout split, which is not bundled.

NOTE: Open-Unlearning appends the EOS token to the answer tokens when the chat template's
last token is not EOS (ChatML templates such as SmolLM2's end with a newline after
``<|im_end|>``). The answer tokens here stop at that newline, so for such templates the
probabilities average over one token fewer than Open-Unlearning's. Its collator also sets
``attention_mask = input_ids != pad_token_id``, so when the pad token is the end-of-turn
token (SmolLM2-135M-Instruct: both are ``<|im_end|>``), every end-of-turn token is hidden
from attention in its scoring and generation; here only padding is masked.
``docs/benchmarks.md`` measures both effects against Open-Unlearning's own evaluator.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from torch import nn

from pareto_prune.data import QAPair, TextFormat, load_qa_pairs
from pareto_prune.metrics import answer_losses, greedy_generations, rouge_scores, score_answers

logger = logging.getLogger(__name__)

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_SPLIT = "retain_perturbed"
REAL_AUTHORS_SPLIT = "real_authors_perturbed"
WORLD_FACTS_SPLIT = "world_facts_perturbed"

EVAL_FILENAME = "TOFU_EVAL.json"
SUMMARY_FILENAME = "TOFU_SUMMARY.json"
CONFIG_KEY = "eval_config"
"""Key of the run settings in ``TOFU_EVAL.json``. Open-Unlearning ignores keys that are not metric names."""

SUMMARY_METRICS = (
    "extraction_strength",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_quality",
    "forget_truth_ratio",
    "model_utility",
)
MODEL_UTILITY_COMPONENTS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)

# Open-Unlearning adds this to denominators (src/evals/metrics/memorization.py).
_EPSILON = 1e-10


# ---------------------------------------------------------------------------
# Metric arithmetic (pure numpy)
# ---------------------------------------------------------------------------


def _per_item_mean(values: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    return np.array([np.mean(item) for item in values], dtype=np.float64)


def truth_ratios(correct_losses: np.ndarray, perturbed_losses: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Return the per-item truth ratio ``exp(-mean_j perturbed_losses[i][j]) / (exp(-correct_losses[i]) + 1e-10)``.

    ``correct_losses`` are mean answer-token NLLs of the paraphrased answer (forget and
    retain splits) or of the answer (real authors, world facts). ``perturbed_losses[i]``
    holds the mean NLLs of item ``i``'s perturbed answers. This is Open-Unlearning's
    ``truth_ratio`` handler with its default TOFU definition, false over true.
    """
    correct_losses = np.asarray(correct_losses, dtype=np.float64)
    if len(perturbed_losses) != len(correct_losses):
        raise ValueError(
            f"Got {len(correct_losses)} correct losses but {len(perturbed_losses)} rows of perturbed losses. "
            "Pass one row per item."
        )
    perturbed_probability = np.exp(-_per_item_mean(perturbed_losses))
    correct_probability = np.exp(-correct_losses)
    return perturbed_probability / (correct_probability + _EPSILON)


def truth_ratio_closer_to_1(ratios: np.ndarray) -> float:
    """Aggregate truth ratios as ``mean(min(tr, 1 / (tr + 1e-10)))``, Open-Unlearning's ``closer_to_1_better``.

    It is 1 when perturbed and paraphrased answers are equally likely, the target after forgetting.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(ratios, 1.0 / (ratios + _EPSILON))))


def truth_ratio_true_better(ratios: np.ndarray) -> float:
    """Aggregate truth ratios as ``mean(max(0, 1 - tr))``, Open-Unlearning's ``true_better``.

    It grows as the correct answer becomes more likely than the perturbed ones.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - ratios)))


def normalised_probabilities(
    correct_probabilities: np.ndarray, perturbed_probabilities: Sequence[Sequence[float]] | np.ndarray
) -> np.ndarray:
    """Return ``p_correct / (p_correct + sum_j p_perturbed_j + 1e-10)`` per item.

    This is Open-Unlearning's ``probability_w_options``, used for ``ra_Q_A_Prob_normalised``
    and ``wf_Q_A_Prob_normalised``. Each ``p`` is a length-normalised answer probability.
    """
    correct_probabilities = np.asarray(correct_probabilities, dtype=np.float64)
    if len(perturbed_probabilities) != len(correct_probabilities):
        raise ValueError(
            f"Got {len(correct_probabilities)} correct probabilities but {len(perturbed_probabilities)} rows of "
            "perturbed probabilities. Pass one row per item."
        )
    perturbed_sums = np.array([np.sum(item) for item in perturbed_probabilities], dtype=np.float64)
    return correct_probabilities / (correct_probabilities + perturbed_sums + _EPSILON)


def ks_test_pvalue(model_truth_ratios: np.ndarray, retain_truth_ratios: np.ndarray) -> float:
    """Return the p-value of ``scipy.stats.ks_2samp(model_truth_ratios, retain_truth_ratios)``.

    This is TOFU's forget quality: high values mean the two truth-ratio distributions are
    indistinguishable. It uses scipy's default ``method="auto"``, the exact distribution
    for small samples.
    """
    return float(scipy.stats.ks_2samp(model_truth_ratios, retain_truth_ratios).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Return ``scipy.stats.hmean(values)``, which is 0 when any value is 0."""
    return float(scipy.stats.hmean(np.asarray(values, dtype=np.float64)))


def model_utility(logs: dict[str, dict[str, Any]]) -> float:
    """Return the harmonic mean of the aggregate values of the nine :data:`MODEL_UTILITY_COMPONENTS` in ``logs``."""
    missing = [name for name in MODEL_UTILITY_COMPONENTS if logs.get(name, {}).get("agg_value") is None]
    if missing:
        raise ValueError(f"Model utility needs the aggregate values of {missing}, which are missing.")
    return harmonic_mean([logs[name]["agg_value"] for name in MODEL_UTILITY_COMPONENTS])


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class TofuEvalResult:
    """Results of :func:`evaluate_tofu`.

    Attributes:
        logs: Every computed metric in the layout of Open-Unlearning's ``TOFU_EVAL.json``:
            ``{name: {"agg_value": float | None, "value_by_index": {"<index>": {...}}}}``.
            Indices are item positions in the bundled split, as strings.
        config: Settings of the run (split, sample cap, generation length, text format).
    """

    logs: dict[str, dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        """Aggregate value of each headline metric, keyed by Open-Unlearning's names. Metrics without a value are left out."""
        summary = {}
        for name in SUMMARY_METRICS:
            value = self.logs.get(name, {}).get("agg_value")
            if value is not None:
                summary[name] = float(value)
        return summary

    def item_values(self, metric: str) -> np.ndarray:
        """Return one value per item of a per-item metric, in index order.

        The value is ``prob`` for probability metrics, ``rougeL_recall`` for ROUGE metrics
        and ``score`` otherwise. Perturbed-answer metrics give one row per item.
        """
        if metric not in self.logs:
            raise KeyError(f"No metric {metric!r} in the results. Available: {sorted(self.logs)}.")
        by_index = self.logs[metric].get("value_by_index")
        if by_index is None:
            raise ValueError(f"Metric {metric!r} has only an aggregate value, no per-item values.")
        values = []
        for index in sorted(by_index, key=int):
            entry = by_index[index]
            for key in ("prob", "rougeL_recall", "score"):
                if key in entry:
                    values.append(entry[key])
                    break
        return np.array(values, dtype=np.float64)

    def save(self, output_dir: str | Path) -> tuple[Path, Path]:
        """Write ``TOFU_EVAL.json`` (all metrics and the run settings) and ``TOFU_SUMMARY.json`` to ``output_dir``.

        Returns the two paths. The directory is created if needed and existing files are replaced.
        """
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        eval_path = output_dir / EVAL_FILENAME
        summary_path = output_dir / SUMMARY_FILENAME
        logs = dict(sorted(self.logs.items()))
        logs[CONFIG_KEY] = self.config
        eval_path.write_text(json.dumps(_to_json(logs), indent=4) + "\n", encoding="utf-8")
        summary_path.write_text(json.dumps(_to_json(self.summary), indent=4) + "\n", encoding="utf-8")
        return eval_path, summary_path

    @classmethod
    def load(cls, path: str | Path) -> TofuEvalResult:
        """Read a ``TOFU_EVAL.json`` written by :meth:`save` or by Open-Unlearning (a file or its directory)."""
        logs = _read_eval_log(path)
        config = logs.pop(CONFIG_KEY, {})
        return cls(logs=logs, config=config)


def _to_json(value: Any) -> Any:
    """Convert numpy scalars and arrays to Python types, and non-finite floats to ``None``."""
    if isinstance(value, dict):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_to_json(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _eval_log_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / EVAL_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"TOFU evaluation log not found: {path}. Pass the {EVAL_FILENAME} written by `pareto-prune eval` "
            "(or by Open-Unlearning) for the retain model, or the directory that contains it."
        )
    return path


def _read_eval_log(path: str | Path) -> dict[str, Any]:
    path = _eval_log_path(path)
    try:
        logs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}). Pass a {EVAL_FILENAME} file.") from error
    if not isinstance(logs, dict):
        raise ValueError(f"{path} must contain a JSON object keyed by metric name, got {type(logs).__name__}.")
    return logs


def load_retain_truth_ratios(path: str | Path, forget_split: str, num_items: int) -> np.ndarray:
    """Read the per-item ``forget_truth_ratio`` scores of items ``0 .. num_items - 1`` from a retain model's log.

    Raises:
        FileNotFoundError: if the log does not exist.
        ValueError: if the log has no per-item ``forget_truth_ratio``, was made on another
            forget split, or lacks some of the items.
    """
    path = _eval_log_path(path)
    logs = _read_eval_log(path)
    recorded_split = logs.get(CONFIG_KEY, {}).get("forget_split")
    if recorded_split is None:
        logger.info("%s does not record its forget split, so it is assumed to be %s.", path, forget_split)
    elif recorded_split != forget_split:
        raise ValueError(
            f"The retain model log {path} was evaluated on {recorded_split}, but this evaluation uses {forget_split}. "
            f"Evaluate the retain model with --forget-split {forget_split}."
        )

    by_index = logs.get("forget_truth_ratio", {}).get("value_by_index")
    if not by_index:
        raise ValueError(
            f"{path} has no per-item forget_truth_ratio values (forget_truth_ratio.value_by_index), "
            "which forget_quality compares against. Pass a full TOFU evaluation log of the retain model."
        )
    missing = [index for index in range(num_items) if str(index) not in by_index]
    if missing:
        raise ValueError(
            f"{path} has forget_truth_ratio values for {len(by_index)} items but this evaluation covers items "
            f"0..{num_items - 1}, and the first missing index is {missing[0]}. Evaluate the retain model with the same "
            "or a larger --max-samples."
        )
    if len(by_index) > num_items:
        logger.info("Using the first %d of %d retain-model truth ratios in %s.", num_items, len(by_index), path)
    return np.array([by_index[str(index)]["score"] for index in range(num_items)], dtype=np.float64)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def _normalise_forget_split(forget_split: str) -> str:
    name = forget_split.removeprefix("tofu:").removesuffix("_perturbed")
    if name not in FORGET_SPLITS:
        raise ValueError(f"Unknown forget split {forget_split!r}. Choose one of {', '.join(FORGET_SPLITS)}.")
    return name


def _load_split(split: str, max_samples: int | None, needs_paraphrase: bool) -> list[QAPair]:
    """Load the first ``max_samples`` pairs of a bundled perturbed split and check its extra fields."""
    pairs = load_qa_pairs(f"tofu:{split}")
    if max_samples is not None:
        pairs = pairs[:max_samples]
    required = ["perturbed_answer"] + (["paraphrased_answer"] if needs_paraphrase else [])
    for index, pair in enumerate(pairs):
        for key in required:
            if key not in pair.extra:
                raise ValueError(f"tofu:{split} item {index} has no {key!r} field, which the TOFU metrics need.")
        perturbed = pair.extra["perturbed_answer"]
        if not isinstance(perturbed, list) or not perturbed or not all(isinstance(text, str) for text in perturbed):
            raise ValueError(f"tofu:{split} item {index}: perturbed_answer must be a non-empty list of strings.")
    return pairs


def _perturbed_losses(
    model: nn.Module, tokenizer: Any, pairs: Sequence[QAPair], text_format: TextFormat, batch_size: int
) -> list[list[float]]:
    """Return the mean answer-token NLL of every perturbed answer, one list per item."""
    owners = []
    flat_pairs = []
    for item_index, pair in enumerate(pairs):
        for perturbed in pair.extra["perturbed_answer"]:
            owners.append(item_index)
            flat_pairs.append(QAPair(question=pair.question, answer=perturbed, source=pair.source))
    # One call for all perturbed answers lets length grouping pack them across items.
    flat_losses = answer_losses(model, tokenizer, flat_pairs, text_format, batch_size)
    per_item: list[list[float]] = [[] for _ in pairs]
    for owner, loss in zip(owners, flat_losses):
        per_item[owner].append(float(loss))
    return per_item


def _probability_log(losses: np.ndarray) -> dict[str, Any]:
    probabilities = np.exp(-losses)
    return {
        "agg_value": float(np.mean(probabilities)),
        "value_by_index": {
            str(index): {"prob": float(probability), "avg_loss": float(loss)}
            for index, (probability, loss) in enumerate(zip(probabilities, losses))
        },
    }


def _perturbed_probability_log(per_item_losses: list[list[float]]) -> dict[str, Any]:
    # Open-Unlearning averages each item's perturbed probabilities, then the items.
    per_item_probabilities = [np.exp(-np.asarray(losses)) for losses in per_item_losses]
    return {
        "agg_value": float(np.mean([np.mean(probabilities) for probabilities in per_item_probabilities])),
        "value_by_index": {
            str(index): {"prob": probabilities.tolist(), "avg_loss": list(losses)}
            for index, (probabilities, losses) in enumerate(zip(per_item_probabilities, per_item_losses))
        },
    }


def _score_log(scores: np.ndarray, aggregate: float, key: str = "score") -> dict[str, Any]:
    return {
        "agg_value": float(aggregate),
        "value_by_index": {str(index): {key: float(score)} for index, score in enumerate(scores)},
    }


def _rouge_log(pairs: Sequence[QAPair], generations: list[str]) -> dict[str, Any]:
    references = [pair.answer for pair in pairs]
    scores = rouge_scores(generations, references)
    by_index = {}
    for index, (pair, generation, score) in enumerate(zip(pairs, generations, scores)):
        # Open-Unlearning stores the decoded prompt as "input", but the question is more readable.
        by_index[str(index)] = {**score, "input": pair.question, "ground_truth": pair.answer, "generation": generation}
    return {"agg_value": float(np.mean([score["rougeL_recall"] for score in scores])), "value_by_index": by_index}


def _evaluate_split(
    prefix: str,
    split: str,
    model: nn.Module,
    tokenizer: Any,
    text_format: TextFormat,
    max_samples: int | None,
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, dict[str, Any]]:
    """Compute one split's probability, ROUGE and truth-ratio logs under Open-Unlearning's names.

    ``prefix`` is ``forget``, ``retain``, ``ra`` or ``wf``. Splits with paraphrased answers
    (forget, retain) compare perturbed answers with the paraphrase, the others with the answer.
    """
    has_paraphrase = prefix in ("forget", "retain")
    pairs = _load_split(split, max_samples, needs_paraphrase=has_paraphrase)
    logger.info("Evaluating tofu:%s (%d items).", split, len(pairs))
    logs: dict[str, dict[str, Any]] = {}

    answer_scores = score_answers(model, tokenizer, pairs, text_format, batch_size)
    logs[f"{prefix}_Q_A_Prob"] = _probability_log(answer_scores.losses)
    if prefix == "forget":
        logs["extraction_strength"] = _score_log(
            answer_scores.extraction_strengths, np.mean(answer_scores.extraction_strengths)
        )

    perturbed_losses = _perturbed_losses(model, tokenizer, pairs, text_format, batch_size)
    logs[f"{prefix}_Q_A_PERT_Prob"] = _perturbed_probability_log(perturbed_losses)

    if has_paraphrase:
        paraphrases = [pair.extra["paraphrased_answer"] for pair in pairs]
        correct_losses = answer_losses(model, tokenizer, pairs, text_format, batch_size, answers=paraphrases)
        logs[f"{prefix}_Q_A_PARA_Prob"] = _probability_log(correct_losses)
    else:
        correct_losses = answer_scores.losses
        normalised = normalised_probabilities(np.exp(-correct_losses), [np.exp(-np.asarray(row)) for row in perturbed_losses])
        # Open-Unlearning's probability_w_options stores per-item values under "prob".
        logs[f"{prefix}_Q_A_Prob_normalised"] = _score_log(normalised, np.mean(normalised), key="prob")

    ratios = truth_ratios(correct_losses, perturbed_losses)
    if prefix == "forget":
        logs["forget_truth_ratio"] = _score_log(ratios, truth_ratio_closer_to_1(ratios))
    else:
        logs[f"{prefix}_Truth_Ratio"] = _score_log(ratios, truth_ratio_true_better(ratios))

    generations = greedy_generations(model, tokenizer, pairs, text_format, batch_size, max_new_tokens)
    logs[f"{prefix}_Q_A_ROUGE"] = _rouge_log(pairs, generations)
    return logs


def evaluate_tofu(
    model: nn.Module,
    tokenizer: Any,
    text_format: TextFormat,
    forget_split: str = "forget10",
    retain_model_log: str | Path | None = None,
    max_samples: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 200,
    utility_max_samples: int | None = None,
) -> TofuEvalResult:
    """Run the TOFU evaluation on the bundled splits and return all metrics.

    Args:
        model: Causal LM with a Hugging Face ``generate`` method.
        tokenizer: Its tokenizer.
        text_format: Prompt format, the same one the model was trained or pruned with.
        forget_split: ``forget01``, ``forget05`` or ``forget10``. Its ``_perturbed``
            version is evaluated, as in Open-Unlearning.
        retain_model_log: ``TOFU_EVAL.json`` of the retain model (trained without the forget
            split), or its directory, evaluated on the same forget split with at least as many
            items. Needed for ``forget_quality``. Without it that metric is left out and a
            warning is logged.
        max_samples: Evaluate only the first ``max_samples`` items of each split. The same
            cap selects the same items for every model, so forget_quality compares like with like.
        batch_size: Samples per forward pass and per generation batch.
        max_new_tokens: Generation length for the ROUGE metrics (Open-Unlearning uses 200).
        utility_max_samples: Item cap for the retain, real-authors and world-facts splits, if
            it should differ from ``max_samples`` (for example a quick sweep that needs many
            forget items for the KS test but fewer for utility). ``None``: same as ``max_samples``.

    Raises:
        ValueError: for an unknown forget split, a non-positive ``max_samples`` or a retain
            model log that does not match (see :func:`load_retain_truth_ratios`).
        FileNotFoundError: if ``retain_model_log`` does not exist.
    """
    forget_split = _normalise_forget_split(forget_split)
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}.")
    forget_data_split = f"{forget_split}_perturbed"

    # Read the retain log first, so that a wrong path fails before the long evaluation.
    retain_ratios = None
    if retain_model_log is not None:
        num_forget_items = len(_load_split(forget_data_split, max_samples, needs_paraphrase=True))
        retain_ratios = load_retain_truth_ratios(retain_model_log, forget_split, num_forget_items)

    logs: dict[str, dict[str, Any]] = {}
    splits = (
        ("forget", forget_data_split),
        ("retain", RETAIN_SPLIT),
        ("ra", REAL_AUTHORS_SPLIT),
        ("wf", WORLD_FACTS_SPLIT),
    )
    for prefix, split in splits:
        cap = max_samples if prefix == "forget" or utility_max_samples is None else utility_max_samples
        logs.update(_evaluate_split(prefix, split, model, tokenizer, text_format, cap, batch_size, max_new_tokens))

    if retain_ratios is None:
        logger.warning("forget_quality is not computed: no retain model log was given (retain_model_log).")
        logs["forget_quality"] = {"agg_value": None}
    else:
        model_ratios = np.array(
            [logs["forget_truth_ratio"]["value_by_index"][str(index)]["score"] for index in range(len(retain_ratios))]
        )
        logs["forget_quality"] = {"agg_value": ks_test_pvalue(model_ratios, retain_ratios)}

    logs["model_utility"] = {"agg_value": model_utility(logs)}

    config = {
        "forget_split": forget_split,
        "max_samples": max_samples,
        "utility_max_samples": utility_max_samples,
        "max_new_tokens": max_new_tokens,
        "retain_model_log": str(retain_model_log) if retain_model_log is not None else None,
        "text_format": {
            "system_prompt": text_format.system_prompt,
            "use_chat_template": text_format.use_chat_template,
            "chat_template_kwargs": text_format.chat_template_kwargs,
            "plain_template": text_format.plain_template,
            "answer_suffix": text_format.answer_suffix,
        },
    }
    result = TofuEvalResult(logs=logs, config=config)
    logger.debug("TOFU summary: %s", result.summary)
    return result
