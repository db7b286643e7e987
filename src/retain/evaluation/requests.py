"""What log-likelihood scoring is asked: a continuation of a context, and both tokenised
the way generation tokenises them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Continuation:
    """The score of one continuation given its prompt.

    Attributes:
        logprob: Sum of the log-probabilities of the continuation's tokens.
        tokens: Number of continuation tokens scored.
        greedy: True when every continuation token is the model's top choice.
    """

    logprob: float
    tokens: int
    greedy: bool


@dataclass(frozen=True)
class EncodedRequest:
    """One request in token ids: a prompt and the continuations that follow it."""

    index: int
    context: list[int]
    continuations: list[list[int]]


def encode_request(
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    continuations: Sequence[str],
    add_special_tokens: bool = True,
) -> tuple[list[int], list[list[int]]]:
    """Returns the prompt's ids and each continuation's ids, split as lm-eval splits them.

    Raises:
        ValueError: If a continuation encodes to no tokens.
    """
    return encode_requests(tokenizer, [(context, continuations)], add_special_tokens)[0]


def encode_requests(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[str, Sequence[str]]],
    add_special_tokens: bool = True,
) -> list[tuple[list[int], list[list[int]]]]:
    """Encodes many requests at once (one batched call per kind of text).

    Raises:
        ValueError: If a continuation encodes to no tokens.
    """
    stripped = [context.rstrip() for context, _ in requests]
    wholes = [
        text + context[len(text) :] + continuation
        for text, (context, continuations) in zip(stripped, requests)
        for continuation in continuations
    ]
    contexts = tokenizer(stripped, add_special_tokens=add_special_tokens)["input_ids"] if stripped else []
    encoded_wholes = iter(tokenizer(wholes, add_special_tokens=add_special_tokens)["input_ids"] if wholes else [])
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for text, context_ids, (_, continuations) in zip(stripped, contexts, requests):
        if not context_ids:
            # Nothing to condition on: start from BOS (or EOS), as lm-eval does.
            context_ids = [start]
        continuation_ids = []
        for continuation in continuations:
            whole = next(encoded_wholes)
            if text:
                ids = whole[len(context_ids) :]
            else:  # the continuation alone, after the start token
                ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"continuation {continuation!r} encodes to no tokens")
            continuation_ids.append(list(ids))
        encoded.append((list(context_ids), continuation_ids))
    return encoded
