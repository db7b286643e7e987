"""Runs side by side: what differs between them, the Pareto front, data-size curves."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retain.report.views import Trial, as_dict, as_number, dotted, varying_settings

# Settings that differ between any two runs without changing what is compared.
SIZE_KEY = "data.size"
SEED_KEY = "train.seed"


def describe(values: dict[str, Any]) -> str:
    """Returns ``"train.lr=0.001, method.use=[full]"``: settings as one short line."""
    return ", ".join(f"{key}={format_value(value)}" for key, value in values.items())


def format_value(value: Any) -> str:
    """Returns a setting's value as it would be written on the command line: ``[lora,replay]``, ``0.001``."""
    if isinstance(value, list):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> set[int]:
    """Returns the indices of the points no other point beats on both objectives.

    A point is ``(task_accuracy, forgetting)``: higher accuracy and lower forgetting are
    better. Another point dominates it when it is at least as good on both and better on
    one. Points with a missing figure are never on the front.
    """
    known = [(index, task, forget) for index, (task, forget) in enumerate(points)
             if task is not None and forget is not None]
    front = set()
    for index, task, forget in known:
        dominated = any(other_task >= task and other_forget <= forget
                        and (other_task > task or other_forget < forget)
                        for _, other_task, other_forget in known)
        if not dominated:
            front.add(index)
    return front


def trial_size(trial: Trial) -> int | None:
    """Returns the training rows a trial used: ``data.size``, else the audited row count."""
    size = trial.params.get(SIZE_KEY)
    if size is None and trial.run is not None:
        size = dotted(trial.run.config, SIZE_KEY)
        if size is None:  # no data.size: every row of the training file was used
            size = as_dict(trial.run.audit).get("rows")
    number = as_number(size)
    return int(number) if number is not None else None


@dataclass
class SizeCurve:
    """One line of the data-size plot: runs that share every setting but the size and seed.

    Attributes:
        label: The settings the line stands for (``all runs`` when only the size varies).
        sizes: Training rows, ascending.
        task_accuracy: Mean held-out task accuracy at each size (None where unmeasured).
        forgetting: Mean relative forgetting at each size.
        runs: How many runs each point averages.
    """

    label: str
    sizes: list[int] = field(default_factory=list)
    task_accuracy: list[float | None] = field(default_factory=list)
    forgetting: list[float | None] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)


def size_curves(trials: Sequence[Trial]) -> list[SizeCurve]:
    """Returns data-size curves when the trials differ in ``data.size``; else ``[]``.

    Trials are grouped by every other setting that varies (seeds excepted, so seeds are
    averaged); each group is one curve.
    """
    sized = [(trial, trial_size(trial)) for trial in trials]
    sized = [(trial, size) for trial, size in sized if size is not None]
    if len({size for _, size in sized}) < 2:
        return []
    others = [key for key in _trial_keys(trial for trial, _ in sized) if key not in (SIZE_KEY, SEED_KEY)]
    groups: dict[str, dict[int, list[Trial]]] = {}
    for trial, size in sized:
        label = describe({key: _setting(trial, key) for key in others}) or "all runs"
        groups.setdefault(label, {}).setdefault(size, []).append(trial)
    curves = []
    for label, by_size in groups.items():
        curve = SizeCurve(label=label)
        for size in sorted(by_size):
            members = by_size[size]
            curve.sizes.append(size)
            curve.task_accuracy.append(_mean(trial.task_accuracy for trial in members))
            curve.forgetting.append(_mean(trial.forgetting for trial in members))
            curve.runs.append(len(members))
        curves.append(curve)
    return curves


def _trial_keys(trials) -> list[str]:
    """The settings that tell trials apart: their params, or what differs in their configs."""
    trials = list(trials)
    keys = list(dict.fromkeys(key for trial in trials for key in trial.params))
    if keys:
        return keys
    return varying_settings([trial.run for trial in trials if trial.run is not None])


def _setting(trial: Trial, key: str) -> Any:
    if key in trial.params:
        return trial.params[key]
    return dotted(trial.run.config, key) if trial.run is not None else None


def _mean(values) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None
