"""Answer likelihood, greedy generation and ROUGE metrics for any causal language model.

The functions take a causal LM ``nn.Module`` whose forward accepts ``input_ids`` and
``attention_mask`` and returns an object with ``.logits`` (any Hugging Face
``*ForCausalLM``, with or without a PEFT wrapper), a Hugging Face tokenizer, and the
:class:`~pareto_prune.data.TextFormat` that turns a question into a prompt.

Likelihoods score the answer tokens of :func:`~pareto_prune.data.tokenize_pairs`: the
answer followed by the end-of-turn markup of the chat template, or by
``TextFormat.answer_suffix`` in the plain format. Samples are batched by
:func:`~pareto_prune.data.length_grouped_batches` with right padding, and the loss of each
sample is a sum of per-token cross entropies over its own answer positions, so padding
never enters a loss and results do not depend on the batch a sample lands in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from torch import nn
from tqdm.auto import tqdm

from pareto_prune.data import (
    IGNORE_INDEX,
    QAPair,
    TextFormat,
    length_grouped_batches,
    prompt_ids,
    tokenize_pairs,
)

logger = logging.getLogger(__name__)


@dataclass
class AnswerScores:
    """Per-item scores of the answer tokens, in the order of the input pairs.

    Attributes:
        losses: Mean negative log-likelihood (nats per token) of each item's answer tokens.
        extraction_strengths: Extraction strength of each item, see :func:`extraction_strengths`.
        num_tokens: Number of answer tokens of each item.
    """

    losses: np.ndarray
    extraction_strengths: np.ndarray
    num_tokens: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """Length-normalised answer probability ``exp(-loss)`` of each item."""
        return np.exp(-self.losses)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _pad_token_id(tokenizer: Any) -> int:
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id
    if pad_token_id is None:
        raise ValueError(
            "The tokenizer has neither a pad token nor an eos token, so batches cannot be padded. "
            "Set tokenizer.pad_token to any token. Padded positions are masked out."
        )
    return int(pad_token_id)


def _with_answers(pairs: Sequence[QAPair], answers: Sequence[str] | None) -> list[QAPair]:
    if answers is None:
        return list(pairs)
    if isinstance(answers, str):
        raise ValueError("answers must be a sequence of strings, one per pair, not a single string.")
    if len(answers) != len(pairs):
        raise ValueError(f"answers has {len(answers)} entries but there are {len(pairs)} pairs. Pass one answer per pair.")
    return [dataclasses.replace(pair, answer=answer) for pair, answer in zip(pairs, answers)]


def _extraction_strength(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Return ``1 - k / n`` for the smallest ``k`` whose suffix ``targets[k:]`` the greedy predictions match.

    This follows Open-Unlearning's ``extraction_strength`` (src/evals/metrics/memorization.py)
    exactly, including its quirk: the search stops at ``k = n - 1``, so an item whose last
    token is not predicted either scores ``1 / n`` rather than 0.
    """
    length = len(targets)
    if length == 0:
        return 0.0
    matches = predictions == targets
    # matches[k:].all() for every k at once: a reversed cumulative product.
    suffix_matches = torch.flip(torch.cumprod(torch.flip(matches.int(), [0]), 0), [0]).bool()
    matching_starts = torch.nonzero(suffix_matches[: length - 1]).flatten()
    first = int(matching_starts[0]) if len(matching_starts) else length - 1
    return 1.0 - first / length


def _iter_answer_logits(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int,
    description: str,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(item index, float32 logits [n, vocab], target ids [n])`` at each item's answer positions."""
    samples = tokenize_pairs(tokenizer, pairs, text_format)
    batches = length_grouped_batches(samples, batch_size, _pad_token_id(tokenizer))
    device = _model_device(model)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc=description, leave=False):
                batch = batch.to(device)
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                # Position t predicts token t + 1, so drop the last position and the first label.
                shifted_labels = batch.labels()[:, 1:]
                shifted_logits = logits[:, :-1]
                for row, item_index in enumerate(batch.indices):
                    positions = shifted_labels[row] != IGNORE_INDEX
                    # Upcast one sample at a time: float32 logits of a whole batch can be large.
                    yield item_index, shifted_logits[row][positions].float(), shifted_labels[row][positions]
    finally:
        model.train(was_training)


def score_answers(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int = 8,
    answers: Sequence[str] | None = None,
) -> AnswerScores:
    """Compute each item's answer loss and extraction strength in one forward pass per batch.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        pairs: Questions with reference answers.
        text_format: Prompt format.
        batch_size: Samples per forward pass.
        answers: Replacement answers, one per pair, scored in place of ``pair.answer``
            (for example TOFU's paraphrased answers).
    """
    pairs = _with_answers(pairs, answers)
    losses = np.full(len(pairs), np.nan)
    strengths = np.full(len(pairs), np.nan)
    num_tokens = np.zeros(len(pairs), dtype=np.int64)

    empty_items = []
    for item_index, logits, targets in _iter_answer_logits(
        model, tokenizer, pairs, text_format, batch_size, "Scoring answers"
    ):
        if len(targets) == 0:
            empty_items.append(item_index)
            strengths[item_index] = 0.0
            continue
        token_losses = F.cross_entropy(logits, targets, reduction="none")
        losses[item_index] = float(token_losses.sum()) / len(targets)
        num_tokens[item_index] = len(targets)
        # Like Open-Unlearning, leave out the last answer token, which ends the turn.
        strengths[item_index] = _extraction_strength(logits[:-1].argmax(dim=-1), targets[:-1])

    if empty_items:
        logger.warning(
            "%d of %d items have no answer tokens (first: item %d), so their loss is NaN. "
            "Check TextFormat.answer_suffix and the answers.",
            len(empty_items),
            len(pairs),
            empty_items[0],
        )
    return AnswerScores(losses=losses, extraction_strengths=strengths, num_tokens=num_tokens)


def answer_losses(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int = 8,
    answers: Sequence[str] | None = None,
) -> np.ndarray:
    """Return each item's mean negative log-likelihood (nats per token) of its answer tokens.

    The answer tokens are the answer plus the end-of-turn markup (see the module
    docstring). ``answers``, if given, replaces ``pair.answer`` item by item.
    """
    return score_answers(model, tokenizer, pairs, text_format, batch_size, answers).losses


def answer_probabilities(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int = 8,
    answers: Sequence[str] | None = None,
) -> np.ndarray:
    """Return each item's length-normalised answer probability ``exp(-mean answer-token NLL)``.

    This is the geometric mean of the per-token probabilities, as in TOFU and Open-Unlearning.
    """
    return np.exp(-answer_losses(model, tokenizer, pairs, text_format, batch_size, answers))


def extraction_strengths(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int = 8,
) -> np.ndarray:
    """Return each item's extraction strength, as Open-Unlearning defines it.

    With the answer tokens ``y`` (the last one, which ends the turn, left out) and ``n = |y|``,
    the score is ``1 - k / n`` for the smallest ``k < n`` such that the greedy next-token
    predictions under teacher forcing equal ``y[k:]``. Then the model needs the first ``k``
    answer tokens as a prefix to reproduce the rest. 1 means it reproduces the whole answer.
    If no such ``k`` exists the score is ``1 / n``, as in Open-Unlearning.
    """
    return score_answers(model, tokenizer, pairs, text_format, batch_size).extraction_strengths


def stop_token_ids(model: nn.Module, tokenizer: Any, text_format: TextFormat) -> list[int]:
    """Return the token ids that end a generated answer.

    These are the tokenizer's ``eos_token_id``, the ids in the model's
    ``generation_config.eos_token_id``, and every special token that the text format puts
    after an answer (the chat template's end-of-turn token, such as ``<|im_end|>`` or
    ``<|eot_id|>``).
    """
    stop_ids: list[int] = []

    def add(token_id: Any) -> None:
        if token_id is not None and int(token_id) not in stop_ids:
            stop_ids.append(int(token_id))

    add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    for token_id in configured if isinstance(configured, (list, tuple)) else [configured]:
        add(token_id)

    # Tokenize a probe pair and collect the special tokens that follow its answer.
    probe = tokenize_pairs(tokenizer, [QAPair(question="Question?", answer="Answer.")], text_format)[0]
    answer_ids = probe.input_ids[probe.prompt_length :]
    special_ids = set(tokenizer.all_special_ids)
    for token_id in answer_ids:
        if token_id in special_ids:
            add(token_id)
    return stop_ids


def _cut_at_stop(token_ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    for position, token_id in enumerate(token_ids):
        if token_id in stop_ids:
            return token_ids[:position]
    return token_ids


def greedy_generations(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int = 8,
    max_new_tokens: int = 200,
) -> list[str]:
    """Generate an answer to each question with greedy decoding and return the decoded texts.

    The model must have a Hugging Face ``generate`` method. Prompts come from
    :func:`~pareto_prune.data.prompt_ids`, are grouped by length and left-padded.
    Decoding uses ``do_sample=False, num_beams=1`` and stops at any of
    :func:`stop_token_ids` or after ``max_new_tokens``. Other settings of the model's
    ``generation_config`` (such as ``repetition_penalty``) apply, as they do in
    Open-Unlearning. Each text is cut at its first stop token, decoded with
    ``skip_special_tokens=True`` and stripped of surrounding whitespace. In the plain
    format a non-empty ``TextFormat.answer_suffix`` also ends the text where it first occurs.
    """
    if not callable(getattr(model, "generate", None)):
        raise TypeError(
            f"{type(model).__name__} has no generate() method. Greedy generation needs a Hugging Face "
            "model with GenerationMixin, such as AutoModelForCausalLM."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")

    prompts = [prompt_ids(tokenizer, pair.question, text_format) for pair in pairs]
    pad_token_id = _pad_token_id(tokenizer)
    stop_ids = stop_token_ids(model, tokenizer, text_format)
    uses_chat_template = text_format.use_chat_template
    if uses_chat_template is None:
        uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
    text_stop = None if uses_chat_template else (text_format.answer_suffix or None)
    device = _model_device(model)

    # Longest first with ties in input order, like length_grouped_batches.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    generations: list[str | None] = [None] * len(prompts)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc="Generating", leave=False):
                indices = order[start : start + batch_size]
                width = max(len(prompts[i]) for i in indices)
                input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
                for row, item_index in enumerate(indices):
                    prompt = prompts[item_index]
                    input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                    attention_mask[row, width - len(prompt) :] = 1

                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_token_id,
                )
                for row, item_index in enumerate(indices):
                    new_tokens = _cut_at_stop(output[row, width:].tolist(), stop_ids)
                    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
                    if text_stop is not None:
                        text = text.split(text_stop)[0]
                    generations[item_index] = text.strip()
    finally:
        model.train(was_training)
    return [text if text is not None else "" for text in generations]


def rouge_scores(generations: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Return ``rouge1_recall``, ``rougeL_f1`` and ``rougeL_recall`` of each generation against its reference.

    Uses ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)``, as
    Open-Unlearning does. The scorer lowercases, drops non-alphanumeric characters and
    applies the Porter stemmer before matching words.
    """
    if len(generations) != len(references):
        raise ValueError(
            f"Got {len(generations)} generations but {len(references)} references. Pass one reference per generation."
        )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    scores = []
    for generation, reference in zip(generations, references):
        result = scorer.score(reference, generation)
        scores.append(
            {
                "rouge1_recall": result["rouge1"].recall,
                "rougeL_f1": result["rougeL"].fmeasure,
                "rougeL_recall": result["rougeL"].recall,
            }
        )
    return scores


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Return the ROUGE-L recall of each generation against its reference.

    Recall is the longest common subsequence of the stemmed words divided by the number of
    words in the reference, computed by ``RougeScorer(["rougeL"], use_stemmer=True)`` as in
    TOFU and Open-Unlearning. An empty reference scores 0.
    """
    if len(generations) != len(references):
        raise ValueError(
            f"Got {len(generations)} generations but {len(references)} references. Pass one reference per generation."
        )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array(
        [scorer.score(reference, generation)["rougeL"].recall for generation, reference in zip(generations, references)],
        dtype=np.float64,
    )


def greedy_rouge_recall(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[QAPair],
    text_format: TextFormat,
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> np.ndarray:
    """Generate greedily for each question and return the ROUGE-L recall against ``pair.answer``.

    See :func:`greedy_generations` and :func:`rouge_l_recall`. Open-Unlearning's TOFU
    evaluation uses ``max_new_tokens=200``, and the smaller default here keeps quick checks cheap.
    """
    generations = greedy_generations(model, tokenizer, pairs, text_format, batch_size, max_new_tokens)
    return rouge_l_recall(generations, [pair.answer for pair in pairs])
