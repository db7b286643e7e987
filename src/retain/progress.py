"""Rich progress bars on stderr: one for Hugging Face ``Trainer`` runs, and one per stage of
an evaluation (generation, log-likelihood) when the command asks for them.

The training bar replaces the Trainer's tqdm bar and its printed log dicts with one bar
that shows the step, the latest loss and the time left, written to stderr so that stdout
stays clean.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


def quiet_trainer(trainer: Trainer, description: str | None) -> None:
    """Removes the Trainer's own printing; adds a rich bar labelled ``description``.

    With ``description=None`` the run is silent.
    """
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if description is not None:
        trainer.add_callback(RichProgressCallback(description))


class RichProgressCallback(TrainerCallback):
    """Shows training progress as one rich bar with the latest loss."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self.description = description
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=state.max_steps, loss="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is not None and logs and "loss" in logs:
            self._progress.update(self._task, loss=f"{float(logs['loss']):.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
            self._progress = None


# --- evaluation bars ---------------------------------------------------------------------------
# Evaluation runs deep inside commands (eval, baseline, the base measurement of train) and
# inside the guards' checks, whose lines must not glue onto the training bar. The command
# that owns the terminal turns the bars on for what it runs (:func:`shown`); everything
# else evaluates silently.
_SHOWN: ContextVar[bool] = ContextVar("retain_progress_shown", default=False)


@contextlib.contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """Shows the bars of :func:`task` for the evaluation run inside the block."""
    token = _SHOWN.set(enabled)
    try:
        yield
    finally:
        _SHOWN.reset(token)


@contextlib.contextmanager
def task(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr (items done of ``total``, elapsed, time left) while the block runs,
    when :func:`shown` is on; yields the function that advances it by a number of items."""
    if not _SHOWN.get() or total <= 0:
        yield lambda done: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    with bar:
        handle = bar.add_task(description, total=total)
        yield lambda done: bar.advance(handle, done)


def bars_when_asked(function: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a command function whose ``progress`` keyword (default True) says whether its
    evaluation shows bars, inside :func:`shown`."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        with shown(kwargs.get("progress", True)):
            return function(*args, **kwargs)

    return run
