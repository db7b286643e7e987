"""Preference pairs as token ids: the prompt once, the chosen and the rejected answer after it.

DPO (``train.objective: dpo``) trains on rows of :mod:`retain.data.schemas`' preference
format. Each answer is encoded exactly as :func:`retain.data.encoding.encode_examples`
encodes a training row (the prompt rendered as evaluation renders it and tokenised alone,
the answer the rest of ``prompt + answer``, EOS appended), so the prompt DPO trains on is
token for token the prompt evaluation and the guards ask, and the audit and the doctor
measure the very ids training gets. The pairs then go to TRL's ``DPOTrainer`` as its
``prompt_ids``/``chosen_ids``/``rejected_ids`` columns, which its
``DataCollatorForPreference`` batches: the loss is on the answers' tokens only, padding
masked by position, so a pad token equal to EOS is harmless.

A row longer than ``data.max_length`` loses its end, as an SFT row does; a row whose
prompt alone fills it has no answer left, and is dropped (TRL drops those too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from retain.data.encoding import Encoded, encode_examples
from retain.data.prompting import PromptFormat
from retain.data.rows import Example, Problem
from retain.errors import DataError


@dataclass(frozen=True)
class EncodedPair:
    """One preference row as token ids.

    Attributes:
        line: The row's line (or row number) in its file.
        prompt_ids: The rendered prompt's tokens, cut to ``max_length``.
        chosen_ids: The chosen answer's tokens and EOS, cut so that prompt and answer fit
            ``max_length``.
        rejected_ids: The rejected answer's, likewise.
        chosen: The chosen answer as a training row (prompt, answer, labels on the answer),
            what the doctor reads.
        rejected: The rejected answer as a training row.
    """

    line: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen: Encoded
    rejected: Encoded

    @property
    def full_tokens(self) -> int:
        """Tokens of the longer of the two rows before truncation: the length that counts."""
        return max(self.chosen.full_tokens, self.rejected.full_tokens)

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences training computes."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def trainable(self) -> bool:
        """True when both answers kept at least one token after truncation."""
        return bool(self.chosen_ids) and bool(self.rejected_ids)

    def feature(self) -> dict[str, list[int]]:
        """Returns the pair as TRL's ``DataCollatorForPreference`` takes it."""
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}


def preference_rows(examples: Sequence[Example]) -> list[Example]:
    """Returns the preference pairs among ``examples``."""
    return [example for example in examples if example.is_preference]


def check_rows_fit(examples: Sequence[Example], objective: str, path: str, setting: str) -> None:
    """Refuses training rows that the objective cannot train: preference rows under ``sft``,
    rows without a rejected answer under ``dpo``.

    Raises:
        DataError: Naming the first such row's line and the setting to change.
    """
    if objective == "dpo":
        other = next((example for example in examples if not example.is_preference), None)
        if other is not None:
            raise DataError(
                f"train.objective dpo trains on preference rows, and this row is in {other.schema}",
                file=path, line=other.line, field="rejected",
                fix=f"give every row of {setting} a prompt, a chosen and a rejected answer, or set "
                "train.objective: sft",
            )
        return
    pair = next((example for example in examples if example.is_preference), None)
    if pair is not None:
        raise DataError(
            f"a preference row (prompt/chosen/rejected) in {setting}, which train.objective {objective} cannot "
            "train: it has two answers", file=path, line=pair.line, field="rejected",
            fix="set train.objective: dpo to train on preference pairs, or give the rows one answer "
            "(prompt/response)",
        )


def encode_pairs(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    *,
    max_length: int,
) -> tuple[list[EncodedPair], list[Problem]]:
    """Encodes preference rows for DPO, the chosen and the rejected answer each as
    :func:`~retain.data.encoding.encode_examples` encodes a row (the final answer alone
    carries a loss).

    Args:
        examples: Preference rows.
        tokenizer: The model's tokenizer, after ``prepare_tokenizer``.
        prompt_format: How prompts are rendered (the one evaluation uses).
        max_length: ``data.max_length``: tokens kept of prompt and answer together.

    Returns:
        The pairs in order (including those truncation left without an answer: see
        :attr:`EncodedPair.trainable`), and the rows the chat template rejected.

    Raises:
        ValueError: If a row is not a preference row.
    """
    chosen, problems = encode_examples(examples, tokenizer, prompt_format, max_length=max_length,
                                       loss_on="response", train_turns="last")
    rejected, more = encode_examples([example.rejected_example() for example in examples], tokenizer,
                                     prompt_format, max_length=max_length, loss_on="response",
                                     train_turns="last")
    refused = {problem.line for problem in (*problems, *more)}
    problems = problems + [problem for problem in more if problem.line not in {p.line for p in problems}]
    by_line = {row.line: row for row in rejected}
    pairs = []
    for row in chosen:
        if row.line in refused:
            continue
        other = by_line[row.line]
        prompt = row.input_ids[: row.prompt_tokens]
        pairs.append(EncodedPair(line=row.line, prompt_ids=prompt, chosen_ids=row.input_ids[row.prompt_tokens:],
                                 rejected_ids=other.input_ids[other.prompt_tokens:], chosen=row, rejected=other))
    return pairs, problems
