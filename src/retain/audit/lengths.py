"""Token lengths: rows the model's tokenizer (and chat template) makes longer than
``data.max_length`` or the model's context, how many lose part or all of their answer,
and length percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from retain.audit.findings import MAX_EXAMPLES, Finding, excerpt
from retain.data.encoding import encode_examples
from retain.data.prompting import PromptFormat
from retain.data.rows import Example


def token_lengths(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    context_window: int | None = None,
    chat_template: str = "auto",
) -> list[Finding]:
    """Measures rows in tokens as training will see them, and what ``max_length`` cuts.

    Rows are encoded exactly as training encodes them
    (:func:`retain.data.encoding.encode_examples`: chat rows through the tokenizer's
    chat template when it has one, EOS appended); rows the template rejects are left to
    :func:`format_consistency`. A preference pair counts with the longer of its chosen
    and rejected answers (:mod:`retain.data.pairs` encodes each the same way).

    Args:
        examples: The training rows.
        tokenizer: The model's tokenizer.
        max_length: ``data.max_length``: tokens kept per row.
        context_window: The model's context length, if known.
        chat_template: ``model.chat_template`` (``auto``, ``none`` or a Jinja file).

    Returns:
        ``too_long`` (a warning; a blocker if some row's prompt alone fills
        ``max_length``, so it loses its whole answer), ``token_lengths`` (info: p50, p95,
        max) and ``context_window`` (a warning when ``context_window < max_length``).
        Empty for no examples.
    """
    if not examples:
        return []
    prompt_format = PromptFormat.for_tokenizer(tokenizer, chat_template)
    encoded, _ = encode_examples(examples, tokenizer, prompt_format, max_length=max_length)
    if not encoded:  # the chat template rejects every row; format_consistency says why
        return []
    rendered = {row.line for row in encoded}
    examples = [example for example in examples if example.line in rendered]
    total_tokens = [row.full_tokens for row in encoded]
    pairs = [example.rejected_example() for example in examples if example.is_preference]
    if pairs:  # a preference row is as long as the longer of its two answers
        rejected, _ = encode_examples(pairs, tokenizer, prompt_format, max_length=max_length)
        longer = {row.line: row.full_tokens for row in rejected}
        total_tokens = [max(row.full_tokens, longer.get(row.line, 0)) for row in encoded]
    findings = [
        too_long(examples, [row.prompt_tokens for row in encoded], total_tokens, max_length),
        _length_summary(total_tokens, max_length),
        context_window_exceeded(total_tokens, max_length, context_window),
    ]
    return [finding for finding in findings if finding is not None]


def too_long(
    examples: Sequence[Example], prompt_tokens: Sequence[int], total_tokens: Sequence[int],
    max_length: int,
) -> Finding | None:
    """Returns the rows ``max_length`` cuts, split by whether any answer survives."""
    cut = [i for i, total in enumerate(total_tokens) if total > max_length]
    if not cut:
        return None
    whole = [i for i in cut if prompt_tokens[i] >= max_length]
    share = len(cut) / len(examples)
    return Finding(
        code="too_long",
        severity="blocker" if whole else "warning",
        title=f"{len(cut):,} of {len(examples):,} rows ({share:.1%}) are longer than "
        f"max_length {max_length:,} tokens: {len(cut) - len(whole):,} lose part of their "
        f"answer, {len(whole):,} all of it",
        count=len(cut),
        fix="raise data.max_length (within the model's context), shorten the prompts, or "
        "drop these rows; a row without its answer trains on nothing",
        examples=tuple(
            {"line": examples[i].line, "text": excerpt(examples[i].prompt),
             "prompt_tokens": prompt_tokens[i], "tokens": total_tokens[i]}
            for i in sorted(cut, key=lambda i: -total_tokens[i])[:MAX_EXAMPLES]
        ),
        details={"max_length": max_length, "share": share, "lose_part": len(cut) - len(whole),
                 "lose_all": len(whole)},
    )


def _length_summary(total_tokens: Sequence[int], max_length: int) -> Finding:
    """Returns the percentiles of row lengths in tokens."""
    ordered = sorted(total_tokens)
    p50, p95 = _percentile(ordered, 50), _percentile(ordered, 95)
    return Finding(
        code="token_lengths",
        severity="info",
        title=f"row lengths in tokens: p50 {p50:,}, p95 {p95:,}, max {ordered[-1]:,} "
        f"(max_length {max_length:,})",
        count=len(ordered),
        fix="none needed; a max_length near p95-max wastes little padding and cuts little",
        details={"p50": p50, "p95": p95, "max": ordered[-1], "mean": sum(ordered) / len(ordered),
                 "max_length": max_length},
    )


def context_window_exceeded(
    total_tokens: Sequence[int], max_length: int, context_window: int | None
) -> Finding | None:
    """Returns a warning when ``max_length`` exceeds the model's context window."""
    if context_window is None or context_window >= max_length:
        return None
    beyond = sum(total > context_window for total in total_tokens)
    return Finding(
        code="context_window",
        severity="warning",
        title=f"max_length {max_length:,} exceeds the model's context window of "
        f"{context_window:,} tokens ({beyond:,} rows are longer than the window)",
        count=beyond,
        fix=f"set data.max_length to at most {context_window:,}",
        details={"max_length": max_length, "context_window": context_window,
                 "rows_beyond_window": beyond},
    )


def _percentile(ordered: Sequence[int], percent: float) -> int:
    """Returns the nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]
