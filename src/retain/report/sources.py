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

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from retain.errors import RetainError
from retain.io import read_jsonl
from retain.rundir import RunDir

RUN_MARKERS = ("summary.json", "metrics.jsonl", "meta.json", "audit.json")
IGNORED_PREFIXES = ("output.",)  # settings every run differs in (names, folders)
SWEEP_FILES = ("sweep.json", "trials.jsonl")


# --- small readers ----------------------------------------------------------------------


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
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RetainError(f"invalid JSON in {what}: {error.msg}", file=path, line=error.lineno,
                          fix="rerun the command that wrote it, or delete the file") from None


# libyaml's parser where PyYAML was built with it: a sweep's 50 configs parse 20x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
        config = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader, C or Python
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise RetainError(f"invalid YAML: {getattr(error, 'problem', None) or error}", file=path,
                          line=mark.line + 1 if mark is not None else None,
                          fix="rerun the run, or repair the file") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RetainError("config.yaml is not a mapping of sections", file=path, fix="rerun the run, or repair the file")
    return config


def _optional_object(path: Path, what: str) -> dict[str, Any] | None:
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
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    doctor: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)
    preloaded_evals: dict[str, dict[str, Any] | None] | None = None

    @property
    def status(self) -> str:
        """``completed``, ``stopped``, ``evaluated``, ``refused`` or ``unfinished``."""
        if self.summary is not None:
            return str(self.summary.get("status") or "completed")
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
            events = [e for e in self.summary.get("guard_events") or [] if isinstance(e, dict)]
        return events

    @cached_property
    def base_eval(self) -> dict[str, Any] | None:
        """``base_eval.json``: the base model's evaluation, with every probe answer."""
        if self.preloaded_evals is not None:
            return self.preloaded_evals.get("base")
        return _optional_object(self.path / "base_eval.json", "the base model's evaluation")

    @cached_property
    def final_eval(self) -> dict[str, Any] | None:
        """``final_eval.json``: the trained model's evaluation, with every probe answer."""
        if self.preloaded_evals is not None:
            return self.preloaded_evals.get("final")
        return _optional_object(self.path / "final_eval.json", "the final evaluation")


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
    summary = run_dir.read_summary() if run_dir.summary_path.is_file() else None
    return RunView(
        path=path,
        name=path.name,
        config=read_config(run_dir.config_path),
        meta=_optional_object(run_dir.meta_path, "meta.json") or {},
        summary=summary,
        metrics=run_dir.read_metrics(),
        audit=_optional_object(path / "audit.json", "the audit's findings"),
        doctor=_optional_object(path / "doctor.json", "the doctor's findings"),
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
    summary = {
        "status": "evaluated",
        "method": [],
        "base_probe_accuracy": probe_overall(base) if base else None,
        "final_probe_accuracy": probe_overall(result),
        "forgetting": watched,
        "forgetting_relative": max(drops) if drops else None,
        "task": as_dict(result.get("task")),
        "drift": result.get("drift"),
        "smoke": result.get("smoke"),
        "verdict": None,
    }
    return RunView(path=path, name=path.stem, kind="eval", summary=summary,
                   meta={"model": result.get("model"), "base": as_dict(result.get("base")).get("source")},
                   preloaded_evals={"base": base, "final": result})


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
    summary = as_dict(run.summary)
    task = as_dict(summary.get("task"))
    return Trial(
        number=number,
        state="complete" if run.summary is not None else "running",
        task_accuracy=as_number(as_dict(task.get("eval")).get("accuracy")),
        ood_accuracy=as_number(as_dict(task.get("ood")).get("accuracy")),
        forgetting=as_number(summary.get("forgetting_relative")),
        general_accuracy=as_number(summary.get("final_probe_accuracy")),
        seconds=as_number(summary.get("seconds")),
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
