"""The report as one data structure, laid out by both the HTML and the Markdown writer.

:func:`assemble` reads nothing itself: it takes the runs and sweeps read by
:mod:`retain.report.sources` and decides what each section shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import yaml

import retain
from retain.report import content, figures
from retain.report.analysis import describe, format_value, pareto_front, size_curves
from retain.report.views import (
    FORGETTING_LIMIT,
    RunView,
    SweepView,
    Trial,
    as_dict,
    as_number,
    dotted,
    forgetting_limit,
    summary_of,
    varying_settings,
)

# What training does not save yet, said where the report would show it.
MISSING_GENERATIONS = (
    "This run saved no task answers (runs from before retain kept the first task answers of "
    "each evaluation): only broken ones can be shown."
)


@dataclass
class RunSection:
    """Everything the report shows about one run."""

    run: RunView
    anchor: str
    cards: list[content.Card]
    figures: dict[str, str]
    forgetting: list[dict[str, Any]]
    task: list[dict[str, Any]]
    brittleness: list[dict[str, Any]]
    guards: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    doctor: list[dict[str, Any]]
    samples: list[content.ProbeSample]
    task_samples: list[content.TaskSample]
    broken: list[dict[str, Any]]
    config_text: str
    open: bool = True

    @property
    def title(self) -> str:
        return self.run.name


@dataclass
class ComparisonRow:
    """One run in the side-by-side table."""

    name: str
    anchor: str
    status: str
    method: str
    settings: str
    task: str
    ood: str
    probes: str
    forgetting: str
    forgetting_bad: bool
    kl: str
    smoke: str
    ship: bool | None
    reasons: str


@dataclass
class Comparison:
    """Several runs side by side: the table, what differs, and plots of all of them."""

    rows: list[ComparisonRow]
    varying: list[str]
    figures: dict[str, str]


@dataclass
class SweepSection:
    """A sweep or a comparison of recipes: its trials, their Pareto front and curves."""

    sweep: SweepView
    anchor: str
    param_keys: list[str]
    trials: list[dict[str, Any]]
    figures: dict[str, str]
    picked: RunSection | None
    picked_reason: str
    counts: dict[str, int]


@dataclass
class Page:
    """The whole report."""

    title: str
    generated: str
    version: str
    inputs: list[str]
    comparison: Comparison | None
    sweeps: list[SweepSection] = field(default_factory=list)
    runs: list[RunSection] = field(default_factory=list)
    missing_generations: str = MISSING_GENERATIONS


def assemble(runs: Sequence[RunView], sweeps: Sequence[SweepView], inputs: Sequence[str]) -> Page:
    """Returns the page for these runs and sweeps (inputs are listed as given)."""
    names = [run.name for run in runs] + [sweep.name for sweep in sweeps]
    sections = [run_section(run, f"run-{index}", open_=len(runs) <= 3) for index, run in enumerate(runs, 1)]
    return Page(
        title=", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else ""),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        version=retain.__version__,
        inputs=list(inputs),
        comparison=comparison(runs, [section.anchor for section in sections]) if len(runs) > 1 else None,
        sweeps=[sweep_section(sweep, f"sweep-{index}") for index, sweep in enumerate(sweeps, 1)],
        runs=sections,
    )


def run_section(run: RunView, anchor: str, *, open_: bool = True) -> RunSection:
    """Returns one run's cards, plots, tables, findings and answers."""
    plots = {
        "Training and validation loss": figures.loss_figure([run]),
        "General probe accuracy per category over steps": figures.probe_figure(run),
        "Drift from the base over steps": figures.drift_figure([run]),
    }
    return RunSection(
        run=run, anchor=anchor, cards=content.cards(run),
        figures={title: uri for title, uri in plots.items() if uri},
        forgetting=content.forgetting_rows(run), task=content.task_rows(run),
        brittleness=content.brittleness_rows(run), guards=content.guard_rows(run),
        audit=content.findings(run.audit), doctor=content.findings(run.doctor),
        samples=content.probe_samples(run), task_samples=content.task_samples(run),
        broken=content.broken_answers(run),
        config_text=yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True) if run.config else "",
        open=open_,
    )


def comparison(runs: Sequence[RunView], anchors: Sequence[str]) -> Comparison:
    """Returns the side-by-side table of ``runs`` and their overlaid plots."""
    varying = varying_settings(runs)
    rows = []
    for run, anchor in zip(runs, anchors, strict=True):
        summary = summary_of(run)
        ship, reasons = content.verdict(run)
        drop = summary.forgetting_relative
        if run.summary is None:
            drop = content.last_check(run).get("forgetting")
        rows.append(ComparisonRow(
            name=run.name, anchor=anchor, status=run.status,
            method="+".join(map(str, summary.method or dotted(run.config, "method.use") or [])) or "n/a",
            settings=describe({key: dotted(run.config, key) for key in varying}),
            task=content.pct(content.task_accuracy(run, "eval")), ood=content.pct(content.task_accuracy(run, "ood")),
            probes=f"{content.pct(summary.base_probe_accuracy)} → {content.pct(summary.final_probe_accuracy)}",
            forgetting=content.signed_pct(drop),
            forgetting_bad=(drop or 0) > forgetting_limit(run) if isinstance(drop, (int, float)) else False,
            kl=content.num(as_dict(summary.drift).get("kl")),
            smoke=content.pct(as_dict(summary.smoke).get("failures"), 0),
            ship=ship, reasons="; ".join(reasons),
        ))
    trials = [_trial_of(index, run) for index, run in enumerate(runs)]
    plots = {
        "Training and validation loss, all runs": figures.loss_figure(runs),
        "General probe accuracy over steps, all runs": figures.probe_overlay_figure(runs),
        "Drift over steps, all runs": figures.drift_figure(runs),
        "Task accuracy against forgetting": figures.pareto_figure(
            trials, pareto_front([(t.task_accuracy, t.forgetting) for t in trials]),
            forgetting_limit(runs[0])),
        "Data-size curves": figures.size_figure(size_curves(trials)),
    }
    return Comparison(rows=rows, varying=varying, figures={k: v for k, v in plots.items() if v})


def _trial_of(number: int, run: RunView) -> Trial:
    summary = summary_of(run)
    return Trial(number=number, task_accuracy=content.task_accuracy(run, "eval"),
                 ood_accuracy=content.task_accuracy(run, "ood"),
                 forgetting=as_number(summary.forgetting_relative),
                 general_accuracy=as_number(summary.final_probe_accuracy), run=run)


def sweep_section(sweep: SweepView, anchor: str) -> SweepSection:
    """Returns a sweep's trial table, Pareto scatter, data-size curves and overlaid runs."""
    trials = sweep.trials
    if sweep.pareto is not None:  # the sweep's own front (Optuna's best trials)
        front = {index for index, trial in enumerate(trials) if trial.number in sweep.pareto}
    else:
        front = pareto_front([(t.task_accuracy, t.forgetting) for t in trials])
    runs = sweep.runs
    limit = sweep.forgetting_limit or (forgetting_limit(runs[0]) if runs else FORGETTING_LIMIT)
    param_keys = list(dict.fromkeys(key for trial in trials for key in trial.params))
    rows = [{
        "number": trial.number, "name": trial.name, "state": trial.state,
        "params": [_value(trial.params.get(key)) for key in param_keys],
        "task": content.pct(trial.task_accuracy), "ood": content.pct(trial.ood_accuracy),
        "general": content.pct(trial.general_accuracy), "forgetting": content.signed_pct(trial.forgetting),
        "forgetting_bad": trial.forgetting is not None and trial.forgetting > limit,
        "seconds": content.num(trial.seconds), "front": index in front, "error": trial.error or "",
    } for index, trial in enumerate(trials)]
    plots = {
        "Task accuracy against forgetting (Pareto front)": figures.pareto_figure(trials, front, limit),
        "Data-size curves": figures.size_figure(size_curves(trials)),
        "Training and validation loss, all trials": figures.loss_figure(runs),
        "General probe accuracy over steps, all trials": figures.probe_overlay_figure(runs),
        "Drift over steps, all trials": figures.drift_figure(runs),
    }
    recommended = next((trial for trial in trials if trial.number == sweep.recommended), None)
    if recommended is not None:
        picked, reason = recommended, (f"trial {recommended.number}: the sweep's recommendation, the best "
                                       f"task accuracy among trials that forget at most {limit:.1%}")
    else:
        picked, reason = pick_trial(trials, front, limit)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state] = states.get(trial.state, 0) + 1
    return SweepSection(
        sweep=sweep, anchor=anchor, param_keys=param_keys, trials=rows,
        figures={title: uri for title, uri in plots.items() if uri},
        picked=run_section(picked.run, f"{anchor}-picked") if picked and picked.run else None,
        picked_reason=reason, counts=states,
    )


def pick_trial(trials: Sequence[Trial], front: set[int], limit: float) -> tuple[Trial | None, str]:
    """Returns the trial shown in detail and why: on the front, within the forgetting limit,
    the best task accuracy; else the least forgetting on the front."""
    on_front = [trial for index, trial in enumerate(trials) if index in front]
    within = [trial for trial in on_front if trial.forgetting is not None and trial.forgetting <= limit]
    if within:
        best = max(within, key=lambda t: t.task_accuracy or 0.0)
        return best, (f"trial {best.number}: the best held-out task accuracy among the Pareto-optimal "
                      f"trials that forget at most {limit:.0%}")
    if on_front:
        best = min(on_front, key=lambda t: t.forgetting or 0.0)
        return best, (f"trial {best.number}: no Pareto-optimal trial forgets at most {limit:.0%}; "
                      "this one forgets least")
    return None, "no trial has both a task accuracy and a forgetting figure"


def _value(value: Any) -> str:
    return "" if value is None else format_value(value)
