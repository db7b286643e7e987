"""Batches of blended rows: every batch mixed, through the sampler and through `retain train`."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from retain.config import RetainConfig
from retain.data.encoding import IGNORE_INDEX
from retain.lab.export import export_lab_data
from retain.training.run import run_train
from retain.training.sampling import MixedSourceSampler
from retain.training.trainer import RetainTrainer

WINDOW = 10  # consecutive batches
TOLERANCE = 0.15  # the window's general share stays within the blend ratio +- this


def window_shares(flags: list[list[bool]], window: int = WINDOW) -> list[float]:
    """Returns the share of True over every run of ``window`` consecutive batches."""
    return [sum(map(sum, flags[start:start + window])) / sum(map(len, flags[start:start + window]))
            for start in range(len(flags) - window + 1)]


def batches_of(order: list[int], size: int) -> list[list[int]]:
    return [order[start:start + size] for start in range(0, len(order), size)]


def blended_set(task: int, general: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Long task rows and short general rows, shuffled as `blend` leaves them."""
    rng = random.Random(seed)
    rows = [("task", rng.randint(60, 120)) for _ in range(task)] + [("replay", rng.randint(8, 30))
                                                                    for _ in range(general)]
    rng.shuffle(rows)
    return [source for source, _ in rows], [length for _, length in rows]


@pytest.mark.parametrize("ratio", [0.2, 0.5])
@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_window_of_batches_holds_the_blend_ratio(ratio: float, group_by_length: bool) -> None:
    task = 1000
    general = round(ratio / (1 - ratio) * task)
    sources, lengths = blended_set(task, general)
    sampler = MixedSourceSampler(sources, lengths, 8, seed=3, group_by_length=group_by_length)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(sources)))  # every row once per epoch
        flags = [[sources[index] == "replay" for index in batch] for batch in batches_of(order, 8)]
        shares = window_shares(flags)
        assert min(shares) >= ratio - TOLERANCE and max(shares) <= ratio + TOLERANCE
        assert all(any(batch) for batch in flags[:-1])  # and no batch is task-only


def test_the_lengths_are_grouped_within_each_source() -> None:
    sources, lengths = blended_set(800, 200)
    grouped = list(MixedSourceSampler(sources, lengths, 8, seed=0, group_by_length=True))
    shuffled = list(MixedSourceSampler(sources, lengths, 8, seed=0, group_by_length=False))

    def padding(order: list[int]) -> int:  # task positions padded to each batch's longest task row
        total = 0
        for batch in batches_of(order, 8):
            task = [lengths[index] for index in batch if sources[index] == "task"]
            total += sum(max(task) - length for length in task) if task else 0
        return total

    assert padding(grouped) < padding(shuffled) / 4


def test_the_order_is_the_seeds_and_the_epochs() -> None:
    sources, lengths = blended_set(100, 50)
    first = MixedSourceSampler(sources, lengths, 8, seed=1)
    again = MixedSourceSampler(sources, lengths, 8, seed=1)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    again.set_epoch(1)
    assert list(first) == list(again)
    assert list(MixedSourceSampler(sources, lengths, 8, seed=2)) != list(MixedSourceSampler(sources, lengths, 8,
                                                                                            seed=1))


@pytest.mark.slow
def test_retain_train_mixes_replay_into_every_window_of_batches(micro_base, tmp_path, monkeypatch) -> None:
    """Through `retain train`'s own dataloader, defaults of `method: [lora, replay]`
    (ratio 0.2, train.group_by_length on): a general row has a loss on its first token, a
    task row's prompt is masked."""
    base, _ = micro_base
    data = tmp_path / "data"
    export_lab_data(data, size="micro", n_train=400, n_eval=8)
    config = RetainConfig.model_validate({
        "model": {"name_or_path": str(base.path)},
        "data": {"train": str(data / "train.jsonl"), "eval": str(data / "test.jsonl")},
        "probes": {"suites": [str(data / "probes.jsonl")]},
        "method": {"use": ["lora", "replay"]},
        "train": {"max_steps": 40},
        "guards": {"enabled": False},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(tmp_path / "runs"), "name": "mixed"},
    })
    seen: list[list[bool]] = []
    compute_loss = RetainTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append((inputs["labels"][:, 0] != IGNORE_INDEX).tolist())
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(RetainTrainer, "compute_loss", spy)
    run_train(config, progress=False, echo=lambda line: None)
    ratio = config.method.replay.ratio
    assert len(seen) == 40 and {len(batch) for batch in seen} == {config.train.batch_size}
    shares = window_shares(seen)
    assert min(shares) >= ratio - TOLERANCE and max(shares) <= ratio + TOLERANCE, shares
    assert sum(map(sum, seen)) / sum(map(len, seen)) == pytest.approx(ratio, abs=0.03)


def test_a_dataset_of_one_source_keeps_the_trainers_own_sampler() -> None:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class Rows(torch.utils.data.Dataset):
        sources = ["task"] * 16
        lengths = list(range(16))

        def __len__(self) -> int:
            return 16

        def __getitem__(self, index: int) -> dict:
            if not 0 <= index < 16:
                raise IndexError(index)
            return {"input_ids": [1] * (index + 1)}

    # The sampler needs only these arguments and the dataset.
    args = SimpleNamespace(train_sampling_strategy="group_by_length", train_batch_size=4,
                           gradient_accumulation_steps=1, seed=0, data_seed=None)
    trainer = RetainTrainer.__new__(RetainTrainer)
    trainer.args, trainer.train_dataset, trainer.processing_class = args, Rows(), None
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    Rows.sources = ["task"] * 8 + ["replay"] * 8
    assert isinstance(trainer._get_train_sampler(), MixedSourceSampler)

