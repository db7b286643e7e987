"""``retain eval --max-forgetting``: is what a model forgot within a limit?

Forgetting here is the forgetting guard's measure and the verdict's: the relative drop of
each probe suite's overall accuracy from the base's, by ``guards.forgetting.method``
(:meth:`~retain.evaluation.forgetting.ForgettingReport.exceeds`); a model is over the
limit when any suite is. The categories over the limit are named beside it, since they
say what was lost (a suite over the limit always has one: its overall drop is an average
of its categories' drops, weighted by what the base knew in each).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from retain.errors import ConfigError
from retain.evaluation.forgetting import CategoryForgetting, ForgettingReport
from retain.models import resolve_model_path
from retain.sources import ADAPTER_CONFIG


@dataclass(frozen=True)
class LimitCheck:
    """Forgetting judged against ``--max-forgetting``.

    Attributes:
        over: Whether some suite forgot more than the limit.
        line: One line with the figures: each suite's forgetting and, when over, the
            categories over the limit.
    """

    over: bool
    line: str


def check_base_known(model_name: str, base: str | None, compare_to: Path | None, run_base: str | None) -> None:
    """Refuses, before anything is measured, a model ``retain eval`` knows no base for.

    The base is ``--base``, ``--compare-to``, or for adapters the same weights with the
    adapters off (:func:`retain.evaluation.commands.run_eval`).

    Args:
        model_name: What ``retain eval`` measures.
        base: ``--base``, if given.
        compare_to: ``--compare-to``, if given.
        run_base: The base model of the run directory being measured, from its own
            config; None for anything else.

    Raises:
        ConfigError: No base is known (the fix names the run's base when there is one).
        ModelLoadError: ``model_name`` names a folder that holds no model.
    """
    if base is not None or compare_to is not None:
        return
    if (resolve_model_path(model_name, progress=False) / ADAPTER_CONFIG).is_file():
        return
    named = f"--base {run_base} (the run's base model) or " if run_base else "--base MODEL or "
    raise ConfigError(f"there is no base model to measure forgetting against: '{model_name}' is a full model, "
                      "not adapters", file="--max-forgetting",
                      fix=f"give {named}--compare-to an earlier `retain eval --json` result of the base")


def check_forgetting(forgetting: Mapping[str, Mapping[str, ForgettingReport]], method: str,
                     limit: float) -> LimitCheck:
    """Returns whether the forgetting measured by ``method`` is over ``limit`` (relative,
    e.g. 0.03), with the figures in one line.

    Args:
        forgetting: ``{suite: {method: report}}`` of the base versus the model.
        method: The scoring method judged (``guards.forgetting.method``).
        limit: The relative drop allowed.

    Raises:
        ConfigError: No suite was scored by ``method``, or none was compared with a base.
    """
    reports = {suite: methods[method] for suite, methods in forgetting.items() if method in methods}
    if not reports:
        raise ConfigError(f"no probe suite was compared with the base by {method}, the forgetting guard's method",
                          field="guards.forgetting.method",
                          fix=f"add {method} to probes.methods, or set guards.forgetting.method to one it lists")
    allowed = f"{limit * 100:g}%"
    over = [report for report in reports.values() if report.exceeds(limit)]
    suites = ", ".join(f"{report.suite} {_figure(report.overall)}" for report in reports.values())
    if not over:
        return LimitCheck(over=False, line=f"forgetting within --max-forgetting {allowed} (by {method}): {suites}")
    categories = ", ".join(f"{report.suite}/{name} {_figure(report.categories[name])}"
                           for report in over for name in report.categories_exceeding(limit))
    return LimitCheck(over=True, line=f"forgetting over --max-forgetting {allowed} (by {method}): {suites}; "
                                      f"categories over the limit: {categories}")


def _figure(figures: CategoryForgetting) -> str:
    """Returns one drop as retain says it: relative first, the points beside it, labelled."""
    relative = "n/a" if figures.relative_drop is None else f"{figures.relative_drop:+.1%}"
    return f"{relative} relative ({figures.absolute_drop * 100:+.1f} points)"
