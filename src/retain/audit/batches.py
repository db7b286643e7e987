"""What training will see, row by row: every training batch built as ``retain train``
builds it, and the doctor's checks of its labels (masked, EOS kept and trained, prompt
and padding masked, no early EOS)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from retain.audit.findings import MAX_EXAMPLES, Finding
from retain.config import RetainConfig
from retain.data.encoding import (
    IGNORE_INDEX,
    Encoded,
    build_collator,
)


@dataclass
class RowCheck:
    """What one collated row says about the pipeline (see :func:`inspect_batches`).

    Attributes:
        line: The row's line in the training file.
        supervised: Tokens carrying a loss.
        eos_masked: The row ends with EOS, and EOS carries no loss.
        no_eos: The row, not truncated, does not end with EOS.
        prompt_trained: Prompt tokens (after the first) that carry a loss, the earlier
            assistant turns that ``data.train_turns: all`` trains left out.
        padding_trained: Padding positions that carry a loss.
        prompt_differs: The batch's prompt ids differ from the ids evaluation uses.
        early_eos: EOS tokens before the row's end that carry a loss, but for those that
            end an earlier assistant turn: the model learns to stop there.
    """

    line: int
    supervised: int
    eos_masked: bool
    no_eos: bool
    prompt_trained: int
    padding_trained: int
    prompt_differs: bool
    early_eos: int = 0


def inspect_batches(
    encoded: Sequence[Encoded],
    tokenizer: PreTrainedTokenizerBase,
    *,
    collator: str,
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
) -> list[RowCheck]:
    """Collates ``encoded`` in training batches and checks each row of each batch.

    The encoded prompt ids are the ids evaluation gives the model (they are tokenised by
    the call generation makes, see :func:`retain.data.encoding.encode_examples`),
    so a batch whose prompt ids differ from them was changed by the collator.
    ``collate`` replaces the collator ``collator`` names (DPO's, which returns the labels
    its loss reads: the ids with everything but the answer masked).
    """
    collate = collate or build_collator(tokenizer, collator)
    eos = tokenizer.eos_token_id
    checks = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        batch = collate([row.feature() for row in rows])
        for index, row in enumerate(rows):
            ids, labels = batch["input_ids"][index], batch["labels"][index]
            real = batch["attention_mask"][index].bool()
            length = int(real.sum())
            ends_with_eos = eos is not None and length > 0 and int(ids[length - 1]) == eos
            prompt_end = min(row.prompt_tokens, length)
            # Earlier assistant turns are trained on purpose (data.train_turns: all), end-of-turn included.
            answer_turn = torch.zeros(len(ids), dtype=torch.bool)
            for start, end in row.earlier_answers:
                answer_turn[start:end] = True
            trained = labels != IGNORE_INDEX
            checks.append(RowCheck(
                line=row.line,
                supervised=int(trained[real].sum()),
                eos_masked=ends_with_eos and int(labels[length - 1]) == IGNORE_INDEX,
                no_eos=not ends_with_eos and not row.truncated,
                # Position 0 is never a target (labels shift by one), so it is not counted.
                prompt_trained=int((trained & ~answer_turn)[1:prompt_end].sum()),
                padding_trained=int(trained[~real].sum()),
                prompt_differs=ids[:prompt_end].tolist() != row.input_ids[:prompt_end],
                early_eos=0 if eos is None else int(((ids == eos) & trained & ~answer_turn)[: length - 1].sum()),
            ))
    return checks


def masked_labels(rows: Sequence[RowCheck]) -> Finding | None:
    """Rows with no supervised token train on nothing; all of them, and training is void."""
    if not rows:
        return None
    empty = [row for row in rows if row.supervised == 0]
    counts = sorted(row.supervised for row in rows)
    if not empty:
        return Finding(
            code="supervised_tokens", severity="info",
            title=f"supervised tokens per row: min {counts[0]:,}, median "
            f"{counts[len(counts) // 2]:,}, max {counts[-1]:,}",
            count=len(rows), fix="none needed",
            details={"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1],
                     "total": sum(counts)},
        )
    every = len(empty) == len(rows)
    return Finding(
        code="labels_all_masked",
        severity="blocker" if every else "warning",
        title=f"{len(empty):,} of {len(rows):,} rows have every label masked (-100): "
        + ("training would learn nothing" if every else "they train on nothing"),
        count=len(empty),
        fix="raise data.max_length so the answers survive truncation, shorten the prompts, "
        "or drop rows with empty answers; check that the collator keeps retain's labels",
        examples=example_lines(empty, "0 supervised tokens"),
        details={"share": len(empty) / len(rows)},
    )


def eos_checks(
    rows: Sequence[RowCheck], tokenizer: PreTrainedTokenizerBase, config: RetainConfig
) -> Finding | None:
    """The EOS ending each answer must be in the batch and carry a loss, or no model stops."""
    if tokenizer.eos_token_id is None:
        return Finding(
            code="no_eos_token", severity="blocker",
            title="the tokenizer has no EOS token: answers cannot end, so generation never stops",
            count=len(rows), fix="use a tokenizer with an eos_token (set tokenizer.eos_token and "
            "the model's eos_token_id)",
        )
    masked = [row for row in rows if row.eos_masked]
    if masked:
        trap = tokenizer.pad_token_id == tokenizer.eos_token_id
        cause = (f"pad token = EOS ('{tokenizer.eos_token}') and the {config.train.collator} "
                 "collator masks every pad-id token" if trap else "the collator masks it")
        return Finding(
            code="eos_masked", severity="blocker",
            title=f"EOS carries no loss in {len(masked):,} of {len(rows):,} rows: {cause}; the "
            "model never learns to stop and will ramble or emit nothing useful",
            count=len(masked),
            fix="use train.collator: completion (masks padding by position), or a pad token "
            "distinct from EOS (model.pad_token: auto keeps the tokenizer's own)",
            examples=example_lines(masked, "EOS label = -100"),
            details={"pad_is_eos": trap, "collator": config.train.collator},
        )
    missing = [row for row in rows if row.no_eos]
    if missing:
        return Finding(
            code="eos_missing", severity="blocker",
            title=f"{len(missing):,} of {len(rows):,} rows do not end with EOS "
            f"('{tokenizer.eos_token}'): the model never sees an answer end",
            count=len(missing),
            fix="let retain append EOS (do not strip it in a custom collator)",
            examples=example_lines(missing, "no EOS"),
        )
    return None


def untrained_turns(encoded: Sequence[Encoded]) -> Finding | None:
    """Rows whose earlier assistant turns ``data.train_turns: all`` cannot train: the chat
    template renders them differently once the conversation goes on, so they are not in
    the prompt the model is given as they were written."""
    rows = [row for row in encoded if row.untrained_turns]
    if not rows:
        return None
    return Finding(
        code="earlier_turns_untrained", severity="warning",
        title=f"{len(rows):,} chat rows train their last assistant turn only: the chat template "
        f"renders their {sum(row.untrained_turns for row in rows):,} earlier assistant turns "
        "differently later in the conversation",
        count=len(rows),
        fix="split such conversations into one row per assistant turn, or set data.train_turns: last",
        examples=example_lines(rows, lambda row: f"{row.untrained_turns} earlier turns untrained"),
    )


def prompt_masking(rows: Sequence[RowCheck], loss_on: str) -> Finding | None:
    """With ``loss_on: response`` the prompt must carry no loss."""
    trained = [row for row in rows if row.prompt_trained]
    if loss_on != "response" or not trained:
        return None
    return Finding(
        code="prompt_trained", severity="blocker",
        title=f"train.loss_on is response but prompt tokens carry a loss in {len(trained):,} of "
        f"{len(rows):,} rows: the collator rebuilt the labels",
        count=len(trained),
        fix="use train.collator: completion, or set train.loss_on: all if that is what you want",
        examples=example_lines(trained, lambda row: f"{row.prompt_trained} prompt tokens trained"),
    )


def padding_trained(rows: Sequence[RowCheck]) -> Finding | None:
    """Padding that carries a loss teaches the model to emit padding."""
    trained = [row for row in rows if row.padding_trained]
    if not trained:
        return None
    return Finding(
        code="padding_trained", severity="blocker",
        title=f"padding carries a loss in {len(trained):,} of {len(rows):,} rows: the model "
        "learns to emit pad tokens",
        count=len(trained),
        fix="use train.collator: completion (pads labels with -100)",
        examples=example_lines(trained, lambda row: f"{row.padding_trained} pad tokens trained"),
    )


def early_eos(rows: Sequence[RowCheck], tokenizer: PreTrainedTokenizerBase) -> Finding | None:
    """An EOS trained before the end of a row teaches the model to stop there, e.g. at once."""
    early = [row for row in rows if row.early_eos]
    if not early:
        return None
    return Finding(
        code="early_eos", severity="blocker",
        title=f"{len(early):,} of {len(rows):,} rows train an EOS ('{tokenizer.eos_token}') before "
        "their end, e.g. a prompt that ends with its own EOS under loss_on: all: the model learns "
        "to stop early, and answers nothing",
        count=len(early),
        fix=f"remove '{tokenizer.eos_token}' from prompts and answers (retain appends the one EOS "
        "each row needs), or train with loss_on: response",
        examples=example_lines(early, lambda row: f"{row.early_eos} early EOS"),
    )


def example_lines(rows: Sequence[Any], text: str | Callable[[Any], str]) -> tuple[dict[str, Any], ...]:
    """Returns a finding's examples: the first rows' lines, each with ``text`` (or ``text(row)``)."""
    return tuple({"line": row.line, "text": text(row) if callable(text) else text}
                 for row in rows[:MAX_EXAMPLES])


def loss_sample(row: Encoded, tokenizer: PreTrainedTokenizerBase, collator: str) -> list[tuple[str, bool]]:
    """Returns the row as the collator hands it to the loss, as ``(text, trained)`` pieces."""
    batch = build_collator(tokenizer, collator)([row.feature()])
    ids = batch["input_ids"][0].tolist()
    trained = [label != IGNORE_INDEX for label in batch["labels"][0].tolist()]
    pieces: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or trained[end] != trained[start]:
            pieces.append((tokenizer.decode(ids[start:end]), trained[start]))
            start = end
    return pieces
