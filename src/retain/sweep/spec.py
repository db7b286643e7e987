"""The sweep file: a base config, a search space, the search mode, a budget and a storage.

Everything a user can get wrong in it is found here, before any training, and comes back
as one :class:`~retain.errors.ConfigError` naming the sweep file, the line, the field and a
fix: every value of the space is applied to the base config with :func:`load_config`, so a
misspelt setting or a value the config refuses fails now, not in trial 17.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from retain.config import RetainConfig, dump_config, load_config
from retain.config.messages import inline

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # YAML 1.1 reads "1e-4" as text
RANGE_KEYS = ("low", "high", "log", "step")
# Set by the sweep itself for every trial: its run directory.
RESERVED = ("output", "output.dir", "output.name")
# More values (in one range, or grid points in all) than any sweep could train; listing
# them would exhaust memory before the first trial.
MAX_GRID_VALUES = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Objectives(_Strict):
    """What a trial is scored on: task accuracy (maximised) and forgetting (minimised)."""

    task: Literal["eval", "ood"] = Field(
        "eval", description="Task split whose accuracy is maximised: `eval` (data.eval) or `ood`.")
    forgetting_limit: float | None = Field(
        None, gt=0, lt=1,
        description="Relative forgetting the recommended config must stay within; null uses the "
        "base config's guards.forgetting.threshold.")


class SweepFile(_Strict):
    """The sweep file as written (see docs/SWEEP.md for every key)."""

    base: str = Field(description="The retain config every trial starts from, relative to the sweep file.")
    name: str | None = Field(None, description="Sweep name; null uses the file's name.")
    mode: Literal["grid", "optuna"] = Field("grid", description="Every grid point, or an Optuna study.")
    sampler: Literal["nsga2", "tpe", "random"] = Field("nsga2", description="Optuna mode's sampler.")
    trials: int | None = Field(None, ge=1, description="Trial budget; grid mode: all points if null.")
    population: int | None = Field(None, ge=2, description="NSGA-II population; null: budget / 4 in 4..50.")
    storage: str | None = Field(None, description="Optuna storage URL; null: SQLite in the sweep directory.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the sampler (and of the grid's order when cut short).")
    heartbeat: int = Field(10, ge=1, description="Seconds between a running trial's heartbeats.")
    set: list[str] = Field(default_factory=list, description="Overrides applied to the base for every trial.")
    objectives: Objectives = Field(default_factory=Objectives, description="What trials are scored on.")
    space: dict[str, Any] = Field(description="Config settings to vary, by dotted name.")


@dataclass(frozen=True)
class Axis:
    """One setting of the search space: a list of values, or a numeric range (optuna mode,
    or grid mode with a step)."""

    key: str
    values: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def integer(self) -> bool:
        return self.values is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def labels(self) -> list[Any]:
        """Optuna's categorical choices: scalars as they are, lists and mappings as inline YAML
        (Optuna stores only str, int, float, bool and None)."""
        return [value if scalar(value) else inline(value) for value in self.grid_values()]

    def decode(self, label: Any) -> Any:
        """Returns the config value behind an Optuna parameter value."""
        if self.values is None:
            return label
        return next((value for value in self.values if _same(value if scalar(value) else inline(value), label)),
                    label)

    def grid_values(self) -> list[Any]:
        """The values a grid visits: the list, or the range at its step."""
        if self.values is not None:
            return list(self.values)
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        if self.integer:
            return [int(self.low + index * self.step) for index in range(count)]
        return [round(self.low + index * self.step, 12) for index in range(count)]

    def suggest(self, trial) -> Any:
        """Asks an Optuna trial for this axis's value (fixed for enqueued grid points)."""
        if self.values is not None:
            return self.decode(trial.suggest_categorical(self.key, self.labels()))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def override(self, value: Any) -> str:
        """The ``--set`` override that gives the config this value (floats in full: a sampled
        learning rate is trained as sampled, not as its 7-digit display)."""
        text = repr(value) if isinstance(value, float) else inline(value)
        return f"{self.key}={text}"

    def describe(self) -> Any:
        """JSON form, for the study's identity and sweep.json."""
        if self.values is not None:
            return {"values": [value for value in self.values]}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass
class Sweep:
    """A validated sweep: the file's settings resolved, the base config loaded."""

    path: Path
    base_path: Path
    name: str
    mode: str
    sampler: str
    budget: int | None
    population: int | None
    storage: str
    seed: int
    heartbeat: int
    overrides: list[str]
    task_split: str
    forgetting_limit: float
    axes: list[Axis]
    base: RetainConfig
    directory: Path

    @property
    def trials_dir(self) -> Path:
        return self.directory / "trials"

    def trial_overrides(self, values: dict[str, Any]) -> list[str]:
        """The overrides that turn the base into one trial's config (no output settings)."""
        return [*self.overrides, *(axis.override(values[axis.key]) for axis in self.axes if axis.key in values)]

    def trial_config(self, values: dict[str, Any], run_name: str | None = None) -> RetainConfig:
        """Returns one trial's config: the base, the sweep's overrides and the trial's values;
        its run directory is ``trials/<run_name>`` (None keeps the base's output settings).

        Raises:
            ConfigError: The combination is invalid (each value alone was checked).
        """
        output = [f"output.dir={inline(str(self.trials_dir))}", f"output.name={run_name}"] if run_name else []
        return load_config(self.base_path, [*self.trial_overrides(values), *output])

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point as Optuna parameters (labels), cut to the budget.

        A budget smaller than the grid takes the start of a seeded shuffle, so that it does
        not cover only the first values of the first setting, and a larger budget on a
        rerun adds points to those already tried.
        """
        points = [dict(zip((axis.key for axis in self.axes), combo))
                  for combo in itertools.product(*(axis.labels() for axis in self.axes))]
        if self.budget is not None and self.budget < len(points):
            random.Random(self.seed).shuffle(points)
            points = points[: self.budget]
        return points

    def identity(self) -> dict[str, Any]:
        """What makes two runs of the sweep the same study (the budget may grow)."""
        base = RetainConfig.model_validate({**self.base.model_dump(), "output": {}})
        return {
            "mode": self.mode, "sampler": self.sampler if self.mode == "optuna" else None, "seed": self.seed,
            "task": self.task_split,
            "space": {axis.key: axis.describe() for axis in self.axes},
            "base_sha256": hashlib.sha256(dump_config(base).encode()).hexdigest(),
        }


def scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _same(label: Any, other: Any) -> bool:
    return type(label) is type(other) and label == other or (
        isinstance(label, (int, float)) and isinstance(other, (int, float))
        and not isinstance(label, bool) and not isinstance(other, bool) and label == other)
