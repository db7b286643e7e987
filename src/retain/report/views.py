"""What the report shows, read from disk: a run, a sweep's trials, and the helpers that
read a field of data that may be missing or malformed (``as_dict``, ``as_number``,
``dotted``) without raising."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from retain import yamlfile
from retain.errors import RetainError
from retain.io import decode_json
from retain.summary import RunSummary
from retain.yamlfile import YamlProblem

IGNORED_PREFIXES = ("output.",)  # settings every run differs in (names, folders)


def read_json(path: Path, *, what: str) -> Any:
    """Returns the parsed JSON of ``path``.

    Raises:
        RetainError: The file is missing, unreadable or not JSON (names file and line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetainError(f"{what} not found", file=path, fix="check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RetainError(f"cannot read {what}: {error}", file=path,
                          fix="check the file's permissions and encoding (UTF-8)") from None
    try:
        return decode_json(text)
    except ValueError as error:
        raise RetainError(f"invalid JSON in {what}: {error}", file=path,
                          line=getattr(error, "line", None),
                          fix="rerun the command that wrote it, or delete the file") from None


def read_config(path: Path) -> dict[str, Any]:
    """Returns a run's resolved ``config.yaml`` as a plain mapping (not validated: a run
    written by an older retain is still shown).

    Raises:
        RetainError: The file is unreadable, not YAML or not a mapping (names file and line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RetainError(f"cannot read the run's config: {error}", file=path,
                          fix="check the file's permissions and encoding (UTF-8)") from None
    try:
        config = yamlfile.load(text)
    except YamlProblem as problem:
        raise RetainError(problem.message, file=path, line=problem.line,
                          fix=f"{problem.fix}; or rerun the run") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RetainError("config.yaml is not a mapping of sections", file=path, fix="rerun the run, or repair the file")
    return config


def optional_object(path: Path, what: str) -> dict[str, Any] | None:
    """Returns the JSON object in ``path``, None if the file does not exist."""
    if not path.is_file():
        return None
    data = read_json(path, what=what)
    if not isinstance(data, dict):
        raise RetainError(f"{what} is not a JSON object", file=path,
                          fix="rerun the command that wrote it, or delete the file")
    return data


def as_dict(value: Any) -> dict[str, Any]:
    """Returns ``value`` if it is a dict, else ``{}``: tolerant access to nested JSON."""
    return value if isinstance(value, dict) else {}


def as_number(value: Any) -> float | None:
    """Returns ``value`` as a finite float, None for anything else (missing, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def dotted(config: dict[str, Any], key: str) -> Any:
    """Returns ``config["a"]["b"]`` for ``"a.b"``; None where a level is missing."""
    value: Any = config
    for part in key.split("."):
        value = as_dict(value).get(part)
    return value


FORGETTING_LIMIT = 0.03  # guards.forgetting.threshold's default, for runs whose config lacks it


def forgetting_limit(run: RunView) -> float:
    """Returns the run's forgetting threshold (relative drop), the default if unset."""
    return as_number(dotted(run.config, "guards.forgetting.threshold")) or FORGETTING_LIMIT


def peak(run: RunView, key: str) -> tuple[float, int] | None:
    """Returns the highest value of ``key`` (``forgetting``, ``smoke_fail_share``) any guard
    check recorded, with the step of the first check that reached it; None if none did.
    After a roll-back the final model's figures are the restored checkpoint's; this is what
    training reached on the way."""
    seen = [(value, int(as_number(check.get("step")) or 0)) for check in run.checks
            if (value := as_number(check.get(key))) is not None]
    return max(seen, key=lambda item: (item[0], -item[1])) if seen else None


# --- runs --------------------------------------------------------------------------------

def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Returns ``{"train.lr": 1e-4, ...}``: every leaf of a nested config under its dotted key."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def varying_settings(runs: Sequence[RunView]) -> list[str]:
    """Returns the dotted settings whose values differ between ``runs`` (config order).

    ``output.*`` (names and folders) is left out: every run differs there.
    """
    flats = [flatten(run.config) for run in runs if run.config]
    if len(flats) < 2:
        return []
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [key for key in keys if not key.startswith(IGNORED_PREFIXES)
            and len({json.dumps(flat.get(key), sort_keys=True, default=str) for flat in flats}) > 1]


@dataclass
class RunView:
    """One run, as far as its files go.

    Attributes:
        path: The run directory (or, for kind ``eval``, the result file).
        name: What the report calls it (the directory's name).
        kind: ``run`` (``retain train``) or ``eval`` (``retain eval --json``).
        config: The resolved configuration (``{}`` if there is none).
        meta: ``meta.json`` (versions, command, start time).
        summary: ``summary.json``; None while the run is unfinished or was refused.
        metrics: The records of ``metrics.jsonl``, in order.
        audit: ``audit.json``, the data audit's findings.
        doctor: ``doctor.json``, the pipeline checks' findings.
        log_tail: The last lines of ``log.txt``.
    """

    path: Path
    name: str
    kind: str = "run"
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    summary: RunSummary | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    doctor: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)
    preloaded_evals: dict[str, dict[str, Any] | None] | None = None

    @property
    def status(self) -> str:
        """``completed``, ``stopped``, ``evaluated``, ``refused`` or ``unfinished``."""
        if self.summary is not None:
            return self.summary.status or "completed"
        if not self.metrics and not (self.path / "base_eval.json").exists() and (self.audit or self.doctor):
            return "refused"  # the audit or the doctor stopped it before training
        return "unfinished"

    @property
    def logs(self) -> list[dict[str, Any]]:
        """Training log records that carry a loss (the trainer's closing record has none)."""
        return [r for r in self.metrics if r.get("event") == "log" and as_number(r.get("loss")) is not None]

    @property
    def eval_logs(self) -> list[dict[str, Any]]:
        """Log records with an ``eval_loss`` (the trainer's own evaluation, if it ran)."""
        return [r for r in self.metrics if r.get("event") == "log" and as_number(r.get("eval_loss")) is not None]

    @property
    def checks(self) -> list[dict[str, Any]]:
        """The guards' checks: probes, smoke, drift and losses at a step."""
        return [r for r in self.metrics if r.get("event") == "check"]

    @property
    def guard_events(self) -> list[dict[str, Any]]:
        """Every guard decision (triggered or not); the summary's list when there are no metrics."""
        events = [r for r in self.metrics if r.get("event") == "guard"]
        if not events and self.summary is not None:
            events = list(self.summary.guard_events)
        return events

    @cached_property
    def base_eval(self) -> dict[str, Any] | None:
        """``base_eval.json``: the base model's evaluation, with every probe answer."""
        if self.preloaded_evals is not None:
            return self.preloaded_evals.get("base")
        return optional_object(self.path / "base_eval.json", "the base model's evaluation")

    @cached_property
    def final_eval(self) -> dict[str, Any] | None:
        """``final_eval.json``: the trained model's evaluation, with every probe answer."""
        if self.preloaded_evals is not None:
            return self.preloaded_evals.get("final")
        return optional_object(self.path / "final_eval.json", "the final evaluation")


NO_SUMMARY = RunSummary(status="")  # what a run without summary.json reads as: every figure empty


def summary_of(run: RunView) -> RunSummary:
    """Returns the run's summary, or :data:`NO_SUMMARY` when it has none."""
    return run.summary or NO_SUMMARY


def probe_overall(result: dict[str, Any] | None, method: str = "generation") -> float | None:
    """Returns the share of probe items answered right by ``method`` over all suites."""
    scores = [as_dict(methods).get(method) for methods in as_dict(as_dict(result).get("probes")).values()]
    items = [item for score in scores if isinstance(score, dict) for item in score.get("items") or []]
    return sum(bool(as_dict(item).get("correct")) for item in items) / len(items) if items else None


# --- sweeps and comparisons ---------------------------------------------------------------

@dataclass
class Trial:
    """One trial of a sweep (or one run of a comparison).

    Attributes:
        number: The trial's number in the sweep.
        params: The settings the sweep chose (dotted config keys -> values).
        state: ``complete``, ``failed``, ``killed``, ``interrupted``, ``running``, ``waiting``.
        task_accuracy: Held-out task accuracy.
        ood_accuracy: Out-of-distribution task accuracy.
        forgetting: Relative drop of general probe accuracy from the base.
        general_accuracy: General probe accuracy after training.
        seconds: Wall time of the trial.
        run: The trial's run directory, when it exists.
        error: Why the trial failed, if it did.
    """

    number: int
    params: dict[str, Any] = field(default_factory=dict)
    state: str = "complete"
    task_accuracy: float | None = None
    ood_accuracy: float | None = None
    forgetting: float | None = None
    general_accuracy: float | None = None
    seconds: float | None = None
    run: RunView | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.run.name if self.run is not None else f"trial {self.number}"


@dataclass
class SweepView:
    """A sweep or a comparison: trials side by side.

    Attributes:
        path: The sweep (or comparison) directory.
        name: What the report calls it.
        kind: ``sweep`` or ``lab compare``.
        trials: Every trial, in number order.
        notes: Text files of the sweep shown as they are (``pareto.md``, ``recommended.yaml``).
        table: For ``lab compare``, its rows: recipe means with 95% intervals.
        pareto: The numbers of the Pareto-optimal trials, as the sweep found them (None:
            the report computes the front).
        recommended: The number of the trial the sweep recommends, if any.
        forgetting_limit: The relative forgetting the recommendation had to stay within.
    """

    path: Path
    name: str
    kind: str
    trials: list[Trial]
    notes: dict[str, str] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    pareto: set[int] | None = None
    recommended: int | None = None
    forgetting_limit: float | None = None

    @property
    def runs(self) -> list[RunView]:
        return [trial.run for trial in self.trials if trial.run is not None]
