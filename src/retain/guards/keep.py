"""The weights a stop comes back to: which check they are, and where they are kept.

Whatever guard stops a run, it ends on the best check within the forgetting limit, or on
the starting weights (:func:`~retain.guards.rules.better` picks it). Each time a new
check becomes the best, the callback hands the model to a :class:`Keeper`:

- :class:`CheckpointKeeper` (``retain train``): the starting weights are saved into the
  run directory's ``checkpoints/start``, and a later best check makes the trainer save a
  checkpoint now and keep it from rotation; :func:`retain.training.finish.restore_if_asked`
  loads it back after training;
- :class:`MemoryKeeper` (:class:`retain.RetainCallback` in your own trainer): a CPU copy of
  the weights that training changes, put back into the model when training ends, so no
  checkpoint has to be written.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import PreTrainedModel, TrainerControl, TrainerState

from retain.checkpoints import save_model, start_folder
from retain.config.guards import GuardsConfig
from retain.guards.rules import Check, unsound
from retain.guards.state import GuardState
from retain.rundir import RunDir
from retain.summary import percent, signed

ROLLED_BACK = ("rolled back to the starting weights: the model learned nothing that could be kept within "
               "the forgetting limit")


class Keeper(Protocol):
    """Keeps the weights of the best check so far, for a stop to come back to."""

    def keep(self, model: PreTrainedModel, step: int, state: TrainerState, control: TrainerControl) -> None:
        """Keeps ``model``'s weights as those of the check of ``step`` (0: the starting weights)."""


class CheckpointKeeper:
    """Keeps the best check's weights in the run directory (``retain train``).

    Args:
        run: The run directory; only its writing process saves the starting weights.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def keep(self, model: PreTrainedModel, step: int, state: TrainerState, control: TrainerControl) -> None:
        if step == 0:
            if self.run.writer:  # complete or absent (save_model): a stop may come back here
                save_model(model, start_folder(self.run))
            return
        state.best_global_step = step  # the trainer keeps this checkpoint from rotation
        control.should_save = True


class MemoryKeeper:
    """Keeps a CPU copy of the best check's trainable parameters, and puts it back.

    Only parameters that require gradients change in training, so only they are copied:
    with LoRA, the adapters (megabytes); with full fine-tuning, every weight, one more copy
    of the model in CPU memory (a 1.7B-parameter model in bfloat16: 3.4 GB). One copy is
    held at a time, the best check's.

    Attributes:
        step: The step of the check whose weights are kept, or None before the first.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self._weights: dict[str, torch.Tensor] = {}

    def keep(self, model: PreTrainedModel, step: int, state: TrainerState, control: TrainerControl) -> None:
        self._weights = {name: parameter.detach().to("cpu", copy=True)
                         for name, parameter in model.named_parameters() if parameter.requires_grad}
        self.step = step

    @property
    def names(self) -> list[str]:
        """The names of the parameters kept."""
        return list(self._weights)

    def restore(self, model: PreTrainedModel) -> None:
        """Copies the kept weights back into ``model`` in place (its device and dtype)."""
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, weights in self._weights.items():
                parameters[name].copy_(weights)


def restore_target(state: GuardState, config: GuardsConfig) -> tuple[Check | None, str | None]:
    """Returns the check a stopped run goes back to, or None and why it goes back to none
    (None and None when no guard asked for a restore)."""
    if state.stopped_by is None or not state.restore:
        return None, None
    best = state.best()
    if best is None:
        return None, "restore_best: no check had completed, so there is no checkpoint to restore"
    if unsound(best, config):
        return None, ("restore_best: no checkpoint passed the smoke test with finite losses, so none is "
                      f"worth restoring; the model is left as it was at step {state.stopped_by.step}")
    return best, None


def describe_restore(best: Check, config: GuardsConfig) -> str:
    """Returns the line that says which weights a stopped run was restored to, and why."""
    figures = (f"probe accuracy {percent(best.probe_accuracy)}, forgetting {signed(best.forgetting)}, "
               f"task accuracy {percent(best.task_accuracy)}")
    threshold = config.forgetting.threshold
    if best.step == 0:
        return (f"every check after the start forgot more than the limit of {threshold:.0%}, so the run was "
                f"rolled back to its starting weights ({figures}): lower train.lr, check more often "
                "(guards.every_steps) or use a mitigation")
    if best.forgetting is not None and best.forgetting > threshold:
        return (f"no checkpoint stayed within the forgetting limit of {threshold:.0%}; restored the one "
                f"that forgot least, step {best.step} ({figures}): lower train.lr, check more often "
                "(guards.every_steps) or use a mitigation")
    return f"restored the checkpoint of step {best.step} ({figures})"


def stop_reason(state: GuardState) -> str | None:
    """Returns why a stop forbids shipping by itself (the loss and smoke guards: the weights
    broke, whatever was restored), or None."""
    stop = state.stopped_by
    if stop is not None and stop.guard in ("loss", "smoke"):
        return f"stopped by the {stop.guard} guard: {stop.message}"
    return None
