"""Load question-answer data, tokenize it into prompt and answer tokens, and batch it.

Data files are JSON Lines (one object per line) or a single JSON array of objects. The
TOFU splits ship with the package and load as ``"tofu:<split>"``, for example
``"tofu:forget10"``. See ``pareto_prune/data/tofu/SOURCE.md`` for their origin and licence.

Tokenization splits every sample into a prompt and the answer tokens that follow it.
A batch marks the positions whose next-token target is an answer token in
``Batch.answer_mask``, so activation scans and answer likelihoods count the same tokens.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "tofu:"
IGNORE_INDEX = -100
"""Label value that Hugging Face loss functions skip."""

_PLAIN_TEMPLATE_FIELDS = frozenset({"question", "system"})
# apply_chat_template arguments that tokenize_pairs sets itself.
_RESERVED_CHAT_TEMPLATE_KWARGS = frozenset(
    {"conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message", "return_dict"}
)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QAPair:
    """One question with its reference answer.

    ``source`` is the spec the pair was loaded from (``"tofu:forget10"`` or a file path).
    ``extra`` contains the record's other fields, such as TOFU's ``paraphrased_answer``,
    ``perturbed_answer`` or ``option1``. It takes part in ``==`` but not in ``hash()``,
    because its values may be lists. Treat it as read-only.
    """

    question: str
    answer: str
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Copy so that later changes to the caller's dict do not reach the frozen pair.
        object.__setattr__(self, "extra", dict(self.extra))


def _bundled_dir():
    return resources.files("pareto_prune").joinpath("data", "tofu")


def bundled_splits() -> list[str]:
    """Return the names of the bundled TOFU splits, sorted, for use as ``"tofu:<name>"``."""
    return sorted(
        entry.name[: -len(".json")]
        for entry in _bundled_dir().iterdir()
        if entry.name.endswith(".json") and entry.is_file()
    )


def _read_spec(spec: str | Path) -> tuple[str, str]:
    """Return ``(source name, file text)`` for a bundled split name or a file path."""
    if isinstance(spec, str) and spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX) :]
        available = bundled_splits()
        if name not in available:
            raise ValueError(
                f"Unknown bundled split {spec!r}. Available: "
                + ", ".join(BUNDLED_PREFIX + split for split in available)
                + "."
            )
        return spec, _bundled_dir().joinpath(name + ".json").read_text(encoding="utf-8")

    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"QA data file not found: {path}. Pass a .json or .jsonl file, "
            f"or a bundled split such as '{BUNDLED_PREFIX}forget10' (see bundled_splits())."
        )
    if not path.is_file():
        raise ValueError(f"QA data path {path} is not a file. Pass a .json or .jsonl file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 text ({error}). Save the file as UTF-8.") from error
    return str(spec), text


def _parse_records(name: str, text: str) -> list[tuple[str, Any]]:
    """Parse JSON Lines or a JSON array into ``(location, record)`` pairs in file order.

    The location is ``"line N"`` for JSON Lines and ``"record N"`` for a JSON array (both 1-based).
    """
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name}: invalid JSON array at line {error.lineno}, column {error.colno}: {error.msg}. "
                "A file that starts with '[' must be one JSON array of objects."
            ) from error
        if not isinstance(array, list):
            raise ValueError(f"{name}: expected a JSON array of objects.")
        return [(f"record {number}", record) for number, record in enumerate(array, start=1)]

    records = []
    # Split on "\n" only: str.splitlines() would also split at U+2028, which JSON allows inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name}: line {number}: invalid JSON ({error.msg} at column {error.colno}). "
                "Each non-blank line must contain one JSON object (JSON Lines). "
                "A pretty-printed file must instead be a single JSON array starting with '['."
            ) from error
        records.append((f"line {number}", record))
    return records


def _field_text(name: str, location: str, record: Mapping[str, Any], key: str, option: str) -> str:
    if key not in record:
        raise ValueError(
            f"{name}: {location}: missing field {key!r}. The record has fields {sorted(record)}. "
            f"Use {option} (the {option.lstrip('-').replace('-', '_')} argument) to name the field to read."
        )
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{name}: {location}: field {key!r} must be a string, got {type(value).__name__}: {value!r}.")
    if not value.strip():
        raise ValueError(f"{name}: {location}: field {key!r} is empty. Remove the record or fill in the text.")
    return value


def load_qa_pairs(
    spec: str | Path,
    question_key: str = "question",
    answer_key: str = "answer",
) -> list[QAPair]:
    """Load question-answer pairs from a bundled TOFU split or a JSON / JSON Lines file.

    Args:
        spec: ``"tofu:<split>"`` for a bundled split (see :func:`bundled_splits`), or the path
            of a file that contains either JSON Lines (one object per line, blank lines skipped)
            or one JSON array of objects. The format is chosen by the first non-blank
            character: ``[`` means a JSON array.
        question_key: Field that contains the question.
        answer_key: Field that contains the answer.

    Returns:
        The pairs in file order. Every other field of a record goes into ``QAPair.extra``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for an unknown bundled split, invalid JSON (naming the line), a record
            that is not an object, a missing, non-string or empty question or answer field,
            or a file without records.
    """
    if question_key == answer_key:
        raise ValueError(f"question_key and answer_key are both {question_key!r}. Set them to two different fields.")
    name, text = _read_spec(spec)

    pairs = []
    for location, record in _parse_records(name, text):
        if not isinstance(record, dict):
            raise ValueError(
                f"{name}: {location}: expected a JSON object with fields {question_key!r} and {answer_key!r}, "
                f"got {type(record).__name__}."
            )
        question = _field_text(name, location, record, question_key, "--question-key")
        answer = _field_text(name, location, record, answer_key, "--answer-key")
        extra = {key: value for key, value in record.items() if key not in (question_key, answer_key)}
        pairs.append(QAPair(question=question, answer=answer, source=name, extra=extra))

    if not pairs:
        raise ValueError(
            f"{name}: no records found. Expected JSON Lines or a JSON array of objects "
            f"with fields {question_key!r} and {answer_key!r}."
        )
    logger.info("Loaded %d QA pairs from %s.", len(pairs), name)
    return pairs


def _allocate_samples(sizes: Sequence[int], max_samples: int) -> list[int]:
    """Split ``max_samples`` over sources in proportion to ``sizes`` (largest remainder).

    Each source gets at least one sample when ``max_samples`` is at least the number of
    sources. Otherwise the largest sources get one each, earlier sources first on ties.
    Comparisons use integer arithmetic, so ties resolve the same way on every platform.
    """
    total = sum(sizes)
    count = len(sizes)
    if max_samples < count:
        largest = sorted(range(count), key=lambda i: -sizes[i])[:max_samples]
        return [1 if i in largest else 0 for i in range(count)]

    # quota_i = max_samples * sizes_i / total. Quotas are compared scaled by total, in integers.
    scaled_quota = [max_samples * size for size in sizes]
    allocation = [max(1, quota // total) for quota in scaled_quota]

    while sum(allocation) > max_samples:
        # Take back from the source whose allocation exceeds its quota the most.
        candidates = [i for i in range(count) if allocation[i] > 1]
        source = max(candidates, key=lambda i: (allocation[i] * total - scaled_quota[i], -i))
        allocation[source] -= 1
    while sum(allocation) < max_samples:
        # Give to the source whose quota exceeds its allocation the most.
        candidates = [i for i in range(count) if allocation[i] < sizes[i]]
        source = max(candidates, key=lambda i: (scaled_quota[i] - allocation[i] * total, -i))
        allocation[source] += 1
    return allocation


def load_qa_sources(
    specs: Sequence[str | Path] | str | Path,
    max_samples: int | None = None,
    seed: int = 0,
    question_key: str = "question",
    answer_key: str = "answer",
) -> list[QAPair]:
    """Load several sources with :func:`load_qa_pairs` and concatenate them in the given order.

    With ``max_samples`` set below the total, the cap is split over the sources in
    proportion to their sizes, with at least one pair per source where the cap allows.
    Each source is then sampled without replacement by ``numpy.random.default_rng(seed)``,
    and the kept pairs stay in their original order. The same arguments always give
    the same pairs.

    Args:
        specs: Bundled split names (``"tofu:<split>"``) or file paths. A single spec is accepted.
        max_samples: Maximum number of pairs returned, or ``None`` to keep all.
        seed: Seed for the sampling.
        question_key: Field that contains the question in every source.
        answer_key: Field that contains the answer in every source.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise ValueError("No QA data sources given. Pass at least one file path or 'tofu:<split>'.")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}.")

    sources = [load_qa_pairs(spec, question_key=question_key, answer_key=answer_key) for spec in specs]
    sizes = [len(pairs) for pairs in sources]
    if max_samples is None or max_samples >= sum(sizes):
        return [pair for pairs in sources for pair in pairs]

    allocation = _allocate_samples(sizes, max_samples)
    rng = np.random.default_rng(seed)
    merged = []
    for spec, pairs, keep in zip(specs, sources, allocation):
        chosen = np.sort(rng.choice(len(pairs), size=keep, replace=False))
        merged.extend(pairs[int(index)] for index in chosen)
        logger.info("Sampled %d of %d QA pairs from %s (seed %d).", keep, len(pairs), spec, seed)
    return merged


# ---------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------


@dataclass
class TextFormat:
    """How a question and its answer become model input.

    Attributes:
        system_prompt: System message for the chat template, or ``None`` for no system
            message. Some templates then insert their own default. The plain template
            uses it only through a ``{system}`` field.
        use_chat_template: ``True`` to use the tokenizer's chat template, ``False`` for
            ``plain_template``, ``None`` to use the chat template when the tokenizer has one.
        chat_template_kwargs: Extra variables passed to ``apply_chat_template``, for
            example ``{"enable_thinking": False}`` or ``{"date_string": "10 Apr 2025"}``.
        plain_template: Prompt for tokenizers without a chat template. It must contain
            ``{question}`` and may contain ``{system}``. Write literal braces as ``{{ }}``.
        answer_suffix: Text appended to the answer in the plain format. ``None`` means the
            tokenizer's ``eos_token``. The chat format ignores it, because the template
            writes its own end-of-turn.
    """

    system_prompt: str | None = "You are a helpful assistant."
    use_chat_template: bool | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    plain_template: str = "Question: {question}\nAnswer: "
    answer_suffix: str | None = None

    def __post_init__(self) -> None:
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt must be a string or None, got {type(self.system_prompt).__name__}.")
        if self.use_chat_template is not None and not isinstance(self.use_chat_template, bool):
            raise ValueError(f"use_chat_template must be True, False or None, got {self.use_chat_template!r}.")
        if self.answer_suffix is not None and not isinstance(self.answer_suffix, str):
            raise ValueError(f"answer_suffix must be a string or None, got {type(self.answer_suffix).__name__}.")

        if not isinstance(self.chat_template_kwargs, Mapping):
            raise ValueError(
                f"chat_template_kwargs must be a mapping, got {type(self.chat_template_kwargs).__name__}."
            )
        self.chat_template_kwargs = dict(self.chat_template_kwargs)
        bad_keys = [key for key in self.chat_template_kwargs if not isinstance(key, str)]
        if bad_keys:
            raise ValueError(f"chat_template_kwargs keys must be strings, got {bad_keys!r}.")
        reserved = sorted(_RESERVED_CHAT_TEMPLATE_KWARGS.intersection(self.chat_template_kwargs))
        if reserved:
            raise ValueError(
                f"chat_template_kwargs must not set {reserved}, because tokenize_pairs and prompt_ids set them. "
                "Remove these keys."
            )

        self._validate_plain_template()

    def _validate_plain_template(self) -> None:
        if not isinstance(self.plain_template, str):
            raise ValueError(f"plain_template must be a string, got {type(self.plain_template).__name__}.")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.plain_template) if name is not None}
        except ValueError as error:
            raise ValueError(
                f"plain_template {self.plain_template!r} is not a valid format string ({error}). "
                "Write literal braces as '{{' and '}}'."
            ) from error
        if "question" not in fields:
            raise ValueError(f"plain_template {self.plain_template!r} must contain the field '{{question}}'.")
        unknown = sorted(fields - _PLAIN_TEMPLATE_FIELDS)
        if unknown:
            raise ValueError(
                f"plain_template {self.plain_template!r} has unknown fields {unknown}. Only "
                "{question} and {system} are filled in. Write literal braces as '{{' and '}}'."
            )


@dataclass
class TokenizedSample:
    """Token ids of one prompt followed by its answer, whose tokens are ``input_ids[prompt_length:]``."""

    input_ids: list[int]
    prompt_length: int

    def __len__(self) -> int:
        return len(self.input_ids)


def _uses_chat_template(tokenizer: Any, text_format: TextFormat) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if text_format.use_chat_template is None:
        return has_template
    if text_format.use_chat_template and not has_template:
        raise ValueError(
            "TextFormat.use_chat_template is True but the tokenizer has no chat_template. "
            "Set use_chat_template=False (or None) to use plain_template, or load a tokenizer with a chat template."
        )
    return text_format.use_chat_template


def _chat_messages(question: str, text_format: TextFormat) -> list[dict[str, str]]:
    messages = []
    if text_format.system_prompt:
        messages.append({"role": "system", "content": text_format.system_prompt})
    messages.append({"role": "user", "content": question})
    return messages


def _apply_chat_template(tokenizer: Any, messages: list[dict[str, str]], text_format: TextFormat, **kwargs: Any):
    try:
        result = tokenizer.apply_chat_template(messages, **kwargs, **text_format.chat_template_kwargs)
    except jinja2.TemplateError as error:
        # Templates reject conversations they do not support (for example a system message)
        # through raise_exception(), which raises jinja2's TemplateError.
        raise ValueError(
            f"The tokenizer's chat template failed on {messages!r}: {error}. If the template has no "
            "system role, set TextFormat.system_prompt=None. Also check TextFormat.chat_template_kwargs."
        ) from error
    return result


def _chat_token_ids(tokenizer: Any, messages: list[dict[str, str]], text_format: TextFormat, **kwargs: Any) -> list[int]:
    result = _apply_chat_template(tokenizer, messages, text_format, tokenize=True, return_dict=False, **kwargs)
    # transformers 5 can return a BatchEncoding even with return_dict=False.
    if isinstance(result, Mapping):
        result = result["input_ids"]
    return [int(token) for token in result]


def _plain_prompt_text(question: str, text_format: TextFormat) -> str:
    return text_format.plain_template.format(question=question, system=text_format.system_prompt or "")


def _plain_answer_text(tokenizer: Any, answer: str, text_format: TextFormat) -> str:
    suffix = text_format.answer_suffix
    if suffix is None:
        suffix = tokenizer.eos_token
        if suffix is None:
            raise ValueError(
                "The tokenizer has no eos_token to end the answer with. "
                "Set TextFormat.answer_suffix (an empty string for no suffix)."
            )
    return answer + suffix


def prompt_ids(tokenizer: Any, question: str, text_format: TextFormat) -> list[int]:
    """Return the token ids of the prompt for ``question``, ready for greedy generation.

    They equal the first ``prompt_length`` ids that :func:`tokenize_pairs` produces for the same question.
    """
    if _uses_chat_template(tokenizer, text_format):
        messages = _chat_messages(question, text_format)
        return _chat_token_ids(tokenizer, messages, text_format, add_generation_prompt=True)
    return list(tokenizer(_plain_prompt_text(question, text_format))["input_ids"])


def _chat_answer_ids(
    tokenizer: Any, pair: QAPair, text_format: TextFormat, prompt: list[int]
) -> tuple[list[int], bool]:
    """Return the answer tokens that follow ``prompt``, and whether a fallback was needed.

    The answer tokens are everything the template renders after the generation prompt:
    the answer, the end-of-turn token and whatever the template writes after it
    (ChatML templates add a newline).
    """
    messages = _chat_messages(pair.question, text_format)
    conversation = messages + [{"role": "assistant", "content": pair.answer}]
    full = _chat_token_ids(tokenizer, conversation, text_format)
    if len(full) > len(prompt) and full[: len(prompt)] == prompt:
        return full[len(prompt) :], False

    # The token ids do not extend the prompt, for example because the template drops parts
    # of the prompt once an answer follows, or because BPE merges across the boundary.
    # Tokenize the rendered text after the prompt instead, which keeps the end-of-turn markup.
    prompt_text = _apply_chat_template(tokenizer, messages, text_format, tokenize=False, add_generation_prompt=True)
    full_text = _apply_chat_template(tokenizer, conversation, text_format, tokenize=False)
    if full_text.startswith(prompt_text) and len(full_text) > len(prompt_text):
        answer_text = full_text[len(prompt_text) :]
    else:
        if tokenizer.eos_token is None:
            raise ValueError(
                "The chat template's output with the answer does not start with the generation prompt, "
                "and the tokenizer has no eos_token to end the answer with. Use a different chat template "
                "or set TextFormat.use_chat_template=False."
            )
        answer_text = pair.answer + tokenizer.eos_token
    return list(tokenizer(answer_text, add_special_tokens=False)["input_ids"]), True


def tokenize_pairs(
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    max_length: int | None = None,
) -> list[TokenizedSample]:
    """Tokenize each pair into prompt ids followed by answer ids.

    Chat format: the prompt is the chat template applied to the optional system message
    and the question with ``add_generation_prompt=True``. The answer tokens are what the
    template renders after it for the full conversation, so they include the end-of-turn
    token. If the full conversation's ids do not start with the prompt ids, the text the
    template renders after the prompt is tokenized instead. If even the text differs, the
    answer followed by ``eos_token`` is used. One warning per call reports either case.

    Plain format: the prompt is ``tokenizer(plain_template.format(...))``, which adds BOS
    if the tokenizer does so by default. The answer is
    ``tokenizer(answer + answer_suffix, add_special_tokens=False)``, where a ``None``
    suffix means ``eos_token``. Tokenizing the two parts separately keeps the prompt an
    exact prefix.

    Args:
        tokenizer: A Hugging Face tokenizer.
        pairs: The pairs to tokenize.
        text_format: Prompt and answer format.
        max_length: If set, answers are cut so that no sample is longer. Prompts are never cut.

    Raises:
        ValueError: if a prompt leaves no room for an answer token within ``max_length``
            (naming the pair's index), or if the chat template fails.
    """
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer of at least 2 or None, got {max_length!r}.")
    use_chat = _uses_chat_template(tokenizer, text_format)

    samples = []
    fallback_indices = []
    truncated = 0
    for index, pair in enumerate(pairs):
        prompt = prompt_ids(tokenizer, pair.question, text_format)
        if use_chat:
            answer, used_fallback = _chat_answer_ids(tokenizer, pair, text_format, prompt)
            if used_fallback:
                fallback_indices.append(index)
        else:
            answer_text = _plain_answer_text(tokenizer, pair.answer, text_format)
            answer = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"])

        if max_length is not None:
            if len(prompt) >= max_length:
                raise ValueError(
                    f"Pair {index} has a prompt of {len(prompt)} tokens, which leaves no room for an answer "
                    f"within max_length={max_length}. Raise max_length or shorten the question "
                    f"({pair.question[:80]!r})."
                )
            if len(prompt) + len(answer) > max_length:
                answer = answer[: max_length - len(prompt)]
                truncated += 1
        samples.append(TokenizedSample(input_ids=prompt + answer, prompt_length=len(prompt)))

    if fallback_indices:
        logger.warning(
            "The chat template's tokens for %d of %d pairs (first: pair %d) do not start with the "
            "generation prompt's tokens, so their answer tokens were tokenized separately after the prompt.",
            len(fallback_indices),
            len(samples),
            fallback_indices[0],
        )
    if truncated:
        logger.warning("Cut the answers of %d of %d pairs to max_length=%d tokens.", truncated, len(samples), max_length)
    return samples


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


@dataclass
class Batch:
    """Right-padded token ids of several samples.

    Attributes:
        input_ids: LongTensor ``[B, T]``, padded with the caller's ``pad_token_id``.
        attention_mask: LongTensor ``[B, T]``, 1 on real tokens and 0 on padding.
        answer_mask: BoolTensor ``[B, T]``, True at position ``t`` when the token at
            ``t + 1`` is an answer token, i.e. ``prompt_length - 1 <= t <= length - 2``.
            These are the positions whose logits predict the answer.
        indices: For each row, the sample's position in the list given to
            :func:`length_grouped_batches`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    indices: list[int]

    def labels(self) -> torch.Tensor:
        """Return Hugging Face style labels: ``input_ids`` at answer tokens, ``IGNORE_INDEX`` (-100) elsewhere.

        ``labels[b, t]`` is set where ``answer_mask[b, t - 1]`` is True, so passing them as
        ``labels=`` to a causal LM (which shifts internally) scores exactly the answer tokens.
        """
        labels = torch.full_like(self.input_ids, IGNORE_INDEX)
        targets = self.answer_mask[:, :-1]
        labels[:, 1:][targets] = self.input_ids[:, 1:][targets]
        return labels

    def to(self, device: torch.device | str) -> Batch:
        """Return a copy with the tensors moved to ``device``."""
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            answer_mask=self.answer_mask.to(device),
            indices=list(self.indices),
        )


def length_grouped_batches(
    samples: Sequence[TokenizedSample],
    batch_size: int,
    pad_token_id: int,
) -> list[Batch]:
    """Group samples of similar length into right-padded batches.

    Samples are sorted by length, longest first, with ties kept in input order, and cut
    into batches of ``batch_size`` (the last may be smaller). Each batch is padded only to
    its own longest sample, so little compute goes to padding. The result depends only on
    the samples and the arguments.

    Args:
        samples: Output of :func:`tokenize_pairs`.
        batch_size: Maximum number of samples per batch.
        pad_token_id: Id written into padded positions. The attention mask hides them, so
            any valid id works. Use ``tokenizer.pad_token_id``, or ``tokenizer.eos_token_id``
            when the tokenizer has no pad token.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if pad_token_id is None or isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise ValueError(
            f"pad_token_id must be an integer token id, got {pad_token_id!r}. Pass tokenizer.pad_token_id, "
            "or tokenizer.eos_token_id when the tokenizer has no pad token."
        )
    for index, sample in enumerate(samples):
        if not 1 <= sample.prompt_length <= len(sample.input_ids):
            raise ValueError(
                f"Sample {index} has prompt_length={sample.prompt_length} but {len(sample.input_ids)} tokens. "
                "The prompt must have at least one token and fit in the sample."
            )

    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    batches = []
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(samples[i].input_ids) for i in indices)
        input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        answer_mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, sample_index in enumerate(indices):
            sample = samples[sample_index]
            length = len(sample.input_ids)
            input_ids[row, :length] = torch.tensor(sample.input_ids, dtype=torch.long)
            attention_mask[row, :length] = 1
            answer_mask[row, sample.prompt_length - 1 : length - 1] = True
        batches.append(Batch(input_ids=input_ids, attention_mask=attention_mask, answer_mask=answer_mask, indices=indices))
    return batches


def padding_efficiency(batches: Sequence[Batch]) -> float:
    """Return the fraction of processed positions that hold real tokens (1.0 means no padding)."""
    positions = sum(batch.attention_mask.numel() for batch in batches)
    if positions == 0:
        raise ValueError("padding_efficiency needs at least one non-empty batch.")
    real_tokens = sum(int(batch.attention_mask.sum()) for batch in batches)
    return real_tokens / positions
