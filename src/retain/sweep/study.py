"""Runs a sweep as an Optuna study with two objectives: task accuracy up, forgetting down.

The study lives in Optuna's RDB storage (SQLite in the sweep directory by default, or any
URL such as PostgreSQL), so rerunning the command resumes it and several ``--worker``
processes on several machines share it; coordinating them is Optuna's job:

- Grid mode enqueues every grid point once, as a waiting trial, when the study is created;
  a worker takes one with ``study.ask()``, which moves it to running under a row lock, so
  no point is trained twice. (Optuna's ``GridSampler`` is not used: once every point has
  started, a worker that asks again re-runs a point another worker is still running, and it
  counts a failed point as visited.)
- Optuna mode asks the sampler (NSGA-II, TPE or random) until the budget is used.
- Each running trial sends Optuna heartbeats; a trial whose worker died (kill -9, a lost
  machine) goes stale, is marked failed by ``fail_stale_trials`` and is enqueued again by
  Optuna's retry callback, so its point is run again while finished trials never are.
- Each trial trains in a child process (:mod:`retain.sweep.trial`): a trial that raises,
  is refused by the audit or dies is marked failed with its reason, and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback  # Optuna >= 4.9
from optuna.trial import TrialState

from retain.config.messages import inline
from retain.errors import ConfigError, RetainError
from retain.sweep.results import SweepResults, figures, write_results
from retain.sweep.spec import Sweep
from retain.sweep.trial import TrialFailed, run_in_child, train_trial

logger = logging.getLogger("retain.sweep")

MAX_RETRIES = 3  # a trial whose worker died is run again at most this often
_IDENTITY = "retain_sweep"
_GRID_READY = "retain_grid_points"


@dataclass
class SweepOutcome:
    """What one ``retain sweep`` process did: trials it ran, and the summary (None for a worker)."""

    ran: int
    results: SweepResults | None


def run_sweep(sweep: Sweep, *, worker: bool = False, echo: Callable[[str], None] = print) -> SweepOutcome:
    """Creates or resumes the sweep's study, runs trials until none is left, and summarises.

    Args:
        sweep: The validated sweep (:func:`retain.sweep.load_sweep`).
        worker: Join as one of several workers: run trials while there are any to start,
            then stop, without waiting for other workers' trials or writing the summary.
            Without it the process also waits for trials running elsewhere (a dead worker's
            trial is retried once its heartbeat is stale) and writes the summary files.
        echo: Prints one line per trial.

    Returns:
        The number of trials run by this process and, unless ``worker``, the results.

    Raises:
        RetainError: The storage cannot be opened, or holds a different sweep of this name.
    """
    sweep.trials_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # retain prints its own line per trial
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
        study = open_study(sweep, worker=worker)
        runner = _Runner(sweep, echo)
        waiting_said = False
        while True:
            optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            if startable(trials, sweep) > 0:
                runner.run_one(study)
                continue
            running = [trial for trial in trials if trial.state == TrialState.RUNNING]
            if worker or not running:
                break
            if not waiting_said:
                echo(f"waiting for {len(running)} trial(s) running in other workers (trial "
                     f"{', '.join(str(trial.number) for trial in running)})")
                waiting_said = True
            time.sleep(sweep.heartbeat)
        if worker:
            return SweepOutcome(ran=runner.ran, results=None)
        return SweepOutcome(ran=runner.ran, results=write_results(study, sweep))


def startable(trials: list, sweep: Sweep) -> int:
    """Returns how many trials may still start: waiting ones (grid points, retries), plus in
    optuna mode the budget not yet taken by trials that ran, run or wait."""
    waiting = sum(trial.state == TrialState.WAITING for trial in trials)
    if sweep.mode == "grid":
        return waiting
    retried = {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    taken = sum(1 for trial in trials if trial.number not in retried and not trial.user_attrs.get("stray"))
    return waiting + max(0, (sweep.budget or 0) - taken)


# --- the study ------------------------------------------------------------------------


def open_study(sweep: Sweep, *, worker: bool = False) -> optuna.Study:
    """Creates the sweep's study, or loads it (a rerun, another worker) after checking that it
    holds the same sweep; in grid mode the grid points are enqueued.

    Raises:
        RetainError: The storage cannot be opened.
        ConfigError: The study of this name was started with another space or base config.
    """
    storage = _storage(sweep)
    sampler = _sampler(sweep, worker)
    identity = sweep.identity()
    try:
        study = optuna.create_study(storage=storage, sampler=sampler, study_name=sweep.name,
                                    directions=["maximize", "minimize"])
        study.set_user_attr(_IDENTITY, identity)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=sampler)
        created = False
    if not created:
        saved = _wait_for_attr(study, _IDENTITY)
        if saved is not None and saved != identity:
            changed = sorted(key for key in identity if saved.get(key) != identity[key])
            raise ConfigError(
                f"the sweep '{sweep.name}' in its storage was started with a different {', '.join(changed)}",
                file=sweep.path, field=changed[0] if changed[0] != "base_sha256" else "base",
                fix="restore the sweep file and base config it started with, or pass --name for a new sweep")
    if sweep.mode == "grid":
        _enqueue_grid(study, sweep, created)
    return study


def _enqueue_grid(study: optuna.Study, sweep: Sweep, created: bool) -> None:
    """Puts every grid point in the study once, as a waiting trial.

    The process that created the study enqueues them; a worker that joined at the same
    moment waits for it (the grid-ready mark) rather than enqueue a second copy. Points
    still missing after that (a larger budget on a rerun, or a creator killed while
    enqueueing) are added with ``skip_if_exists``.
    """
    points = sweep.grid()
    if created:
        for point in points:
            study.enqueue_trial(point)
        study.set_user_attr(_GRID_READY, len(points))
        return
    _wait_for_attr(study, _GRID_READY)
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr(_GRID_READY, max(len(points), study.user_attrs.get(_GRID_READY) or 0))


def _wait_for_attr(study: optuna.Study, name: str, seconds: float = 30.0) -> Any:
    """Returns a study attribute the creating process writes just after creating the study."""
    deadline = time.monotonic() + seconds
    while True:
        value = study.user_attrs.get(name)
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _storage(sweep: Sweep):
    """Opens Optuna's RDB storage with heartbeats and retries of trials whose worker died.

    Two workers that start together on an empty database may race to create Optuna's
    tables; a failed first attempt is retried.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = sweep.storage
    # SQLite: wait for a lock rather than fail at once when several local processes write.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    shown = make_url(url).render_as_string(hide_password=True)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=sweep.heartbeat,
                grace_period=3 * sweep.heartbeat, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
        except ImportError as exc:
            raise RetainError(f"cannot open the sweep storage {shown}: {exc}", field="storage",
                              fix="install the database driver, e.g. pip install psycopg2-binary") from None
        except SQLAlchemyError as exc:
            if attempt == 2:
                reason = str(exc).strip().splitlines()[0]
                raise RetainError(f"cannot open the sweep storage {shown}: {reason}", field="storage",
                                  fix="check that the database server runs and the URL's user, password, "
                                  "host, port and database are right") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _sampler(sweep: Sweep, worker: bool) -> optuna.samplers.BaseSampler:
    """The study's sampler. Workers seed it apart (from their pid), else two workers with the
    same seed would propose the same settings."""
    seed = sweep.seed if not worker else sweep.seed + 1 + os.getpid()
    if sweep.mode == "optuna" and sweep.sampler == "nsga2":
        budget = sweep.budget or 8
        population = sweep.population or max(4, min(50, budget // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if sweep.mode == "optuna" and sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid mode: every trial is enqueued, none sampled


# --- one trial ------------------------------------------------------------------------


class _Runner:
    """Runs trials one at a time in this process, each as one ``study.optimize`` step (which
    gives it Optuna's heartbeat thread and the stale-trial check)."""

    def __init__(self, sweep: Sweep, echo: Callable[[str], None]) -> None:
        self.sweep = sweep
        self.echo = echo
        self.ran = 0
        self.host = socket.gethostname()
        self.current: int | None = None

    def run_one(self, study: optuna.Study) -> None:
        self.current = None
        try:
            study.optimize(self.objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
        except KeyboardInterrupt:
            if self.current is not None:  # enqueue its point again: a rerun redoes it
                stopped = next(frozen for frozen in study.get_trials(deepcopy=False) if frozen.number == self.current)
                RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, stopped)
            raise

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        sweep = self.sweep
        if sweep.mode == "grid" and "fixed_params" not in _frozen(trial).system_attrs:
            # Two workers saw the last waiting point at once; the other one took it.
            trial.set_user_attr("stray", True)
            raise optuna.TrialPruned("no grid point left")
        self.current = trial.number
        values = {axis.key: axis.suggest(trial) for axis in sweep.axes}
        name = f"trial-{trial.number:04d}"
        run_dir = sweep.trials_dir / name
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("worker", f"{self.host}:{os.getpid()}")
        settings = ", ".join(f"{key}={inline(value)}" for key, value in values.items())
        self.echo(f"trial {trial.number}: {settings}")
        started = time.perf_counter()
        self.ran += 1
        try:
            try:
                config = sweep.trial_config(values, name)
            except ConfigError as exc:
                raise TrialFailed(f"invalid combination: {exc.message}", fix=exc.fix) from None
            summary = run_in_child(train_trial, config, output=sweep.trials_dir / f"{name}.output.txt",
                                   on_start=lambda pid: trial.set_user_attr("pid", pid))
        except TrialFailed as exc:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            trial.set_user_attr("error", ("refused: " if exc.refused else "") + exc.message)
            self.echo(f"trial {trial.number} failed: {exc.message}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        found = figures(summary, sweep.task_split)
        for key, value in found.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        task, forgetting = found["task_accuracy"], found["forgetting"]
        if task is None or forgetting is None:
            missing = f"task accuracy on {sweep.task_split}" if task is None else "forgetting"
            message = f"the run has no {missing} to score (see {run_dir / 'summary.json'})"
            trial.set_user_attr("error", message)
            self.echo(f"trial {trial.number} failed: {message}")
            raise TrialFailed(message)
        self.echo(f"trial {trial.number}: task {task:.1%}, forgetting {forgetting:+.1%}, "
                  f"{time.perf_counter() - started:.0f} s")
        return task, forgetting


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The stored form of a running trial, with the system attributes a ``Trial`` hides."""
    return next(frozen for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if frozen.number == trial.number)
