"""``retain train``: audit, doctor, baseline, guarded training, final evaluation, summary.

In order, into one run directory (:class:`retain.rundir.RunDir`):

1. ``audit.json``: the data audit; blockers refuse the run unless ``--force``;
2. ``doctor.json``: the pipeline doctor; blockers refuse the run unless ``--force``;
3. ``base_eval.json``: the base model on the probe suites, the task (held-out and OOD),
   the smoke prompts and the reference text (what forgetting, drift and the task's gain
   are measured against);
4. training with the Hugging Face ``Trainer`` (``train.objective: dpo``: TRL's
   ``DPOTrainer``, :mod:`~retain.training.preference`) and the methods of ``method.use``
   (:mod:`retain.methods`: LoRA, replay, EWC, ...), watched by the guards
   (:mod:`retain.guards`), checkpoints in ``checkpoints/``;
5. the best checkpoint restored when a guard with ``restore_best`` stopped the run, then
   the methods' post-processing (FAPM's pruning);
6. the final model in ``model/`` (adapters, or the full model; ``--merge`` adds ``merged/``);
7. ``final_eval.json``: probes per category, task accuracy (held-out, OOD), drift, health
   (for a run rolled back to its starting weights, the base model's evaluation);
8. ``summary.json``: the verdict and the numbers behind it;
9. the model card (``README.md``) in ``model/`` and ``merged/``: what the run did to those
   weights, from the summary (:mod:`~retain.training.card`).

:func:`_train` runs these as numbered steps; each step's work lives in a module of its
own: :mod:`~retain.training.preflight` (1-2), :mod:`~retain.training.baseline` (3),
:mod:`~retain.training.plan` (the data and step counts), :mod:`retain.guards` (4),
:mod:`~retain.training.finish` (5-8), :mod:`~retain.training.card` (9);
:mod:`~retain.training.resume` and :mod:`retain.checkpoints` make a killed run continue,
:mod:`~retain.training.disk` makes a full disk one clear error.

``--resume`` continues a killed run from its last complete checkpoint, with the trainer's
data order, optimizer and random state and the guards' state as they were saved.
"""

from __future__ import annotations

import importlib
import logging
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from retain.checkpoints import CheckpointSeal, checkpoint_step, last_checkpoint, save_model
from retain.config import RetainConfig
from retain.config.loading import dump_config
from retain.data.encoding import (
    Encoded,
    build_collator,
    prepare_tokenizer,
)
from retain.data.prompting import PromptFormat, render_example
from retain.data.rows import load_examples_for, read_text
from retain.errors import ConfigError, RetainError
from retain.evaluation.commands import (
    config_suites,
    settings_from,
)
from retain.evaluation.engine import (
    default_reference_text,
    evaluate,
)
from retain.evaluation.preference import PreferenceValidation
from retain.guards.callback import GuardCallback
from retain.guards.measure import Probe
from retain.guards.state import GuardState, read_guard_state
from retain.hardware import drop_autocast
from retain.memory import check_training_memory
from retain.methods import MethodContext, methods_for
from retain.models import load_model, quiet_peft
from retain.paths import cache_dir, process_count
from retain.progress import quiet_trainer, shown
from retain.rundir import RunDir, default_run_name, validate_run_name
from retain.summary import RunSummary
from retain.training.baseline import measure_base
from retain.training.card import write_model_card
from retain.training.disk import disk_full
from retain.training.finish import (
    load_weights,
    percent,
    restore_if_asked,
    save_merged,
    starting_evaluation,
    summary_of,
)
from retain.training.plan import (
    VALIDATION_LIMIT,
    Plan,
    TrainingRows,
    check_blended_rows,
    check_trainer_args,
    training_args,
)
from retain.training.preflight import check_inputs, check_objective, doctor_passed, preflight
from retain.training.resume import (
    check_same_config,
    check_same_data,
    data_hashes,
    recorded_data,
    same_threads_note,
)
from retain.training.sampling import SeededEpochOrder
from retain.training.trainer import RetainTrainer

logger = logging.getLogger("retain.train")


@dataclass
class TrainOutcome:
    """What ``retain train`` leaves: its run directory and the summary written there."""

    run_dir: Path
    summary: RunSummary | None  # None in the other processes of a multi-process run


def run_train(
    config: RetainConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    force: bool = False,
    merge: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainOutcome:
    """Runs the whole guarded fine-tuning of ``config`` (see the module docstring).

    Args:
        config: The run's config; ``data.train`` must be set.
        overwrite: Replace an existing run directory of the same name.
        resume: Continue the run directory ``output.dir/output.name`` from its last
            complete checkpoint.
        force: Train even when the audit or the doctor found blockers (logged loudly).
        merge: Also save the model with adapters merged into the weights.
        progress: Show progress bars.
        echo: Prints one line per step of the run and per guard that triggers.

    Raises:
        ConfigError: If ``data.train`` is not set, or ``--resume`` names no run.
        TrainRefused: If the audit or the doctor found blockers and ``force`` is False.
        DiskFull: If the disk filled up; it names the file, the space to free and the
            checkpoint ``--resume`` continues from, which is intact.
        RetainError: For anything the user named that cannot be read or loaded.
    """
    if not config.data.train:
        raise ConfigError("retain train needs training data and data.train is not set",
                          field="data.train", fix="set data.train to your JSONL/CSV/Parquet file")
    if resume and not config.output.name:
        raise ConfigError("--resume needs the name of the run to continue", field="output.name",
                          fix="pass --name NAME (the run directory's name) or set output.name")
    process_count()  # a WORLD_SIZE that counts no processes, a bad run name or trainer_args, before any loading
    check_trainer_args(config)
    if config.output.name:
        validate_run_name(config.output.name)
    if not resume:
        check_inputs(config, memory=not force, merge=merge)
    run = _open_run(config, overwrite=overwrite, resume=resume)
    if not run.writer:
        echo, progress = (lambda line: None), False
    with run, quiet_peft():
        try:
            if resume:
                config = check_same_config(run, config)
                check_same_data(run, config)
                note = same_threads_note(run)
                if note:
                    logger.warning(note)
                    echo(f"warning: {note}")
            else:
                run.write_config(dump_config(config))
                run.write_meta({"data": data_hashes(config)})
            return _train(config, run, resume=resume, force=force, merge=merge, progress=progress, echo=echo)
        except Exception as error:
            full = disk_full(error, run)
            if full is None:
                raise
            raise full from error


def _open_run(config: RetainConfig, *, overwrite: bool, resume: bool) -> RunDir:
    """Opens the run directory; under ``accelerate launch`` only the main process writes.

    Every process runs the same steps (the same checks give the same decisions, so all
    stop together); the main process creates the directory and is the only one to write
    to it, and its run name is the one every process uses.
    """
    name = [config.output.name or default_run_name("train")]
    if process_count() <= 1:  # one process: no distributed state to set up
        return RunDir.create(config.output.dir, name[0], overwrite=overwrite, resume=resume)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    processes = PartialState()
    broadcast_object_list(name)  # the main process's timestamp names the run everywhere
    run = None
    if processes.is_main_process:
        run = RunDir.create(config.output.dir, name[0], overwrite=overwrite, resume=resume)
    processes.wait_for_everyone()
    return run or RunDir(Path(config.output.dir) / name[0], writer=False)


def _train(config: RetainConfig, run: RunDir, *, resume: bool, force: bool, merge: bool,
           progress: bool, echo: Callable[[str], None]) -> TrainOutcome:
    """The steps of one run, in order; each hands the next only what it needs."""
    started = time.perf_counter()
    # 1. The methods refuse what cannot run here; the probe suites are read.
    methods = methods_for(config)
    check_objective(config, methods)
    for method in methods:
        method.check()
    suites = config_suites(config)
    # 2. Before the model: the memory it needs (a run that cannot fit stops at once), then
    #    the audit and the doctor (a new run only).
    if resume and not force:  # a new run checked it before its directory existed
        check_training_memory(config, merge=merge)
    if not resume:
        preflight(config, run, suites, force=force, echo=echo)
    # 3. The base model, its tokenizer and prompt format, and what the methods share.
    loaded = load_model(config.model.name_or_path, device=config.model.device, dtype=config.model.dtype,
                        revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
                        progress=progress,
                        load_kwargs={key: value for method in methods for key, value in method.load_kwargs().items()})
    tokenizer = loaded.tokenizer
    prepare_tokenizer(tokenizer, config.model.pad_token)
    prompt_format = PromptFormat.for_tokenizer(tokenizer, config.model.chat_template)
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=prompt_format,
                            cache_dir=cache_dir() / "methods", echo=echo)
    # 4. The data: encoded, changed by the methods (blended rows, marked tokens), and the
    #    blended rows checked for probe items.
    plan = Plan.of(config, tokenizer, prompt_format, lambda rows: _transform(rows, methods, loaded.model, context))
    rehearsal = check_blended_rows(plan.train_rows, suites, config, echo)
    # 5. What the guards measure, and the base model measured once (or read back); under
    #    DPO, the validation pairs' reference log-likelihoods, the base's.
    collate = build_collator(tokenizer, config.train.collator)
    probe = _probe(config, suites, tokenizer, prompt_format, plan, collate)
    if plan.validation_pairs:
        probe.preferences = PreferenceValidation(plan.validation_pairs, tokenizer.pad_token_id or 0,
                                                 config.train.dpo.beta, config.train.batch_size)
        probe.preferences.measure_reference(loaded.model)
    task, ood = _read(config, config.data.eval), _read(config, config.data.ood)  # before and after
    with shown(progress):  # the bars of the base measurement; the guards' checks stay silent
        base_result, baseline = measure_base(config, run, loaded, probe, task, ood, resume=resume, echo=echo)
    echo(f"base model: probe accuracy {percent(baseline.probe_accuracy)} "
         f"({config.guards.forgetting.method}), smoke failures {baseline.smoke_fail_share:.0%}")
    # 6. The model the methods prepare, and the checkpoint a resume continues from.
    model = loaded.model
    set_seed(config.train.seed)  # LoRA's random init is the seed's, whatever ran before in this process
    for method in methods:
        model = method.prepare_model(model, context)
    checkpoint = last_checkpoint(run) if resume else None
    if resume:
        # With no checkpoint, everything is redone, the check of step 0 included.
        dropped = run.rewind_metrics(checkpoint_step(checkpoint) if checkpoint else -1)
        logger.info("resuming from %s; %d metric records after it dropped (they are redone)",
                    checkpoint or "the start", dropped)
    # 7. Training under the guards.
    guard = GuardCallback(
        config.guards, probe, baseline, run, interval=plan.interval,
        settle_steps=max(int(config.train.warmup_ratio * plan.total_steps), math.ceil(0.1 * plan.total_steps)),
        state=(read_guard_state(checkpoint) if checkpoint else None) or GuardState(), echo=echo,
        pipeline_checked=doctor_passed(run),
    )
    seal = CheckpointSeal((lambda: guard.state.to_dict()) if config.guards.enabled else None)
    callbacks = [guard if config.guards.enabled else _MetricsOnly(run), seal, SeededEpochOrder(plan.steps_per_epoch)]
    if config.train.objective == "dpo":
        preference = preference_module()
        trainer = preference.PreferenceTrainer(
            model=model, ref_model=preference.reference_model(model),
            args=training_args(config, run, plan, lambda values: preference.dpo_config(config, values)),
            train_dataset=preference.preference_dataset(plan.train_pairs), processing_class=tokenizer,
            callbacks=callbacks, methods=methods, context=context)
    else:
        trainer = RetainTrainer(model=model, args=training_args(config, run, plan),
                                train_dataset=TrainingRows(plan.train_rows), data_collator=collate,
                                callbacks=callbacks, methods=methods, context=context)
    guard.log = trainer.log
    quiet_trainer(trainer, f"training ({'+'.join(method.name for method in methods)})" if progress else None)
    unit = "preference pairs (dpo)" if config.train.objective == "dpo" else "rows"
    echo(f"training {plan.rows:,} {unit}, {plan.total_steps:,} steps, checks every "
         f"{plan.interval} steps" + (f", resuming from {checkpoint.name}" if checkpoint else "")
         + ("" if config.guards.enabled else " (guards off)"))
    train_started = time.perf_counter()
    train_metrics = _run_trainer(trainer, checkpoint, guard.state, plan.total_steps)
    train_seconds = time.perf_counter() - train_started
    if not run.writer:  # another process of a multi-process run: the main one finishes it
        return TrainOutcome(run_dir=run.path, summary=None)
    # 8. After training: the best checkpoint restored if a guard asked, the methods'
    #    post-processing, the model saved, the final evaluation and the verdict.
    drop_autocast(model)  # evaluated and saved in full precision, as the base model was measured
    restored = restore_if_asked(model, guard.state, run, config.guards, echo)
    for method in methods:
        model = method.finish(model, context)
    # The saved tokenizer carries the template training used (none for raw prompts), so
    # whoever loads model/ prompts it the way it was trained.
    tokenizer.chat_template = prompt_format.template
    save_model(model, run.path / "model", tokenizer)
    if merge:
        save_merged(model, tokenizer, run.path / "merged", config)
    if restored == 0:
        final = starting_evaluation(base_result, str(run.path / "model"))
        echo("final evaluation: the run was rolled back to its starting weights, which compute as the base "
             "model: the base model's evaluation stands")
    else:
        with shown(progress):
            final = evaluate(model, tokenizer, name=str(run.path / "model"), chat_template=config.model.chat_template,
                             suites=probe.suites, task=task, ood=ood, reference=probe.reference,
                             base_logprobs=baseline.logprobs, settings=probe.settings).to_dict()
    if config.train.objective == "dpo":
        preference_module().add_reward_figures(final, base_result, config.train.dpo.beta)
    run.write_json("final_eval.json", final)
    epochs_done = trainer.state.global_step / plan.steps_per_epoch
    summary = summary_of(config, guard.state, base_result, final, restored=restored,
                         steps=trainer.state.global_step, train_seconds=train_seconds,
                         tokens=plan.tokens_per_epoch * epochs_done,
                         seconds=time.perf_counter() - started, train_output=train_metrics,
                         rehearsal=rehearsal)
    run.write_summary(summary.to_dict())
    # 9. The model cards, once the verdict is known: the data hashes the run recorded at its start.
    hashes = recorded_data(run.meta_path) or {}
    write_model_card(run.path / "model", config, summary, hashes)
    if (run.path / "merged").is_dir():
        write_model_card(run.path / "merged", config, summary, hashes, merged=True)
    return TrainOutcome(run_dir=run.path, summary=summary)


def preference_module():
    """Returns :mod:`retain.training.preference`, imported for ``train.objective: dpo`` runs
    only: TRL, which it builds on, is an optional dependency.

    Raises:
        ConfigError: If TRL is not installed.
    """
    try:
        return importlib.import_module("retain.training.preference")
    except ImportError as error:
        raise ConfigError(f"train.objective dpo trains with TRL's DPOTrainer, which cannot be imported ({error})",
                          field="train.objective", fix="pip install 'trl>=1.16,<2' (Python 3.11 or later), "
                          "or set train.objective: sft") from None


def _transform(rows: list[Encoded], methods: list, model, context: MethodContext) -> list[Encoded]:
    """Returns the training rows after every method's ``transform_rows``, in hook order."""
    for method in methods:
        rows = method.transform_rows(rows, model, context)
    return rows


def _probe(config: RetainConfig, suites: list, tokenizer, prompt_format: PromptFormat, plan: Plan,
           collate) -> Probe:
    """Returns what the guards measure at each check (and the base model is measured on)."""
    return Probe(
        tokenizer=tokenizer, suites=suites, method=config.guards.forgetting.method,
        settings=settings_from(config), chat_template=config.model.chat_template,
        smoke_prompts=[prompt_format.render(prompt) for prompt in config.guards.smoke.prompts]
        + [render_example(example, prompt_format).prompt for example in plan.task_prompts],
        smoke_max_new_tokens=config.guards.smoke.max_new_tokens, smoke_task=len(plan.task_prompts),
        reference=_reference(config, suites), drift_tokens=config.guards.drift.check_tokens,
        validation=plan.validation[:VALIDATION_LIMIT], validation_encoded=plan.validation_rows,
        collate=collate, batch_size=config.train.batch_size,
    )


class _MetricsOnly(TrainerCallback):
    """With the guards off, the trainer's logs still stream into ``metrics.jsonl``."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs:
            self.run.append_metrics({"event": "log", "step": state.global_step, "epoch": state.epoch, **logs})


def _whole_run(metrics: dict[str, Any], log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Returns the trainer's metrics with ``train_loss`` over the whole run.

    The trainer's own ``train_loss`` sums the losses of this call only, divided by every
    step: after a resume it is not the run's. The log history is restored with the
    checkpoint, so its losses (each the mean over the steps since the log before) weighted
    by their steps give the same figure for a resumed run as for one never interrupted.
    ``train_runtime`` and the throughputs stay those of the last call (docs/TRAINING.md).
    """
    losses = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry and "step" in entry}
    total, previous = 0.0, 0
    for step in sorted(losses):
        total += losses[step] * (step - previous)
        previous = step
    return {**metrics, "train_loss": total / previous} if previous else metrics


def _run_trainer(trainer: RetainTrainer, checkpoint: Path | None, state: GuardState,
                 total_steps: int) -> dict[str, Any]:
    """Trains, from ``checkpoint`` when resuming; returns the trainer's metrics.

    A checkpoint saved when training had ended (at its last step, or when a guard stopped
    it) is loaded as it is, without training: the trainer would take one more step from
    the last step of a partial epoch, and would not stop again for a guard that already
    had. Its metrics are then only the run's ``train_loss``, read from the saved log history.
    """
    if checkpoint is None:
        return _whole_run(trainer.train().metrics, trainer.state.log_history)
    if state.stopped_by is None and checkpoint_step(checkpoint) < total_steps:
        try:
            return _whole_run(trainer.train(resume_from_checkpoint=str(checkpoint)).metrics,
                              trainer.state.log_history)
        except pickle.UnpicklingError as error:
            # transformers loads the optimizer, scheduler and RNG states with
            # weights_only=True, which refuses a pickle holding code: a checkpoint whose seal
            # still matched but whose content was replaced (by hand or by an attacker).
            raise RetainError(
                f"checkpoint {checkpoint.name} holds a pickle that loading with weights_only "
                f"refuses (it would run code): {str(error).splitlines()[0]}",
                file=checkpoint,
                fix=f"delete {checkpoint} to resume from an earlier checkpoint, or start over "
                "with --overwrite; do not load checkpoints from a source you do not trust",
            ) from None
    logger.info("%s was saved when training had ended (%s): loaded, not trained further", checkpoint,
                f"stopped by the {state.stopped_by.guard} guard" if state.stopped_by else "the last step")
    load_weights(trainer.model, checkpoint)
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
    return _whole_run({}, trainer.state.log_history)  # the run's loss, as an uninterrupted run reports it


def _reference(config: RetainConfig, suites: list) -> str | None:
    if config.eval.reference:
        return read_text(config.eval.reference, "eval.reference")
    return default_reference_text(suites)


def _read(config: RetainConfig, path: str | None):
    return load_examples_for(config.data, path) if path else None
