"""Log-likelihood of continuations, batched, with each prompt computed once.

Ranking options by log-likelihood is the cheap view of a probe: one forward pass over
the prompt instead of a generation loop. To be cheap for real, every prompt of a batch
is run once (left-padded, so all prompts end at the same position) and its key/value
cache is then shared by all of its options: single-token options are read straight off
the prompt's last logits, longer options run as a second, short pass over the cache.
lm-evaluation-harness runs ``prompt + option`` as one full sequence per option; here
the prompt costs one pass however many options it has. (Written by hand: no
maintained library exposes shared-prefix option scoring for Hugging Face models.)

Tokenisation follows lm-evaluation-harness so that both score the same tokens:
trailing whitespace of the prompt moves to the continuation, the prompt is encoded
alone, and the continuation is what the encoding of ``prompt + continuation`` has
beyond the prompt's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.evaluation.generation import left_pad
from retain.evaluation.probes import ProbeScore, ProbeSuite
from retain.evaluation.prompting import PromptFormat


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
class _Encoded:
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
    stripped = context.rstrip()
    moved = context[len(stripped) :]
    context_ids = tokenizer(stripped, add_special_tokens=add_special_tokens)["input_ids"]
    if not context_ids:
        # Nothing to condition on: start from BOS (or EOS), as lm-eval does.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        context_ids = [start]
    continuation_ids = []
    for continuation in continuations:
        whole = tokenizer(stripped + moved + continuation, add_special_tokens=add_special_tokens)
        ids = whole["input_ids"][len(context_ids) :] if stripped else whole["input_ids"]
        if not ids:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        continuation_ids.append(list(ids))
    return list(context_ids), continuation_ids


@torch.inference_mode()
def score_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[str, Sequence[str]]],
    batch_size: int = 32,
    add_special_tokens: bool = True,
) -> list[list[Continuation]]:
    """Scores every continuation of every ``(context, continuations)`` request.

    Args:
        model: A causal LM; evaluated in eval mode, its previous mode restored after.
        tokenizer: Its tokenizer.
        requests: Prompts with their candidate continuations (written as they follow the
            prompt, delimiter included).
        batch_size: Prompts per forward pass; their continuations share the pass's cache.
        add_special_tokens: False when the prompt is already chat-formatted (the template
            writes BOS itself).

    Returns:
        For each request, one :class:`Continuation` per continuation, in input order.
        The result does not depend on ``batch_size`` beyond float rounding.
    """
    encoded = [
        _Encoded(index, *encode_request(tokenizer, context, options, add_special_tokens))
        for index, (context, options) in enumerate(requests)
    ]
    limit = getattr(model.config, "max_position_embeddings", None)
    encoded = [_truncate(request, limit) for request in encoded]
    # Longest first: similar lengths share a batch, so little padding is computed.
    encoded.sort(key=lambda request: -len(request.context))
    results: list[list[Continuation]] = [[] for _ in requests]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            for request, scores in zip(batch, _score_batch(model, tokenizer, batch)):
                results[request.index] = scores
    finally:
        model.train(was_training)
    return results


def _truncate(request: _Encoded, limit: int | None) -> _Encoded:
    """Drops the oldest prompt tokens so the longest continuation still fits."""
    if limit is None:
        return request
    longest = max(len(ids) for ids in request.continuations)
    if longest >= limit:
        raise ValueError(f"a continuation of {longest} tokens does not fit the model's {limit} positions")
    room = limit - longest + 1  # the last continuation token is never fed to the model
    if len(request.context) <= room:
        return request
    return _Encoded(request.index, request.context[-room:], request.continuations)


def _score_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: list[_Encoded]
) -> list[list[Continuation]]:
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad([request.context for request in batch], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    needs_second_pass = any(len(c) > 1 for request in batch for c in request.continuations)
    output = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=needs_second_pass,
        logits_to_keep=1,
    )
    first = torch.log_softmax(output.logits[:, -1].float(), dim=-1)  # (batch, vocab)
    rows = [
        (row, option)
        for row, request in enumerate(batch)
        for option, continuation in enumerate(request.continuations)
        if len(continuation) > 1
    ]
    rest = _score_tails(model, output.past_key_values, mask, batch, rows, pad_id) if rows else {}
    scores: list[list[Continuation]] = []
    for row, request in enumerate(batch):
        item_scores = []
        for option, continuation in enumerate(request.continuations):
            head = first[row, continuation[0]].item()
            head_greedy = int(first[row].argmax()) == continuation[0]
            tail_logprob, tail_greedy = rest.get((row, option), (0.0, True))
            item_scores.append(
                Continuation(head + tail_logprob, len(continuation), head_greedy and tail_greedy)
            )
        scores.append(item_scores)
    return scores


def _score_tails(
    model: PreTrainedModel,
    cache,
    context_mask: torch.Tensor,
    batch: list[_Encoded],
    rows: list[tuple[int, int]],
    pad_id: int,
) -> dict[tuple[int, int], tuple[float, bool]]:
    """Scores tokens 2.. of multi-token continuations on top of the prompts' cache."""
    device = context_mask.device
    tails = [batch[row].continuations[option] for row, option in rows]
    length = max(len(tail) for tail in tails) - 1
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, tail in enumerate(tails):
        ids[index, : len(tail) - 1] = torch.tensor(tail[:-1])
        mask[index, : len(tail) - 1] = 1
    owner = torch.tensor([row for row, _ in rows], device=device)
    cache.reorder_cache(owner)  # one cache row per continuation, shared prompt computed once
    full_mask = torch.cat([context_mask[owner], mask.to(device)], dim=1)
    start = context_mask.sum(-1)[owner].unsqueeze(1)
    positions = start + torch.arange(length, device=device).unsqueeze(0)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=full_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=False,
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (rows, length, vocab)
    result: dict[tuple[int, int], tuple[float, bool]] = {}
    for index, (key, tail) in enumerate(zip(rows, tails)):
        targets = torch.tensor(tail[1:], device=device)
        steps = logprobs[index, : len(tail) - 1]
        picked = steps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        greedy = bool((steps.argmax(-1) == targets).all())
        result[key] = (float(picked.sum()), greedy)
    return result


@dataclass(frozen=True)
class RankedItem:
    """Log-likelihood ranking of one multiple-choice item.

    Attributes:
        scores: One score per option, in option order.
        choice: Option with the highest summed log-likelihood (lm-eval's ``acc``).
        choice_norm: Option with the highest log-likelihood per character of the option
            (lm-eval's ``acc_norm``): long options are not punished for their length.
    """

    scores: tuple[Continuation, ...]
    choice: int
    choice_norm: int


def rank_options(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    prompt_format: PromptFormat | None = None,
    batch_size: int = 32,
) -> list[RankedItem]:
    """Ranks each prompt's options by log-likelihood; ties go to the earlier option.

    Args:
        prompts: Raw prompts; ``prompt_format`` applies the chat template, if any.
        options: For each prompt, its options as plain answers (no delimiter).
        prompt_format: How prompts are rendered; :meth:`PromptFormat.raw` by default.
    """
    prompt_format = prompt_format or PromptFormat.raw()
    requests = [
        (prompt_format.render(prompt), [prompt_format.delimiter + option for option in choices])
        for prompt, choices in zip(prompts, options)
    ]
    scored = score_continuations(
        model, tokenizer, requests, batch_size, prompt_format.add_special_tokens
    )
    ranked = []
    for choices, scores in zip(options, scored):
        raw = [score.logprob for score in scores]
        per_char = [score.logprob / max(1, len(option)) for score, option in zip(scores, choices)]
        ranked.append(RankedItem(tuple(scores), _argmax(raw), _argmax(per_char)))
    return ranked


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda index: (values[index], -index))


def score_probes_by_loglik(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: ProbeSuite,
    prompt_format: PromptFormat | None = None,
    batch_size: int = 32,
) -> tuple[ProbeScore, ProbeScore] | None:
    """Ranks the options of every suite item that has them.

    Returns:
        ``(loglik, loglik_norm)`` scores over the items with options, or None when the
        suite has none (a generation-only suite).
    """
    items = suite.with_options()
    if not items:
        return None
    prompt_format = prompt_format or PromptFormat.raw(suite.delimiter)
    ranked = rank_options(
        model,
        tokenizer,
        [item.prompt for item in items],
        [item.options for item in items],
        prompt_format,
        batch_size,
    )
    scores = []
    for method, pick in (("loglik", "choice"), ("loglik_norm", "choice_norm")):
        chosen = [item.options[getattr(result, pick)] for item, result in zip(items, ranked)]
        correct = [choice == item.answer for item, choice in zip(items, chosen)]
        scores.append(ProbeScore.from_flags(suite, items, method, correct, chosen))
    return scores[0], scores[1]
