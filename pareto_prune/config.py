"""Options of the Pareto neuron-pruning method, as one validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pareto_prune.data import TextFormat
from pareto_prune.scan import TOKEN_SCOPES
from pareto_prune.scores import NORMALIZATIONS
from pareto_prune.statistics import STATISTIC_NAMES

STRATEGIES = ("hypervolume_budget", "front_past_knee", "activation_ratio", "random")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_PLAIN_TEMPLATE = "Question: {question}\nAnswer: "


@dataclass
class PruningConfig:
    """Every option that decides which neurons are pruned.

    Text format (must match what the model was fine-tuned on):

    Attributes:
        system_prompt: System message put before each question when the chat template is
            used; ``None`` for no system message. Default ``"You are a helpful assistant."``,
            as Open-Unlearning uses for Llama-3 Instruct models.
        use_chat_template: ``True`` to format with the tokenizer's chat template, ``False``
            for ``plain_template``, ``None`` (default) to use the chat template when the
            tokenizer has one.
        chat_template_kwargs: Extra keyword arguments for ``apply_chat_template``, for
            example ``{"date_string": "10 Apr 2025"}`` so the Llama-3 template does not write
            today's date into every prompt. Default empty.
        plain_template: Prompt for tokenizers without a chat template; must contain
            ``{question}``. The answer and the end-of-sequence token follow it.
            Default ``"Question: {question}\\nAnswer: "``.
        answer_suffix: Text after the answer in the plain format; ``None`` (default) for the
            tokenizer's end-of-sequence token. The chat template writes its own end-of-turn.
        max_length: Maximum tokens per sample; longer answers are cut. Default 512.

    Statistics:
        token_scope: ``"answer"`` (default) counts positions that predict answer tokens;
            ``"all"`` counts every non-padding token.
        statistic: Per-neuron importance on each set: ``"mean_abs"`` (default, mean |a|),
            ``"rms"``, ``"mean"`` or ``"mean_positive"`` (mean of max(a, 0)).
        normalization: How R and F are put on one scale for all layers:
            ``"global_quantile"`` (default) or ``"global_max"``; see
            :func:`pareto_prune.scores.layer_scores`.

    Selection:
        strategy: ``"hypervolume_budget"`` (default): a global budget shared between layers
            in proportion to their first front's hypervolume, filled in each layer by front
            rank and then by distance to the front's knee. ``"front_past_knee"``: prune the
            first-front neurons whose F is at or beyond the knee's, in every layer.
            ``"activation_ratio"`` and ``"random"`` are baselines: the top ``budget`` of
            neurons by F_raw / R_raw across all layers (selective pruning, Pochinkov and
            Schoots 2024), and uniformly random neurons.
        budget: Fraction of all MLP neurons to prune, in (0, 1). Default 0.02, the largest
            budget in the 1% to 3% sweep on the SmolLM2 TOFU testbed that kept model utility
            above 90% of the unpruned model's (``docs/benchmarks.md``).
            ``front_past_knee`` ignores it: that rule prunes as many neurons as it selects,
            within ``max_layer_fraction`` per layer.
        max_layer_fraction: Upper bound on the fraction of one layer's neurons that may be
            pruned, in (0, 1]. Default 0.1.
        max_fronts: Number of fronts to rank per layer; neurons past it share the last rank.
            ``None`` (default) ranks all fronts.
        rounds: Scan-and-prune rounds. With k > 1, each round prunes another 1/k of the
            budget and the next round scans the pruned model again. Default 1.
        seed: Seed for the ``random`` strategy and for sampling the data. Default 0.
    """

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    use_chat_template: bool | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    plain_template: str = DEFAULT_PLAIN_TEMPLATE
    answer_suffix: str | None = None
    max_length: int = 512

    token_scope: str = "answer"
    statistic: str = "mean_abs"
    normalization: str = "global_quantile"

    strategy: str = "hypervolume_budget"
    budget: float = 0.02
    max_layer_fraction: float = 0.1
    max_fronts: int | None = None
    rounds: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("token_scope", self.token_scope, TOKEN_SCOPES)
        _check_choice("statistic", self.statistic, STATISTIC_NAMES)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        if not 0.0 < self.budget < 1.0:
            raise ValueError(f"budget is a fraction of all MLP neurons and must be in (0, 1), got {self.budget}.")
        if not 0.0 < self.max_layer_fraction <= 1.0:
            raise ValueError(f"max_layer_fraction must be in (0, 1], got {self.max_layer_fraction}.")
        if self.max_fronts is not None and self.max_fronts < 1:
            raise ValueError(f"max_fronts must be at least 1 or None, got {self.max_fronts}.")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}.")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}.")
        self.text_format()  # validates the text-format options

    def text_format(self) -> TextFormat:
        """Return the text-format options as a :class:`pareto_prune.data.TextFormat`."""
        return TextFormat(
            system_prompt=self.system_prompt,
            use_chat_template=self.use_chat_template,
            chat_template_kwargs=dict(self.chat_template_kwargs),
            plain_template=self.plain_template,
            answer_suffix=self.answer_suffix,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        """Names of all options."""
        return {f.name for f in dataclasses.fields(cls)}


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
