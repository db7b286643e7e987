"""``summary.json``, the verdict and figures of one ``retain train`` run, written and read
through one typed class (:class:`RunSummary`) with a ``schema_version``.

Light on purpose (no torch): the CLI, the lab, sweeps and the report read summaries, some
written by older versions of retain and some damaged, so :meth:`RunSummary.from_dict`
never raises: a missing or malformed field reads as its empty value (None, 0, an empty
list or mapping). The parts inside a field (a forgetting report, a task score, a guard
event) stay JSON mappings, as :mod:`retain.evaluation` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from retain.io import decode_json

SCHEMA_VERSION = 2
"""2: issue 22 added ``schema_version``, ``rehearsal`` and ``forgetting_by_rehearsal``;
a summary without a version is read as version 1, every field it lacks empty."""

OVERALL = "overall"  # the all-items key of a forgetting report's categories
REHEARSED, NOT_REHEARSED = "rehearsed", "not_rehearsed"
"""The two groups of probe items forgetting is reported on: items whose fact a training
or rehearsal row stated (the audit's ``probe_contamination``), and the others."""


@dataclass(frozen=True)
class Verdict:
    """Whether the run is safe to ship, and every reason it is not."""

    ship: bool = False
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """What one run of ``retain train`` measured and concluded.

    Attributes:
        status: ``completed``, or ``stopped`` by a guard.
        stopped_by: The guard decision that stopped the run, if one did.
        restored_step: The step whose checkpoint was restored (0: the starting weights).
        best_step: The best check's step.
        steps: Optimizer steps taken.
        method: The methods of the run, in hook order.
        seconds: Wall time of the whole run.
        train_seconds: Wall time of training alone.
        train_tokens_per_second: Training tokens per second.
        base_probe_accuracy: The base model's probe accuracy by the guard's method.
        final_probe_accuracy: The final model's.
        forgetting: ``{suite: forgetting report}`` by the guard's method.
        forgetting_relative: The largest relative drop of any suite.
        rehearsal: ``{"rows": {source: count}, "items": {suite: [ids]}}``: the rows the
            methods blended in, and the probe items they stated.
        forgetting_by_rehearsal: ``{suite: {"rehearsed"|"not_rehearsed": report}}``.
        task: ``{split: task score}`` of the final model.
        task_base: ``{split: accuracy}`` of the base model.
        drift: KL to the base and perplexity of the final model.
        smoke: The final model's smoke answers' health.
        guard_events: Every guard decision that triggered.
        checks: Checks taken.
        trainer: The trainer's own metrics.
        verdict: Ship or not, and why; None when nothing was judged (an evaluation only).
        run_dir: The run directory, when read from one (not written).
        schema_version: :data:`SCHEMA_VERSION` when written; 1 for a summary without one.
    """

    status: str = "completed"
    stopped_by: dict[str, Any] | None = None
    restored_step: int | None = None
    best_step: int | None = None
    steps: int = 0
    method: tuple[str, ...] = ()
    seconds: float | None = None
    train_seconds: float | None = None
    train_tokens_per_second: float | None = None
    base_probe_accuracy: float | None = None
    final_probe_accuracy: float | None = None
    forgetting: dict[str, Any] = field(default_factory=dict)
    forgetting_relative: float | None = None
    rehearsal: dict[str, Any] = field(default_factory=lambda: {"rows": {}, "items": {}})
    forgetting_by_rehearsal: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    task_base: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    guard_events: tuple[dict[str, Any], ...] = ()
    checks: int = 0
    trainer: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    run_dir: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Returns the summary as ``summary.json`` holds it (``schema_version`` first)."""
        data = asdict(self)
        data.pop("run_dir")
        data["method"] = list(self.method)
        data["guard_events"] = list(self.guard_events)
        data["verdict"] = (None if self.verdict is None else
                           {"ship": self.verdict.ship, "reasons": list(self.verdict.reasons)})
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: Any, run_dir: str | Path | None = None) -> RunSummary:
        """Returns the summary held in ``data`` (a parsed ``summary.json``); never raises:
        what is missing or malformed reads as empty."""
        data = _mapping(data)
        values: dict[str, Any] = {"verdict": None}
        for spec in fields(cls):
            if spec.name in ("verdict", "run_dir"):
                continue
            reader = _READERS.get(spec.name)
            raw = data.get(spec.name)
            if reader is not None and raw is not None:
                values[spec.name] = reader(raw)
        verdict = data.get("verdict")
        if isinstance(verdict, dict) and isinstance(verdict.get("ship"), bool):
            reasons = verdict.get("reasons")
            values["verdict"] = Verdict(ship=verdict["ship"], reasons=tuple(str(reason) for reason in reasons)
                                        if isinstance(reasons, list) else ())
        values["schema_version"] = _int(data.get("schema_version")) or 1
        values["run_dir"] = str(run_dir) if run_dir is not None else None
        return cls(**{key: value for key, value in values.items() if value is not None or key in _NULLABLE})

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        """Returns the summary of a run directory (or of a ``summary.json`` path).

        Raises:
            OSError: The file cannot be read.
            ValueError: It is not JSON.
        """
        path = Path(path)
        file = path / "summary.json" if path.is_dir() else path
        return cls.from_dict(decode_json(file.read_text(encoding="utf-8")), run_dir=file.parent)

    def task_accuracy(self, split: str = "eval") -> float | None:
        """Returns the final model's task accuracy on a split (``eval``, ``ood``)."""
        return _number(_mapping(self.task.get(split)).get("accuracy"))

    def base_task_accuracy(self, split: str = "eval") -> float | None:
        """Returns the base model's task accuracy on a split."""
        return _number(self.task_base.get(split))

    def group_forgetting(self, group: str) -> tuple[float | None, int]:
        """Returns the largest relative forgetting of any suite on one group of probe items
        (:data:`REHEARSED` or :data:`NOT_REHEARSED`) and the group's item count over the
        suites; (None, 0) when the group is empty or the summary predates the split."""
        overall = [_mapping(_mapping(_mapping(groups).get(group)).get("categories")).get(OVERALL)
                   for groups in self.forgetting_by_rehearsal.values()]
        overall = [figures for figures in overall if isinstance(figures, dict)]
        drops = [drop for drop in (_number(figures.get("relative_drop")) for figures in overall) if drop is not None]
        items = sum(_int(figures.get("items")) or 0 for figures in overall)
        return (max(drops) if drops else None), items

    def blended_rows(self) -> int:
        """Returns how many rows the run's methods blended into the task rows."""
        return sum(_int(count) or 0 for count in _mapping(self.rehearsal.get("rows")).values())

    def rehearsal_note(self) -> str:
        """Returns what the summary says of rehearsed probe items, to follow its forgetting
        figure: both groups' forgetting when a blended row stated some item, else that none
        did; empty when nothing was blended in."""
        rows = self.blended_rows()
        if not rows:
            return ""
        rehearsed, count = self.group_forgetting(REHEARSED)
        if not count:
            return f" (no probe item is stated in the {rows:,} rows blended in)"
        kept, others = self.group_forgetting(NOT_REHEARSED)
        return (f" (on the {others:,} probe items no blended row states: {_signed(kept)}; on the {count:,} "
                f"items a blended row states: {_signed(rehearsed)})")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _events(value: Any) -> tuple[dict[str, Any], ...] | None:
    return tuple(event for event in value if isinstance(event, dict)) if isinstance(value, list) else None


def _names(value: Any) -> tuple[str, ...] | None:
    return tuple(str(name) for name in value) if isinstance(value, list) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _optional_mapping(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


_READERS: Mapping[str, Any] = {
    "status": _text, "stopped_by": _optional_mapping, "restored_step": _int, "best_step": _int,
    "steps": _int, "method": _names, "seconds": _number, "train_seconds": _number,
    "train_tokens_per_second": _number, "base_probe_accuracy": _number, "final_probe_accuracy": _number,
    "forgetting": _optional_mapping, "forgetting_relative": _number, "rehearsal": _optional_mapping,
    "forgetting_by_rehearsal": _optional_mapping, "task": _optional_mapping, "task_base": _optional_mapping,
    "drift": _optional_mapping, "smoke": _optional_mapping, "guard_events": _events, "checks": _int,
    "trainer": _optional_mapping,
}
_NULLABLE = frozenset({"stopped_by", "restored_step", "best_step", "drift", "smoke", "run_dir", "verdict"})


def percent(value: float | None) -> str:
    """Returns a share as a percentage with one decimal, or ``n/a``."""
    return "n/a" if value is None else f"{value:.1%}"


def signed(value: float | None) -> str:
    """Returns a change as a signed percentage with one decimal, or ``n/a``."""
    return "n/a" if value is None else f"{value:+.1%}"
