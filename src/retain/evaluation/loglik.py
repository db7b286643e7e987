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

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.data.prompting import PromptFormat
from retain.evaluation.generation import left_pad
from retain.evaluation.probes import ProbeScore, ProbeSuite
from retain.hardware import batches_with_backoff


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


@torch.inference_mode()
def score_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[str, Sequence[str]]],
    batch_size: int = 32,
    add_special_tokens: bool = True,
    strategy: str = "auto",
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

    Returns:
        For each request, one :class:`Continuation` per continuation, in input order.
        The result does not depend on ``batch_size`` beyond float rounding.
    """
    encoded = [
        _Encoded(index, context, continuations)
        for index, (context, continuations) in enumerate(encode_requests(tokenizer, requests, add_special_tokens))
    ]
    limit = getattr(model.config, "max_position_embeddings", None)
    encoded = [_truncate(request, limit) for request in encoded]
    packed = _packed(model, strategy)
    # Packed: prompts in token order, so those that start alike share a row's tree.
    # Cache: longest first, so prompts of similar length share a batch and pad little.
    encoded.sort(key=(lambda request: request.context) if packed else (lambda request: -len(request.context)))
    results: list[list[Continuation]] = [[] for _ in requests]
    score_batch = _score_batch_packed if packed else _score_batch
    was_training = model.training
    model.eval()
    try:
        # Out of memory halves the batch: the scores are the same up to float rounding.
        for batch, scored in batches_with_backoff(encoded, batch_size, lambda batch: score_batch(model, tokenizer, batch),
                                                  owner=model, kind="loglik"):
            for request, scores in zip(batch, scored):
                results[request.index] = scores
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


# Tokens per packed row (more when one request needs more). Narrow rows waste padding,
# wide rows waste attention over token pairs the mask hides. General suite, 90M-parameter
# Llama, 2 CPU cores, best of 2: 32 -> 13.4 s, 64 -> 11.6 s, 96 -> 9.8 s, 128 -> 10.3 s,
# 256 -> 12.4 s.
ROW_TOKENS = 96


class _TokenTree:
    """The token sequences of one packed row as a prefix tree, one column per node.

    Sequences that start alike share those nodes: the start token and a template such
    as ``Question:`` across prompts, a few-shot preamble shared by every question, and
    options that begin alike (numbers tokenised digit by digit) after their prompt.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.depth: list[int] = []  # position id of each node
        self.parent: list[int] = []  # -1 for a sequence's first token
        self._children: list[dict[int, int]] = []
        self._roots: dict[int, int] = {}

    def add(self, ids: Sequence[int], after: int = -1) -> list[int]:
        """Adds ``ids`` after node ``after`` (-1: from the root); returns their nodes."""
        path = []
        for token in ids:
            table = self._roots if after == -1 else self._children[after]
            node = table.get(token)
            if node is None:
                node = len(self.tokens)
                table[token] = node
                self.tokens.append(token)
                self.depth.append(0 if after == -1 else self.depth[after] + 1)
                self.parent.append(after)
                self._children.append({})
            path.append(node)
            after = node
        return path

    def new_nodes(self, request: _Encoded) -> int:
        """Returns how many nodes adding ``request`` would create (nothing is added)."""
        fed = {tuple(ids[:end]) for ids in request.continuations for end in range(1, len(ids))}
        node = -1
        for depth, token in enumerate(request.context):
            child = (self._roots if node == -1 else self._children[node]).get(token)
            if child is None:  # the rest of the prompt is new, and so is every option node
                return len(request.context) - depth + len(fed)
            node = child
        return sum(1 for prefix in fed if self._find(prefix, node) is None)

    def _find(self, ids: Sequence[int], after: int) -> int | None:
        """Returns the node of ``ids`` after node ``after``, or None if absent."""
        for token in ids:
            child = self._children[after].get(token)
            if child is None:
                return None
            after = child
        return after


@dataclass
class _Placed:
    """Where a request's predictions are read: its row, and per continuation the column
    predicting each token (the prompt's last node, then the nodes of its prefixes)."""

    row: int
    columns: list[list[int]]


def _pack(batch: list[_Encoded]) -> tuple[list[_TokenTree], list[_Placed]]:
    """Packs requests into prefix-tree rows of at most ``ROW_TOKENS`` nodes each (or the
    size of the largest request, if larger)."""
    cap = max([ROW_TOKENS] + [len(r.context) + sum(len(c) - 1 for c in r.continuations) for r in batch])
    rows: list[_TokenTree] = [_TokenTree()]
    placed = []
    for request in batch:
        if len(rows[-1].tokens) + rows[-1].new_nodes(request) > cap:
            rows.append(_TokenTree())
        tree = rows[-1]
        prompt_end = tree.add(request.context)[-1]
        columns = []
        for continuation in request.continuations:
            path = tree.add(continuation[:-1], after=prompt_end)  # the last token is never fed
            columns.append([prompt_end, *path])
        placed.append(_Placed(len(rows) - 1, columns))
    return rows, placed


def _score_batch_packed(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: list[_Encoded]
) -> list[list[Continuation]]:
    """Scores a batch packed as prefix trees: every token sees its own ancestors only."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, placed = _pack(batch)
    length = max(len(tree.tokens) for tree in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), length), dtype=np.int64)
    allowed = np.broadcast_to(np.eye(length, dtype=bool), (len(rows), length, length)).copy()
    for row, tree in enumerate(rows):
        ids[row, : len(tree.tokens)] = tree.tokens
        positions[row, : len(tree.tokens)] = tree.depth
        _see_ancestors(allowed[row], tree)
    # Logits only where a prediction is read: the vocabulary projection is costly.
    kept = sorted({column for item in placed for columns in item.columns for column in columns})
    index_of = {column: index for index, column in enumerate(kept)}
    logits = model(
        input_ids=torch.from_numpy(ids).to(device),
        attention_mask=_attention_mask(torch.from_numpy(allowed), model).to(device),
        position_ids=torch.from_numpy(positions).to(device),
        use_cache=False,
        logits_to_keep=torch.tensor(kept, device=device),
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (rows, kept, vocab)
    # Every scored token at once: its row, its logits column and its id.
    rows_of, columns_of, targets, owners = [], [], [], []
    for number, (request, item) in enumerate(zip(batch, placed)):
        for option, (continuation, columns) in enumerate(zip(request.continuations, item.columns)):
            rows_of += [item.row] * len(continuation)
            columns_of += [index_of[column] for column in columns]
            targets += continuation
            owners += [(number, option)] * len(continuation)
    where = (torch.tensor(rows_of, device=device), torch.tensor(columns_of, device=device))
    target = torch.tensor(targets, device=device)
    picked = logprobs[where].gather(-1, target.unsqueeze(-1)).squeeze(-1).tolist()
    hits = (logprobs[where].argmax(-1) == target).tolist()
    totals: dict[tuple[int, int], list] = {}
    for owner, value, hit in zip(owners, picked, hits):
        entry = totals.setdefault(owner, [0.0, 0, True])
        entry[0] += value
        entry[1] += 1
        entry[2] = entry[2] and hit
    return [
        [Continuation(*totals[(number, option)]) for option in range(len(request.continuations))]
        for number, request in enumerate(batch)
    ]


def _see_ancestors(allowed: np.ndarray, tree: _TokenTree) -> None:
    """Sets ``allowed[node, a]`` for every ancestor ``a`` of every node, level by level."""
    depth = np.asarray(tree.depth)
    parent = np.asarray(tree.parent)
    for level in range(1, int(depth.max(initial=0)) + 1):
        nodes = np.flatnonzero(depth == level)
        allowed[nodes] |= allowed[parent[nodes]]


def _attention_mask(allowed: torch.Tensor, model: PreTrainedModel) -> torch.Tensor:
    """Returns ``allowed`` (rows, query, key) as the 4-D mask the attention takes:
    boolean for sdpa (cheaper), additive (0 or the dtype's minimum) for eager."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        return allowed[:, None]
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


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
    # ``cache`` since transformers 5.2x; reading the old name there warns, so it is the fallback.
    cache = output["cache"] if "cache" in output else output.past_key_values  # noqa: SIM401
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


def _cache_keyword(model: PreTrainedModel) -> str:
    """The name ``forward`` takes the key/value cache by: ``cache`` since transformers
    5.2x renamed it, ``past_key_values`` before (the old name warns, and goes in 5.40)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of(type(inner))


@functools.cache
def _cache_keyword_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


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
        use_cache=False,
        **{_cache_keyword(model): cache},
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
