"""The guards as a ``transformers`` trainer callback: measure, judge, log, act.

At each scheduled check (every ``guards.every_steps`` optimizer steps, or
``guards.checks_per_epoch`` times per epoch, and at the end of every epoch) the callback
measures the model (:class:`~retain.guards.measure.Probe`), asks each guard of :mod:`retain.guards.rules` for
its decision, writes every decision with its numbers to ``metrics.jsonl`` and the log,
and acts: a stop ends training after this step; a new best check hands the model to the
keeper (:mod:`retain.guards.keep`), so that a stop, by any guard, can come back to it.
Every logged training loss passes the loss guard.

``retain train`` keeps the best check as a trainer checkpoint, and every checkpoint is
sealed with the guard state (:mod:`retain.checkpoints`), so ``--resume`` continues with
the guards where they were; :class:`retain.RetainCallback` keeps it in memory.
"""

import logging
import math
from collections.abc import Callable
from typing import Any

from transformers import (
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from retain.config.guards import GuardsConfig
from retain.guards.keep import CheckpointKeeper, Keeper
from retain.guards.measure import Baseline, Probe
from retain.guards.rules import (
    LOSS_WINDOW,
    Check,
    Decision,
    better,
    judge_drift,
    judge_forgetting,
    judge_overfitting,
    judge_smoke,
    judge_train_loss,
    relative_drop,
)
from retain.guards.state import GuardState
from retain.hardware import own_forward
from retain.rundir import RunDir

logger = logging.getLogger("retain.train")

GUARD_ORDER = ("loss", "smoke", "overfitting", "forgetting", "drift")
TRACKER_PREFIX = "retain/"  # check values as report_to trackers (TensorBoard, MLflow, W&B) see them


class GuardCallback(TrainerCallback):
    """Runs the guards during ``Trainer.train`` (see the module docstring).

    Args:
        config: The guards' settings.
        probe: What checks measure with.
        baseline: The base model's numbers.
        run: The run directory (metrics and log), or None to keep the records in
            :attr:`state` only.
        interval: Steps between checks.
        settle_steps: Steps before a high training loss is judged: warmup, and at least a tenth
            of the run (early losses are high in every healthy run).
        state: Guard state to continue from (``--resume``), else a fresh one.
        echo: Called with each decision's line, for the console.
        pipeline_checked: The doctor found the labels right (no blocker).
        keeper: Where the best check's weights are kept; by default the run directory's
            checkpoints (:class:`~retain.guards.keep.CheckpointKeeper`).
    """

    def __init__(
        self,
        config: GuardsConfig,
        probe: Probe,
        baseline: Baseline,
        run: RunDir | None,
        *,
        interval: int,
        settle_steps: int = 0,
        state: GuardState | None = None,
        echo: Callable[[str], None] | None = None,
        pipeline_checked: bool = False,
        keeper: Keeper | None = None,
    ) -> None:
        self.config = config
        self.pipeline_checked = pipeline_checked
        self.probe = probe
        self.baseline = baseline
        self.run = run
        self.interval = max(1, interval)
        self.settle_steps = settle_steps
        self.state = state or GuardState()
        self.echo = echo
        if keeper is None and run is None:
            raise ValueError("without a run directory, the guards need a keeper for the best weights")
        self.keeper = keeper or CheckpointKeeper(run)
        # Set to ``Trainer.log`` by the caller: checks then reach report_to trackers too.
        self.log: Callable[[dict[str, float]], None] | None = None
        self._last_checked = self.state.checks[-1].step if self.state.checks else 0

    # --- trainer events ----------------------------------------------------------------

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        if not logs or all(key.startswith(TRACKER_PREFIX) for key in logs if key != "epoch"):
            return  # a check sent to the trackers: metrics.jsonl has it as a check already
        self._write({"event": "log", "step": state.global_step, "epoch": state.epoch, **logs})
        loss = logs.get("loss")
        if loss is None:
            return
        self.state.losses_since_check.append(loss)
        # Kept in the state, so a resumed run judges the same window as an uninterrupted one.
        window = self.state.recent_losses = (self.state.recent_losses + [loss])[-LOSS_WINDOW:]
        recent = sum(window) / len(window) if len(window) == LOSS_WINDOW else None
        decision = judge_train_loss(loss, state.global_step, self.settle_steps, self.config,
                                    self.state.warned, recent)
        if decision is not None:
            self._record(decision, control)

    def due(self, step: int, last: bool = False) -> set[str]:
        """Returns what is measured at ``step``: each guard on its own schedule
        (``guards.<guard>.every_steps``, else ``interval``), everything at the last step.

        ``validation`` (validation loss and task accuracy, for the overfitting guard and
        the choice of the best checkpoint) follows ``interval``.
        """
        every = {
            "smoke": self.config.smoke.every_steps, "forgetting": self.config.forgetting.every_steps,
            "drift": self.config.drift.every_steps, "validation": None,
        }
        return {part for part, steps in every.items() if last or step % (steps or self.interval) == 0}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        """Records the starting model as the check of step 0 (a fresh run only).

        It starts the timeline, and it is a candidate of the selection rule like any other
        check: when no later check stays within the forgetting limit, a stop rolls the run
        back to these weights, which the keeper keeps for that.
        """
        if model is None or self.state.checks or state.global_step != 0:
            return
        # The starting model computes as the base model the baseline measured (LoRA starts
        # at B = 0; the other methods change nothing before the first step), so its figures
        # are the baseline's; the validation ones too when the baseline has them (they are
        # cached with the base model's evaluation, so runs on one base measure them once).
        base = self.baseline
        check = self.measure(model, 0, 0.0, set() if base.start_validation else {"validation"})
        if base.start_validation:
            check.val_loss, check.task_accuracy = base.start_validation
        check.probe_accuracy = base.probe_accuracy
        check.forgetting = 0.0 if base.probe_accuracy is not None else None
        check.smoke_fail_share = base.smoke_fail_share
        if base.logprobs is not None:
            check.kl, check.perplexity_ratio = 0.0, 1.0
        self.state.checks.append(check)
        self._write({"event": "check", **check.to_dict()})
        if self.echo is not None and self._main:
            self.echo(describe(check) + " (the starting model)")
        # Its forgetting is 0 whenever there is a base accuracy: it is always the first best,
        # and every stop may come back here (see _stop).
        self.state.best_step = 0
        self.keeper.keep(model, 0, state, control)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        due = self.due(state.global_step, last=state.global_step >= state.max_steps)
        if due:
            self._check(state, control, model, due)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        # An epoch ending a few steps after a scheduled check adds nothing but its cost.
        if state.global_step - self._last_checked >= max(1, self.interval // 2):
            self._check(state, control, model, self.due(state.global_step, last=True))

    # --- checks ------------------------------------------------------------------------

    def _check(self, state: TrainerState, control: TrainerControl, model: PreTrainedModel | None,
               due: set[str]) -> None:
        if model is None or state.global_step == self._last_checked:
            return
        self._last_checked = state.global_step
        check = self.measure(model, state.global_step, float(state.epoch or 0.0), due)
        self.state.checks.append(check)
        self._write({"event": "check", **check.to_dict()})
        if self.echo is not None and self._main:
            self.echo(describe(check))
        if self.log is not None:
            should_log = control.should_log  # Trainer.log clears it; this step's loss must still log
            self.log({TRACKER_PREFIX + name: value for name, value in tracker_values(check).items()})
            control.should_log = should_log
        decisions = self.judge(check, last=state.global_step >= state.max_steps)
        for decision in decisions:
            self._record(decision, control, stop=False)
        # Several guards may stop at one check: the run is reported as stopped by the one that
        # says most about the cause (a silent model before forgetting), and the best checkpoint
        # is restored if any of them asks for it.
        stopping = [decision for decision in decisions if decision.stops]
        if stopping and self.state.stopped_by is None:
            self._stop(min(stopping, key=lambda decision: GUARD_ORDER.index(decision.guard)), control)
        # Only checks that measured forgetting (when there is a base to measure it against)
        # can be restored to: the rule is "best within the forgetting limit".
        measured = check.forgetting is not None or self.baseline.probe_accuracy is None
        if measured and better(check, self.state.best(), self.config):
            self.state.best_step = check.step
            self.keeper.keep(model, check.step, state, control)

    def measure(self, model: PreTrainedModel, step: int, epoch: float,
                due: set[str] = frozenset({"smoke", "forgetting", "drift", "validation"})) -> Check:
        """Measures ``model`` for one check: the parts ``due`` (see :meth:`due`), in the
        precision of the saved model, not in the autocast of mixed-precision training."""
        with own_forward(model):
            return self._measure(model, step, epoch, due)

    def _measure(self, model: PreTrainedModel, step: int, epoch: float, due: set[str]) -> Check:
        losses, self.state.losses_since_check = self.state.losses_since_check, []
        finite = [loss for loss in losses if math.isfinite(loss)]
        check = Check(step=step, epoch=round(epoch, 4),
                      train_loss=sum(finite) / len(finite) if finite else None)
        if "forgetting" in due:
            check.probe_accuracy, check.categories = self.probe.probes(model)
            if check.probe_accuracy is not None and self.baseline.probe_accuracy is not None:
                check.forgetting = relative_drop(self.baseline.probe_accuracy, check.probe_accuracy)
        if "smoke" in due:
            check.smoke_fail_share, check.smoke_failures, check.smoke_examples, _ = self.probe.smoke(
                model, self.baseline.smoke_stopped)
        if "drift" in due:
            check.kl, check.perplexity_ratio = self.probe.drift(model, self.baseline)
        if "validation" in due:
            check.val_loss = self.probe.validation_loss(model)
            check.task_accuracy = self.probe.task_accuracy(model)
        return check

    def judge(self, check: Check, last: bool = False) -> list[Decision]:
        """Returns every guard's decision on ``check`` (``last``: the run's last check)."""
        decisions = [
            judge_smoke(check, self.baseline.smoke_fail_share, self.config, self.pipeline_checked),
            judge_forgetting(check, self.config, self.state.checks, last),
            judge_drift(check, self.config),
            judge_overfitting([c for c in self.state.checks if c.val_loss is not None], self.config)
            if check.val_loss is not None else None,
        ]
        return [decision for decision in decisions if decision is not None]

    def _record(self, decision: Decision, control: TrainerControl, *, stop: bool = True) -> None:
        self.state.decisions.append(decision)
        self._write({"event": "guard", **decision.to_dict()})
        line = f"step {decision.step} {decision.guard}: {decision.message}"
        if decision.triggered:
            line += f" -> {decision.action}"
        logger.info(line)  # log.txt; the console gets triggered decisions through echo
        if self.echo is not None and decision.triggered:
            self.echo(line)
        if stop and decision.stops and self.state.stopped_by is None:
            self._stop(decision, control)

    def _stop(self, decision: Decision, control: TrainerControl) -> None:
        """Stops the run for ``decision``. Whatever the guard and its action (``stop`` or
        ``restore_best``), the run ends on the best checkpoint within the forgetting limit,
        or the starting weights (:func:`retain.guards.keep.restore_target`): the
        weights that tripped a guard (a silent model, a NaN loss, forgetting past the
        limit) are never the ones saved."""
        self.state.stopped_by = decision
        self.state.restore = True
        control.should_training_stop = True

    @property
    def _main(self) -> bool:
        """Whether this process speaks: the one that writes the run directory, or the only one."""
        return self.run is None or self.run.writer

    def _write(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.append_metrics(record)


def tracker_values(check: Check) -> dict[str, float]:
    """Returns a check's numbers for trackers: every finite scalar, and accuracy per category."""
    values = {name: getattr(check, name) for name in (
        "probe_accuracy", "forgetting", "task_accuracy", "val_loss", "kl", "perplexity_ratio",
        "smoke_fail_share")}
    values |= {f"probes/{name}": value for name, value in check.categories.items()}
    return {name: float(value) for name, value in values.items()
            if value is not None and math.isfinite(value)}


def describe(check: Check) -> str:
    """Returns one console line for a check."""
    parts = [f"step {check.step}"]
    if check.probe_accuracy is not None:
        parts.append(f"probes {check.probe_accuracy:.1%}"
                     + (f" (forgetting {check.forgetting:.1%})" if check.forgetting is not None else ""))
    if check.task_accuracy is not None:
        parts.append(f"task {check.task_accuracy:.1%}")
    for name, value in (("train loss", check.train_loss), ("val loss", check.val_loss), ("KL", check.kl)):
        if value is not None:
            parts.append(f"{name} {value:.3f}")
    if check.smoke_fail_share is not None:
        parts.append("smoke ok" if not check.smoke_fail_share else f"smoke {check.smoke_fail_share:.0%} broken")
    return ", ".join(parts)
