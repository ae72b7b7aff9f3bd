"""Tests for pareto_prune.metrics on a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from conftest import build_tiny_llama
from transformers import LlamaForCausalLM

from pareto_prune.data import QAPair, TextFormat, tokenize_pairs
from pareto_prune.metrics import (
    _extraction_strength,
    answer_losses,
    answer_probabilities,
    extraction_strengths,
    greedy_generations,
    greedy_rouge_recall,
    rouge_l_recall,
    rouge_scores,
    score_answers,
    stop_token_ids,
)

PAIRS = [
    QAPair(question="What is the capital of France?", answer="Paris."),
    QAPair(
        question="Who wrote the novel about a whale hunted by a captain with one leg?",
        answer="Herman Melville wrote Moby-Dick, which was first published in 1851 in London.",
    ),
    QAPair(question="Name a colour.", answer="Blue"),
    QAPair(
        question="Which author was born in Taipei on 05/11/1991 and writes about leadership?",
        answer="The author's full name is Hsiao Yun-Hwa, a writer of books on leadership.",
    ),
]


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="session")
def model(tokenizer):
    return build_tiny_llama(tokenizer)


@pytest.fixture
def text_format():
    return TextFormat()


def manual_answer_loss(model, sample) -> float:
    """Mean NLL of the answer tokens of one unpadded sample, one position at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
    total = 0.0
    count = 0
    for position in range(sample.prompt_length - 1, len(sample.input_ids) - 1):
        log_probs = torch.log_softmax(logits[position].double(), dim=-1)
        total -= float(log_probs[sample.input_ids[position + 1]])
        count += 1
    return total / count


def manual_argmax_predictions(model, sample) -> tuple[list[int], list[int]]:
    """Greedy next-token predictions and targets at the answer positions of one sample."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
    predictions = []
    targets = []
    for position in range(sample.prompt_length - 1, len(sample.input_ids) - 1):
        predictions.append(int(logits[position].argmax()))
        targets.append(sample.input_ids[position + 1])
    return predictions, targets


def test_probability_matches_manual_loop(model, tokenizer, text_format):
    samples = tokenize_pairs(tokenizer, PAIRS, text_format)
    expected = np.array([math.exp(-manual_answer_loss(model, sample)) for sample in samples])

    probabilities = answer_probabilities(model, tokenizer, PAIRS, text_format, batch_size=3)

    assert probabilities.shape == (len(PAIRS),)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)


def test_losses_match_manual_loop(model, tokenizer, text_format):
    samples = tokenize_pairs(tokenizer, PAIRS, text_format)
    expected = np.array([manual_answer_loss(model, sample) for sample in samples])

    losses = answer_losses(model, tokenizer, PAIRS, text_format, batch_size=2)

    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_answer_tokens_include_end_of_turn(tokenizer, text_format):
    sample = tokenize_pairs(tokenizer, PAIRS[:1], text_format)[0]
    answer_tokens = tokenizer.convert_ids_to_tokens(sample.input_ids[sample.prompt_length :])

    assert "<|im_end|>" in answer_tokens


def test_loss_independent_of_padding(model, tokenizer, text_format):
    short = PAIRS[2]
    alone = answer_losses(model, tokenizer, [short], text_format, batch_size=1)[0]

    # In one batch with two longer items, the short item is right-padded.
    batched = answer_losses(model, tokenizer, [PAIRS[1], short, PAIRS[3]], text_format, batch_size=3)[1]

    assert batched == pytest.approx(alone, abs=1e-5)


def test_loss_independent_of_batch_size(model, tokenizer, text_format):
    one_by_one = answer_losses(model, tokenizer, PAIRS, text_format, batch_size=1)
    batched = answer_losses(model, tokenizer, PAIRS, text_format, batch_size=4)

    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_replacement_answers_are_scored(model, tokenizer, text_format):
    answers = ["Lyon.", "Someone else entirely.", "Red", "Nobody."]
    replaced = [QAPair(question=pair.question, answer=answer) for pair, answer in zip(PAIRS, answers)]

    via_argument = answer_losses(model, tokenizer, PAIRS, text_format, answers=answers)
    via_pairs = answer_losses(model, tokenizer, replaced, text_format)

    np.testing.assert_allclose(via_argument, via_pairs, rtol=1e-6)


def test_replacement_answers_count_checked(model, tokenizer, text_format):
    with pytest.raises(ValueError, match="one answer per pair"):
        answer_losses(model, tokenizer, PAIRS, text_format, answers=["only one"])


def test_training_mode_restored(tokenizer, text_format):
    training_model = build_tiny_llama(tokenizer).train()

    answer_losses(training_model, tokenizer, PAIRS[:1], text_format)

    assert training_model.training


@pytest.mark.parametrize(
    ("predictions", "targets", "expected"),
    [
        ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 1.0),  # whole answer reproduced: k = 0
        ([9, 9, 3, 4, 5], [1, 2, 3, 4, 5], 1 - 2 / 5),  # needs a 2-token prefix
        ([1, 2, 3, 4, 9], [1, 2, 3, 4, 5], 1 / 5),  # last token wrong: no k matches
        ([9, 9, 9, 9, 5], [1, 2, 3, 4, 5], 1 / 5),  # only the last token matches: k = n - 1
        ([9], [1], 1.0),  # one token: Open-Unlearning's loop stops at k = 0
        ([], [], 0.0),
    ],
)
def test_extraction_strength_cases(predictions, targets, expected):
    score = _extraction_strength(torch.tensor(predictions, dtype=torch.long), torch.tensor(targets, dtype=torch.long))

    assert score == pytest.approx(expected)


def test_extraction_strength_matches_manual(model, tokenizer, text_format):
    samples = tokenize_pairs(tokenizer, PAIRS, text_format)
    expected = []
    for sample in samples:
        predictions, targets = manual_argmax_predictions(model, sample)
        # Open-Unlearning leaves out the last answer token.
        predictions, targets = predictions[:-1], targets[:-1]
        length = len(targets)
        k = next((k for k in range(length) if predictions[k:] == targets[k:]), length - 1)
        expected.append(1 - k / length)

    strengths = extraction_strengths(model, tokenizer, PAIRS, text_format, batch_size=3)

    np.testing.assert_allclose(strengths, expected)


def test_score_answers_consistent(model, tokenizer, text_format):
    scores = score_answers(model, tokenizer, PAIRS, text_format, batch_size=2)
    samples = tokenize_pairs(tokenizer, PAIRS, text_format)

    np.testing.assert_allclose(scores.probabilities, np.exp(-scores.losses))
    assert scores.num_tokens.tolist() == [len(s.input_ids) - s.prompt_length for s in samples]


def test_rouge_l_recall_known_strings():
    generations = ["the cat is on the mat", "run dog", "", "Paris"]
    references = ["The cat sat on the mat.", "running dogs", "Paris", "Paris"]

    recall = rouge_l_recall(generations, references)

    # LCS "the cat on the mat" covers 5 of 6 reference words, and stemming maps running->run, dogs->dog.
    np.testing.assert_allclose(recall, [5 / 6, 1.0, 0.0, 1.0])


def test_rouge_scores_fields():
    scores = rouge_scores(["the cat"], ["the cat sat"])

    assert scores[0]["rougeL_recall"] == pytest.approx(2 / 3)
    assert scores[0]["rouge1_recall"] == pytest.approx(2 / 3)
    assert scores[0]["rougeL_f1"] == pytest.approx(0.8)


def test_rouge_length_mismatch_rejected():
    with pytest.raises(ValueError, match="one reference per generation"):
        rouge_l_recall(["a", "b"], ["a"])


def test_generation_batched_equals_single(model, tokenizer, text_format):
    batched = greedy_generations(model, tokenizer, PAIRS, text_format, batch_size=4, max_new_tokens=8)
    single = [greedy_generations(model, tokenizer, [pair], text_format, batch_size=1, max_new_tokens=8)[0] for pair in PAIRS]

    assert batched == single
    assert all(text for text in batched)


def test_stop_tokens_include_end_of_turn(model, tokenizer, text_format):
    stop_ids = stop_token_ids(model, tokenizer, text_format)

    assert tokenizer.eos_token_id in stop_ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_ids


def constant_output_llama(tokenizer, token_id: int) -> LlamaForCausalLM:
    """A tiny Llama whose head always ranks ``token_id`` first."""
    model = build_tiny_llama(tokenizer)
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


def test_generation_stops_at_end_of_turn(tokenizer, text_format):
    model = constant_output_llama(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))

    generations = greedy_generations(model, tokenizer, PAIRS[:2], text_format, max_new_tokens=5)

    assert generations == ["", ""]


def test_generation_runs_to_max_new_tokens(tokenizer, text_format):
    token_id = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    model = constant_output_llama(tokenizer, token_id)

    generations = greedy_generations(model, tokenizer, PAIRS[:2], text_format, max_new_tokens=3)

    expected = tokenizer.decode([token_id] * 3).strip()
    assert generations == [expected, expected]


def test_greedy_rouge_recall_combines(model, tokenizer, text_format):
    generations = greedy_generations(model, tokenizer, PAIRS, text_format, max_new_tokens=6)

    recall = greedy_rouge_recall(model, tokenizer, PAIRS, text_format, max_new_tokens=6)

    np.testing.assert_allclose(recall, rouge_l_recall(generations, [pair.answer for pair in PAIRS]))


def test_generation_needs_generate(tokenizer, text_format):
    with pytest.raises(TypeError, match="generate"):
        greedy_generations(nn.Linear(2, 2), tokenizer, PAIRS[:1], text_format)
