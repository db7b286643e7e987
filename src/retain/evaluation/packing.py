"""Scoring many continuations of shared prompts in one forward pass: requests packed into
rows as token trees, each token attending to its own ancestors only (a 4-D attention
mask), so a prompt shared by several options is computed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.evaluation.prefix import StartCache
from retain.evaluation.requests import Continuation, EncodedRequest

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

    def new_nodes(self, request: EncodedRequest) -> int:
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


def pack(batch: list[EncodedRequest]) -> tuple[list[_TokenTree], list[_Placed]]:
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


def score_batch_packed(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: list[EncodedRequest],
    start: StartCache | None = None,
) -> list[list[Continuation]]:
    """Scores a batch packed as prefix trees: every token sees its own ancestors only.

    With ``start``, every request's context continues that shared start (already cut
    from it): its cache is given to the pass, every token sees it, positions follow it.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, placed = pack(batch)
    length = max(len(tree.tokens) for tree in rows)
    shared = len(start) if start is not None else 0
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), length), dtype=np.int64)
    allowed = np.zeros((len(rows), length, shared + length), dtype=bool)
    allowed[:, :, :shared] = True
    allowed[:, :, shared:] = np.eye(length, dtype=bool)
    for row, tree in enumerate(rows):
        ids[row, : len(tree.tokens)] = tree.tokens
        positions[row, : len(tree.tokens)] = np.asarray(tree.depth) + shared
        _see_ancestors(allowed[row, :, shared:], tree)
    # Logits only where a prediction is read: the vocabulary projection is costly.
    kept = sorted({column for item in placed for columns in item.columns for column in columns})
    index_of = {column: index for index, column in enumerate(kept)}
    logits = model(
        input_ids=torch.from_numpy(ids).to(device),
        attention_mask=_attention_mask(torch.from_numpy(allowed), model).to(device),
        position_ids=torch.from_numpy(positions).to(device),
        use_cache=False,
        logits_to_keep=torch.tensor(kept, device=device),
        **(start.for_rows(len(rows)) if start is not None else {}),
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
