"""Multi-turn chat rows: every assistant turn trained (``data.train_turns: all``), or the last
only; plain-text rows trained whole. Label masks checked token by token on a tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import CHATML
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from retain.audit.batches import inspect_batches, untrained_turns
from retain.cli import app
from retain.data.encoding import IGNORE_INDEX, Encoded, encode_examples
from retain.data.prompting import PromptFormat, render_example
from retain.data.rows import Example
from retain.lab.tokenizer import train_tokenizer

TURNS = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Is the sky blue?"},
         {"role": "assistant", "content": "Yes."})
CHAT = Example("System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Is the sky blue?\nAssistant:", "Yes.",
               TURNS, line=1)
TEXTS = ["System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Is the sky blue?\nAssistant: Yes."] * 30


@pytest.fixture()
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(TEXTS, vocab_size=300, model_max_length=256)


@pytest.fixture()
def chatml() -> PreTrainedTokenizerFast:
    """The tiny tokenizer as a ChatML chat model's: its end-of-turn token is its EOS."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=300, model_max_length=256)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML
    return tokenizer


def runs(row: Encoded, tokenizer) -> list[tuple[bool, str]]:
    """Returns the row token by token, grouped into runs of (trained, text)."""
    groups: list[tuple[bool, list[int]]] = []
    for token, label in zip(row.input_ids, row.labels, strict=True):
        trained = label != IGNORE_INDEX
        assert label in (IGNORE_INDEX, token)  # a label is the token itself or nothing
        if groups and groups[-1][0] == trained:
            groups[-1][1].append(token)
        else:
            groups.append((trained, [token]))
    return [(trained, tokenizer.decode(ids)) for trained, ids in groups]


def test_every_assistant_turn_is_trained_without_a_chat_template(tokenizer) -> None:
    [row], _ = encode_examples([CHAT], tokenizer, PromptFormat.raw(), max_length=256)
    assert runs(row, tokenizer) == [
        (False, "<s>System: Be brief.\nUser: Hi\nAssistant:"), (True, " Hello!\n"),
        (False, "User: Is the sky blue?\nAssistant:"), (True, " Yes.</s>"),
    ]
    # The prompt's ids are still those generation gives the model.
    prompt = render_example(CHAT, PromptFormat.raw()).prompt
    assert row.input_ids[: row.prompt_tokens] == tokenizer(prompt)["input_ids"]


def test_every_assistant_turn_and_its_end_of_turn_is_trained_with_chatml(chatml) -> None:
    prompt_format = PromptFormat.for_tokenizer(chatml)
    [row], _ = encode_examples([CHAT], chatml, prompt_format, max_length=256)
    assert runs(row, chatml) == [
        (False, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (True, "Hello!<|im_end|>"),
        (False, "\n<|im_start|>user\nIs the sky blue?<|im_end|>\n<|im_start|>assistant\n"),
        (True, "Yes.<|im_end|>"),
    ]
    assert row.untrained_turns == 0 and len(row.earlier_answers) == 1
    # The doctor sees the earlier end-of-turn (= EOS) trained on purpose: no early EOS, no
    # prompt trained.
    [check] = inspect_batches([row], chatml, collator="completion", batch_size=1)
    assert (check.early_eos, check.prompt_trained) == (0, 0)


def test_train_turns_last_trains_the_final_answer_only(tokenizer, chatml) -> None:
    [raw], _ = encode_examples([CHAT], tokenizer, PromptFormat.raw(), max_length=256, train_turns="last")
    assert [text for trained, text in runs(raw, tokenizer) if trained] == [" Yes.</s>"]
    [templated], _ = encode_examples([CHAT], chatml, PromptFormat.for_tokenizer(chatml), max_length=256,
                                     train_turns="last")
    assert [text for trained, text in runs(templated, chatml) if trained] == ["Yes.<|im_end|>"]
    assert templated.earlier_answers == ()


def test_loss_on_all_still_trains_every_token(tokenizer) -> None:
    [row], _ = encode_examples([CHAT], tokenizer, PromptFormat.raw(), max_length=256, loss_on="all")
    assert row.labels == row.input_ids


def test_a_template_that_rewrites_earlier_turns_trains_the_last_and_says_so(chatml) -> None:
    # Writes an assistant turn's content only when it ends the conversation, as reasoning
    # templates drop earlier thinking: the earlier answer is not in the prompt as written.
    chatml.chat_template = CHATML.replace(
        "message['content']", "(message['content'] if loop.last or message['role'] != 'assistant' else '')")
    [row], _ = encode_examples([CHAT], chatml, PromptFormat.for_tokenizer(chatml), max_length=256)
    assert [text for trained, text in runs(row, chatml) if trained] == ["Yes.<|im_end|>"]
    assert row.untrained_turns == 1
    finding = untrained_turns([row])
    assert finding is not None and finding.code == "earlier_turns_untrained" and "data.train_turns" in finding.fix


def test_truncation_keeps_the_earlier_turns_labels_it_keeps(tokenizer) -> None:
    [whole], _ = encode_examples([CHAT], tokenizer, PromptFormat.raw(), max_length=256)
    [cut], _ = encode_examples([CHAT], tokenizer, PromptFormat.raw(), max_length=whole.prompt_tokens)
    assert cut.truncated and cut.labels == whole.labels[: whole.prompt_tokens] and cut.supervised > 0


@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_a_text_row_is_trained_whole_under_either_loss_on(tokenizer, loss_on: str) -> None:
    text = "User: Hi\nAssistant: Hello!"
    [row], _ = encode_examples([Example("", text)], tokenizer, PromptFormat.raw(), max_length=256, loss_on=loss_on)
    assert row.input_ids == tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    # BOS is the prompt: position 0 is never a target (labels shift by one), so nothing is lost.
    assert row.prompt_tokens == 1 and row.labels[1:] == row.input_ids[1:]
    trained, last_run = runs(row, tokenizer)[-1]
    assert trained and last_run == ("<s>" if loss_on == "all" else "") + text + "</s>"


def test_retain_doctor_shows_every_assistant_turn_trained(micro_base, tmp_path: Path) -> None:
    base, _ = micro_base
    data = tmp_path / "chat.json"
    data.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Is the sky blue?"}, {"from": "gpt", "value": "Yes."}]}] * 4))
    (tmp_path / "config.yaml").write_text(f"model:\n  name_or_path: {base.path}\ndata:\n  train: {data}\n")
    result = CliRunner().invoke(app, ["-q", "doctor", str(tmp_path / "config.yaml")], catch_exceptions=False)
    assert "trained on: ' Hello!\\n Yes.</s>'" in result.output, result.output
    last = CliRunner().invoke(app, ["-q", "doctor", str(tmp_path / "config.yaml"), "--set", "data.train_turns=last"],
                              catch_exceptions=False)
    assert "trained on: ' Yes.</s>'" in last.output, last.output
