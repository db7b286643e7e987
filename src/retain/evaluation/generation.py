"""Greedy generation, and probe accuracy judged by what the model actually says.

Accuracy by generation is the number users feel: a model that ranks the right option
highest but never stops talking (or never starts) scores zero here. Log-likelihood
ranking is kept as a separate, cheaper view, never as a replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from retain.data.prompting import PromptFormat
from retain.evaluation.prefix import StartCache, cache_keyword, returned_cache, shared_start
from retain.evaluation.probes import ProbeScore, ProbeSuite, check_answer, cut_at_stop
from retain.hardware import batches_with_backoff
from retain.progress import task


@dataclass(frozen=True)
class Generation:
    """What the model produced for one prompt.

    Attributes:
        prompt: The prompt as given.
        text: The decoded new tokens, special tokens removed.
        new_tokens: Tokens generated before EOS (EOS itself not counted).
        stopped: True when the model emitted EOS before ``max_new_tokens``.
        first_logprobs: Log-probabilities, at the first new position, of the token ids
            asked for with ``score_first`` (in that order); None when none were asked or
            the prompt was cut to fit the context (they would follow another context).
    """

    prompt: str
    text: str
    new_tokens: int
    stopped: bool
    first_logprobs: tuple[float, ...] | None = None


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
    add_special_tokens: bool = True,
    score_first: Sequence[int] = (),
    label: str = "generating",
    settled: Callable[[list[int]], bool] | None = None,
) -> list[Generation]:
    """Generates greedily for each prompt, in batches with left padding.

    Prompts are batched longest first, and a prompt too long for the model's context
    loses its oldest tokens so that ``max_new_tokens`` still fit. The start all prompts
    share (a chat template's header) is computed once: :mod:`retain.evaluation.prefix`.

    Args:
        model: A causal LM; evaluated in eval mode, its previous mode restored after.
        tokenizer: Its tokenizer; needs ``eos_token_id`` and a pad token (EOS is used for
            padding when there is none: padding sits on the left and is masked).
        prompts: Prompts as raw text (apply a chat template before calling, if any).
        max_new_tokens: Hard cap on new tokens per prompt.
        batch_size: Prompts per forward pass; halved while the device runs out of memory
            (:func:`retain.hardware.batches_with_backoff`).
        add_special_tokens: False for chat-formatted prompts, whose template writes BOS.
        score_first: Token ids whose log-probability at the first new position is kept
            in each :class:`Generation` (``first_logprobs``): the first step's forward
            pass already computed it, so a one-token answer's likelihood costs nothing.
        label: What the progress bar says (shown when the command asked: :mod:`retain.progress`).
        settled: Given a row's new tokens so far, True when the caller needs no more of
            them (a label answer whose label can no longer change): the row stops there,
            as at EOS but with ``stopped`` False. Honoured by retain's own decoding loop;
            a model decoded by ``generate`` (see :func:`_plain_greedy`) runs to the end.

    Returns:
        One :class:`Generation` per prompt, in order.

    Raises:
        ValueError: If ``max_new_tokens`` < 1 or the tokenizer has no EOS token.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token_id: generation could never stop")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:
        # Keep the end of over-long prompts (the question), room left for the answer.
        room = max(1, limit - max_new_tokens)
        cut = {index for index, ids in enumerate(encoded) if len(ids) > room}
        encoded = [ids[-room:] for ids in encoded]
    else:
        cut = set()
    asked = torch.tensor(list(score_first), dtype=torch.long)
    start = shared_start(encoded)
    # Longest first: prompts of similar length share a batch, so little padding is run.
    order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
    results: list[Generation | None] = [None] * len(prompts)
    was_training = model.training
    device = next(model.parameters()).device
    start_cache: StartCache | None = None  # built in eval mode, below

    plain = _plain_greedy(model)

    def generate(batch: Sequence[int]) -> list[tuple[list[int], list[float] | None]]:
        ids, mask = left_pad([encoded[index][len(start):] for index in batch], pad_id)
        cached = {}
        if start_cache is not None:
            ids, mask = start_cache.prepend(ids, mask)
            cached = start_cache.for_rows(len(batch))
        ids, mask = ids.to(device), mask.to(device)
        if plain:
            return _decode_dropping_finished(model, ids, mask, cached, max_new_tokens, eos_id, asked.to(device),
                                             settled)
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            return_dict_in_generate=True,
            output_logits=bool(len(asked)),
            **cached,
        )
        new_ids = output.sequences[:, ids.shape[1] :].tolist()  # (batch, generated)
        if not len(asked):
            return [(row, None) for row in new_ids]
        # The raw logits of the first step (before any logits processor), as ranking
        # continuations by log-likelihood reads them.
        first = torch.log_softmax(output.logits[0].float(), dim=-1)[:, asked.to(device)].tolist()
        return list(zip(new_ids, first))

    try:
        model.eval()
        start_cache = StartCache(model, start) if start else None
        # Out of memory halves the batch: the answers are the same, only slower.
        with task(label, len(order)) as advance:
            for batch, rows in batches_with_backoff(order, batch_size, generate, owner=model, kind="generation"):
                for index, (row, first) in zip(batch, rows):
                    results[index] = _to_generation(prompts[index], row, eos_id, tokenizer,
                                                    None if first is None or index in cut else tuple(first))
                advance(len(batch))
    finally:
        model.train(was_training)
    return [result for result in results if result is not None]


# Settings of a model's generation config that change which token greedy decoding picks,
# with their neutral values; a model that sets one is decoded by transformers' generate.
_GREEDY_CHANGERS = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "min_length": 0, "min_new_tokens": 0, "sequence_bias": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
}


def _plain_greedy(model: PreTrainedModel) -> bool:
    """True when greedy decoding of ``model`` is the argmax of its raw logits: its
    generation config sets nothing of ``_GREEDY_CHANGERS``."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, name, None) in (None, neutral) for name, neutral in _GREEDY_CHANGERS.items())


@torch.inference_mode()
def _decode_dropping_finished(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, cached: dict, max_new_tokens: int,
    eos_id: int, asked: torch.Tensor, settled: Callable[[list[int]], bool] | None = None,
) -> list[tuple[list[int], list[float] | None]]:
    """Greedy decoding of a left-padded batch that drops each row from the batch once it
    has said EOS (or, given ``settled``, once its tokens settle it), so the rows still
    talking run alone.

    ``cached`` holds a cache of the first columns of ``ids`` (a shared start), or nothing.
    Returns each row's new tokens (EOS included when said) and, when ``asked`` is not
    empty, the log-probabilities of those ids at the first new position.

    (Written by hand: transformers' ``generate`` runs every row until the last one stops,
    and its continuous batching, which drops them, ran 2x slower on 2 CPU cores;
    ``python benchmarks/run.py real_eval`` times the general suite with this loop.)
    """
    keyword = cache_keyword(model)
    done = next(iter(cached.values())).get_seq_length() if cached else 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids=ids[:, done:], attention_mask=mask, position_ids=positions[:, done:],
                   use_cache=True, logits_to_keep=1, **cached)
    logits = output.logits[:, -1]
    first = torch.log_softmax(logits.float(), dim=-1)[:, asked].tolist() if len(asked) else None
    produced: list[list[int]] = [[] for _ in range(ids.shape[0])]
    live = list(range(ids.shape[0]))  # the batch's rows still talking, in cache order
    position = positions[:, -1:] + 1
    cache = returned_cache(output)
    _make_room(cache, max_new_tokens)
    for step in range(max_new_tokens):
        chosen = logits.argmax(-1)
        talking = []
        for place, (row, token) in enumerate(zip(live, chosen.tolist())):
            produced[row].append(token)
            if token != eos_id and not (settled is not None and settled(produced[row])):
                talking.append(place)
        if not talking or step == max_new_tokens - 1:
            break
        if len(talking) < len(live):
            kept = torch.tensor(talking, device=ids.device)
            cache.batch_select_indices(kept)
            live = [live[place] for place in talking]
            mask, chosen, position = mask[kept], chosen[kept], position[kept]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        output = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position,
                       use_cache=True, **{keyword: cache})
        logits = output.logits[:, -1]
        position = position + 1
    return [(row, None if first is None else first[index]) for index, row in enumerate(produced)]


class _RoomyLayer(DynamicLayer):
    """A full-attention layer's keys and values held in buffers with room to grow: a
    decoding step writes its position in place, where :class:`DynamicLayer` copies the
    whole cache (``torch.cat``: a fifth of a step at 128 rows on 2 CPU cores). Lives only
    inside :func:`_decode_dropping_finished`, which uses ``update`` (through the model) and
    ``batch_select_indices``. (Written by hand: transformers' ``StaticLayer`` preallocates
    but attends over its whole length every step and cannot drop rows.)
    """

    def __init__(self, layer: DynamicLayer, room: int) -> None:
        super().__init__()
        self.device = layer.keys.device
        self.length = layer.keys.shape[-2]
        self._keys = _with_room(layer.keys, room)
        self._values = _with_room(layer.values, room)
        self.is_initialized = True
        self._show()

    def _show(self) -> None:
        self.keys = self._keys[..., : self.length, :]
        self.values = self._values[..., : self.length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # out of room: at least double
            grown = max(end - self.length, self.length)
            self._keys, self._values = _with_room(self.keys, grown), _with_room(self.values, grown)
        self._keys[..., self.length : end, :] = key_states
        self._values[..., self.length : end, :] = value_states
        self.length = end
        self._show()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._show()


def _with_room(states: torch.Tensor, room: int) -> torch.Tensor:
    """Returns a buffer holding ``states`` with ``room`` free positions after them."""
    batch, heads, length, dim = states.shape
    buffer = states.new_empty((batch, heads, length + room, dim))
    buffer[..., :length, :] = states
    return buffer


def _make_room(cache, room: int) -> None:
    """Swaps the cache's full-attention layers for :class:`_RoomyLayer` with ``room``
    positions to grow into; other layers (sliding windows, linear attention) stay."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            layers[index] = _RoomyLayer(layer, room)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``rows`` left-padded to one length, and the attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for position, row in enumerate(rows):
        ids[position, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[position, width - len(row) :] = 1
    return ids, mask


def _to_generation(
    prompt: str, row: list[int], eos_id: int, tokenizer: PreTrainedTokenizerBase,
    first_logprobs: tuple[float, ...] | None = None,
) -> Generation:
    """Cuts a generated row at its first EOS and decodes it."""
    stopped = eos_id in row
    kept = row[: row.index(eos_id)] if stopped else row
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Generation(prompt=prompt, text=text, new_tokens=len(kept), stopped=stopped,
                      first_logprobs=first_logprobs)


def score_probes_by_generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: ProbeSuite,
    prompt_format: PromptFormat | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 64,
) -> ProbeScore:
    """Returns the accuracy of greedy answers to every probe in ``suite``, by its checkers.

    Each generation is cut at the suite's stop strings (raw prompts only: a chat answer
    ends at its end-of-turn token), then judged by the item's checker.
    ``max_new_tokens`` is generous on purpose: a tight cap cuts multi-token answers
    (a 6-token cap understated the lab base model by 12 points) and reports forgetting
    where there is none.
    """
    prompt_format = prompt_format or PromptFormat.raw(suite.delimiter)
    generations = generate_greedy(
        model,
        tokenizer,
        [prompt_format.render(item.prompt) for item in suite.items],
        max_new_tokens,
        batch_size,
        add_special_tokens=prompt_format.add_special_tokens,
        label=f"{suite.name} by generation",
    )
    # The stop strings cut a base model's continuation before the next question it invents;
    # a chat model's answer ends at its end-of-turn token, and a line break inside it
    # ("7 + 5 = 12\n\nSo ...", an explanation then the result) is part of the answer.
    stop = () if prompt_format.is_chat else suite.stop
    answers = [cut_at_stop(generation.text, stop) for generation in generations]
    correct = [check_answer(item, answer) for item, answer in zip(suite.items, answers)]
    return ProbeScore.from_flags(suite, suite.items, "generation", correct, answers, generations)
