"""Training rows as token ids and labels, and the collator that batches them.

One encoding for training, the audit's length check and ``retain doctor``, built on the
same rendering evaluation uses (:func:`retain.data.prompting.render_example`), so the
prompt a model is trained on is token for token the prompt it is asked at evaluation:

- the prompt is tokenised alone, exactly as generation tokenises it; the answer is the
  rest of ``prompt + answer`` tokenised together (its natural tokens in context), or,
  where the two disagree at the seam (a prompt ending in a space), the answer tokenised
  alone after the prompt's own tokens;
- EOS is appended, so the model learns to stop;
- with ``data.train_turns: all`` (the default) every assistant turn of a chat row is
  trained, not the last alone: the earlier ones, which sit in the prompt, keep their
  labels, their end-of-turn markup included (:attr:`Rendered.earlier_answers`), found by
  tokenising the prompt up to where each starts and ends;
- rows longer than ``data.max_length`` lose their end (answer first, as every SFT
  trainer truncates), which the audit and the doctor report;
- with ``train.loss_on: response`` the prompt's other labels are -100. A plain-text row
  (``{"text": ...}``) has an empty prompt, so its whole text is trained either way.

Padding is the collator's job: ``completion`` pads labels with -100 by position
(transformers' ``DataCollatorForSeq2Seq``), so a pad token equal to EOS is harmless;
``language_modeling`` is transformers' ``DataCollatorForLanguageModeling``, which
rebuilds labels from the ids and masks every token equal to the pad id, the EOS too
when pad = EOS: the trap of trl#1623 that ``retain doctor`` exists to catch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
)

from retain.data.prompting import PromptFormat, Rendered, render_example
from retain.data.rows import Example, Problem
from retain.errors import ConfigError

IGNORE_INDEX = -100
TOKENIZE_BATCH = 1024  # rows per tokenizer call: large enough to use the fast tokenizer well

Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Encoded:
    """One training row as token ids and labels.

    Attributes:
        line: The row's line (or row number) in its file.
        input_ids: Prompt, answer and EOS, cut to ``max_length``.
        labels: ``input_ids`` with -100 where no loss is taken.
        prompt_tokens: Tokens of the prompt before truncation, the ids evaluation uses.
        full_tokens: Tokens of the whole row (with EOS) before truncation.
        split_seam: The prompt's last tokens merge with the answer's first when the two
            are tokenised together, so the answer was tokenised on its own.
        negative_labels: Tokens a method trains against (token-level forgetting), -100
            elsewhere; None when no method marks any.
        earlier_answers: The (start, end) token spans of the earlier assistant turns that
            carry labels inside the prompt (``data.train_turns: all``); empty otherwise.
        untrained_turns: Earlier assistant turns left untrained because the chat template
            renders them differently later in the conversation (see
            :attr:`Rendered.unlocated_answers`).
        source: Where the row comes from: ``task`` for ``data.train``, else the method
            that blended it in (``replay``, ``self_augment``); batches mix the sources
            (:mod:`retain.training.sampling`).
        text: The row as text, for a blended row (what the probe-contamination check
            reads); None for task rows, which the audit reads from their file.
    """

    line: int
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    full_tokens: int
    split_seam: bool = False
    earlier_answers: tuple[tuple[int, int], ...] = ()
    untrained_turns: int = 0
    negative_labels: list[int] | None = None
    source: str = "task"
    text: str | None = None

    @property
    def truncated(self) -> bool:
        """True when ``max_length`` cut the row."""
        return len(self.input_ids) < self.full_tokens

    @property
    def supervised(self) -> int:
        """Tokens that carry a loss."""
        return sum(label != IGNORE_INDEX for label in self.labels)

    def feature(self) -> dict[str, list[int]]:
        """Returns the row as the collator takes it."""
        feature = {"input_ids": self.input_ids, "labels": self.labels}
        if self.negative_labels is not None:
            feature["negative_labels"] = self.negative_labels
        return feature


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, pad_token: str = "auto") -> None:
    """Sets the pad token that training batches are padded with (``model.pad_token``).

    Args:
        tokenizer: The model's tokenizer; changed in place, padding on the right.
        pad_token: ``auto`` (the tokenizer's own, else EOS), ``eos``, ``unk``, or a token
            of the vocabulary.

    Raises:
        ConfigError: If the named token does not exist in this tokenizer.
    """
    tokenizer.padding_side = "right"  # training positions count from 0 at the first token
    if pad_token == "auto":
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return
    named = {"eos": tokenizer.eos_token, "unk": tokenizer.unk_token}.get(pad_token, pad_token)
    token_id = tokenizer.convert_tokens_to_ids(named) if named is not None else None
    if token_id is None or token_id == tokenizer.unk_token_id and named != tokenizer.unk_token:
        raise ConfigError(
            f"pad token '{pad_token}' is not in the tokenizer's vocabulary",
            field="model.pad_token",
            fix="use auto, eos, unk or a token the tokenizer has",
        )
    tokenizer.pad_token = named


def encode_examples(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    *,
    max_length: int,
    loss_on: str = "response",
    train_turns: str = "all",
) -> tuple[list[Encoded], list[Problem]]:
    """Encodes rows for training, in batches.

    Args:
        examples: The training rows.
        tokenizer: The model's tokenizer.
        prompt_format: How prompts are rendered (the one evaluation uses).
        max_length: ``data.max_length``: tokens kept per row.
        loss_on: ``response`` masks the prompt's labels; ``all`` keeps them.
        train_turns: ``all`` trains every assistant turn of a chat row; ``last`` only the
            last one (the answer evaluation scores).

    Returns:
        The encoded rows, in order, and the rows the chat template rejected (a template
        raises on turns it cannot render, e.g. two user turns in a row).
    """
    rendered: list[tuple[Example, Rendered]] = []
    problems: list[Problem] = []
    for example in examples:
        try:
            rendered.append((example, render_example(example, prompt_format)))
        except Exception as error:  # noqa: BLE001 - a template's own errors have no common type
            problems.append(Problem(
                file="", line=example.line, field="messages",
                message=f"the chat template cannot render this row: {error}",
                fix="fix the turn order (system?, then user/assistant alternating, ending "
                "with the assistant) or use a template that accepts it",
            ))
    flags = [item.add_special_tokens for _, item in rendered]
    prompts = tokenize_texts([item.prompt for _, item in rendered], flags, tokenizer)
    wholes = tokenize_texts([item.prompt + item.response for _, item in rendered], flags, tokenizer)
    seams = [i for i, (prompt, whole) in enumerate(zip(prompts, wholes, strict=True))
             if whole[: len(prompt)] != prompt]
    alone = tokenize_texts([rendered[i][1].response for i in seams], [False] * len(seams), tokenizer)
    answers = [whole[len(prompt):] for prompt, whole in zip(prompts, wholes, strict=True)]
    for i, ids in zip(seams, alone, strict=True):
        answers[i] = ids
    split = set(seams)
    earlier = (_earlier_answer_tokens([item for _, item in rendered], prompts, tokenizer)
               if train_turns == "all" else [() for _ in rendered])
    eos = tokenizer.eos_token_id
    encoded = []
    for i, (example, item) in enumerate(rendered):
        answer = answers[i] + ([eos] if eos is not None and answers[i][-1:] != [eos] else [])
        ids = prompts[i] + answer
        prompt_labels = list(prompts[i]) if loss_on == "all" else [IGNORE_INDEX] * len(prompts[i])
        for start, end in earlier[i]:
            prompt_labels[start:end] = prompts[i][start:end]
        labels = prompt_labels + answer
        encoded.append(Encoded(
            line=example.line, input_ids=ids[:max_length], labels=labels[:max_length],
            prompt_tokens=len(prompts[i]), full_tokens=len(ids), split_seam=i in split,
            earlier_answers=earlier[i], untrained_turns=item.unlocated_answers if train_turns == "all" else 0,
        ))
    return encoded, problems


def _earlier_answer_tokens(
    rendered: Sequence[Rendered], prompts: Sequence[list[int]], tokenizer: PreTrainedTokenizerBase
) -> list[tuple[tuple[int, int], ...]]:
    """Returns the token spans of each row's earlier assistant turns in its prompt ids.

    A character offset becomes the number of prompt tokens that the prompt's text up to it
    tokenises to (the tokens the two share: a token that straddles a turn's start belongs
    to the turn, one that straddles its end does not), so the prompt keeps the very ids
    generation gives it.
    """
    cuts = [(row, offset) for row, item in enumerate(rendered) for span in item.earlier_answers for offset in span]
    heads = tokenize_texts([rendered[row].prompt[:offset] for row, offset in cuts],
                           [rendered[row].add_special_tokens for row, _ in cuts], tokenizer)
    positions: list[list[int]] = [[] for _ in rendered]
    for (row, _), head in zip(cuts, heads, strict=True):
        positions[row].append(_shared_length(head, prompts[row]))
    return [tuple(zip(found[::2], found[1::2], strict=True)) for found in positions]


def _shared_length(head: list[int], ids: list[int]) -> int:
    """Returns how many leading tokens ``head`` and ``ids`` have in common."""
    shared = 0
    for mine, theirs in zip(head, ids):
        if mine != theirs:
            break
        shared += 1
    return shared


def encode_texts(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, *,
                 max_length: int, source: str = "task") -> list[Encoded]:
    """Encodes plain texts (general data for replay) as rows with a loss on every token:
    the tokenizer's special tokens, the text, EOS; ``line`` is the text's 1-based index.
    Rows of another ``source`` than ``task`` keep their text (:attr:`Encoded.text`)."""
    eos = tokenizer.eos_token_id
    rows = []
    for index, ids in enumerate(tokenize_texts(texts, [True] * len(texts), tokenizer), start=1):
        ids = ids + ([eos] if eos is not None and ids[-1:] != [eos] else [])
        rows.append(Encoded(line=index, input_ids=ids[:max_length], labels=ids[:max_length],
                            prompt_tokens=0, full_tokens=len(ids), source=source,
                            text=None if source == "task" else texts[index - 1]))
    return rows


def tokenize_texts(
    texts: Sequence[str], add_special_tokens: Sequence[bool], tokenizer: PreTrainedTokenizerBase
) -> list[list[int]]:
    """Returns the ids of each text, with or without special tokens per text, in batches."""
    ids: list[list[int]] = [[] for _ in texts]
    for flag in (True, False):
        indices = [i for i, special in enumerate(add_special_tokens) if special is flag]
        for start in range(0, len(indices), TOKENIZE_BATCH):
            batch = indices[start : start + TOKENIZE_BATCH]
            # verbose=False: long rows are reported by the audit, not logged per call.
            encoded = tokenizer([texts[i] for i in batch], add_special_tokens=flag,
                                verbose=False)["input_ids"]
            for i, row in zip(batch, encoded, strict=True):
                ids[i] = list(row)
    return ids


def build_collator(tokenizer: PreTrainedTokenizerBase, kind: str = "completion") -> Collator:
    """Returns the collator ``train.collator`` names, taking :meth:`Encoded.feature` dicts.

    Args:
        tokenizer: The tokenizer, after :func:`prepare_tokenizer`.
        kind: ``completion`` (labels as encoded, padding masked by position) or
            ``language_modeling`` (transformers' collator: labels rebuilt from the ids,
            every pad-id token masked).
    """
    if kind == "completion":
        seq2seq = DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt"
        )
        return lambda features: _with_negative_labels(seq2seq, features)
    language_modeling = DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="pt")
    # It rebuilds labels from input_ids and cannot pad ragged label lists: drop them.
    return lambda features: language_modeling(
        [{"input_ids": feature["input_ids"]} for feature in features]
    )


def _with_negative_labels(collate: Collator, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Collates ``features``; ``negative_labels``, where rows carry them, are padded with
    -100 to the batch's width (the tokenizer's padding knows only ``labels``)."""
    negatives = [feature.get("negative_labels") for feature in features]
    if all(negative is None for negative in negatives):
        return collate(features)
    batch = collate([{key: value for key, value in feature.items() if key != "negative_labels"}
                     for feature in features])
    width = batch["input_ids"].shape[1]
    batch["negative_labels"] = torch.tensor(
        [(negative or []) + [IGNORE_INDEX] * (width - len(negative or [])) for negative in negatives]
    )
    return batch
