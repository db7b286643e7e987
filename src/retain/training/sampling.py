"""The order training rows are drawn in when methods blend rows of other sources in.

Replay and self-augmentation add general rows to the task rows (``Encoded.source`` says
which is which). transformers' ``LengthGroupedSampler`` sorts every mega-batch of
``50 x batch`` rows by length; general rows are short and task rows long, so almost every
batch came out pure: some 25 task-only steps, then some 25 general-only steps, and so on.
Rehearsal then trains in blocks, not mixed, and every check lands at a fixed phase of
that cycle.

:class:`MixedSourceSampler` keeps each batch mixed: it orders each source on its own
(shuffled, and grouped by length within the source as transformers does, with its own
:func:`~transformers.trainer_pt_utils.get_length_grouped_indices`), then spreads every
source evenly over the epoch: the k-th of a source's n rows goes to the position
``(k + 1/2) / n`` of the epoch. Every batch of B rows then holds about ``B x n / N`` rows
of each source, and any run of consecutive batches holds each source in its share of the
set to within one row per source.

The interleaving is ours (no library sampler mixes sources at a fixed share;
:func:`retain.methods.mixing.spread_evenly`, which :func:`retain.replay` shares); the
length grouping is transformers'.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from retain.methods.mixing import spread_evenly

TASK = "task"
"""``Encoded.source`` of the rows of ``data.train``."""


class MixedSourceSampler(torch.utils.data.Sampler[int]):
    """Yields row indices so that each batch holds every source in its share of the set.

    The order is a pure function of ``seed`` and the epoch (:meth:`set_epoch`, which the
    trainer calls as each epoch begins), so a resumed run draws the same batches as an
    uninterrupted one.

    Args:
        sources: The source of each row (``Encoded.source``).
        lengths: The token count of each row.
        batch_size: Rows per optimizer step (per-device batch x accumulation steps), the
            unit rows are grouped by length in.
        seed: The data seed (``train.seed``).
        group_by_length: Group rows of similar length within each source
            (``train.group_by_length``); otherwise each source is only shuffled.
    """

    def __init__(self, sources: Sequence[str], lengths: Sequence[int], batch_size: int, *, seed: int,
                 group_by_length: bool = True) -> None:
        if len(sources) != len(lengths):
            raise ValueError(f"got {len(sources)} sources for {len(lengths)} rows")
        self.members: dict[str, list[int]] = {}
        for index, source in enumerate(sources):
            self.members.setdefault(source, []).append(index)
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose order :meth:`__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        orders = [[members[local] for local in self._order(members, generator)] for members in self.members.values()]
        return iter(spread_evenly(orders))

    def _order(self, members: list[int], generator: torch.Generator) -> list[int]:
        """Returns positions into ``members``: shuffled, and grouped by length if asked."""
        if self.group_by_length and len(members) > 1:
            return get_length_grouped_indices([self.lengths[index] for index in members], self.batch_size,
                                              generator=generator)
        return torch.randperm(len(members), generator=generator).tolist()


class SeededEpochOrder(TrainerCallback):
    """Draws each epoch's length-grouped order (``train.group_by_length``) from the data
    seed and the epoch number, so that a resume in the middle of any epoch sees the same
    order as the uninterrupted run.

    The trainer's random sampler is seeded that way already (accelerate's seedable
    sampler), and so is the sampler of blended rows (its ``set_epoch``, set here too);
    the length-grouped sampler would draw from the global random state as the epoch
    begins, a state that a resume in a later epoch does not have (it restores the state
    of the checkpoint's step).

    Args:
        steps_per_epoch: Optimizer steps in one epoch.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = max(1, steps_per_epoch)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        sampler = _epoch_sampler(train_dataloader)
        epoch = state.global_step // self.steps_per_epoch
        if isinstance(sampler, MixedSourceSampler):
            sampler.set_epoch(epoch)
        elif sampler is not None:
            seed = args.data_seed if args.data_seed is not None else args.seed
            sampler.generator = torch.Generator().manual_seed(seed + epoch)


def _epoch_sampler(dataloader: Any) -> LengthGroupedSampler | MixedSourceSampler | None:
    """Returns the length-grouped or mixed-source sampler inside the trainer's
    (accelerate-wrapped) loader."""
    batches = getattr(dataloader, "batch_sampler", None)
    for sampler in (getattr(dataloader, "sampler", None), getattr(batches, "sampler", None),
                    getattr(getattr(batches, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, (LengthGroupedSampler, MixedSourceSampler)):
            return sampler
    return None
