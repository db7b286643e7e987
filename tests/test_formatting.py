"""Training rows as ids and labels: EOS, masking, truncation, seams, collators."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from retain.data.encoding import (
    IGNORE_INDEX,
    build_collator,
    encode_examples,
    prepare_tokenizer,
)
from retain.data.prompting import PromptFormat
from retain.data.rows import Example
from retain.errors import ConfigError
from retain.lab.tokenizer import train_tokenizer

TEXTS = ["Question: Is the sky blue?\nAnswer: yes", "Question: Is grass red?\nAnswer: no"] * 50


@pytest.fixture()
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(TEXTS, vocab_size=320, model_max_length=128)


def rows(*pairs: tuple[str, str]) -> list[Example]:
    return [Example(prompt, response, line=i + 1) for i, (prompt, response) in enumerate(pairs)]


def test_prompt_is_masked_and_answer_ends_with_a_trained_eos(tokenizer) -> None:
    [row], problems = encode_examples(rows(("Question: Is the sky blue?\nAnswer:", " yes")),
                                      tokenizer, PromptFormat.raw(), max_length=64)
    assert problems == []
    prompt_ids = tokenizer("Question: Is the sky blue?\nAnswer:")["input_ids"]
    assert row.input_ids[: len(prompt_ids)] == prompt_ids
    assert row.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert row.input_ids[-1] == row.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row.input_ids[len(prompt_ids):]) == " yes</s>"
    assert row.supervised == len(row.input_ids) - len(prompt_ids)
    assert not row.truncated and not row.split_seam


def test_loss_on_all_keeps_prompt_labels(tokenizer) -> None:
    [row], _ = encode_examples(rows(("Question: Is grass red?\nAnswer:", " no")), tokenizer,
                               PromptFormat.raw(), max_length=64, loss_on="all")
    assert row.labels == row.input_ids


def test_truncation_cuts_the_answer_first_and_is_reported(tokenizer) -> None:
    [row], _ = encode_examples(rows(("Question: Is the sky blue?\nAnswer:", " yes")), tokenizer,
                               PromptFormat.raw(), max_length=5)
    assert len(row.input_ids) == 5 and row.truncated
    assert row.prompt_tokens > 5 and row.supervised == 0


def test_a_prompt_ending_in_a_space_keeps_its_own_tokens(tokenizer) -> None:
    [row], _ = encode_examples(rows(("Question: Is the sky blue?\nAnswer: ", "yes")), tokenizer,
                               PromptFormat.raw(), max_length=64)
    prompt_ids = tokenizer("Question: Is the sky blue?\nAnswer: ")["input_ids"]
    assert row.split_seam
    assert row.input_ids[: len(prompt_ids)] == prompt_ids  # what generation is given
    assert tokenizer.decode(row.input_ids) == "<s>Question: Is the sky blue?\nAnswer: yes</s>"


def test_completion_collator_masks_padding_by_position_even_when_pad_is_eos(tokenizer) -> None:
    prepare_tokenizer(tokenizer, "eos")
    encoded, _ = encode_examples(rows(("Question: Is grass red?\nAnswer:", " no"),
                                      ("Q:", " yes")), tokenizer, PromptFormat.raw(), max_length=64)
    batch = build_collator(tokenizer, "completion")([row.feature() for row in encoded])
    short = len(encoded[1].input_ids)
    assert batch["labels"][1, short - 1] == tokenizer.eos_token_id  # EOS still trained
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][1, short:] == 0).all()


def test_language_modeling_collator_reproduces_the_pad_eos_trap(tokenizer) -> None:
    prepare_tokenizer(tokenizer, "eos")
    encoded, _ = encode_examples(rows(("Q:", " yes")), tokenizer, PromptFormat.raw(), max_length=64)
    batch = build_collator(tokenizer, "language_modeling")([encoded[0].feature()])
    assert batch["input_ids"][0, -1] == tokenizer.eos_token_id
    assert batch["labels"][0, -1] == IGNORE_INDEX  # the trap: the EOS is never learned


def test_pad_token_choices(tokenizer) -> None:
    prepare_tokenizer(tokenizer, "auto")
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "right"
    prepare_tokenizer(tokenizer, "eos")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    prepare_tokenizer(tokenizer, "<s>")
    assert tokenizer.pad_token == "<s>"
    with pytest.raises(ConfigError, match="model.pad_token"):
        prepare_tokenizer(tokenizer, "<nope>")
