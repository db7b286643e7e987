"""A lab run: its scale, its directory, its data and base model, and its trainings, in
this process or in worker processes (:class:`Lab`); the story's steps
(:mod:`retain.lab.story`) run on it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retain.config import RetainConfig, load_config
from retain.lab.comparison import REAL_AGGRESSIVE, REAL_RECIPE_OVERRIDES
from retain.lab.domain import TRAIN_ROWS
from retain.summary import RunSummary

# The story's steps, in order (a lab run keeps each one's result in steps/N-NAME.json).
STEPS = ("base", "audit", "baseline", "trap", "aggressive", "recipe", "report")


AGGRESSIVE = ("method=[full]", "train.lr=5e-4")

# The trap's and the aggressive runs' final evaluations skip the brittleness perturbations: the
# story shows none of their figures, and they are about half of an evaluation (a looping
# model generates to the cap on every perturbed prompt). The recipe, the model a user would
# ship, keeps them for the report.
NO_BRITTLENESS = "eval.perturbations=[]"


@dataclass(frozen=True)
class Scale:
    """How big the lab's story is, and which model it is told on.

    Attributes:
        size: The lab preset of the base model and its world (for a real model, of the
            world the domain data is written from).
        n_train: Rows of the clean domain training set.
        small_rows: Rows of the set the size rule blocks (the articles' 200).
        n_eval: Rows of each evaluation split (validation, test, OOD); the lab data's
            defaults when None.
        train: Overrides for every training of the story.
        trap_every: Steps between guard checks of the trap run; its first check is the
            catch, and the run is capped at two checks.
        guarded_every: Steps between guard checks of the guarded aggressive run.
        shots: Few-shot settings of the baseline (3 shots fit the lab model's 512 tokens).
        model: The model the story is told on (a name or path ``retain train`` takes);
            None for the lab model retain builds for ``size``.
        aggressive: Overrides of the naive full fine-tuning.
        recipe: Overrides of the recipe; None for the lab's (``retain.lab.comparison.RECIPE``).
        probes: Overrides of what the base step and every training are judged by; the lab
            data's own probe suite when empty.
        names: How the story names the aggressive runs and the recipe.
    """

    size: str
    n_train: int
    small_rows: int = 200
    n_eval: int | None = None
    train: tuple[str, ...] = ()
    trap_every: int = 25
    guarded_every: int = 10
    shots: tuple[int, ...] = (0, 3)
    model: str | None = None
    aggressive: tuple[str, ...] = AGGRESSIVE
    recipe: tuple[str, ...] | None = None
    probes: tuple[str, ...] = ()
    names: tuple[str, str] = ("full fine-tuning, lr 5e-4", "lab recipe: LoRA + replay")


SCALES: dict[str, Scale] = {
    "default": Scale("default", n_train=TRAIN_ROWS),
    # For tests: the micro model, a small task and a few steps; it runs every step's
    # machinery, its numbers are not the lab's findings.
    "micro": Scale("micro", n_train=64, small_rows=40, n_eval=16, trap_every=4, guarded_every=4, shots=(0, 1),
                   train=("train.max_steps=8", "eval.perturbations=[]")),
}

# The story on a real pretrained model (`retain lab --model NAME`, `make real`): the lab's
# domain task rendered with the model's chat template, judged on the general suite
# calibrated to the base. Sized for SmolLM2-135M on 2 CPU cores (docs/BENCHMARKS.md,
# "make real"): 100 rows per evaluation split, trainings capped at 60 steps of 8 rows.
# The recipe rehearses the base model's own answers to the shipped instructions
# (self_augment at its default ratio, 0.2: 250 rows for 1,000 task rows; the 329
# instructions give about 310 healthy answers, too few for the 0.5 first tried), so it
# needs nothing from outside. These settings were fixed before any figure of a training
# was seen; docs/RESULTS.md lists what was changed after. The recipe's brittleness is
# measured on the first 50 test rows (generating every perturbed prompt of 100 rows took
# about a third of the recipe's time, before and after training).
REAL = Scale(
    "default", n_train=TRAIN_ROWS, n_eval=100, trap_every=10, guarded_every=10, shots=(0, 3),
    train=("train.max_steps=60", "eval.perturb_limit=50"),
    aggressive=REAL_AGGRESSIVE,
    recipe=REAL_RECIPE_OVERRIDES,
    probes=("probes.suites=[general]", "probes.calibrate=true"),
    names=("full fine-tuning, lr 1e-4", "recipe: LoRA + self-rehearsal"),
)


def real_scale(model: str) -> Scale:
    """Returns the real-model scale with ``model`` (a name or path) as its base."""
    return replace(REAL, model=model)


@dataclass
class StepResult:
    """What one step found: its one-line finding and the figures behind it."""

    step: str
    line: str
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "line": self.line, "figures": self.figures, "seconds": self.seconds}


@dataclass(frozen=True)
class Training:
    """One ``retain train`` run of the story: its name, its overrides of the lab config,
    and whether audit and doctor blockers are overridden (``--force``)."""

    name: str
    overrides: tuple[str, ...]
    force: bool = False


@dataclass
class Lab:
    """One lab run: its scale and seed, its run directory, how it reports.

    Attributes:
        scale: The story's size.
        seed: Seed of the world, the data and every training.
        root: The lab's run directory; data in ``data/``, trainings in ``runs/``,
            step results in ``steps/``.
        cache_dir: Base model cache; the default cache when None.
        progress: Show progress bars.
        echo: Prints one line per step and per notable event.
        workers: Trainings run at once, each in its own process with an equal share of
            the CPU threads (see :func:`run_story`).
        resume: Continue an interrupted lab run: steps whose result is saved are not run
            again, and a training that finished with the same config is read back.
    """

    scale: Scale
    seed: int
    root: Path
    cache_dir: Path | None = None
    progress: bool = True
    echo: Callable[[str], None] = print
    workers: int = 1
    resume: bool = False
    pending: dict[str, Future] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def step_file(self, step: str) -> Path:
        return self.root / "steps" / f"{STEPS.index(step) + 1}-{step}.json"

    def result(self, step: str) -> dict[str, Any] | None:
        """Returns a step's saved result, or None if it has not run in this lab."""
        path = self.step_file(step)
        return json.loads(path.read_text()) if path.is_file() else None

    def base_path(self) -> Path:
        """The base model's directory: the real model's (fetched, or a path), or the lab
        model built for the scale's size (built on first use)."""
        if self.scale.model is not None:
            from retain.models import resolve_model_path

            return resolve_model_path(self.scale.model, progress=self.progress)
        from retain.lab.base import build_base, lab_size

        return build_base(lab_size(self.scale.size, self.seed), self.cache_dir, progress=self.progress).path

    def ensure_data(self) -> Path:
        """Writes the clean lab data (once) and returns its config file."""
        from retain.lab.export import export_lab_data

        if not (self.data / "config.yaml").is_file():
            export_lab_data(self.data, size=self.scale.size, seed=self.seed, n_train=self.scale.n_train,
                            n_eval=self.scale.n_eval)
        return self.data / "config.yaml"

    def config(self, name: str, overrides: Sequence[str] = ()) -> RetainConfig:
        """Returns the lab config for the training ``name`` with ``overrides``."""
        path = self.ensure_data()
        probes = self.scale.probes or (f"probes.suites=[{self.data / 'probes.jsonl'}]",)
        common = [f"model.name_or_path={self.base_path()}", *probes, f"train.seed={self.seed}", *self.scale.train]
        return load_config(path, [*common, *overrides, f"output.dir={self.root / 'runs'}", f"output.name={name}"])

    def train(self, training: Training) -> RunSummary:
        """Returns the summary of ``training`` with its run directory: from the worker
        process it was sent to, or run here.

        Raises:
            TrainRefused: When the audit or the doctor refused it (a RetainError keeps
                its message across the process boundary).
        """
        echo = self._indented(training.name)
        if training.name in self.pending:  # in a worker process: its checks are printed once it ends
            summary = self._outcome(training.name, f"training {training.name}", _train, training, self.resume)
            for line in check_lines(Path(summary.run_dir)):
                echo(line)
            return summary
        return self._outcome(training.name, f"training {training.name}", _train, training, self.resume, echo=echo)

    def _indented(self, name: str) -> Callable[[str], None]:
        """Returns an echo for the lines of training ``name``, indented under its step."""
        return lambda line: self.echo(f"    {name}: {line}")

    def baseline(self) -> dict[str, Any]:
        """Returns the base model's few-shot scores (:func:`_baseline`): from the worker
        process it was sent to, or measured here."""
        return self._outcome(BASELINE_JOB, "few-shot baseline", _baseline)

    def _outcome(self, name: str, what: str, job: Callable[..., Any], *args: Any, **here: Any) -> Any:
        """Returns the result of ``job``: from the worker process it was sent to, or run here
        (with ``here``, the keyword arguments that only a job in this process takes)."""
        future = self.pending.pop(name, None)
        if future is None:
            return job(self.root, self.scale, self.seed, self.cache_dir, *args, progress=self.progress, **here)
        if not self.progress:
            return future.result()
        from rich.console import Console

        with Console(stderr=True).status(f"{what} (in a worker process)"):
            return future.result()


def _train(root: Path, scale: Scale, seed: int, cache_dir: Path | None, training: Training,
           resume: bool = False, *, progress: bool = False,
           echo: Callable[[str], None] | None = None) -> RunSummary:
    """Runs one training of the story, in this process or a worker's, ``echo`` printing
    its lines (each check's, each guard that acts); resuming, a training that finished
    with the same config is read back instead (one cut short starts again)."""
    from retain.training.resume import finished_summary
    from retain.training.run import run_train

    lab = Lab(scale, seed, root, cache_dir, progress=progress)
    config = lab.config(training.name, training.overrides)
    summary = finished_summary(config) if resume else None
    if summary is not None:
        return replace(summary, run_dir=str(Path(config.output.dir) / training.name))
    outcome = run_train(config, overwrite=True, force=training.force, progress=progress,
                        echo=echo or (lambda line: None))
    return replace(outcome.summary, run_dir=str(outcome.run_dir))


def check_lines(run_dir: Path) -> list[str]:
    """Returns the line of each guard check a finished training recorded (``metrics.jsonl``),
    as ``retain train`` prints them while it runs."""
    from retain.guards.callback import describe
    from retain.guards.rules import Check
    from retain.io import read_jsonl

    return [describe(Check.from_dict(record)) for record in read_jsonl(run_dir / "metrics.jsonl")
            if record.get("event") == "check"]


def _baseline(root: Path, scale: Scale, seed: int, cache_dir: Path | None, *,
              progress: bool = False) -> dict[str, Any]:
    """Measures the base model's zero- and few-shot accuracy on the held-out task, in this
    process or a worker's; returns ``{"accuracy": {shots: accuracy}, "best_shots",
    "best_accuracy", "majority", "n", "verdict"}`` (``majority``: the share of the test
    split's commonest label, :attr:`TaskScore.majority`)."""
    from retain.evaluation.commands import run_baseline_command

    lab = Lab(scale, seed, root, cache_dir, progress=progress)
    config = lab.config("baseline", [f"eval.shots=[{','.join(map(str, scale.shots))}]"])
    result = run_baseline_command(config, progress=progress)
    shots, best = result.best
    return {"accuracy": {str(k): score.accuracy for k, score in result.scores.items()}, "best_shots": shots,
            "best_accuracy": best.accuracy, "majority": best.majority[1] if best.majority else None,
            "n": best.n, "verdict": result.verdict()}


@contextmanager
def worker_pool(lab: Lab, jobs: Sequence[Training | str]):
    """Sends ``jobs`` (trainings, and the baseline as :data:`BASELINE_JOB`) to
    ``lab.workers`` processes for the block's duration (none with one worker or one job)."""
    if lab.workers <= 1 or len(jobs) <= 1:
        yield
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from retain.lab.comparison import ctrl_c_ignored, init_worker, stop_workers, worker_job

    lab.ensure_data()
    lab.base_path()  # built once here, not by each worker
    threads = max(1, (os.cpu_count() or 1) // lab.workers)
    # spawn: a fresh interpreter per worker, no forked torch thread pools or locks.
    with ProcessPoolExecutor(lab.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker, initargs=(threads, os.getpid())) as pool:
        common = (lab.root, lab.scale, lab.seed, lab.cache_dir)
        with ctrl_c_ignored():  # the workers start here, and are born ignoring Ctrl-C
            for job in sorted(jobs, key=lambda job: _job_name(job) != LONGEST):  # stable: story order after it
                lab.pending[_job_name(job)] = (pool.submit(worker_job, _baseline, *common) if job == BASELINE_JOB
                                               else pool.submit(worker_job, _train, *common, job, lab.resume))
        try:
            yield
        except BaseException:  # Ctrl-C, SIGINT to this process alone, a failed step
            stop_workers(pool)
            raise
        finally:  # stop_workers had the pool cancel what was queued; nothing is cancelled from outside
            lab.pending.clear()


def _job_name(job: Training | str) -> str:
    return job if isinstance(job, str) else job.name


def default_workers() -> int:
    """2 on a machine with no GPU and at least 2 CPU cores, else 1 (a GPU runs one at a time)."""
    import os

    import torch

    return 1 if torch.cuda.is_available() or (os.cpu_count() or 1) < 2 else 2


BASELINE_JOB = "baseline"

# The recipe's training is the story's longest job by far (`python benchmarks/run.py lab`,
# --workers 1: 59 of 130 s, the other steps 1-28 s each): it starts first, on a worker of its
# own, and the other jobs follow in the order the steps print them, so that each finding
# comes as soon as it can while the recipe trains.
LONGEST = "recipe"
