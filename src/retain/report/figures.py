"""The report's plots: matplotlib figures (Agg, no pyplot state) as SVG ``data:`` URIs.

An SVG inside ``<img>`` cannot run scripts or fetch anything, and its ids cannot clash with
the page's, so a plot is safe whatever text it shows. Text from data goes through
:func:`label`, which keeps matplotlib from reading ``$...$`` in a run name as math.
Each function returns None when there is nothing to draw.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # before anything draws: no display, no GUI toolkit
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from retain.report.analysis import SizeCurve
from retain.report.views import (
    RunView,
    Trial,
    as_dict,
    as_number,
    forgetting_limit,
    summary_of,
)

MAX_LEGEND = 12  # more lines than this and the legend would hide the plot
GUARD_COLOR = "#c0392b"
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3}


def label(text: Any, limit: int = 48) -> str:
    """Returns ``text`` as a plot label: shortened, with ``$`` escaped (no mathtext)."""
    text = str(text)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("$", r"\$")


Plot = TypeVar("Plot", bound=Callable[..., "str | None"])


def styled(function: Plot) -> Plot:
    """Draws ``function``'s figure with the report's style, leaving global rcParams alone."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def to_data_uri(figure: Figure) -> str:
    """Returns the figure as an SVG ``data:`` URI."""
    buffer = io.BytesIO()
    # The margins are fixed (see _figure): bbox_inches="tight" would draw the figure twice.
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(rows: int = 1, width: float = 7.5, height: float = 3.2, legend_inches: float = 0.0,
            steps: bool = True) -> tuple[Figure, Any]:
    """Returns a figure of ``rows`` axes sharing x, with fixed margins in inches.

    Fixed margins, not a layout engine: measuring every label to place the axes took a
    third of a 50-trial sweep's report time. ``legend_inches`` keeps room on the right;
    ``steps`` puts the x ticks on whole numbers.
    """
    total = height * rows
    figure = Figure(figsize=(width + legend_inches, total))
    figure.subplots_adjust(left=0.8 / (width + legend_inches), right=1 - (0.15 + legend_inches) / (width + legend_inches),
                           bottom=0.5 / total, top=1 - 0.15 / total, hspace=0.12 * rows)
    axes = figure.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    if steps:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, axes


def _mark_guards(axes, runs: Sequence[RunView]) -> None:
    """Draws a vertical line at each step a guard acted; for one run, named by the guard and
    its action (for several the names would pile up)."""
    for run in runs:
        for event in run.guard_events:
            step = as_number(event.get("step"))
            if not event.get("triggered") or step is None:
                continue
            for axis in axes:
                axis.axvline(step, color=GUARD_COLOR, linestyle=":", linewidth=1.2)
            if len(runs) == 1:
                axes[0].annotate(label(f"{event.get('guard')}: {event.get('action')}", 30), (step, 1.0),
                                 xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                                 fontsize=7, color=GUARD_COLOR)


def _from_start(points: list[tuple[float, float]], start: float | None) -> list[tuple[float, float]]:
    """Returns ``points`` led by ``(0, start)``: the base model, unless a check of step 0 is there."""
    if start is None or (points and points[0][0] == 0):
        return points
    return [(0, start), *points]


def _legend(axis, count: int) -> None:
    if 1 < count <= MAX_LEGEND or (count == 1 and axis.get_legend_handles_labels()[1]):
        axis.legend(fontsize=7, loc="best", frameon=False)


@styled
def loss_figure(runs: Sequence[RunView]) -> str | None:
    """Training loss per step, validation loss at each check, guard actions marked."""
    if not any(run.logs or run.checks for run in runs):
        return None
    figure, (axis,) = _figure()
    single = len(runs) == 1
    for run in runs:
        name = "" if single else f"{label(run.name)}: "
        logs = run.logs
        line = axis.plot([r["step"] for r in logs], [r["loss"] for r in logs], linewidth=1,
                         label=f"{name}training loss" if single or len(runs) <= MAX_LEGEND else None)
        color = line[0].get_color()
        val = [(c["step"], c["val_loss"]) for c in run.checks if as_number(c.get("val_loss")) is not None]
        val += [(r["step"], r["eval_loss"]) for r in run.eval_logs]
        if val:
            val.sort()
            axis.plot(*zip(*val, strict=True), "o--", color=color, markersize=3, linewidth=1,
                      label=f"{name}validation loss" if single else None)
    _mark_guards([axis], runs)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    _legend(axis, 2 if single else len(runs))
    return to_data_uri(figure)


@styled
def probe_figure(run: RunView) -> str | None:
    """General probe accuracy per category over steps (the base at step 0), task accuracy dashed."""
    checks = run.checks
    if not checks:
        return None
    figure, (axis,) = _figure(height=3.6, legend_inches=1.6)
    base = _base_categories(run)
    categories = list(dict.fromkeys(name for check in checks for name in as_dict(check.get("categories"))))
    for name in categories:
        points = _from_start([(c["step"], c["categories"][name]) for c in checks
                              if as_number(as_dict(c.get("categories")).get(name)) is not None], base.get(name))
        axis.plot(*zip(*points, strict=True), marker=".", linewidth=1, label=label(name, 28))
    overall = [(c["step"], c["probe_accuracy"]) for c in checks if as_number(c.get("probe_accuracy")) is not None]
    base_overall = as_number(summary_of(run).base_probe_accuracy)
    if overall:
        overall = _from_start(overall, base_overall)
        axis.plot(*zip(*overall, strict=True), color="black", linewidth=2, label="all probes")
    if base_overall is not None:  # the forgetting guard's limit, on all probes
        limit = forgetting_limit(run)
        axis.axhline(base_overall * (1 - limit), color=GUARD_COLOR, linestyle=":", linewidth=1,
                     label=f"limit: {limit:.0%} below the base")
    restored = summary_of(run).restored_step
    kept = next((point for point in overall if point[0] == restored), None) if restored is not None else None
    if kept is not None:
        axis.plot(*kept, marker="*", markersize=12, color=GUARD_COLOR, linestyle="none",
                  label=f"restored: step {restored}")
    task = [(c["step"], c["task_accuracy"]) for c in checks if as_number(c.get("task_accuracy")) is not None]
    if task:
        axis.plot(*zip(*task, strict=True), color="grey", linestyle="--", marker="s", markersize=3,
                  label="task (validation)")
    _mark_guards([axis], [run])
    axis.set_xlabel("step")
    axis.set_ylabel("accuracy")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return to_data_uri(figure)


def _base_categories(run: RunView) -> dict[str, float]:
    """The base model's accuracy per ``suite/category``, as the checks name them."""
    method = str(as_dict(as_dict(run.config.get("guards")).get("forgetting")).get("method") or "generation")
    result = {}
    for suite, methods in as_dict(as_dict(run.base_eval).get("probes")).items():
        for name, value in as_dict(as_dict(as_dict(methods).get(method)).get("accuracy")).items():
            if name != "overall" and as_number(value) is not None:
                result[f"{suite}/{name}"] = float(value)
    return result


@styled
def drift_figure(runs: Sequence[RunView]) -> str | None:
    """KL to the base and the perplexity ratio at each check, guard actions marked."""
    if not any(as_number(c.get("kl")) is not None or as_number(c.get("perplexity_ratio")) is not None
               for run in runs for c in run.checks):
        return None
    figure, axes = _figure(rows=2, height=2.2)
    for run in runs:
        for axis, key, base in zip(axes, ("kl", "perplexity_ratio"), (0.0, 1.0), strict=True):
            points = [(c["step"], c[key]) for c in run.checks if as_number(c.get(key)) is not None]
            if points:  # the base model itself: no divergence from itself, the same perplexity
                points = _from_start(points, base)
                axis.plot(*zip(*points, strict=True), marker=".", linewidth=1,
                          label=label(run.name) if 1 < len(runs) <= MAX_LEGEND else None)
    axes[0].set_ylabel("KL(base || tuned)")
    axes[1].set_ylabel("perplexity ratio")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set_xlabel("step")
    _mark_guards(axes, runs)
    _legend(axes[0], len(runs))
    return to_data_uri(figure)


@styled
def probe_overlay_figure(runs: Sequence[RunView]) -> str | None:
    """General probe accuracy over steps, one line per run (for runs side by side)."""
    if not any(run.checks for run in runs):
        return None
    figure, (axis,) = _figure()
    for run in runs:
        points = [(c["step"], c["probe_accuracy"]) for c in run.checks if as_number(c.get("probe_accuracy")) is not None]
        base = as_number(summary_of(run).base_probe_accuracy)
        if points:
            points = _from_start(points, base)
            axis.plot(*zip(*points, strict=True), marker=".", linewidth=1,
                      label=label(run.name) if len(runs) <= MAX_LEGEND else None)
    _mark_guards([axis], runs)
    axis.set_xlabel("step")
    axis.set_ylabel("general probe accuracy")
    _legend(axis, len(runs))
    return to_data_uri(figure)


@styled
def pareto_figure(trials: Sequence[Trial], front: set[int], limit: float | None = None) -> str | None:
    """Task accuracy against forgetting, one point per trial, the Pareto front joined."""
    points = [(index, trial) for index, trial in enumerate(trials)
              if trial.task_accuracy is not None and trial.forgetting is not None]
    if not points:
        return None
    figure, (axis,) = _figure(height=4.0, steps=False)
    others = [trial for index, trial in points if index not in front]
    best = sorted((trial for index, trial in points if index in front), key=lambda t: t.forgetting)
    axis.scatter([t.forgetting for t in others], [t.task_accuracy for t in others], s=18, color="#7f8c8d",
                 label="trial")
    axis.plot([t.forgetting for t in best], [t.task_accuracy for t in best], "o-", color="#2471a3",
              markersize=5, label="Pareto front")
    for trial in best if len(points) > 20 else [t for _, t in points]:
        axis.annotate(label(trial.number if len(points) > 8 else trial.name, 24),
                      (trial.forgetting, trial.task_accuracy), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    if limit is not None:
        axis.axvline(limit, color=GUARD_COLOR, linestyle=":", linewidth=1, label=f"forgetting limit {limit:.0%}")
    axis.set_xlabel("forgetting (relative drop of general probe accuracy; lower is better)")
    axis.set_ylabel("task accuracy, held-out (higher is better)")
    axis.legend(fontsize=7, frameon=False)
    return to_data_uri(figure)


@styled
def size_figure(curves: Sequence[SizeCurve]) -> str | None:
    """Task accuracy and forgetting against the number of training rows."""
    if not curves:
        return None
    figure, axes = _figure(rows=2, height=2.6, steps=False)
    for curve in curves:
        for axis, values in zip(axes, (curve.task_accuracy, curve.forgetting), strict=True):
            points = [(size, value) for size, value in zip(curve.sizes, values, strict=True) if value is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", linewidth=1.2,
                          label=label(curve.label, 60) if len(curves) <= MAX_LEGEND else None)
    axes[0].set_ylabel("task accuracy")
    axes[1].set_ylabel("forgetting")
    axes[1].set_xlabel("training rows (data.size)")
    sizes = [size for curve in curves for size in curve.sizes]
    if max(sizes) >= 10 * min(sizes):  # a decade or more: log scale, with plain numbers
        axes[1].set_xscale("log")
        axes[1].xaxis.set_major_formatter(ScalarFormatter())
        axes[1].xaxis.set_minor_formatter(NullFormatter())
    axes[1].set_xticks(sorted(set(sizes)))
    _legend(axes[0], len(curves) if len(curves) > 1 else 0)
    return to_data_uri(figure)
