"""Held-out preference pairs scored: does the model rank the chosen answer above the rejected?

A preference pair has no single right answer to generate, so it is scored by
log-likelihood, with the very quantities DPO trains on (Rafailov et al., 2023,
https://arxiv.org/abs/2305.18290): ``log p(answer | prompt)``, the sum over the answer's
tokens and its EOS, each encoded as training encodes it (:mod:`retain.data.pairs`).

- ``accuracy`` (the task score of a preference split): the share of pairs whose chosen
  answer the model finds likelier than the rejected one. It has a value for any model,
  so the base model's and the fine-tune's compare, and the verdict reads it as it reads
  the accuracy of an SFT task.
- ``reward_accuracy`` and ``reward_margin`` (:func:`reward_figures`): DPO's
  ``rewards/accuracies`` and ``rewards/margins`` on held-out pairs, the implicit reward
  ``beta * (log p(answer) - log p_ref(answer))`` relative to the reference (the model as
  training started): the share of pairs whose chosen answer gained more than the rejected
  one, and the mean difference. The reference itself scores 0 on both (every margin is 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.data.pairs import EncodedPair, encode_pairs
from retain.data.prompting import PromptFormat
from retain.data.rows import Example
from retain.hardware import batches_with_backoff

SAMPLES = 5  # pairs shown with their log-likelihoods in every result
DEFAULT_MAX_LENGTH = 2048  # tokens of prompt and answer scored when the caller names no limit


@dataclass(frozen=True)
class PairLogps:
    """``log p(answer | prompt)`` of each pair's chosen and rejected answer, in pair order."""

    chosen: tuple[float, ...]
    rejected: tuple[float, ...]

    def ranked(self) -> list[bool]:
        """Per pair: the chosen answer is likelier than the rejected one."""
        return [chosen > rejected for chosen, rejected in zip(self.chosen, self.rejected, strict=True)]


@torch.no_grad()
def pair_logps(model: PreTrainedModel, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 8) -> PairLogps:
    """Returns the summed log-probabilities of each pair's two answers, in eval mode (the
    model's mode restored after), as DPO's loss sums them."""
    device = next(model.parameters()).device
    was_training = model.training

    def run(batch: Sequence[EncodedPair]) -> list[tuple[float, float]]:
        sequences = [(pair.prompt_ids, answer) for pair in batch for answer in (pair.chosen_ids, pair.rejected_ids)]
        width = max(len(prompt) + len(answer) for prompt, answer in sequences)
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        answer_mask = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, (prompt, answer) in enumerate(sequences):
            whole = prompt + answer
            ids[row, : len(whole)] = torch.tensor(whole)
            mask[row, : len(whole)] = 1
            answer_mask[row, len(prompt): len(whole)] = True
        ids, mask, answer_mask = ids.to(device), mask.to(device), answer_mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (2 * batch, seq, vocab)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        sums = (logprobs * answer_mask[:, 1:]).sum(dim=1).tolist()  # (2 * batch,)
        return [(sums[index], sums[index + 1]) for index in range(0, len(sums), 2)]

    chosen: list[float] = []
    rejected: list[float] = []
    try:
        model.eval()
        for _, scored in batches_with_backoff(list(pairs), batch_size, run, owner=model, kind="preference"):
            for first, second in scored:
                chosen.append(first)
                rejected.append(second)
    finally:
        model.train(was_training)
    return PairLogps(tuple(chosen), tuple(rejected))


@dataclass(frozen=True)
class PreferenceScore:
    """How a model ranks one set of held-out preference pairs (module docstring).

    Attributes:
        name: Which set: ``eval``, ``ood``, ``validation``.
        n: Pairs scored.
        accuracy: Share of pairs whose chosen answer is likelier than the rejected one.
        logps: The log-likelihoods behind it, kept so that the reward figures relative to
            the base can be computed from two results (:func:`reward_figures`).
        samples: The first pairs with their log-likelihoods, for reports.
    """

    name: str
    n: int
    accuracy: float
    logps: PairLogps
    samples: tuple[dict, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """Returns the score as JSON-ready data, in the shape of a task score (no labels,
        no generations: a pair is not answered, it is ranked)."""
        margins = [c - r for c, r in zip(self.logps.chosen, self.logps.rejected, strict=True)]
        return {
            "name": self.name, "kind": "preference", "n": self.n, "accuracy": self.accuracy,
            "exact_match": None, "labels": [], "label_accuracy": None, "loglik_accuracy": self.accuracy,
            "unparsed": None, "predicted": {}, "majority": None, "health": None,
            "logp_margin": sum(margins) / len(margins) if margins else None,
            "chosen_logps": list(self.logps.chosen), "rejected_logps": list(self.logps.rejected),
            "samples": list(self.samples),
        }


def is_preference_set(examples: Sequence[Example] | None) -> bool:
    """True when ``examples`` are preference pairs (every row has a rejected answer)."""
    return bool(examples) and all(example.is_preference for example in examples)


def score_preferences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
                      prompt_format: PromptFormat, *, name: str = "eval", max_length: int | None = None,
                      batch_size: int = 8) -> PreferenceScore:
    """Scores held-out preference pairs by log-likelihood (module docstring).

    Args:
        examples: Preference rows.
        prompt_format: How prompts are rendered (the one training uses).
        max_length: Tokens kept of prompt and answer together (``data.max_length``);
            None keeps :data:`DEFAULT_MAX_LENGTH`.
        batch_size: Pairs per forward pass (each is two sequences).

    Raises:
        ValueError: If no pair is left to score.
    """
    pairs, _ = encode_pairs(examples, tokenizer, prompt_format, max_length=max_length or DEFAULT_MAX_LENGTH)
    pairs = [pair for pair in pairs if pair.trainable]
    if not pairs:
        raise ValueError(f"no preference pair to score in '{name}'")
    logps = pair_logps(model, pairs, tokenizer.pad_token_id or 0, batch_size)
    ranked = logps.ranked()
    by_line = {example.line: example for example in examples}
    samples = tuple(
        {"line": pair.line, "prompt": by_line[pair.line].prompt[-200:], "chosen": by_line[pair.line].response,
         "rejected": by_line[pair.line].rejected, "chosen_logp": chosen, "rejected_logp": rejected, "correct": ok}
        for pair, chosen, rejected, ok in list(zip(pairs, logps.chosen, logps.rejected, ranked, strict=True))[:SAMPLES]
    )
    return PreferenceScore(name, len(pairs), sum(ranked) / len(ranked), logps, samples)


def reward_figures(policy: PairLogps, reference: PairLogps, beta: float) -> tuple[float, float]:
    """Returns DPO's reward accuracy and mean reward margin of ``policy`` over ``reference``
    on the same pairs: ``beta * ((c - c_ref) - (r - r_ref))`` per pair, and the share of
    pairs where it is positive.

    Raises:
        ValueError: If the two were not measured on as many pairs.
    """
    if len(policy.chosen) != len(reference.chosen):
        raise ValueError(f"{len(policy.chosen)} pairs against {len(reference.chosen)} for the reference")
    margins = [beta * ((c - c_ref) - (r - r_ref)) for c, r, c_ref, r_ref in
               zip(policy.chosen, policy.rejected, reference.chosen, reference.rejected, strict=True)]
    return sum(margin > 0 for margin in margins) / len(margins), sum(margins) / len(margins)


@dataclass
class PreferenceValidation:
    """The validation pairs a guard check scores under DPO, with the reference's
    log-likelihoods measured once on the starting model.

    :meth:`measure` returns the sigmoid DPO loss on the pairs (the paper's; whatever
    ``train.dpo.loss_type`` trains) as the validation loss, and the share of pairs ranked
    right (``accuracy`` of :class:`PreferenceScore`) as the task accuracy, the figure the
    best checkpoint is chosen by.
    """

    pairs: list[EncodedPair]
    pad_id: int
    beta: float
    batch_size: int = 8
    reference: PairLogps | None = None

    def measure_reference(self, model: PreTrainedModel) -> None:
        """Scores the pairs with ``model``, the model as training starts."""
        self.reference = pair_logps(model, self.pairs, self.pad_id, self.batch_size)

    def measure(self, model: PreTrainedModel) -> tuple[float | None, float | None]:
        """Returns the DPO validation loss and the ranking accuracy of ``model``."""
        if not self.pairs or self.reference is None:
            return None, None
        policy = pair_logps(model, self.pairs, self.pad_id, self.batch_size)
        margins = [self.beta * ((c - c_ref) - (r - r_ref)) for c, r, c_ref, r_ref in
                   zip(policy.chosen, policy.rejected, self.reference.chosen, self.reference.rejected, strict=True)]
        loss = sum(math.log1p(math.exp(-margin)) if margin > -30 else -margin for margin in margins) / len(margins)
        ranked = policy.ranked()
        return loss, sum(ranked) / len(ranked)
