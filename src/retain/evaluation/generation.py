"""Greedy generation, and probe accuracy judged by what the model actually says.

Accuracy by generation is the number users feel: a model that ranks the right option
highest but never stops talking (or never starts) scores zero here. Log-likelihood
ranking is kept as a separate, cheaper view, never as a replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.evaluation.probes import (
    ProbeSuite,
    accuracy_by_category,
    count_by_category,
    exact_match,
)


@dataclass(frozen=True)
class Generation:
    """What the model produced for one prompt.

    Attributes:
        prompt: The prompt as given.
        text: The decoded new tokens, special tokens removed.
        new_tokens: Tokens generated before EOS (EOS itself not counted).
        stopped: True when the model emitted EOS before ``max_new_tokens``.
    """

    prompt: str
    text: str
    new_tokens: int
    stopped: bool


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[Generation]:
    """Generates greedily for each prompt, in batches with left padding.

    Args:
        model: A causal LM; evaluated in eval mode, its previous mode restored after.
        tokenizer: Its tokenizer; needs ``eos_token_id`` and a pad token (EOS is used for
            padding when there is none: padding sits on the left and is masked).
        prompts: Prompts as raw text (apply a chat template before calling, if any).
        max_new_tokens: Hard cap on new tokens per prompt.
        batch_size: Prompts per forward pass.

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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[Generation] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            encoded = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left")
            encoded = encoded.to(device)
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
            new_ids = output[:, encoded["input_ids"].shape[1] :]  # (batch, generated)
            for prompt, row in zip(batch, new_ids.tolist()):
                results.append(_to_generation(prompt, row, eos_id, tokenizer))
    finally:
        model.train(was_training)
    return results


def _to_generation(
    prompt: str, row: list[int], eos_id: int, tokenizer: PreTrainedTokenizerBase
) -> Generation:
    """Cuts a generated row at its first EOS and decodes it."""
    stopped = eos_id in row
    kept = row[: row.index(eos_id)] if stopped else row
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Generation(prompt=prompt, text=text, new_tokens=len(kept), stopped=stopped)


@dataclass(frozen=True)
class ProbeScore:
    """Probe results of one model on one suite, scored by generation.

    Attributes:
        suite: Suite name.
        version: Suite version: only equal versions are comparable.
        accuracy: Share of exact matches per category, plus ``"overall"``.
        counts: Items per category.
        generations: What the model said, one per item in suite order.
        correct: Whether each generation matched its answer.
    """

    suite: str
    version: str
    accuracy: dict[str, float]
    counts: dict[str, int]
    generations: tuple[Generation, ...]
    correct: tuple[bool, ...]


def score_probes_by_generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: ProbeSuite,
    max_new_tokens: int = 24,
    batch_size: int = 64,
) -> ProbeScore:
    """Returns exact-match accuracy of greedy answers to every probe in ``suite``.

    ``max_new_tokens`` is generous on purpose: a tight cap cuts multi-token answers
    (a 6-token cap understated the lab base model by 12 points) and reports forgetting
    where there is none.
    """
    generations = generate_greedy(
        model, tokenizer, [item.prompt for item in suite.items], max_new_tokens, batch_size
    )
    correct = tuple(
        exact_match(generation.text, item.answer)
        for generation, item in zip(generations, suite.items)
    )
    return ProbeScore(
        suite=suite.name,
        version=suite.version,
        accuracy=accuracy_by_category(suite.items, correct),
        counts=count_by_category(suite.items),
        generations=tuple(generations),
        correct=correct,
    )
