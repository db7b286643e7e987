"""What a sweep leaves: every trial's figures, the Pareto front, the data-size curve and the
recommended config, as ``trials.csv``, ``sweep.json``, ``pareto.md`` and ``recommended.yaml``.

Everything is read from the study's storage (each trial's figures are its Optuna user
attributes), so any machine that reaches the storage can write the summary of a sweep
whose trials ran elsewhere.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import retain
from retain.config import dump_config
from retain.config.messages import inline
from retain.io import atomic_write_json, atomic_write_text
from retain.summary import RunSummary
from retain.sweep.spec import Sweep

# Figures a trial records from its run's summary.json (user attributes of the Optuna trial).
FIGURES = ("task_accuracy", "ood_accuracy", "general_accuracy", "base_general_accuracy", "forgetting",
           "ship", "status", "train_seconds")


@dataclass
class TrialRecord:
    """One trial of the sweep, as the tables show it."""

    number: int
    state: str  # complete, failed, killed (retried), interrupted (retried), running, waiting
    params: dict[str, Any]
    task_accuracy: float | None = None
    ood_accuracy: float | None = None
    general_accuracy: float | None = None
    base_general_accuracy: float | None = None
    forgetting: float | None = None
    ship: bool | None = None
    status: str | None = None
    seconds: float | None = None
    train_seconds: float | None = None
    run_dir: str | None = None
    host: str | None = None
    error: str | None = None
    retry_of: int | None = None
    pareto: bool = False


@dataclass
class SweepResults:
    """The summary of a sweep and the files it was written to."""

    records: list[TrialRecord]
    pareto: list[TrialRecord]
    recommended: TrialRecord | None
    files: dict[str, Path]


def figures(summary: RunSummary, split: str) -> dict[str, Any]:
    """Returns the figures a trial records, from its run's summary."""
    return {
        "task_accuracy": summary.task_accuracy(split),
        "ood_accuracy": summary.task_accuracy("ood"),
        "general_accuracy": summary.final_probe_accuracy,
        "base_general_accuracy": summary.base_probe_accuracy,
        "forgetting": summary.forgetting_relative,
        "ship": summary.verdict.ship,
        "status": summary.status,
        "train_seconds": summary.train_seconds,
    }


def records_of(study, sweep: Sweep) -> list[TrialRecord]:
    """Returns every trial of the study but the empty ones a finished grid turned away."""
    from optuna.trial import TrialState

    trials = [trial for trial in study.get_trials(deepcopy=False) if not trial.user_attrs.get("stray")]
    retried = {number: trial.number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    pareto = {trial.number for trial in study.best_trials}
    axes = {axis.key: axis for axis in sweep.axes}
    records = []
    for trial in trials:
        attrs = trial.user_attrs
        labels = trial.params or trial.system_attrs.get("fixed_params", {})
        state = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
                 TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
        error = attrs.get("error")
        if state == "failed" and trial.number in retried:
            state = "interrupted" if attrs.get("interrupted") else "killed"
            error = f"{'interrupted' if attrs.get('interrupted') else 'its worker stopped'}; retried as trial " \
                    f"{retried[trial.number]}"
        elif state == "failed" and error is None:
            error = "its worker stopped (killed, or lost the storage) and retries are used up"
        history = trial.system_attrs.get("retry_history") or [None]
        records.append(TrialRecord(
            number=trial.number, state=state,
            params={key: axes[key].decode(value) if key in axes else value for key, value in labels.items()},
            **{name: attrs.get(name) for name in FIGURES},
            seconds=attrs.get("seconds"), run_dir=attrs.get("run_dir"), host=attrs.get("host"), error=error,
            retry_of=history[0], pareto=trial.number in pareto,
        ))
    return records


def recommend(records: list[TrialRecord], limit: float) -> TrialRecord | None:
    """Returns the complete trial with the best task accuracy among those whose forgetting is
    within ``limit`` (ties: less forgetting, then the earlier trial); None if none is."""
    eligible = [record for record in records if record.state == "complete" and record.task_accuracy is not None
                and record.forgetting is not None and record.forgetting <= limit]
    if not eligible:
        return None
    return min(eligible, key=lambda record: (-record.task_accuracy, record.forgetting, record.number))


def data_size_curve(records: list[TrialRecord], limit: float) -> list[dict[str, Any]]:
    """Per ``data.size``: the best task accuracy overall and within the forgetting limit."""
    sizes = sorted({record.params.get("data.size") for record in records if "data.size" in record.params},
                   key=lambda size: math.inf if size is None else size)
    rows = []
    for size in sizes:
        done = [record for record in records if record.state == "complete" and record.params.get("data.size") == size
                and record.task_accuracy is not None]
        best = max(done, key=lambda record: record.task_accuracy, default=None)
        within = recommend(done, limit)
        rows.append({"data.size": size, "trials": len(done),
                     "best_task_accuracy": best.task_accuracy if best else None,
                     "best_trial": best.number if best else None,
                     "best_within_limit": within.task_accuracy if within else None,
                     "best_within_limit_trial": within.number if within else None,
                     "its_forgetting": within.forgetting if within else None})
    return rows


def write_results(study, sweep: Sweep) -> SweepResults:
    """Writes ``trials.csv``, ``sweep.json``, ``pareto.md`` and ``recommended.yaml`` (or removes a
    stale one when no trial stays within the forgetting limit); each file atomically, so
    several workers may write them."""
    records = records_of(study, sweep)
    pareto = sorted((record for record in records if record.pareto),
                    key=lambda record: (-(record.task_accuracy or 0.0), record.number))
    best = recommend(records, sweep.forgetting_limit)
    curve = data_size_curve(records, sweep.forgetting_limit) if any(a.key == "data.size" for a in sweep.axes) else []
    directory = sweep.directory
    files = {"csv": directory / "trials.csv", "json": directory / "sweep.json", "markdown": directory / "pareto.md"}
    recommended_path = directory / "recommended.yaml"
    atomic_write_text(files["csv"], _csv(records, sweep))
    atomic_write_json(files["json"], {
        "retain_version": retain.__version__, "name": sweep.name, "sweep_file": str(sweep.path),
        "base": str(sweep.base_path), "storage": redact_url(sweep.storage), "mode": sweep.mode,
        "sampler": sweep.sampler if sweep.mode == "optuna" else None, "budget": sweep.budget,
        "objectives": {"task": sweep.task_split, "forgetting_limit": sweep.forgetting_limit},
        "space": {axis.key: axis.describe() for axis in sweep.axes}, "overrides": sweep.overrides,
        "trials": [asdict(record) for record in records], "pareto": [record.number for record in pareto],
        "recommended": best.number if best else None,
        "recommended_config": str(recommended_path) if best else None, "data_size_curve": curve,
    })
    if best is not None:
        atomic_write_text(recommended_path, recommended_yaml(sweep, best))
        files["recommended"] = recommended_path
    elif recommended_path.exists():
        recommended_path.unlink()  # an earlier, now outdated recommendation must not linger
    atomic_write_text(files["markdown"], markdown(sweep, records, pareto, best, curve))
    return SweepResults(records=records, pareto=pareto, recommended=best, files=files)


def recommended_yaml(sweep: Sweep, record: TrialRecord) -> str:
    """The recommended trial's full config, for ``retain train`` (a new run, not the trial's)."""
    config = sweep.trial_config(record.params)
    config.output.name = None
    header = (
        f"# Recommended by `retain sweep` ({sweep.name}): trial {record.number}, the best task accuracy on "
        f"{sweep.task_split} among trials within the forgetting limit of {sweep.forgetting_limit:.1%}.\n"
        f"# task accuracy {_pct(record.task_accuracy)}, general probes {_pct(record.general_accuracy)}, "
        f"forgetting {_signed(record.forgetting)}; trial run: {record.run_dir}\n"
        f"# Settings the sweep chose: {', '.join(f'{k}={inline(v)}' for k, v in record.params.items())}\n"
        "# Train it: retain train recommended.yaml\n"
    )
    return header + dump_config(config)


def markdown(sweep: Sweep, records: list[TrialRecord], pareto: list[TrialRecord], best: TrialRecord | None,
             curve: list[dict[str, Any]]) -> str:
    """``pareto.md``: the recommendation, the Pareto front, the data-size curve, every trial."""
    keys = [axis.key for axis in sweep.axes]
    counts = {state: sum(record.state == state for record in records) for state in
              ("complete", "failed", "killed", "interrupted", "running", "waiting")}
    split = sweep.task_split
    lines = [
        f"# Sweep `{sweep.name}`\n",
        f"{sweep.mode} sweep" + (f" ({sweep.sampler})" if sweep.mode == "optuna" else "")
        + f" over {', '.join(f'`{key}`' for key in keys)} on `{sweep.base_path}`. Objectives: task accuracy on "
        f"`{split}` (higher is better) and relative forgetting of general probe accuracy (lower is better); "
        f"forgetting limit {sweep.forgetting_limit:.1%}.\n",
        "Trials: " + ", ".join(f"{count} {state}" for state, count in counts.items() if count) + ".\n",
        "## Recommended config\n",
    ]
    if best is not None:
        lines.append(f"Trial {best.number}: task accuracy {_pct(best.task_accuracy)}, forgetting "
                     f"{_signed(best.forgetting)} (within {sweep.forgetting_limit:.1%}), settings "
                     f"{_settings(best.params)}. Written to `recommended.yaml`: `retain train recommended.yaml`.\n")
    else:
        done = [record for record in records if record.state == "complete" and record.forgetting is not None]
        least = min(done, key=lambda record: record.forgetting, default=None)
        lines.append(f"No trial stayed within the forgetting limit of {sweep.forgetting_limit:.1%}, so there is no "
                     "recommended.yaml. " + (f"The trial that forgot least is {least.number} (forgetting "
                                             f"{_signed(least.forgetting)}, task {_pct(least.task_accuracy)}); "
                                             if least else "")
                     + "try lower learning rates, replay, or a higher objectives.forgetting_limit.\n")
    figures_header = [f"task ({split})", "OOD", "general", "forgetting", "ship", "seconds"]
    lines += ["## Pareto-optimal trials\n",
              "No trial traded task accuracy against forgetting better than these (none is beaten on both).\n",
              _table(["trial", *keys, *figures_header],
                     [[str(r.number), *_values(r, keys), *_figures(r)] for r in pareto]) if pareto
              else "No trial has completed yet.\n"]
    if curve:
        lines += ["## Data size\n",
                  "Each size trains on the first N rows of the training data, so the subsets are nested.\n",
                  _table(["data.size", "trials", f"best task ({split})", f"best within {sweep.forgetting_limit:.0%}",
                          "its forgetting"],
                         [[inline(row["data.size"]), str(row["trials"]), _pct(row["best_task_accuracy"]),
                           _pct(row["best_within_limit"]), _signed(row["its_forgetting"])] for row in curve])]
    lines += ["## All trials\n",
              _table(["trial", "state", *keys, *figures_header, "run directory or error"],
                     [[str(r.number), r.state, *_values(r, keys), *_figures(r),
                       r.error if r.error else (r.run_dir or "")] for r in records])]
    return "\n".join(lines)


def _csv(records: list[TrialRecord], sweep: Sweep) -> str:
    keys = [axis.key for axis in sweep.axes]
    columns = ["number", "state", *keys, *FIGURES, "seconds", "pareto", "run_dir", "host", "error", "retry_of"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        row = asdict(record)
        writer.writerow([record.number, record.state, *_values(record, keys)]
                        + ["" if row[name] is None else row[name] for name in columns[2 + len(keys):]])
    return buffer.getvalue()


def _table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _values(record: TrialRecord, keys: list[str]) -> list[str]:
    return [inline(record.params[key]) if key in record.params else "" for key in keys]


def _figures(record: TrialRecord) -> list[str]:
    ship = "" if record.ship is None else ("yes" if record.ship else "no")
    seconds = f"{record.seconds:.0f}" if record.seconds is not None else ""
    return [_pct(record.task_accuracy), _pct(record.ood_accuracy), _pct(record.general_accuracy),
            _signed(record.forgetting), ship, seconds]


def _settings(params: dict[str, Any]) -> str:
    return ", ".join(f"`{key}={inline(value)}`" for key, value in params.items())


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.1%}"


def redact_url(url: str) -> str:
    """Returns a storage URL with its password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
