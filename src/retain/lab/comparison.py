"""``retain lab compare``: every method trained on the lab task from one base, over seeds.

Each recipe (a method with its settings) is a real ``retain train`` of the lab model on the
lab domain task (``retain lab data``), once per seed, with the guards off: the table
measures what each method buys by itself, not what the guards rescue. Every run's
directory is kept, and a run that already finished is read back instead of trained again,
so an interrupted comparison continues where it stopped.

The result is one row per recipe: task accuracy on the held-out and OOD splits, general
probe accuracy after training, forgetting relative to the base, and training time
relative to full fine-tuning, each as a mean with a 95% confidence interval over seeds
(Student's t; none for a single seed).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from retain.config import load_config
from retain.errors import RetainError
from retain.io import atomic_write_json
from retain.lab.base import build_base, lab_size
from retain.lab.domain import TRAIN_ROWS
from retain.lab.export import export_lab_data
from retain.summary import NOT_REHEARSED, REHEARSED

T = TypeVar("T")


@dataclass(frozen=True)
class Recipe:
    """One row of the comparison: a name and the config overrides that make it (``{data}``
    in an override is the comparison's lab data folder)."""

    name: str
    overrides: tuple[str, ...]
    claim: str = ""  # what its paper says it does, for the table's reader


# The aggressive setting of the lab: full fine-tuning at lr 5e-4 for 2 epochs forgets most
# of the base model's general ability (docs/RESULTS.md, issue 5). Each mitigation is added
# to the setting it is meant to rescue.
AGGRESSIVE = ("train.lr=5e-4",)
RECIPE = "lora + replay (retain's recipe)"  # the lab's default recipe: what `retain lab` trains
DEFAULT_RECIPES: tuple[Recipe, ...] = (
    Recipe("full (aggressive)", ("method=[full]", *AGGRESSIVE), "the crisis: forgets"),
    # The config's default (LoRA at lr 1e-4) learns the lab task only in part in 2 epochs
    # (docs/RESULTS.md, "Guards on the lab": 52-57%); lr 1e-3 learns it.
    Recipe("lora, lr 1e-3", ("method=[lora]", "train.lr=1e-3"), "fewer trained weights, less forgetting"),
    # Chosen by `python benchmarks/evidence_recipe.py` on validation data at seed 0 (issue 22):
    # of the LoRA + replay grids, the setting that shipped under the default guards with the
    # best validation accuracy. Until issue 22 it was lr 1e-3 with half the rows replay, for 2
    # epochs, chosen on the test split while replay trained in blocks and rehearsed the probes.
    Recipe(RECIPE, ("method=[lora,replay]", "train.lr=5e-4", "method.replay.ratio=0.75", "train.epochs=3"),
           "retain's recipe: LoRA with three quarters of the rows general data"),
    Recipe("full + freeze (layers)", ("method=[full,freeze]", *AGGRESSIVE), "bottom layers kept: less forgetting"),
    # The lab model ties its head to its input embeddings: freezing them freezes the head too.
    Recipe("full + freeze (layers, embeddings, tied head)",
           ("method=[full,freeze]", "method.freeze.embeddings=true", *AGGRESSIVE),
           "bottom layers kept: less forgetting"),
    Recipe("full + llrd", ("method=[full,llrd]", *AGGRESSIVE), "lower layers move less: less forgetting"),
    Recipe("full + ewc", ("method=[full,ewc]", *AGGRESSIVE), "important weights held: less forgetting"),
    Recipe("full + l2sp", ("method=[full,l2sp]", *AGGRESSIVE), "weights held near the start: less forgetting"),
    Recipe("full + replay", ("method=[full,replay]", *AGGRESSIVE), "general data rehearsed: less forgetting"),
    Recipe("full + self_augment", ("method=[full,self_augment]", *AGGRESSIVE),
           "self-generated rehearsal: less forgetting"),
    Recipe("full + token_forget", ("method=[full,token_forget]", *AGGRESSIVE),
           "better task generalisation (the paper does not claim less forgetting)"),
    Recipe("full + fapm", ("method=[full,fapm]", *AGGRESSIVE), "task vector pruned: less forgetting, task kept"),
)
# CI-sized: the micro lab, a few steps, one seed; it checks the machinery, not the claims.
QUICK_RECIPES: tuple[Recipe, ...] = (
    Recipe("full (aggressive)", ("method=[full]", *AGGRESSIVE)),
    Recipe("lora", ("method=[lora]",)),
    Recipe("full + replay", ("method=[full,replay]", *AGGRESSIVE)),
)
REFERENCE = "full (aggressive)"  # the recipe training time is quoted against
# On a real pretrained model (`retain lab compare --model NAME`): the real story's settings
# (retain.lab.runs.REAL: its aggressive run, full fine-tuning at lr 1e-4, and its recipe, LoRA
# at lr 2e-4 with self-rehearsal), each mitigation added to the aggressive run as on the lab.
# General data needs nothing from outside: self_augment and EWC read the shipped
# instructions (retain.methods.general). Fixed before any comparison on a real model ran.
REAL_LR = ("train.lr=1e-4",)  # full fine-tuning's rate on a real model, mitigations included
REAL_AGGRESSIVE = ("method=[full]", *REAL_LR)
REAL_RECIPE_OVERRIDES = ("method=[lora,self_augment]", "train.lr=2e-4")
REAL_RECIPE = "lora + self-rehearsal (retain's recipe)"
REAL_RECIPES: tuple[Recipe, ...] = (
    Recipe(REFERENCE, REAL_AGGRESSIVE, "the crisis: forgets"),
    Recipe("lora, lr 2e-4", ("method=[lora]", "train.lr=2e-4"), "fewer trained weights, less forgetting"),
    Recipe(REAL_RECIPE, REAL_RECIPE_OVERRIDES,
           "retain's recipe on a real model: LoRA rehearsing the base model's own answers"),
    Recipe("full + self-rehearsal", ("method=[full,self_augment]", *REAL_LR), "self-generated rehearsal: less forgetting"),
    Recipe("full + freeze (layers)", ("method=[full,freeze]", *REAL_LR), "bottom layers kept: less forgetting"),
    Recipe("full + llrd", ("method=[full,llrd]", *REAL_LR), "lower layers move less: less forgetting"),
    Recipe("full + ewc", ("method=[full,ewc]", *REAL_LR, "method.general.source=instructions"),
           "important weights held: less forgetting"),
    Recipe("full + l2sp", ("method=[full,l2sp]", *REAL_LR), "weights held near the start: less forgetting"),
    Recipe("full + fapm", ("method=[full,fapm]", *REAL_LR), "task vector pruned: less forgetting, task kept"),
)


@dataclass
class RunResult:
    """The figures of one finished run."""

    recipe: str
    seed: int
    task_accuracy: float | None
    ood_accuracy: float | None
    probe_accuracy: float | None
    base_probe_accuracy: float | None
    forgetting: float | None
    train_seconds: float
    run_dir: str
    forgetting_not_rehearsed: float | None = None
    forgetting_rehearsed: float | None = None
    rehearsed_items: int = 0


@dataclass
class Row:
    """One recipe over its seeds: ``(mean, half-width of the 95% interval)`` per figure."""

    recipe: str
    claim: str
    seeds: int
    task_accuracy: tuple[float | None, float | None]
    ood_accuracy: tuple[float | None, float | None]
    probe_accuracy: tuple[float | None, float | None]
    forgetting: tuple[float | None, float | None]
    time_vs_reference: float | None
    runs: list[RunResult] = field(default_factory=list)
    forgetting_not_rehearsed: tuple[float | None, float | None] = (None, None)
    forgetting_rehearsed: tuple[float | None, float | None] = (None, None)


def run_compare(
    out_dir: Path,
    recipes: Sequence[Recipe] = DEFAULT_RECIPES,
    *,
    seeds: int = 3,
    first_seed: int = 0,
    size: str = "default",
    n_train: int = TRAIN_ROWS,
    data_size: int | None = None,
    extra: Sequence[str] = (),
    workers: int = 1,
    progress: bool = False,
    echo: Callable[[str], None] = print,
    model: str | None = None,
    n_eval: int | None = None,
) -> list[Row]:
    """Trains every recipe ``seeds`` times and returns the table (also in ``compare.json``).

    Args:
        out_dir: Holds the lab data (``data/``), the runs (``runs/``) and ``compare.json``.
        recipes: The rows to train.
        seeds: Runs per recipe, with ``train.seed`` ``first_seed``, ``first_seed + 1``, ...
        first_seed: The seed of each recipe's first run.
        size: The lab preset whose base model and world are used.
        n_train: Training rows the lab data is written with.
        data_size: Train on the first N rows only (``data.size``); None uses all.
        extra: Overrides applied to every run after the recipe's own (``--quick`` sets
            ``train.max_steps``).
        workers: Runs trained at once, each in its own process with an equal share of the
            CPU threads. The lab model's matrices are too small to keep several threads
            busy, so on a CPU one-thread runs side by side use the cores better than one
            run with every thread (for ``retain lab``, two workers took 0.85x the time of
            one: docs/BENCHMARKS.md); on a GPU keep 1.
        progress: Show each run's progress bars (one worker only).
        echo: Prints one line per run.
        model: The path of a real model to compare on instead of the lab's; ``extra``
            then names what it is judged on (``retain lab compare --model`` passes the
            real story's probes and step cap, :data:`retain.lab.runs.REAL`).
        n_eval: Rows of each evaluation split of the lab data (its defaults when None).
    """
    data = out_dir / "data"
    if not (data / "config.yaml").is_file():
        export_lab_data(data, size=size, n_train=n_train, n_eval=n_eval)
    # The lab data's config names the default lab model and suite; a real model, or another
    # preset's model and its own world's probes, are set here.
    if model is not None:
        common = [f"model.name_or_path={model}", *extra]
    else:
        common = [f"probes.suites=[{data / 'probes.jsonl'}]", *extra]
        if size != "default":
            common.append(f"model.name_or_path={build_base(lab_size(size), progress=progress).path}")
    jobs = [(recipe, seed, data, out_dir / "runs", data_size, tuple(common)) for recipe in recipes
            for seed in range(first_seed, first_seed + seeds)]
    runs: list[RunResult] = []
    # closing: a Ctrl-C that lands in this loop's body, outside the generator, still stops
    # the workers (the generator is closed here, not whenever it is collected).
    with contextlib.closing(_map(_run, jobs, workers, progress=progress)) as results:
        for result in results:
            runs.append(result)
            echo(f"{result.recipe}, seed {result.seed}: task {_pct(result.task_accuracy)}, general "
                 f"{_pct(result.probe_accuracy)}, forgetting {_pct(result.forgetting)}, "
                 f"{result.train_seconds:.0f} s")
    rows = summarise(runs, recipes)
    atomic_write_json(out_dir / "compare.json", {
        "size": size, "n_train": n_train, "data_size": data_size, "seeds": seeds, "first_seed": first_seed,
        "extra": list(extra), "model": model, "n_eval": n_eval,
        "rows": [asdict(row) for row in rows],
    })
    return rows


def _map(function: Callable[..., T], jobs: list[tuple], workers: int, **kwargs: Any) -> Iterator[T]:
    """Yields ``function(*job, **kwargs)`` of each job: in order with one worker, else in
    order of completion from ``workers`` processes (``kwargs`` only in-process: a worker
    shows no progress bars).

    When the caller stops early (Ctrl-C, an error, or closing the generator), the running
    jobs are interrupted and the rest refused, not waited for (:func:`stop_workers`);
    finished runs are on disk, so the same command continues from them. Callers close it
    (``contextlib.closing``): a Ctrl-C in the caller's loop body never reaches the
    generator, and an unclosed one left at exit waits for every running job.
    """
    if workers <= 1:
        for job in jobs:
            yield function(*job, **kwargs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: a fresh interpreter per worker, no forked torch thread pools or locks.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker, initargs=(threads, os.getpid())) as pool:
        with ctrl_c_ignored():  # the workers start here, and are born ignoring Ctrl-C
            futures = [pool.submit(worker_job, function, *job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # Ctrl-C or SIGINT to this process alone, an error, the caller stopping
            stop_workers(pool)
            raise


@contextlib.contextmanager
def ctrl_c_ignored() -> Iterator[None]:
    """Ignores SIGINT in this (main) thread while worker processes start, so that they
    inherit the ignoring: a worker interrupted while it still imports torch would die,
    and a dead worker breaks the pool (Python 3.11's pool thread then fails on futures
    already cancelled, with tracebacks). :func:`init_worker` installs the worker's own
    handler once it is up; a Ctrl-C before that is what :func:`stop_workers` repeats."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_workers(pool: Any, grace: float = 10.0) -> None:
    """Interrupts the jobs a pool's workers run (Ctrl-C in each, as :func:`_interrupted`
    handles it) and shuts the pool down without starting a job not yet handed out, so that
    it ends whole: without it, leaving the pool waits for every running training, and a
    SIGINT sent to the parent alone (not its process group) reaches no worker. A job a
    worker already holds fails at once (:func:`worker_job`).

    Ctrl-C is sent again every half second until the workers are gone: one still
    starting ignores it (:func:`ctrl_c_ignored`) and must see it once its handler is
    up. A worker not gone after ``grace`` seconds is terminated. The pool cancels the
    queued jobs itself (``cancel_futures``), which also drops them from what it would
    mark failed if a worker died: Python 3.11's pool thread fails on a future cancelled
    from outside (``future.cancel()``) when the pool breaks, with tracebacks.
    """
    import multiprocessing
    import signal
    import time

    workers = multiprocessing.active_children()  # the pool's workers: the lab runs no other child
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        alive = [child for child in workers if child.is_alive()]
        if not alive:
            return
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGINT)
        time.sleep(0.5)
    for child in workers:
        if child.is_alive():
            child.terminate()


def init_worker(threads: int, parent: int | None = None) -> None:
    """Sets up a worker process of a pool of trainings: ``threads`` torch threads, no
    progress bars (nobody sees a worker's terminal), Ctrl-C remembered (see
    :func:`worker_job`), and, given the pool owner's pid ``parent``, an end when it ends."""
    import signal

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    signal.signal(signal.SIGINT, _interrupted)
    if parent is not None:
        _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Ends this worker within a second of its parent's death (SIGTERM or kill -9 to the
    parent leaves no worker running under PID 1 and starting queued jobs). Polling the
    parent's PID works on Linux and macOS alike; written here as no library does it."""
    import os
    import threading
    import time

    # ``parent`` is the pid the pool's owner passed, not os.getppid() read here: a parent
    # killed while this worker was still importing would make the orphan watch its new one.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # no cleanup to wait for: the parent that would read the result is gone

    threading.Thread(target=watch, name="retain-parent-watch", daemon=True).start()


_INTERRUPTED = False  # set in a worker by Ctrl-C
_RUNNING = False  # a job is running in this worker


def _interrupted(signum: int, frame: Any) -> None:
    """Ctrl-C in a worker: the running job stops; an idle worker only remembers it (raising
    while it waits for work would kill it, and break the pool)."""
    global _INTERRUPTED
    _INTERRUPTED = True
    if _RUNNING:
        raise KeyboardInterrupt


def worker_job(function: Callable[..., T], *args: Any) -> T:
    """Runs one job in a worker, unless Ctrl-C reached the worker before: the pool hands each
    worker its next jobs ahead of time, where they can no longer be cancelled, and a worker
    survives the KeyboardInterrupt of the job it was running."""
    global _RUNNING
    if _INTERRUPTED:
        raise KeyboardInterrupt
    _RUNNING = True
    try:
        return function(*args)
    finally:
        _RUNNING = False


def _run(recipe: Recipe, seed: int, data: Path, runs: Path, data_size: int | None,
         extra: Sequence[str], progress: bool = False) -> RunResult:
    from retain.training.resume import finished_summary
    from retain.training.run import run_train

    name = _slug(recipe.name) + (f"-n{data_size}" if data_size else "") + f"-seed{seed}"
    summary_path = runs / name / "summary.json"
    # No brittleness perturbations: the table shows none of their figures, and they are about
    # half of each run's final evaluation (an override in ``extra`` comes later and wins).
    overrides = [*(item.format(data=data) for item in recipe.overrides), f"train.seed={seed}",
                 "guards.enabled=false", "eval.perturbations=[]",
                 f"output.dir={runs}", f"output.name={name}", *extra]
    if data_size:
        overrides.append(f"data.size={data_size}")
    config = load_config(data / "config.yaml", overrides)
    # A run finished with this very config is read back, not trained again; a recipe whose
    # settings changed since is trained afresh.
    summary = finished_summary(config)
    if summary is None:
        try:
            summary = run_train(config, overwrite=True, progress=progress, echo=lambda line: None).summary
        except RetainError as error:
            raise RetainError(f"recipe '{recipe.name}', seed {seed}: {error.message}", fix=error.fix) from None
    not_rehearsed, _ = summary.group_forgetting(NOT_REHEARSED)
    rehearsed, rehearsed_items = summary.group_forgetting(REHEARSED)
    return RunResult(
        recipe=recipe.name, seed=seed,
        task_accuracy=summary.task_accuracy(),
        ood_accuracy=summary.task_accuracy("ood"),
        probe_accuracy=summary.final_probe_accuracy,
        base_probe_accuracy=summary.base_probe_accuracy,
        forgetting=summary.forgetting_relative,
        train_seconds=float(summary.train_seconds or 0.0),
        run_dir=str(summary_path.parent),
        forgetting_not_rehearsed=not_rehearsed, forgetting_rehearsed=rehearsed, rehearsed_items=rehearsed_items,
    )


def summarise(runs: Sequence[RunResult], recipes: Sequence[Recipe]) -> list[Row]:
    """Returns one :class:`Row` per recipe, in ``recipes`` order."""
    by_recipe = {recipe.name: [run for run in runs if run.recipe == recipe.name] for recipe in recipes}
    reference = by_recipe.get(REFERENCE) or []
    reference_time = statistics.fmean(run.train_seconds for run in reference) if reference else None
    rows = []
    for recipe in recipes:
        mine = by_recipe[recipe.name]
        seconds = statistics.fmean(run.train_seconds for run in mine) if mine else None
        rows.append(Row(
            recipe=recipe.name, claim=recipe.claim, seeds=len(mine),
            task_accuracy=mean_ci([run.task_accuracy for run in mine]),
            ood_accuracy=mean_ci([run.ood_accuracy for run in mine]),
            probe_accuracy=mean_ci([run.probe_accuracy for run in mine]),
            forgetting=mean_ci([run.forgetting for run in mine]),
            time_vs_reference=(seconds / reference_time if seconds and reference_time else None),
            runs=list(mine),
            forgetting_not_rehearsed=mean_ci([run.forgetting_not_rehearsed for run in mine]),
            forgetting_rehearsed=mean_ci([run.forgetting_rehearsed for run in mine]),
        ))
    return rows


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Returns the mean of the known ``values`` and the half-width of its Student-t
    confidence interval (None for fewer than two values)."""
    known = [value for value in values if value is not None and math.isfinite(value)]
    if not known:
        return None, None
    mean = statistics.fmean(known)
    if len(known) < 2:
        return mean, None
    from scipy.stats import t

    return mean, float(t.ppf((1 + confidence) / 2, len(known) - 1) * statistics.stdev(known) / math.sqrt(len(known)))


def markdown_table(rows: Sequence[Row]) -> str:
    """Returns the comparison as a Markdown table (percentages, mean ± 95% CI).

    Forgetting is shown on every probe item and on the items no training row stated
    (``not rehearsed``); a column for the rehearsed items is added when some run
    rehearsed any (its mean over the runs that did).
    """
    rehearsed = any(run.rehearsed_items for row in rows for run in row.runs)
    head = ("| method | task accuracy | OOD accuracy | general probes after | forgetting, all probes | "
            "forgetting, probes not rehearsed | " + ("forgetting, rehearsed probes | " if rehearsed else "")
            + "time vs full | seeds |")
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for row in rows:
        time_ratio = f"{row.time_vs_reference:.2f}x" if row.time_vs_reference else "n/a"
        extra = f"{_ci(row.forgetting_rehearsed)} | " if rehearsed else ""
        lines.append(f"| {row.recipe} | {_ci(row.task_accuracy)} | {_ci(row.ood_accuracy)} | "
                     f"{_ci(row.probe_accuracy)} | {_ci(row.forgetting)} | {_ci(row.forgetting_not_rehearsed)} | "
                     f"{extra}{time_ratio} | {row.seeds} |")
    return "\n".join(lines) + "\n"


def _ci(value: tuple[float | None, float | None]) -> str:
    mean, half = value
    if mean is None:
        return "n/a"
    return f"{mean:.1%}" + (f" ± {half:.1%}" if half is not None else "")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
