"""Token-level forgetting: learn from the informative answer tokens, unlearn the rest."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from retain.data.encoding import IGNORE_INDEX, Collator, Encoded, build_collator, encode_examples
from retain.data.rows import load_examples_for
from retain.errors import ConfigError, DataError, RetainError
from retain.methods.adapters import lora_config
from retain.methods.base import Method, MethodContext, trainable
from retain.methods.registry import register


@register
class TokenForget(Method):
    """Token-level forgetting (Taheri Ghahrizjani et al., 2025, Forgetting: A New Mechanism
    Towards Better Large Language Model Fine-tuning, https://arxiv.org/abs/2508.04329).

    Before training (``transform_rows``, with the base model):

    1. reference models, each the base model fine-tuned for ``reference_steps`` AdamW
       steps at ``train.lr`` (a deep copy with every weight training under ``full``; LoRA
       adapters put on the base model itself and removed afterwards under lora/qlora, so
       no second copy of the model is in memory);
    2. every answer token of every row gets an influence: its cross-entropy under the base
       model minus under a reference model that did not see the row;
    3. the top ``positive_share`` of all those tokens (``round(rho * tokens)``, across the
       dataset) by influence are positive and stay in ``labels``; the rest are negative and
       move to ``negative_labels`` (the official code floors both counts, which can leave a
       token in neither set).

    Every row is then trained on. The paper's code fine-tunes its reference model on
    separate data and trains the main run on the whole set: ``reference_data`` names such
    a file. Without one, the reference data is cut from the training rows and cross-fitted
    so that no row is scored by a reference that saw it: reference A fine-tunes on a seeded
    ``reference_share`` of the rows and scores all the others, reference B fine-tunes on
    another such share and scores A's rows. (Until issue 22 the share A saw was withheld
    from training, which cost the main run a fifth of its rows.) A row's first token is
    never predicted, so it is in neither set.

    Training (``loss``) replaces the trainer's loss with
    ``mean CE(positive) - lambda(step) * mean CE(negative)`` over the micro-batch, where
    ``lambda`` rises linearly from ``t_min`` at the first step towards ``t_max`` at the last
    (``t_min + (t_max - t_min) * step / max_steps``). The official code uses
    ``(t_max - t_min) * step / max_steps``, starting at 0 and restarting every epoch; here
    ``t_min`` is the weight at the start, as the settings describe, and the schedule runs
    over the whole run. Loss hooks after this one (``ewc``, ``l2sp``) still add their
    penalties to the replaced loss.

    It runs before ``replay`` and ``self_augment`` (the hook order of ``retain.config.methods``), so it marks
    the task's rows only; general rows blended in afterwards are trained on whole.
    """

    name = "token_forget"
    reads_logits = True  # its loss reads every position's logits
    paper = ("Taheri Ghahrizjani et al., 2025, Forgetting: A New Mechanism Towards Better Large Language Model "
             "Fine-tuning, https://arxiv.org/abs/2508.04329")

    def check(self) -> None:
        if self.config.train.collator != "completion":
            raise ConfigError(
                "token_forget marks tokens in the labels, and the language_modeling collator "
                "rebuilds the labels from the ids, which erases the marking", field="train.collator",
                fix="set train.collator: completion (or drop token_forget)")

    def transform_rows(self, rows: list[Encoded], model: PreTrainedModel,
                       context: MethodContext) -> list[Encoded]:
        started = time.perf_counter()
        settings = self.settings
        collate = build_collator(context.tokenizer, "completion")
        batch_size = self.config.train.batch_size
        if settings.reference_data:
            references = [(self._reference_file_rows(context), list(range(len(rows))))]
            how = f"one reference model fine-tuned on the {len(references[0][0]):,} rows of {settings.reference_data}"
        else:
            first, second = reference_folds(len(rows), settings.reference_share, self.config.train.seed)
            seen = set(first)
            references = [([rows[i] for i in first], [i for i in range(len(rows)) if i not in seen]),
                          ([rows[i] for i in second], first)]
            how = (f"two reference models, fine-tuned on {len(first):,} and {len(second):,} of the rows, each "
                   "scoring the rows it did not see")
        base_losses = token_losses(model, rows, collate, batch_size)
        reference_losses: list[torch.Tensor | None] = [None] * len(rows)
        for reference_rows, scored in references:
            with reference_model(model, reference_rows, self.config, collate) as reference:
                losses = token_losses(reference, [rows[i] for i in scored], collate, batch_size)
            for index, row_losses in zip(scored, losses, strict=True):
                reference_losses[index] = row_losses
        influence = [base - ref for base, ref in zip(base_losses, reference_losses, strict=True)]
        marked = partition(rows, influence, settings.positive_share)
        positive = sum(row.supervised for row in marked)
        negative = sum(label != IGNORE_INDEX for row in marked for label in row.negative_labels or [])
        context.echo(f"token_forget: {positive:,} positive and {negative:,} negative answer tokens in all "
                     f"{len(marked):,} rows; influence from {how}, {settings.reference_steps} steps each "
                     f"({time.perf_counter() - started:.1f}s)")
        return marked

    def _reference_file_rows(self, context: MethodContext) -> list[Encoded]:
        """Returns the rows of ``reference_data``, encoded as training encodes task rows.

        Raises:
            DataError: If the file cannot be read or no row has an answer token left.
        """
        path = self.settings.reference_data
        examples = load_examples_for(self.config.data, path)
        rows, _ = encode_examples(examples, context.tokenizer, context.prompt_format,
                                  max_length=self.config.data.max_length, loss_on=self.config.train.loss_on,
                                  train_turns=self.config.data.train_turns)
        rows = [row for row in rows if row.supervised]
        if not rows:
            raise DataError("no row has an answer token to fine-tune the reference model on", file=path,
                            field="method.token_forget.reference_data", fix="give rows with answers, or "
                            "raise data.max_length")
        return rows

    def loss(self, loss: torch.Tensor, model: PreTrainedModel, inputs: dict[str, torch.Tensor],
             outputs: Any, context: MethodContext) -> torch.Tensor:
        negative_labels = inputs.get("negative_labels")
        if negative_labels is None:  # rows this method did not mark: nothing to forget
            return loss
        weight = forgetting_weight(context.step, context.max_steps, self.settings.t_min, self.settings.t_max)
        return context.batch_share * forgetting_loss(outputs.logits, inputs["labels"], negative_labels, weight)


def forgetting_weight(step: int, max_steps: int, t_min: float, t_max: float) -> float:
    """Returns ``lambda(step)``: ``t_min`` at step 0, rising linearly towards ``t_max``."""
    return t_min + (t_max - t_min) * step / max(1, max_steps)


def forgetting_loss(logits: torch.Tensor, labels: torch.Tensor, negative_labels: torch.Tensor,
                    weight: float) -> torch.Tensor:
    """Returns ``mean CE(positive) - weight * mean CE(negative)`` of one batch.

    Args:
        logits: The model's logits, (batch, seq, vocab).
        labels: Positive tokens, -100 elsewhere, (batch, seq); shifted here as a causal LM.
        negative_labels: Negative tokens, -100 elsewhere, (batch, seq); disjoint from labels.
        weight: ``lambda(step)``.

    Returns:
        The loss; a set with no token in the batch contributes 0 (never NaN).
    """
    positive, negative = labels[:, 1:], negative_labels[:, 1:]  # token t is predicted at t - 1
    targets = torch.where(positive != IGNORE_INDEX, positive, negative)
    # One cross-entropy pass for both sets: (batch, seq - 1), 0 where neither has a token.
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                             reduction="none")
    return _masked_mean(losses, positive != IGNORE_INDEX) - weight * _masked_mean(losses, negative != IGNORE_INDEX)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def reference_folds(count: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """Returns two disjoint seeded sets of row positions, each in order: the first has
    ``round(share * count)`` rows (at least one, leaving at least one), the second as many
    of the rest (at least one). Reference A fine-tunes on the first and scores every other
    row; reference B fine-tunes on the second and scores the first.

    Raises:
        RetainError: If there are fewer than two rows.
    """
    if count < 2:
        raise RetainError(f"token_forget needs at least 2 training rows to fine-tune its reference models on, "
                          f"and there are {count}", field="method.use",
                          fix="add training rows, set method.token_forget.reference_data, or drop token_forget")
    size = min(count - 1, max(1, round(share * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:size]), sorted(order[size: 2 * size])


def partition(rows: list[Encoded], influence: list[torch.Tensor], positive_share: float) -> list[Encoded]:
    """Splits the answer tokens of all rows into positive (``labels``) and negative
    (``negative_labels``) by influence: the top ``round(positive_share * tokens)`` are positive.

    Args:
        rows: The rows, labels -100 outside the answer.
        influence: Per row, one value per position (loss under base minus under reference).
        positive_share: rho.
    """
    answer = [torch.tensor(row.labels) != IGNORE_INDEX for row in rows]
    for mask in answer:
        mask[:1] = False
    scores = torch.cat([values[mask] for values, mask in zip(influence, answer, strict=True)])
    positive = torch.zeros(len(scores), dtype=torch.bool)
    positive[scores.topk(round(positive_share * len(scores))).indices] = True
    marked = []
    for row, mask, chosen in zip(rows, answer, positive.split([int(mask.sum()) for mask in answer]), strict=True):
        labels = torch.tensor(row.labels)
        kept = torch.zeros_like(mask)
        kept[mask] = chosen
        marked.append(dataclasses.replace(
            row, labels=torch.where(kept, labels, IGNORE_INDEX).tolist(),
            negative_labels=torch.where(mask & ~kept, labels, IGNORE_INDEX).tolist()))
    return marked


@torch.no_grad()
def token_losses(model: torch.nn.Module, rows: list[Encoded], collate: Collator,
                 batch_size: int) -> list[torch.Tensor]:
    """Returns, per row, the cross-entropy of each token given the ones before it (fp32, on
    the CPU; 0 at position 0 and wherever the label is -100), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = collate([row.feature() for row in chunk])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits  # (batch, seq, vocab)
        labels = batch["labels"][:, 1:].to(device)
        per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                    reduction="none").cpu()  # (batch, seq - 1)
        for row, row_losses in zip(chunk, per_token, strict=True):
            losses.append(torch.cat([torch.zeros(1), row_losses[: len(row.input_ids) - 1]]))
    model.train(was_training)
    return losses


@contextmanager
def reference_model(model: PreTrainedModel, rows: list[Encoded], config,
                    collate: Collator) -> Iterator[torch.nn.Module]:
    """Yields the base model fine-tuned on ``rows``; afterwards it is freed (full: the copy
    is dropped) or ``model`` is restored (adapters: removed, requires_grad as it was)."""
    settings = config.method.token_forget
    if not config.method.adapters:
        reference = copy.deepcopy(model)
        reference.requires_grad_(True)
        fit(reference, rows, collate, steps=settings.reference_steps, config=config)
        yield reference  # freed with the caller's last reference to it
        return
    from peft import get_peft_model

    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    wrapped = get_peft_model(model, lora_config(model, config))
    try:
        fit(wrapped, rows, collate, steps=settings.reference_steps, config=config)
        yield wrapped
    finally:
        wrapped.unload()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])


def fit(model: torch.nn.Module, rows: list[Encoded], collate: Collator, *, steps: int, config) -> None:
    """Fine-tunes ``model``'s trainable weights on ``rows`` for ``steps`` AdamW steps at
    ``train.lr`` (constant), ``train.batch_size`` rows a step, in a seeded order.

    A plain loop rather than transformers' ``Trainer``: this short in-memory run needs no
    output directory, checkpoints, logging or schedule.
    """
    train = config.train
    parameters = [parameter for _, parameter in trainable(model)]
    optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    for batch in _batches(rows, collate, train.batch_size, steps, train.seed):
        loss = model(**{key: value.to(device) for key, value in batch.items()}).loss
        loss.backward()
        if train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(parameters, train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.train(was_training)


def _batches(rows: list[Encoded], collate: Collator, batch_size: int, steps: int,
             seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``steps`` batches, reshuffling the rows when too few are left for a batch."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, len(rows)):
            order = torch.randperm(len(rows), generator=generator).tolist()
        picked, order = order[:batch_size], order[batch_size:]
        yield collate([rows[i].feature() for i in picked])
