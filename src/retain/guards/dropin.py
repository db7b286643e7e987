"""The guards in your own trainer: :class:`RetainCallback`, one callback to add to a
``transformers.Trainer``, TRL's ``SFTTrainer`` or ``DPOTrainer``.

When training begins it measures the model as it is then (with peft, the adapters at
their initial state) on the probe suites, the smoke prompts and the reference text: that
is the base. At the guards' cadence it checks the model with the same judges as
``retain train`` (:class:`~retain.guards.callback.GuardCallback` does the checking for
both). When a guard stops the run, training stops after that step, and when training ends
the model is put back, in memory, to the best check within the forgetting limit, or to
the starting weights (:class:`~retain.guards.keep.MemoryKeeper`): ``trainer.model`` after
``trainer.train()`` is the restored model. :attr:`RetainCallback.summary` says what
happened.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from retain.config import GuardsConfig, RetainConfig
from retain.config.loading import resolve_config
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError
from retain.evaluation.calibration import calibrate_suites, measurable
from retain.evaluation.commands import config_suites, settings_from
from retain.evaluation.engine import default_reference_text, evaluate
from retain.guards.callback import GuardCallback
from retain.guards.keep import (
    ROLLED_BACK,
    MemoryKeeper,
    describe_restore,
    restore_target,
    stop_reason,
)
from retain.guards.measure import Probe
from retain.guards.rules import Check, Decision
from retain.hardware import own_forward
from retain.io import atomic_write_json
from retain.rundir import RunDir
from retain.summary import Verdict

logger = logging.getLogger("retain.train")

SUMMARY_FILE = "guards.json"  # what the callback leaves in its output_dir, beside metrics.jsonl


@dataclass(frozen=True)
class GuardSummary:
    """What the guards saw and did during one ``trainer.train()``.

    The verdict reads the guards' own checks (the probe suites, the smoke prompts), not a
    full evaluation of the final model: ``retain.evaluate`` on the saved model adds task
    accuracy and the per-category report.

    Attributes:
        status: ``completed``, or ``stopped`` by a guard.
        checks: Every check, the starting model's (step 0) first.
        events: The decisions that triggered (warnings and stops).
        stopped_by: The decision that stopped training, if one did.
        best_step: The best check within the forgetting limit (or that forgot least).
        restored_step: The step whose weights the model was put back to, or None when it
            was not (no stop, or no check worth restoring).
        base_probe_accuracy: The starting model's probe accuracy.
        forgetting: Relative drop of probe accuracy of the weights the model ends with,
            as their last check measured it.
        suites: ``{suite: version}`` of the probe suites measured (forgetting compares only
            within one version).
        verdict: Whether the weights the model ends with are safe to ship, and why not.
    """

    status: str
    checks: tuple[Check, ...]
    events: tuple[Decision, ...]
    stopped_by: Decision | None
    best_step: int | None
    restored_step: int | None
    base_probe_accuracy: float | None
    forgetting: float | None
    suites: dict[str, str]
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RetainCallback(TrainerCallback):
    """Guards a training run of your own trainer against forgetting (module docstring).

    Example::

        trainer = SFTTrainer(model=model, args=args, train_dataset=rows,
                             callbacks=[RetainCallback(probes="general")])
        trainer.train()  # trainer.model: the best weights within the forgetting limit

    Args:
        probes: The probe suites that measure general capability: a name (``general``,
            ``lab``, ``lmeval:TASK``), a suite file, or a list of them.
        guards: The guards' settings: a :class:`~retain.config.GuardsConfig`, a mapping of
            its keys (``{"forgetting": {"threshold": 0.05}, "every_steps": 20}``), or None
            for the defaults. Without ``every_steps``, ``checks_per_epoch`` checks run per
            epoch.
        tokenizer: The model's tokenizer; None takes the trainer's ``processing_class``.
        output_dir: A folder to write ``metrics.jsonl`` (every check, decision and logged
            loss) and ``guards.json`` (:class:`GuardSummary`) into; None writes nothing.
        calibrate: Measure forgetting only on the probe items the starting model answers
            right, also when paraphrased (``probes.calibrate``; slower to start, steadier
            on small models).
        chat_template: ``auto`` (the tokenizer's own, if any), ``none``, or a Jinja file.
        echo: Called with one line per check and per triggered guard (default: print).

    Raises:
        ConfigError: If ``guards`` are invalid (on creation), or there is no tokenizer
            (when training begins).
        DataError: If a probe suite cannot be found or read (on creation).
    """

    def __init__(
        self,
        probes: str | Path | Sequence[str | Path] = "general",
        guards: GuardsConfig | Mapping[str, Any] | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        output_dir: str | Path | None = None,
        calibrate: bool = False,
        chat_template: str = "auto",
        echo: Callable[[str], None] | None = print,
    ) -> None:
        names = [str(probes)] if isinstance(probes, (str, Path)) else [str(name) for name in probes]
        guard_settings = guards.model_dump(mode="json") if isinstance(guards, GuardsConfig) else dict(guards or {})
        self.config: RetainConfig = resolve_config({
            "model": {"chat_template": chat_template},
            "probes": {"suites": names, "calibrate": calibrate},
            "guards": guard_settings,
        })
        self.suites = config_suites(self.config)  # read now: a bad suite fails before training
        self.tokenizer = tokenizer
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.echo = echo or (lambda line: None)
        self.keeper = MemoryKeeper()
        self.guard: GuardCallback | None = None
        self.summary: GuardSummary | None = None

    # --- trainer events ----------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: PreTrainedModel | None = None, processing_class: Any = None,
                       **kwargs: Any) -> None:
        """Measures the model as training finds it (the base), and starts the guards."""
        if model is None:
            return
        tokenizer = self.tokenizer or getattr(processing_class, "tokenizer", processing_class)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ConfigError("RetainCallback needs the model's tokenizer to ask the probes",
                              fix="pass RetainCallback(tokenizer=...) or give the trainer processing_class=")
        probe = self._probe(tokenizer)
        with own_forward(model):
            if self.config.probes.calibrate:
                self._calibrate(model, probe)
            baseline = probe.baseline(model)
        run = None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            run = RunDir(self.output_dir, writer=state.is_world_process_zero)
        steps_per_epoch = math.ceil(state.max_steps / max(1.0, state.num_train_epochs or 1.0))
        self.keeper = MemoryKeeper()
        self.summary = None
        self.guard = GuardCallback(
            self.config.guards, probe, baseline, run, interval=self.config.guards.interval(steps_per_epoch),
            settle_steps=max(args.get_warmup_steps(state.max_steps), math.ceil(0.1 * state.max_steps)),
            echo=self.echo if state.is_world_process_zero else None, keeper=self.keeper,
        )
        self.guard.on_train_begin(args, state, control, model=model)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.guard is not None:
            self.guard.on_log(args, state, control, logs=logs)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        if self.guard is not None:
            self.guard.on_step_end(args, state, control, model=model)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        if self.guard is not None:
            self.guard.on_epoch_end(args, state, control, model=model)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: PreTrainedModel | None = None, **kwargs: Any) -> None:
        """Puts the kept weights back into the model when a guard stopped the run, and
        writes the summary."""
        if self.guard is None or model is None:
            return
        guards = self.guard.state
        best, problem = restore_target(guards, self.config.guards)
        restored = None
        if best is not None and best.step == self.keeper.step:
            self.keeper.restore(model)
            restored = best.step
            problem = describe_restore(best, self.config.guards)
        if problem:
            logger.info(problem)
            if state.is_world_process_zero:
                self.echo(problem)
        self.summary = self._summary(restored)
        if self.guard.run is not None and self.guard.run.writer:
            atomic_write_json(self.guard.run.inside(SUMMARY_FILE), self.summary.to_dict())

    # --- parts -------------------------------------------------------------------------

    def _probe(self, tokenizer: PreTrainedTokenizerBase) -> Probe:
        """Returns what each check measures: the probe suites, the general smoke prompts and
        the suites' reference text (no task rows: the callback does not know the task)."""
        config = self.config
        prompt_format = PromptFormat.for_tokenizer(tokenizer, config.model.chat_template)
        return Probe(
            tokenizer=tokenizer, suites=list(self.suites), method=config.guards.forgetting.method,
            settings=settings_from(config), chat_template=config.model.chat_template,
            smoke_prompts=[prompt_format.render(prompt) for prompt in config.guards.smoke.prompts],
            smoke_max_new_tokens=config.guards.smoke.max_new_tokens,
            reference=default_reference_text(self.suites), drift_tokens=config.guards.drift.check_tokens,
        )

    def _calibrate(self, model: PreTrainedModel, probe: Probe) -> None:
        """Cuts the probe suites to the items the starting model answers right, also
        paraphrased (:mod:`retain.evaluation.calibration`)."""
        config = self.config
        result = evaluate(model, probe.tokenizer, name="the starting model", chat_template=config.model.chat_template,
                          suites=probe.suites, settings=probe.settings).to_dict()
        calibrations = calibrate_suites(model, probe.tokenizer, list(probe.suites), result,
                                        chat_template=config.model.chat_template, settings=probe.settings,
                                        min_items=config.probes.calibrate_min_items, limit=config.probes.per_category)
        for calibration in calibrations:
            self.echo(calibration.summary())
        probe.suites = measurable(calibrations)

    def _summary(self, restored: int | None) -> GuardSummary:
        """Returns what happened, judged on the check of the weights the model ends with."""
        assert self.guard is not None
        guards, config = self.guard.state, self.config.guards
        final = next((check for check in guards.checks if check.step == restored), None) if restored is not None \
            else (guards.checks[-1] if guards.checks else None)
        forgetting = final.forgetting if final is not None else None
        reasons = []
        if forgetting is not None and forgetting > config.forgetting.threshold:
            reasons.append(f"general probe accuracy fell {forgetting:.1%} relative (limit "
                           f"{config.forgetting.threshold:.0%})")
        if final is not None and (final.smoke_fail_share or 0.0) >= config.smoke.fail_share:
            reasons.append(f"{final.smoke_fail_share:.0%} of smoke answers are broken")
        stopped = stop_reason(guards)
        if stopped:
            reasons.append(stopped)
        if restored == 0:
            reasons.append(ROLLED_BACK)
        return GuardSummary(
            status="stopped" if guards.stopped_by else "completed",
            checks=tuple(guards.checks),
            events=tuple(decision for decision in guards.decisions if decision.triggered),
            stopped_by=guards.stopped_by, best_step=guards.best_step, restored_step=restored,
            base_probe_accuracy=self.guard.baseline.probe_accuracy, forgetting=forgetting,
            suites={suite.name: suite.version for suite in self.guard.probe.suites},
            verdict=Verdict(ship=not reasons, reasons=tuple(reasons)),
        )
