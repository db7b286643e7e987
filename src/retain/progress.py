"""A rich progress bar for Hugging Face ``Trainer`` runs.

Replaces the Trainer's tqdm bar and its printed log dicts with one bar that shows the
step, the latest loss and the time left, written to stderr so that stdout stays clean.
"""

from __future__ import annotations

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
