"""Reading what ``retain report`` is given: run directories, sweeps, comparisons, eval results.

Four kinds of input, each read into one of two shapes:

- a run directory of ``retain train`` -> :class:`RunView` (finished, stopped by a guard,
  refused by the audit or doctor, or unfinished: whatever files exist are read);
- a ``retain eval --json`` result file -> :class:`RunView` of kind ``eval``;
- a sweep directory of ``retain sweep`` -> :class:`SweepView` (see :func:`read_sweep`,
  the one place that knows the sweep format);
- a ``retain lab compare`` folder (``compare.json``) -> :class:`SweepView` of kind
  ``lab compare``, its recipes and seeds as the trials.

Every file that exists but cannot be read is a :class:`~retain.errors.RetainError`
naming the file (and line, for JSON), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retain.errors import RetainError
from retain.io import read_jsonl
from retain.report.views import (
    RunView,
    SweepView,
    Trial,
    as_dict,
    as_number,
    dotted,
    optional_object,
    probe_overall,
    read_config,
    read_json,
    summary_of,
    varying_settings,
)
from retain.rundir import RunDir
from retain.summary import RunSummary

RUN_MARKERS = ("summary.json", "metrics.jsonl", "meta.json", "audit.json")
SWEEP_FILES = ("sweep.json", "trials.jsonl")


# --- small readers ----------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """True for a directory ``retain train`` wrote (its config plus any result file)."""
    return (path / "config.yaml").is_file() and any((path / name).is_file() for name in RUN_MARKERS)


def read_run(path: Path) -> RunView:
    """Reads a run directory, finished or not.

    Raises:
        RetainError: ``path`` is not a run directory, or one of its files is corrupt
            (names the file, and the line for JSON and JSON lines).
    """
    if not is_run_dir(path):
        raise RetainError(f"{path} is not a run directory (no config.yaml with summary.json, "
                          "metrics.jsonl or meta.json)", fix="give a directory written by retain train")
    run_dir = RunDir(path)
    summary = RunSummary.from_dict(run_dir.read_summary()) if run_dir.summary_path.is_file() else None
    return RunView(
        path=path,
        name=path.name,
        config=read_config(run_dir.config_path),
        meta=optional_object(run_dir.meta_path, "meta.json") or {},
        summary=summary,
        metrics=run_dir.read_metrics(),
        audit=optional_object(path / "audit.json", "the audit's findings"),
        doctor=optional_object(path / "doctor.json", "the doctor's findings"),
        log_tail=_tail(run_dir.log_path),
    )


def _tail(path: Path, lines: int = 12) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]


def read_eval_result(path: Path) -> RunView:
    """Reads a ``retain eval --json`` result as a run with a final evaluation and no training.

    Forgetting is the ``generation`` method's where measured (the one the guards watch by
    default), else the first method's.

    Raises:
        RetainError: The file is not JSON or not an eval result (no ``probes``).
    """
    result = read_json(path, what="the eval result")
    if not isinstance(result, dict) or not isinstance(result.get("probes"), dict):
        raise RetainError("not a retain eval result (no 'probes')", file=path, field="probes",
                          fix="give the JSON written by retain eval --json")
    base = as_dict(as_dict(result.get("base")).get("result")) or None
    watched = {}
    for suite, methods in as_dict(result.get("forgetting")).items():
        methods = as_dict(methods)
        method = "generation" if "generation" in methods else next(iter(methods), None)
        if method is not None:
            watched[suite] = as_dict(methods[method])
    drops = [as_number(as_dict(as_dict(report.get("categories")).get("overall")).get("relative_drop"))
             for report in watched.values()]
    drops = [drop for drop in drops if drop is not None]
    summary = RunSummary.from_dict({
        "status": "evaluated",
        "method": [],
        "base_probe_accuracy": probe_overall(base) if base else None,
        "final_probe_accuracy": probe_overall(result),
        "forgetting": watched,
        "forgetting_relative": max(drops) if drops else None,
        "task": as_dict(result.get("task")),
        "drift": result.get("drift"),
        "smoke": result.get("smoke"),
    })
    return RunView(path=path, name=path.stem, kind="eval", summary=summary,
                   meta={"model": result.get("model"), "base": as_dict(result.get("base")).get("source")},
                   preloaded_evals={"base": base, "final": result})


def is_sweep_dir(path: Path) -> bool:
    """True for a directory holding ``sweep.json``, ``trials.jsonl`` or ``trials/`` of runs."""
    if any((path / name).is_file() for name in SWEEP_FILES):
        return True
    trials = path / "trials"
    return trials.is_dir() and any(is_run_dir(child) for child in trials.iterdir())


def read_sweep(path: Path) -> SweepView:
    """Reads a sweep directory: the one place that knows the format ``retain sweep`` writes.

    The format (``retain sweep``'s, see :mod:`retain.sweep.results`; align here if it changes)::

        sweep.json        {"trials": [TRIAL, ...], "pareto": [NUMBER, ...], "recommended": NUMBER,
                           "objectives": {"forgetting_limit": 0.03, ...}, ...}
        trials.jsonl      one TRIAL per line (read when there is no sweep.json)
        trials/trial-NNNN/  each trial's run directory
        pareto.md, recommended.yaml   shown as they are

    where ``TRIAL`` is ``{number, params, state, task_accuracy, ood_accuracy, forgetting,
    general_accuracy, seconds, run_dir, error, ...}``. ``run_dir`` may be absolute or
    relative to the sweep directory, and is read only if it lies inside the sweep
    directory (:func:`_within`); otherwise ``trials/trial-NNNN`` is tried. Figures
    missing from a record are taken from its run's ``summary.json``. Without ``pareto``
    the report computes the front. With neither file, every run directory under
    ``trials/`` is a trial, its params the settings that differ between the trials.

    Raises:
        RetainError: A file is corrupt or a record is not an object with a number.
    """
    data: Any = {}
    if (path / "sweep.json").is_file():
        data = read_json(path / "sweep.json", what="sweep.json")
        records = data.get("trials") if isinstance(data, dict) else data
        source = path / "sweep.json"
    elif (path / "trials.jsonl").is_file():
        records, source = read_jsonl(path / "trials.jsonl"), path / "trials.jsonl"
    else:
        records, source = None, None
    if records is None and source is None:
        trials = [_trial_from_run(number, read_run(child)) for number, child in
                  enumerate(sorted(c for c in (path / "trials").iterdir() if is_run_dir(c)))]
        _params_from_differences(trials)
    else:
        if not isinstance(records, list):
            raise RetainError("no list of trials", file=source, field="trials",
                              fix="give the sweep.json written by retain sweep")
        trials = [_trial_from_record(record, path, source) for record in records]
    notes = {name: (path / name).read_text(encoding="utf-8", errors="replace")
             for name in ("pareto.md", "recommended.yaml") if (path / name).is_file()}
    index = as_dict(data)
    pareto = index.get("pareto")
    return SweepView(
        path=path, name=path.name, kind="sweep", trials=sorted(trials, key=lambda trial: trial.number), notes=notes,
        pareto={n for n in pareto if isinstance(n, int)} if isinstance(pareto, list) else None,
        recommended=index["recommended"] if isinstance(index.get("recommended"), int) else None,
        forgetting_limit=as_number(as_dict(index.get("objectives")).get("forgetting_limit")),
    )


def _trial_from_record(record: Any, sweep: Path, source: Path) -> Trial:
    if not isinstance(record, dict) or not isinstance(record.get("number"), int):
        raise RetainError("a trial record is not an object with an integer 'number'", file=source,
                          field="trials", fix="give the sweep.json written by retain sweep")
    number = record["number"]
    run = None
    candidates = [Path(record["run_dir"])] if isinstance(record.get("run_dir"), str) else []
    candidates = [c if c.is_absolute() else sweep / c for c in candidates] + [sweep / "trials" / f"trial-{number:04d}"]
    for candidate in candidates:
        if _within(sweep, candidate) and is_run_dir(candidate):
            run = read_run(candidate)
            break
    trial = _trial_from_run(number, run) if run is not None else Trial(number=number)
    # The sweep's own figures win over those read from the run.
    for key in ("task_accuracy", "ood_accuracy", "forgetting", "general_accuracy", "seconds"):
        value = as_number(record.get(key))
        if value is not None:
            setattr(trial, key, value)
    trial.params = as_dict(record.get("params")) or trial.params
    trial.state = str(record.get("state") or trial.state)
    trial.error = str(record["error"]) if record.get("error") else None
    return trial


def _within(folder: Path, candidate: Path) -> bool:
    """True when ``candidate`` resolves inside ``folder``.

    A sweep or compare folder names its runs' directories in its own JSON. A folder from
    someone else could name any run-shaped directory on this disk (``/home/me/secret-run``),
    whose config and log would then be copied into a report that gets shared; only runs
    inside the folder are read (retain writes them there: ``trials/``, ``runs/``).
    """
    try:
        return candidate.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _trial_from_run(number: int, run: RunView) -> Trial:
    summary = summary_of(run)
    task = as_dict(summary.task)
    return Trial(
        number=number,
        state="complete" if run.summary is not None else "running",
        task_accuracy=as_number(as_dict(task.get("eval")).get("accuracy")),
        ood_accuracy=as_number(as_dict(task.get("ood")).get("accuracy")),
        forgetting=as_number(summary.forgetting_relative),
        general_accuracy=as_number(summary.final_probe_accuracy),
        seconds=as_number(summary.seconds),
        run=run,
    )


def _params_from_differences(trials: list[Trial]) -> None:
    varying = varying_settings([trial.run for trial in trials if trial.run is not None])
    for trial in trials:
        if trial.run is not None:
            trial.params = {key: dotted(trial.run.config, key) for key in varying}


def is_compare_dir(path: Path) -> bool:
    """True for a ``retain lab compare`` folder."""
    return (path / "compare.json").is_file()


def read_compare(path: Path) -> SweepView:
    """Reads a ``retain lab compare`` folder: each recipe and seed a trial.

    A run directory named in ``compare.json`` is read only inside the folder (:func:`_within`);
    one that moved, or lies outside, is looked for under ``runs/``.

    Raises:
        RetainError: ``compare.json`` or a run's file is corrupt.
    """
    source = path / "compare.json"
    data = read_json(source, what="compare.json")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise RetainError("no 'rows' list", file=source, field="rows",
                          fix="give the compare.json written by retain lab compare")
    trials = []
    for row in rows:
        for result in as_dict(row).get("runs") or []:
            result = as_dict(result)
            named = Path(str(result.get("run_dir") or ""))
            run = None
            for candidate in (named, path / "runs" / named.name):
                if named.name and _within(path, candidate) and is_run_dir(candidate):
                    run = read_run(candidate)
                    break
            trials.append(Trial(
                number=len(trials),
                params={"recipe": result.get("recipe"), "seed": result.get("seed")},
                task_accuracy=as_number(result.get("task_accuracy")),
                ood_accuracy=as_number(result.get("ood_accuracy")),
                forgetting=as_number(result.get("forgetting")),
                general_accuracy=as_number(result.get("probe_accuracy")),
                seconds=as_number(result.get("train_seconds")),
                run=run,
            ))
    return SweepView(path=path, name=path.name, kind="lab compare", trials=trials,
                     table=[as_dict(row) for row in rows])


# --- any input ----------------------------------------------------------------------------


def read_source(path: Path) -> RunView | SweepView:
    """Reads whatever ``path`` is: a run, a sweep, a comparison or an eval result.

    A file inside a run or sweep directory (``summary.json``, ``sweep.json``, ...) stands
    for its directory.

    Raises:
        RetainError: Nothing is at ``path``, it is none of the above, or a file is corrupt.
    """
    if not path.exists():
        raise RetainError(f"{path} does not exist", fix="give a run directory, a sweep directory, "
                          "a retain lab compare folder or a retain eval --json file")
    if path.is_file():
        if path.name in SWEEP_FILES:
            return read_sweep(path.parent)
        if path.name == "compare.json":
            return read_compare(path.parent)
        if is_run_dir(path.parent) and path.name in (*RUN_MARKERS, "config.yaml"):
            return read_run(path.parent)
        if path.suffix == ".json":
            return read_eval_result(path)
    elif is_sweep_dir(path):
        return read_sweep(path)
    elif is_compare_dir(path):
        return read_compare(path)
    elif is_run_dir(path):
        return read_run(path)
    raise RetainError(
        f"{path} is not a run directory (config.yaml with summary.json or metrics.jsonl), a sweep "
        "directory (sweep.json or trials/), a retain lab compare folder (compare.json) or a "
        "retain eval --json file",
        fix="give a directory written by retain train, retain sweep or retain lab compare",
    )
