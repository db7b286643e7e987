"""The guards as a ``transformers`` trainer callback: measure, judge, log, act.

At each scheduled check (every ``guards.every_steps`` optimizer steps, or
``guards.checks_per_epoch`` times per epoch, and at the end of every epoch) the callback
measures the model (:class:`Probe`), asks each guard of :mod:`retain.training.guards` for
its decision, writes every decision with its numbers to ``metrics.jsonl`` and the log,
and acts: a stop ends training after this step; a new best check makes the trainer save
a checkpoint now and protects it from rotation (``state.best_global_step``), so that
``restore_best`` can load it back. Every logged training loss passes the loss guard.

Every checkpoint is sealed (:class:`CheckpointSeal`): once the trainer has saved
everything else, the files are flushed to disk and ``retain_state.json`` is written last,
atomically, with the guard state (checks, decisions, warnings given, recent losses) and
the size of every other file. ``--resume`` takes only a checkpoint whose seal is there and
whose files still match it (:func:`checkpoint_problem`), and continues with the guards
where they were.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from retain.config.schema import GuardsConfig
from retain.data.encoding import IGNORE_INDEX, Collator, Encoded
from retain.data.prompting import PromptFormat
from retain.data.rows import Example
from retain.evaluation.drift import BaseLogprobs, drift_report
from retain.evaluation.engine import EvalSettings, score_suite
from retain.evaluation.generation import generate_greedy
from retain.evaluation.health import check_generation
from retain.evaluation.probes import ProbeSuite
from retain.evaluation.task import score_task
from retain.hardware import batches_with_backoff, own_forward
from retain.rundir import RunDir, atomic_write_json, fsync_tree
from retain.training.guards import (
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
from retain.training.sampling import MixedSourceSampler

logger = logging.getLogger("retain.train")

GUARD_ORDER = ("loss", "smoke", "overfitting", "forgetting", "drift")
TRACKER_PREFIX = "retain/"  # check values as report_to trackers (TensorBoard, MLflow, W&B) see them
STATE_FILE = "retain_state.json"  # a checkpoint's seal, written last: guard state and file sizes
HEALTH_KINDS = ("empty", "whitespace_only", "echo", "loop")


@dataclass
class Baseline:
    """The base model's numbers that checks are compared with.

    Attributes:
        probe_accuracy: Overall probe accuracy by the watched method.
        smoke_fail_share: Share of smoke prompts the base answered brokenly.
        smoke_stopped: Whether the base's answer to each smoke prompt ended with EOS.
        perplexity: Reference-text perplexity.
        logprobs: Base log-probabilities on the reference, for KL.
        start_validation: The base's validation loss and task accuracy, which are the
            starting model's (the check of step 0 then measures nothing); None when that
            check measures them.
    """

    probe_accuracy: float | None
    smoke_fail_share: float
    perplexity: float | None
    logprobs: BaseLogprobs | None = None
    smoke_stopped: list[bool] | None = None
    start_validation: tuple[float | None, float | None] | None = None


@dataclass
class Probe:
    """Everything a check measures with, fixed for the run.

    Attributes:
        tokenizer: The model's tokenizer.
        suites: Probe suites scored at each check.
        method: The probe method the forgetting guard watches.
        settings: Caps and batch size for probes and task answers.
        chat_template: ``model.chat_template``.
        smoke_prompts: Smoke prompts, already rendered for the model: the general ones of
            ``guards.smoke.prompts``, then ``smoke_task`` prompts of the task itself.
        smoke_max_new_tokens: Token cap for smoke answers.
        smoke_task: How many of the last smoke prompts are task prompts; the general and
            the task prompts are judged as two groups (see :meth:`smoke`).
        reference: Reference text for drift, or None.
        validation: Validation rows for task accuracy (a prefix of ``data.validation``).
        validation_encoded: Validation rows encoded for the loss.
        collate: The training collator, for validation batches.
        batch_size: Rows per validation-loss batch.
    """

    tokenizer: PreTrainedTokenizerBase
    suites: Sequence[ProbeSuite]
    method: str
    settings: EvalSettings
    chat_template: str
    smoke_prompts: Sequence[str]
    smoke_max_new_tokens: int
    smoke_task: int = 0
    reference: str | None = None
    validation: Sequence[Example] = ()
    validation_encoded: Sequence[Encoded] = ()
    collate: Collator | None = None
    batch_size: int = 8

    def probes(self, model: PreTrainedModel) -> tuple[float | None, dict[str, float]]:
        """Returns overall accuracy (items pooled over suites) and accuracy per category."""
        settings = EvalSettings(methods=(self.method,), probe_max_new_tokens=self.settings.probe_max_new_tokens,
                                batch_size=self.settings.batch_size)
        correct = total = 0
        categories: dict[str, float] = {}
        for suite in self.suites:
            prompt_format = PromptFormat.for_tokenizer(self.tokenizer, self.chat_template, suite.delimiter)
            scores = score_suite(model, self.tokenizer, suite, prompt_format, settings)
            score = scores.get(self.method)
            if score is None:
                continue
            correct += sum(score.correct)
            total += len(score.correct)
            categories.update({f"{suite.name}/{name}": value for name, value in score.accuracy.items()
                               if name != "overall"})
        return (correct / total if total else None), categories

    def smoke(
        self, model: PreTrainedModel, base_stopped: Sequence[bool] | None = None
    ) -> tuple[float, dict[str, int], list[tuple[str, str]], list[bool]]:
        """Answers the smoke prompts and judges the answers.

        An answer is broken when it is empty, blank, an echo or a loop, or when it runs to
        the token cap where the base model's answer to the same prompt stopped
        (``never_stops``: the model no longer ends its answers). General and task prompts
        are two groups, and the share reported is the worse group's: a pipeline that
        teaches an immediate EOS after the task's prompts silences the task and may leave
        "Hello, how are you?" untouched.

        Returns:
            The broken share of the worse group, counts per failure kind, up to three
            ``(prompt, answer)`` examples of broken answers, and whether each answer stopped.
        """
        generations = generate_greedy(model, self.tokenizer, list(self.smoke_prompts),
                                      self.smoke_max_new_tokens)
        counts: dict[str, int] = {}
        examples: list[tuple[str, str]] = []
        first_task = len(generations) - self.smoke_task
        broken = [0, 0]  # general, task
        for index, generation in enumerate(generations):
            flags = check_generation(generation)
            kinds = [kind for kind in HEALTH_KINDS if getattr(flags, kind)]
            if not generation.stopped and base_stopped is not None and base_stopped[index]:
                kinds.append("never_stops")
            for kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
            if kinds:
                broken[index >= first_task] += 1
                if len(examples) < 3:
                    examples.append((generation.prompt, generation.text))
        sizes = (first_task, self.smoke_task)
        share = max(count / size for count, size in zip(broken, sizes, strict=True) if size)
        return share, counts, examples, [g.stopped for g in generations]

    def validation_loss(self, model: PreTrainedModel) -> float | None:
        """Returns the mean loss per supervised token on the validation rows."""
        if not self.validation_encoded or self.collate is None:
            return None
        device = next(model.parameters()).device
        collate = self.collate

        def loss(rows: Sequence[Encoded]) -> tuple[float, float]:
            batch = {k: v.to(device) for k, v in collate([r.feature() for r in rows]).items()}
            count = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            return (float(model(**batch).loss) * count if count else 0.0), count

        # Rows of similar length batched together pad least; the mean is the same.
        rows = sorted(self.validation_encoded, key=lambda row: len(row.input_ids))
        total = tokens = 0.0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for _, (summed, count) in batches_with_backoff(rows, self.batch_size, loss, owner=model,
                                                               kind="validation loss"):
                    total += summed
                    tokens += count
        finally:
            model.train(was_training)
        return total / tokens if tokens else None

    def task_accuracy(self, model: PreTrainedModel) -> float | None:
        """Returns accuracy by generation on the validation rows (the labels are not
        ranked: a check reads only what the model says)."""
        if not self.validation:
            return None
        prompt_format = PromptFormat.for_tokenizer(self.tokenizer, self.chat_template)
        score = score_task(model, self.tokenizer, self.validation, prompt_format, name="validation",
                           max_new_tokens=self.settings.task_max_new_tokens,
                           batch_size=self.settings.batch_size, rank=False)
        return score.accuracy

    def drift(self, model: PreTrainedModel, base: Baseline) -> tuple[float | None, float | None]:
        """Returns KL to the base and the perplexity ratio on the reference text."""
        if not self.reference:
            return None, None
        report = drift_report(model, self.tokenizer, self.reference, base.logprobs)
        ratio = report.perplexity / base.perplexity if base.perplexity else None
        return report.kl, ratio


@dataclass
class GuardState:
    """Everything the guards remember; saved into each checkpoint for ``--resume``."""

    checks: list[Check] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)
    best_step: int | None = None
    stopped_by: Decision | None = None
    restore: bool = False
    losses_since_check: list[float] = field(default_factory=list)
    recent_losses: list[float] = field(default_factory=list)  # the last LOSS_WINDOW, for the loss guard

    def to_dict(self) -> dict[str, Any]:
        return {
            "checks": [check.to_dict() for check in self.checks],
            "decisions": [decision.to_dict() for decision in self.decisions],
            "warned": sorted(self.warned),
            "best_step": self.best_step,
            "stopped_by": self.stopped_by.to_dict() if self.stopped_by else None,
            "restore": self.restore,
            "losses_since_check": self.losses_since_check,
            "recent_losses": self.recent_losses,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardState:
        checks = []
        for item in data.get("checks", []):
            item = dict(item)
            item["smoke_examples"] = [tuple(pair) for pair in item.get("smoke_examples", [])]
            checks.append(Check(**item))
        stopped = data.get("stopped_by")
        return cls(
            checks=checks,
            decisions=[Decision(**item) for item in data.get("decisions", [])],
            warned=set(data.get("warned", [])),
            best_step=data.get("best_step"),
            stopped_by=Decision(**stopped) if stopped else None,
            restore=data.get("restore", False),
            losses_since_check=list(data.get("losses_since_check", [])),
            recent_losses=list(data.get("recent_losses", [])),
        )

    def best(self) -> Check | None:
        """Returns the best check so far, if any."""
        return next((check for check in self.checks if check.step == self.best_step), None)


class GuardCallback(TrainerCallback):
    """Runs the guards during ``Trainer.train`` (see the module docstring).

    Args:
        config: The guards' settings.
        probe: What checks measure with.
        baseline: The base model's numbers.
        run: The run directory (metrics and log).
        interval: Steps between checks.
        settle_steps: Steps before a high training loss is judged: warmup, and at least a tenth
            of the run (early losses are high in every healthy run).
        state: Guard state to continue from (``--resume``), else a fresh one.
        echo: Called with each decision's line, for the console.
    """

    def __init__(
        self,
        config: GuardsConfig,
        probe: Probe,
        baseline: Baseline,
        run: RunDir,
        *,
        interval: int,
        settle_steps: int = 0,
        state: GuardState | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.probe = probe
        self.baseline = baseline
        self.run = run
        self.interval = max(1, interval)
        self.settle_steps = settle_steps
        self.state = state or GuardState()
        self.echo = echo
        # Set to ``Trainer.log`` by the caller: checks then reach report_to trackers too.
        self.log: Callable[[dict[str, float]], None] | None = None
        self._last_checked = self.state.checks[-1].step if self.state.checks else 0

    # --- trainer events ----------------------------------------------------------------

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        if not logs or all(key.startswith(TRACKER_PREFIX) for key in logs if key != "epoch"):
            return  # a check sent to the trackers: metrics.jsonl has it as a check already
        self.run.append_metrics({"event": "log", "step": state.global_step, "epoch": state.epoch, **logs})
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
        check: when no later check stays within the forgetting limit, ``restore_best``
        rolls the run back to these weights. When a guard may restore, the trainable
        weights are saved for that in ``checkpoints/start`` (a complete folder or none).
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
        self.run.append_metrics({"event": "check", **check.to_dict()})
        if self.echo is not None and self.run.writer:
            self.echo(describe(check) + " (the starting model)")
        if check.forgetting is not None or self.baseline.probe_accuracy is None:
            self.state.best_step = 0
        if self.restores and self.run.writer:
            save_model(model, start_folder(self.run))

    @property
    def restores(self) -> bool:
        """Whether any guard's action is ``restore_best``."""
        return "restore_best" in (self.config.forgetting.action, self.config.drift.action,
                                  self.config.overfitting.action)

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
        self.run.append_metrics({"event": "check", **check.to_dict()})
        if self.echo is not None and self.run.writer:
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
            self.state.stopped_by = min(stopping, key=lambda decision: GUARD_ORDER.index(decision.guard))
            self.state.restore = any(decision.action == "restore_best" for decision in stopping)
            control.should_training_stop = True
        # Only checks that measured forgetting (when there is a base to measure it against)
        # can be restored to: the rule is "best within the forgetting limit".
        measured = check.forgetting is not None or self.baseline.probe_accuracy is None
        if measured and better(check, self.state.best(), self.config):
            self.state.best_step = check.step
            state.best_global_step = check.step  # the trainer keeps this checkpoint from rotation
            control.should_save = True

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
            judge_smoke(check, self.baseline.smoke_fail_share, self.config),
            judge_forgetting(check, self.config, self.state.checks, last),
            judge_drift(check, self.config),
            judge_overfitting([c for c in self.state.checks if c.val_loss is not None], self.config)
            if check.val_loss is not None else None,
        ]
        return [decision for decision in decisions if decision is not None]

    def _record(self, decision: Decision, control: TrainerControl, *, stop: bool = True) -> None:
        self.state.decisions.append(decision)
        self.run.append_metrics({"event": "guard", **decision.to_dict()})
        line = f"step {decision.step} {decision.guard}: {decision.message}"
        if decision.triggered:
            line += f" -> {decision.action}"
        logger.info(line)  # log.txt; the console gets triggered decisions through echo
        if self.echo is not None and decision.triggered:
            self.echo(line)
        if stop and decision.stops and self.state.stopped_by is None:
            self.state.stopped_by = decision
            self.state.restore = decision.action == "restore_best"
            control.should_training_stop = True


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


def start_folder(run: RunDir) -> Path:
    """Returns where the starting weights of a run are kept for ``restore_best``."""
    return run.checkpoints_dir / "start"


def save_model(model: PreTrainedModel, target: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Saves ``model`` (its adapters, or all its weights) and the tokenizer, if given, into
    ``target``: written beside it, flushed to disk, then renamed, so the folder is complete
    or absent."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    fsync_tree(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


# --- checkpoints ----------------------------------------------------------------------


class CheckpointSeal(TrainerCallback):
    """Seals each checkpoint the trainer saves (see :func:`seal_checkpoint`).

    The trainer writes ``checkpoint-N`` in place, file by file, and then calls
    ``on_save``; a kill before the seal leaves a folder without one, which ``--resume``
    removes instead of loading.

    Args:
        guard_state: Returns the guard state to keep with the checkpoint; None when the
            guards are off.
    """

    def __init__(self, guard_state: Callable[[], GuardState] | None = None) -> None:
        self.guard_state = guard_state

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            seal_checkpoint(folder, self.guard_state() if self.guard_state else None)


class SeededEpochOrder(TrainerCallback):
    """Draws each epoch's length-grouped order (``train.group_by_length``) from the data
    seed and the epoch number, so that a resume in the middle of any epoch sees the same
    order as the uninterrupted run.

    The trainer's random sampler is seeded that way already (accelerate's seedable
    sampler), and so is the sampler of blended rows (its ``set_epoch``, set here too);
    the length-grouped sampler would draw from the global random state as the epoch
    begins, a state that a resume in a later epoch does not have (it restores the state
    of the checkpoint's step).

    Args:
        steps_per_epoch: Optimizer steps in one epoch.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = max(1, steps_per_epoch)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        sampler = _epoch_sampler(train_dataloader)
        epoch = state.global_step // self.steps_per_epoch
        if isinstance(sampler, MixedSourceSampler):
            sampler.set_epoch(epoch)
        elif sampler is not None:
            seed = args.data_seed if args.data_seed is not None else args.seed
            sampler.generator = torch.Generator().manual_seed(seed + epoch)


def _epoch_sampler(dataloader: Any) -> LengthGroupedSampler | MixedSourceSampler | None:
    """Returns the length-grouped or mixed-source sampler inside the trainer's
    (accelerate-wrapped) loader."""
    batches = getattr(dataloader, "batch_sampler", None)
    for sampler in (getattr(dataloader, "sampler", None), getattr(batches, "sampler", None),
                    getattr(getattr(batches, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, (LengthGroupedSampler, MixedSourceSampler)):
            return sampler
    return None


def seal_checkpoint(folder: Path, guards: GuardState | None) -> None:
    """Marks ``folder`` complete: flushes its files to disk, then writes ``retain_state.json``
    (atomically: temp file, fsync, rename) with ``guards`` and each other file's size.

    Raises:
        OSError: A file cannot be flushed or the seal written (a full disk); the folder
            is then left unsealed.
    """
    fsync_tree(folder)
    files = {path.relative_to(folder).as_posix(): path.stat().st_size
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != STATE_FILE}
    atomic_write_json(folder / STATE_FILE, {"files": files, "guards": guards.to_dict() if guards else None})


def checkpoint_problem(folder: Path) -> str | None:
    """Returns why ``folder`` is not a complete checkpoint, or None when it is one.

    Complete means sealed (:func:`seal_checkpoint`) with every file the seal lists still
    there at its size: a kill while the trainer saves leaves no seal, and a kill while
    the trainer deletes an old checkpoint (``train.save_total_limit``) leaves files
    missing. A seal from before file sizes were recorded is trusted as it is.
    """
    seal = folder / STATE_FILE
    if not seal.is_file():
        return f"no {STATE_FILE}: interrupted while saving"
    try:
        files = json.loads(seal.read_text()).get("files", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"{STATE_FILE} is not a JSON object"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (interrupted while deleting an old checkpoint?)"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes where the seal says {size}"
    return None


def read_guard_state(checkpoint: Path) -> GuardState | None:
    """Returns the guard state saved in ``checkpoint``, or None if it has none."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if "files" not in data:  # a seal from before file sizes were recorded: the state itself
        return GuardState.from_dict(data)
    return GuardState.from_dict(data["guards"]) if data["guards"] is not None else None
