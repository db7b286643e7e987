"""The start every prompt of a call shares, computed once.

A chat template puts the same header before every question (SmolLM2's system prompt and
the user turn's opening: 26 of a general probe's 48 tokens). Generation and
log-likelihood run that header once, keep its key/value cache, and give each batch a
copy repeated per row; the rows then hold only what differs. On SmolLM2 the general
suite's prompts shrink to about half, and the answers are the same as with the whole
prompt in every row (tests/test_prefix.py). (Written by hand: transformers' generate
takes a cache but does not find or share a common start itself.)
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

# A start shorter than this is not worth a cache copy per batch: a raw prompt's
# "<s>Question:" saves three tokens a row, a chat header twenty and more.
MIN_SHARED_TOKENS = 8


def shared_start(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Returns the tokens every prompt starts with, leaving each at least one of its own
    (its last token's prediction is what the caller reads), or [] when fewer than
    ``MIN_SHARED_TOKENS`` are shared or there is only one prompt."""
    if len(prompts) < 2:
        return []
    first, length = prompts[0], min(len(prompt) for prompt in prompts) - 1
    for prompt in prompts[1:]:
        length = next((index for index in range(length) if prompt[index] != first[index]), length)
    return list(first[:length]) if length >= MIN_SHARED_TOKENS else []


class StartCache:
    """The key/value cache of a shared start, computed once, copied for each batch."""

    def __init__(self, model: PreTrainedModel, tokens: Sequence[int]) -> None:
        self.tokens = list(tokens)
        self.keyword = cache_keyword(model)
        device = next(model.parameters()).device
        with torch.inference_mode():
            output = model(input_ids=torch.tensor([self.tokens], device=device), use_cache=True, logits_to_keep=1)
        self._cache = returned_cache(output)

    def __len__(self) -> int:
        return len(self.tokens)

    def for_rows(self, rows: int) -> dict:
        """Returns ``{keyword: cache}`` for a forward pass or ``generate`` over ``rows`` rows:
        a copy (the pass appends to it), repeated once per row."""
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(rows)
        return {self.keyword: cache}

    def prepend(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns left-padded ``ids`` and ``mask`` with the start written before them, as
        ``generate`` reads a cache: it skips the columns the cache holds, and position ids
        come from the mask (padding between start and prompt is masked and not counted)."""
        rows = ids.shape[0]
        start = torch.tensor(self.tokens, dtype=ids.dtype).expand(rows, -1)
        return torch.cat([start, ids], dim=1), torch.cat([torch.ones_like(start, dtype=mask.dtype), mask], dim=1)


def returned_cache(output):
    """The key/value cache a forward pass returned: ``cache`` since transformers 5.2x
    (reading the old name there warns, so it is the fallback)."""
    return output["cache"] if "cache" in output else output.past_key_values  # noqa: SIM401


def cache_keyword(model: PreTrainedModel) -> str:
    """The name ``forward`` takes the key/value cache by: ``cache`` since transformers
    5.2x renamed it, ``past_key_values`` before (the old name warns, and goes in 5.40)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of(type(inner))


@functools.cache
def _cache_keyword_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
