"""Log-likelihood of continuations, batched, with each prompt computed once.

Ranking options by log-likelihood is the cheap view of a probe: one forward pass over
the prompt instead of a generation loop. lm-evaluation-harness runs ``prompt + option``
as one full sequence per option; here the prompt costs one pass however many options it
has. Single-token options are read straight off the prompt's last logits; for longer
ones there are two strategies:

* ``packed`` (sdpa and eager attention): prompts in token order, a batch's prompts and
  options become prefix trees of about ``ROW_TOKENS`` tokens per row (prompts share
  their common start, each prompt's options follow it and share their common prefixes). A 4-D attention
  mask lets every token see its own ancestors only, and position ids are depths in the
  tree, so each path is scored exactly as the plain ``prompt + option`` sequence. One
  forward pass per batch, almost no padding, no cache copies.
* ``cache`` (any attention, e.g. flash-attention, which takes no custom masks): the
  prompts run first and their key/value cache is repeated for each option's short
  second pass.

Both give the log-likelihoods of the plain ``prompt + option`` sequence (tested against
an unbatched reference). (Written by hand: no maintained library exposes shared-prefix
option scoring for Hugging Face models.)

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

from retain.data.prompting import PromptFormat
from retain.evaluation.generation import left_pad
from retain.evaluation.packing import score_batch_packed
from retain.evaluation.prefix import StartCache, cache_keyword, returned_cache, shared_start
from retain.evaluation.probes import ProbeScore, ProbeSuite
from retain.evaluation.requests import Continuation, EncodedRequest, encode_requests
from retain.hardware import batches_with_backoff
from retain.progress import task


@torch.inference_mode()
def score_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[str, Sequence[str]]],
    batch_size: int = 32,
    add_special_tokens: bool = True,
    strategy: str = "auto",
    label: str = "log-likelihood",
) -> list[list[Continuation]]:
    """Scores every continuation of every ``(context, continuations)`` request.

    Args:
        model: A causal LM; evaluated in eval mode, its previous mode restored after.
        tokenizer: Its tokenizer.
        requests: Prompts with their candidate continuations (written as they follow the
            prompt, delimiter included).
        batch_size: Prompts per forward pass; their continuations share the pass's cache.
            Halved while the device runs out of memory.
        add_special_tokens: False when the prompt is already chat-formatted (the template
            writes BOS itself).
        strategy: ``packed``, ``cache``, or ``auto`` (packed where the attention
            implementation takes a custom 4-D mask, cache elsewhere).
        label: What the progress bar says (shown when the command asked: :mod:`retain.progress`).

    Returns:
        For each request, one :class:`Continuation` per continuation, in input order.
        The result does not depend on ``batch_size`` beyond float rounding.
    """
    encoded = [
        EncodedRequest(index, context, continuations)
        for index, (context, continuations) in enumerate(encode_requests(tokenizer, requests, add_special_tokens))
    ]
    limit = getattr(model.config, "max_position_embeddings", None)
    encoded = [_truncate(request, limit) for request in encoded]
    packed = _packed(model, strategy)
    # Packed: prompts in token order, so those that start alike share a row's tree.
    # Cache: longest first, so prompts of similar length share a batch and pad little.
    encoded.sort(key=(lambda request: request.context) if packed else (lambda request: -len(request.context)))
    results: list[list[Continuation]] = [[] for _ in requests]
    # Packed: the start every prompt shares (a chat header) runs once (retain.evaluation.prefix).
    shared = shared_start([request.context for request in encoded]) if packed else []
    encoded = [EncodedRequest(request.index, request.context[len(shared):], request.continuations)
               for request in encoded]
    was_training = model.training
    try:
        model.eval()
        start = StartCache(model, shared) if shared else None

        def score_batch(batch: list[EncodedRequest]) -> list[list[Continuation]]:
            if packed:
                return score_batch_packed(model, tokenizer, batch, start)
            return _score_batch(model, tokenizer, batch)

        # Out of memory halves the batch: the scores are the same up to float rounding.
        with task(label, len(encoded)) as advance:
            for batch, scored in batches_with_backoff(encoded, batch_size, score_batch,
                                                      owner=model, kind="loglik"):
                for request, scores in zip(batch, scored):
                    results[request.index] = scores
                advance(len(batch))
    finally:
        model.train(was_training)
    return results


def _packed(model: PreTrainedModel, strategy: str) -> bool:
    """Returns whether to use the packed strategy (see the module docstring)."""
    if strategy not in ("auto", "packed", "cache"):
        raise ValueError(f"unknown strategy {strategy!r}: use auto, packed or cache")
    if strategy != "auto":
        return strategy == "packed"
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


def _truncate(request: EncodedRequest, limit: int | None) -> EncodedRequest:
    """Drops the oldest prompt tokens so the longest continuation still fits."""
    if limit is None:
        return request
    longest = max(len(ids) for ids in request.continuations)
    if longest >= limit:
        raise ValueError(f"a continuation of {longest} tokens does not fit the model's {limit} positions")
    room = limit - longest + 1  # the last continuation token is never fed to the model
    if len(request.context) <= room:
        return request
    return EncodedRequest(request.index, request.context[-room:], request.continuations)


def _score_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: list[EncodedRequest]
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
    cache = returned_cache(output)
    rest = _score_tails(model, cache, mask, batch, rows, pad_id) if rows else {}
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
    batch: list[EncodedRequest],
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
        use_cache=False,
        **{cache_keyword(model): cache},
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
    label: str = "log-likelihood",
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
        model, tokenizer, requests, batch_size, prompt_format.add_special_tokens, label=label
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
        label=f"{suite.name} by log-likelihood",
    )
    scores = []
    for method, pick in (("loglik", "choice"), ("loglik_norm", "choice_norm")):
        chosen = [item.options[getattr(result, pick)] for item, result in zip(items, ranked)]
        correct = [choice == item.answer for item, choice in zip(items, chosen)]
        scores.append(ProbeScore.from_flags(suite, items, method, correct, chosen))
    return scores[0], scores[1]
