"""Tests for pareto_prune.tofu_eval and the eval CLI on a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import build_tiny_llama

from hf_integration.evaluate_cli import add_eval_parser, run_eval
from pareto_prune.data import QAPair, TextFormat, load_qa_pairs, tokenize_pairs
from pareto_prune.tofu_eval import (
    CONFIG_KEY,
    EVAL_FILENAME,
    MODEL_UTILITY_COMPONENTS,
    SUMMARY_FILENAME,
    TofuEvalResult,
    evaluate_tofu,
    harmonic_mean,
    ks_test_pvalue,
    load_retain_truth_ratios,
    model_utility,
    normalised_probabilities,
    truth_ratio_closer_to_1,
    truth_ratio_true_better,
    truth_ratios,
)

MAX_SAMPLES = 2
MAX_NEW_TOKENS = 4


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="session")
def model(tokenizer):
    return build_tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def text_format():
    return TextFormat()


@pytest.fixture(scope="session")
def result(model, tokenizer, text_format):
    return evaluate_tofu(
        model, tokenizer, text_format, forget_split="forget01", max_samples=MAX_SAMPLES, max_new_tokens=MAX_NEW_TOKENS
    )


@pytest.fixture(scope="session")
def retain_log_dir(result, tmp_path_factory):
    directory = tmp_path_factory.mktemp("retain_model")
    result.save(directory)
    return directory


def manual_answer_loss(model, tokenizer, text_format, question: str, answer: str) -> float:
    """Mean NLL of one answer's tokens, computed without padding, one position at a time."""
    sample = tokenize_pairs(tokenizer, [QAPair(question=question, answer=answer)], text_format)[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
    total = 0.0
    for position in range(sample.prompt_length - 1, len(sample.input_ids) - 1):
        total -= float(torch.log_softmax(logits[position].double(), dim=-1)[sample.input_ids[position + 1]])
    return total / (len(sample.input_ids) - sample.prompt_length)


# ---------------------------------------------------------------------------
# Metric arithmetic
# ---------------------------------------------------------------------------


def test_truth_ratio_by_hand():
    correct_losses = np.array([0.5, 2.0])
    perturbed_losses = [[1.0, 3.0], [0.5, 0.5]]

    ratios = truth_ratios(correct_losses, perturbed_losses)

    # Item 0: exp(-mean(1, 3)) / exp(-0.5) = exp(-1.5). Item 1: exp(-0.5) / exp(-2) = exp(1.5).
    np.testing.assert_allclose(ratios, [math.exp(-1.5), math.exp(1.5)], rtol=1e-8)


def test_truth_ratio_aggregators_by_hand():
    ratios = np.array([math.exp(-1.5), math.exp(1.5)])

    assert truth_ratio_closer_to_1(ratios) == pytest.approx(math.exp(-1.5))
    assert truth_ratio_true_better(ratios) == pytest.approx((1 - math.exp(-1.5)) / 2)


def test_truth_ratio_row_count_checked():
    with pytest.raises(ValueError, match="one row per item"):
        truth_ratios(np.array([1.0, 2.0]), [[1.0]])


def test_normalised_probability_by_hand():
    normalised = normalised_probabilities(np.array([0.2, 0.5]), [[0.1, 0.1, 0.2], [0.0, 0.0, 0.0]])

    np.testing.assert_allclose(normalised, [0.2 / 0.6, 1.0], rtol=1e-8)


def test_ks_pvalue_matches_scipy():
    rng = np.random.default_rng(0)
    first = rng.normal(size=40)
    second = rng.normal(loc=0.5, size=40)

    assert ks_test_pvalue(first, second) == scipy.stats.ks_2samp(first, second).pvalue


def test_ks_pvalue_by_hand():
    # Fully separated samples of 3 and 3: D = 1, reached by 2 of the C(6, 3) = 20 orderings.
    assert ks_test_pvalue(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(2 / 20)


def test_ks_pvalue_identical_samples():
    values = np.array([0.1, 0.5, 0.9, 1.3])

    assert ks_test_pvalue(values, values) == pytest.approx(1.0)


def test_harmonic_mean_by_hand():
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert harmonic_mean([0.5, 0.0, 0.3]) == 0.0


# ---------------------------------------------------------------------------
# evaluate_tofu
# ---------------------------------------------------------------------------


def test_summary_keys(result):
    assert set(result.summary) == {
        "extraction_strength",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "forget_truth_ratio",
        "model_utility",
    }


def test_forget_quality_omitted_without_log(result):
    assert "forget_quality" not in result.summary
    assert result.logs["forget_quality"] == {"agg_value": None}


def test_item_counts_follow_cap(result):
    for name in ("forget_Q_A_Prob", "retain_Q_A_Prob", "ra_Q_A_Prob", "wf_Q_A_Prob", "forget_truth_ratio"):
        assert list(result.logs[name]["value_by_index"]) == ["0", "1"], name


def test_forget_truth_ratio_from_manual_losses(result, model, tokenizer, text_format):
    pairs = load_qa_pairs("tofu:forget01_perturbed")[:MAX_SAMPLES]
    expected = []
    for pair in pairs:
        paraphrased = manual_answer_loss(model, tokenizer, text_format, pair.question, pair.extra["paraphrased_answer"])
        perturbed = [
            manual_answer_loss(model, tokenizer, text_format, pair.question, answer)
            for answer in pair.extra["perturbed_answer"]
        ]
        expected.append(math.exp(-np.mean(perturbed)) / (math.exp(-paraphrased) + 1e-10))

    np.testing.assert_allclose(result.item_values("forget_truth_ratio"), expected, rtol=1e-5)
    assert result.summary["forget_truth_ratio"] == pytest.approx(np.mean([min(r, 1 / r) for r in expected]), rel=1e-5)


def test_forget_probability_from_manual_losses(result, model, tokenizer, text_format):
    pairs = load_qa_pairs("tofu:forget01_perturbed")[:MAX_SAMPLES]
    expected = [math.exp(-manual_answer_loss(model, tokenizer, text_format, p.question, p.answer)) for p in pairs]

    np.testing.assert_allclose(result.item_values("forget_Q_A_Prob"), expected, rtol=1e-5)
    assert result.summary["forget_Q_A_Prob"] == pytest.approx(np.mean(expected), rel=1e-5)


def test_world_facts_truth_ratio_uses_answer(result):
    correct = np.array([result.logs["wf_Q_A_Prob"]["value_by_index"][str(i)]["avg_loss"] for i in range(MAX_SAMPLES)])
    perturbed = [result.logs["wf_Q_A_PERT_Prob"]["value_by_index"][str(i)]["avg_loss"] for i in range(MAX_SAMPLES)]

    ratios = truth_ratios(correct, perturbed)

    np.testing.assert_allclose(result.item_values("wf_Truth_Ratio"), ratios, rtol=1e-12)
    assert result.logs["wf_Truth_Ratio"]["agg_value"] == pytest.approx(truth_ratio_true_better(ratios))


def test_real_authors_probability_normalised(result):
    correct = result.item_values("ra_Q_A_Prob")
    perturbed = result.item_values("ra_Q_A_PERT_Prob")

    assert perturbed.shape == (MAX_SAMPLES, 3)
    np.testing.assert_allclose(
        result.item_values("ra_Q_A_Prob_normalised"), correct / (correct + perturbed.sum(axis=1) + 1e-10), rtol=1e-12
    )


def test_model_utility_by_hand():
    values = [1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25]
    logs = {name: {"agg_value": value} for name, value in zip(MODEL_UTILITY_COMPONENTS, values)}

    assert model_utility(logs) == pytest.approx(9 / (3 * (1 + 2 + 4)))


def test_model_utility_missing_component():
    logs = {name: {"agg_value": 0.5} for name in MODEL_UTILITY_COMPONENTS[:-1]}

    with pytest.raises(ValueError, match="wf_Truth_Ratio"):
        model_utility(logs)


def test_model_utility_is_harmonic_mean(result):
    components = [result.logs[name]["agg_value"] for name in MODEL_UTILITY_COMPONENTS]

    assert len(components) == 9
    # A random model scores ROUGE 0 on some split, so the harmonic mean may be exactly 0.
    assert result.summary["model_utility"] == pytest.approx(scipy.stats.hmean(components))


def test_rouge_log_fields(result):
    entry = result.logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]

    assert set(entry) == {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth", "generation"}
    assert entry["ground_truth"] == load_qa_pairs("tofu:forget01_perturbed")[0].answer


def test_save_and_load_round_trip(result, tmp_path):
    eval_path, summary_path = result.save(tmp_path)

    assert eval_path.name == EVAL_FILENAME
    assert json.loads(summary_path.read_text()) == pytest.approx(result.summary)
    saved = json.loads(eval_path.read_text())
    assert saved[CONFIG_KEY]["forget_split"] == "forget01"
    loaded = TofuEvalResult.load(tmp_path)
    assert loaded.summary == pytest.approx(result.summary)
    np.testing.assert_allclose(loaded.item_values("forget_truth_ratio"), result.item_values("forget_truth_ratio"))


def test_forget_quality_with_retain_log(model, tokenizer, text_format, retain_log_dir):
    with_log = evaluate_tofu(
        model,
        tokenizer,
        text_format,
        forget_split="forget01",
        retain_model_log=retain_log_dir / EVAL_FILENAME,
        max_samples=MAX_SAMPLES,
        max_new_tokens=MAX_NEW_TOKENS,
    )

    # The same model as its own retain model: identical truth-ratio samples.
    assert with_log.summary["forget_quality"] == pytest.approx(1.0)


def test_retain_log_other_split_rejected(retain_log_dir):
    with pytest.raises(ValueError, match="--forget-split forget10"):
        load_retain_truth_ratios(retain_log_dir, "forget10", MAX_SAMPLES)


def test_retain_log_too_few_items_rejected(retain_log_dir):
    with pytest.raises(ValueError, match="larger --max-samples"):
        load_retain_truth_ratios(retain_log_dir, "forget01", MAX_SAMPLES + 1)


def test_retain_log_prefix_used(retain_log_dir):
    ratios = load_retain_truth_ratios(retain_log_dir, "forget01", 1)
    full = TofuEvalResult.load(retain_log_dir).item_values("forget_truth_ratio")

    np.testing.assert_array_equal(ratios, full[:1])


def test_retain_log_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=EVAL_FILENAME):
        load_retain_truth_ratios(tmp_path / "absent.json", "forget01", 1)


def test_unknown_forget_split_rejected(model, tokenizer, text_format):
    with pytest.raises(ValueError, match="forget01, forget05, forget10"):
        evaluate_tofu(model, tokenizer, text_format, forget_split="forget20")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_dir(model, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def parse_eval_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pareto-prune")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


def cli_argv(model_dir, output_dir, *extra: str) -> list[str]:
    return [
        "--model", str(model_dir),
        "--forget-split", "forget01",
        "--output", str(output_dir),
        "--max-samples", str(MAX_SAMPLES),
        "--max-new-tokens", str(MAX_NEW_TOKENS),
        "--device", "cpu",
        *extra,
    ]  # fmt: skip


def test_cli_writes_files(model_dir, tmp_path, capsys):
    output_dir = tmp_path / "eval"
    args = parse_eval_args(cli_argv(model_dir, output_dir))

    assert args.func(args) == 0

    summary = json.loads((output_dir / SUMMARY_FILENAME).read_text())
    assert "forget_quality" not in summary
    assert "model_utility" in summary
    assert (output_dir / EVAL_FILENAME).is_file()
    printed = capsys.readouterr().out
    assert "forget_truth_ratio" in printed
    assert "not computed (pass --retain-log)" in printed


def test_cli_forget_quality_with_retain_log(model_dir, retain_log_dir, tmp_path):
    output_dir = tmp_path / "eval"
    args = parse_eval_args(cli_argv(model_dir, output_dir, "--retain-log", str(retain_log_dir / EVAL_FILENAME)))

    run_eval(args)

    summary = json.loads((output_dir / SUMMARY_FILENAME).read_text())
    assert summary["forget_quality"] == pytest.approx(1.0)


def test_cli_rejects_non_empty_output(model_dir, tmp_path):
    (tmp_path / "existing.txt").write_text("keep me")
    args = parse_eval_args(cli_argv(model_dir, tmp_path))

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_eval(args)


def test_cli_rejects_output_inside_model(model_dir):
    before = sorted(path.name for path in model_dir.iterdir())
    args = parse_eval_args(cli_argv(model_dir, model_dir / "eval", "--overwrite"))

    with pytest.raises(ValueError, match="overlaps"):
        run_eval(args)

    assert sorted(path.name for path in model_dir.iterdir()) == before


def test_cli_overwrite_allows_non_empty_output(model_dir, tmp_path):
    (tmp_path / "existing.txt").write_text("keep me")
    args = parse_eval_args(cli_argv(model_dir, tmp_path, "--overwrite"))

    run_eval(args)

    assert (tmp_path / SUMMARY_FILENAME).is_file()
    assert (tmp_path / "existing.txt").read_text() == "keep me"


def test_cli_chat_template_kwargs_must_be_object(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_eval_args(cli_argv(model_dir, tmp_path, "--chat-template-kwargs", "[1, 2]"))

    assert "expected a JSON object" in capsys.readouterr().err
