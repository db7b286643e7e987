"""``retain train``: audit, doctor, baseline, guarded training, final evaluation, summary.

In order, into one run directory (:class:`retain.rundir.RunDir`):

1. ``audit.json``: the data audit; blockers refuse the run unless ``--force``;
2. ``doctor.json``: the pipeline doctor; blockers refuse the run unless ``--force``;
3. ``base_eval.json``: the base model on the probe suites, the task (held-out and OOD),
   the smoke prompts and the reference text (what forgetting, drift and the task's gain
   are measured against);
4. training with the Hugging Face ``Trainer`` and the methods of ``method.use``
   (:mod:`retain.methods`: LoRA, replay, EWC, ...), watched by the guards
   (:mod:`retain.guards`), checkpoints in ``checkpoints/``;
5. the best checkpoint restored when a guard with ``restore_best`` stopped the run, then
   the methods' post-processing (FAPM's pruning);
6. the final model in ``model/`` (adapters, or the full model; ``--merge`` adds ``merged/``);
7. ``final_eval.json``: probes per category, task accuracy (held-out, OOD), drift, health;
8. ``summary.json``: the verdict and the numbers behind it.

Steps 5-8 live in :mod:`retain.training.finish`; the guards in
:mod:`retain.guards`.

``--resume`` continues a killed run from its last complete checkpoint, with the trainer's
data order, optimizer and random state and the guards' state as they were saved.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME

import retain
from retain.audit.doctor import run_doctor
from retain.audit.overlap import blended_contamination, rehearsed_ids
from retain.audit.runner import run_audit
from retain.checkpoints import CheckpointSeal, checkpoint_problem, save_model
from retain.config import RetainConfig
from retain.config.loading import dump_config, load_config
from retain.data.encoding import (
    Encoded,
    build_collator,
    encode_examples,
    prepare_tokenizer,
)
from retain.data.prompting import PromptFormat, render_example
from retain.data.rows import Example, load_examples_for
from retain.errors import ConfigError, RetainError, RunDirError
from retain.evaluation.commands import (
    cached_base_logprobs,
    default_suites,
    model_identity,
    settings_from,
)
from retain.evaluation.drift import compute_base_logprobs
from retain.evaluation.engine import (
    default_reference_text,
    evaluate,
)
from retain.evaluation.suites import load_suite
from retain.guards.callback import GuardCallback
from retain.guards.measure import Baseline, Probe
from retain.guards.state import GuardState, read_guard_state
from retain.hardware import drop_autocast, resolve_precision
from retain.methods import MethodContext, methods_for
from retain.models import LoadedModel, check_training_memory, load_model, quiet_peft
from retain.paths import cache_dir
from retain.progress import quiet_trainer
from retain.rundir import (
    RunDir,
    atomic_write_json,
    config_file_hashes,
    default_run_name,
)
from retain.sources import model_family
from retain.training.finish import (
    load_weights,
    overall_accuracy,
    percent,
    restore_if_asked,
    save_merged,
    summary_of,
)
from retain.training.sampling import TASK, SeededEpochOrder
from retain.training.trainer import RetainTrainer

logger = logging.getLogger("retain.train")

VALIDATION_LIMIT = 200  # validation rows whose answers are generated at each check


class TrainRefused(RetainError):
    """The audit or the doctor found blockers, and ``--force`` was not given."""


class DiskFull(RunDirError):
    """The disk of the run directory filled up; the last complete checkpoint is kept."""


@dataclass
class TrainOutcome:
    """What ``retain train`` leaves: its run directory and the summary written there."""

    run_dir: Path
    summary: dict[str, Any]


class _Rows(torch.utils.data.Dataset):
    """Encoded rows as the trainer takes them; ``sources`` and ``lengths`` are what
    :class:`~retain.training.trainer.RetainTrainer` builds its sampler from."""

    def __init__(self, rows: list[Encoded]) -> None:
        self.rows = rows
        self.sources = [row.source for row in rows]
        self.lengths = [len(row.input_ids) for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index].feature()


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
    if not resume:
        _check_inputs(config)
    run = _open_run(config, overwrite=overwrite, resume=resume)
    if not run.writer:
        echo, progress = (lambda line: None), False
    with run, quiet_peft():
        try:
            if resume:
                config = _check_same_config(run, config)
                _check_same_data(run, config)
            else:
                run.write_config(dump_config(config))
                run.write_meta({"data": _data_hashes(config)})
            return _train(config, run, resume=resume, force=force, merge=merge, progress=progress, echo=echo)
        except Exception as error:
            full = _disk_full(error, run)
            if full is None:
                raise
            raise full from error


def _check_inputs(config: RetainConfig) -> None:
    """Reads every data file and probe suite the config names before anything is written
    or loaded, so a missing or unreadable one is refused with no run directory left
    behind (and before the memory check, which may build the lab model)."""
    for path in (config.data.train, config.data.validation, config.data.eval, config.data.ood):
        if path:
            load_examples_for(config.data, path)
    for name in config.probes.suites or default_suites(config.model.name_or_path):
        load_suite(name)


def _open_run(config: RetainConfig, *, overwrite: bool, resume: bool) -> RunDir:
    """Opens the run directory; under ``accelerate launch`` only the main process writes.

    Every process runs the same steps (the same checks give the same decisions, so all
    stop together); the main process creates the directory and is the only one to write
    to it, and its run name is the one every process uses.
    """
    name = [config.output.name or default_run_name("train")]
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # one process: no distributed state to set up
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


@dataclass
class _Plan:
    """The encoded data and the step counts of a run."""

    train_rows: list[Encoded]
    validation: list[Example]
    validation_rows: list[Encoded]
    steps_per_epoch: int
    total_steps: int
    interval: int
    task_prompts: list[Example]

    @classmethod
    def of(cls, config: RetainConfig, tokenizer, prompt_format: PromptFormat,
           transform: Callable[[list[Encoded]], list[Encoded]]) -> _Plan:
        train = load_examples_for(config.data, config.data.train)[: config.data.size]  # size None: all
        # The methods may blend rows in (replay) or mark tokens (token-level forgetting).
        train_rows = transform(_encode(config, train, config.data.train, tokenizer, prompt_format))
        validation = load_examples_for(config.data, config.data.validation) if config.data.validation else []
        validation_rows = (_encode(config, validation, config.data.validation, tokenizer, prompt_format)
                           if validation else [])
        settings = config.train
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # `accelerate launch` splits each batch
        steps_per_epoch = max(1, math.ceil(len(train_rows) / (settings.batch_size * settings.grad_accum
                                                               * processes)))
        total_steps = settings.max_steps or max(1, math.ceil(steps_per_epoch * settings.epochs))
        interval = config.guards.every_steps or max(1, steps_per_epoch // config.guards.checks_per_epoch)
        # Smoke-test task prompts: held-out rows if there are any, else training rows.
        count = config.guards.smoke.task_prompts
        task_prompts = (validation or train)[:count]
        return cls(train_rows, validation, validation_rows, steps_per_epoch, total_steps, interval,
                   task_prompts)


def _train(config: RetainConfig, run: RunDir, *, resume: bool, force: bool, merge: bool,
           progress: bool, echo: Callable[[str], None]) -> TrainOutcome:
    started = time.perf_counter()
    methods = methods_for(config)
    for method in methods:
        method.check()
    suites = [load_suite(name) for name in config.probes.suites or default_suites(config.model.name_or_path)]
    if not force:  # before the audit, the doctor and the model: a run that cannot fit stops at once
        check_training_memory(config, merge=merge)
    if not resume:
        _preflight(config, run, suites, force=force, echo=echo)
    loaded = load_model(config.model.name_or_path, device=config.model.device, dtype=config.model.dtype,
                        revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
                        progress=progress,
                        load_kwargs={key: value for method in methods for key, value in method.load_kwargs().items()})
    tokenizer = loaded.tokenizer
    prepare_tokenizer(tokenizer, config.model.pad_token)
    prompt_format = PromptFormat.for_tokenizer(tokenizer, config.model.chat_template)
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=prompt_format,
                            cache_dir=cache_dir() / "methods", echo=echo)

    def transform(rows: list[Encoded]) -> list[Encoded]:
        for method in methods:
            rows = method.transform_rows(rows, loaded.model, context)
        return rows

    plan = _Plan.of(config, tokenizer, prompt_format, transform)
    rehearsal = _check_blended_rows(plan.train_rows, suites, config, echo)
    collate = build_collator(tokenizer, config.train.collator)
    reference = _reference(config, suites)
    probe = Probe(
        tokenizer=tokenizer, suites=suites, method=config.guards.forgetting.method,
        settings=settings_from(config), chat_template=config.model.chat_template,
        smoke_prompts=[prompt_format.render(prompt) for prompt in config.guards.smoke.prompts]
        + [render_example(example, prompt_format).prompt for example in plan.task_prompts],
        smoke_max_new_tokens=config.guards.smoke.max_new_tokens, smoke_task=len(plan.task_prompts),
        reference=reference,
        validation=plan.validation[:VALIDATION_LIMIT], validation_encoded=plan.validation_rows,
        collate=collate, batch_size=config.train.batch_size,
    )
    task, ood = _read(config, config.data.eval), _read(config, config.data.ood)  # before and after
    base_result, baseline = _baseline(config, run, loaded, probe, task, ood, resume=resume)
    echo(f"base model: probe accuracy {percent(baseline.probe_accuracy)} "
         f"({config.guards.forgetting.method}), smoke failures {baseline.smoke_fail_share:.0%}")
    model = loaded.model
    set_seed(config.train.seed)  # LoRA's random init is the seed's, whatever ran before in this process
    for method in methods:
        model = method.prepare_model(model, context)
    checkpoint = _last_checkpoint(run) if resume else None
    if resume:
        # With no checkpoint, everything is redone, the check of step 0 included.
        dropped = run.rewind_metrics(_step(checkpoint) if checkpoint else -1)
        logger.info("resuming from %s; %d metric records after it dropped (they are redone)",
                    checkpoint or "the start", dropped)
    guard = GuardCallback(
        config.guards, probe, baseline, run, interval=plan.interval,
        settle_steps=max(int(config.train.warmup_ratio * plan.total_steps), math.ceil(0.1 * plan.total_steps)),
        state=(read_guard_state(checkpoint) if checkpoint else None) or GuardState(), echo=echo,
    )
    seal = CheckpointSeal((lambda: guard.state.to_dict()) if config.guards.enabled else None)
    trainer = RetainTrainer(model=model, args=_training_args(config, run, plan), train_dataset=_Rows(plan.train_rows),
                            data_collator=collate,
                            callbacks=[guard if config.guards.enabled else _MetricsOnly(run), seal,
                                       SeededEpochOrder(plan.steps_per_epoch)],
                            methods=methods, context=context)
    guard.log = trainer.log
    names = "+".join(method.name for method in methods)
    quiet_trainer(trainer, f"training ({names})" if progress else None)
    echo(f"training {len(plan.train_rows):,} rows, {plan.total_steps:,} steps, checks every "
         f"{plan.interval} steps" + (f", resuming from {checkpoint.name}" if checkpoint else "")
         + ("" if config.guards.enabled else " (guards off)"))
    train_started = time.perf_counter()
    train_metrics = _run_trainer(trainer, checkpoint, guard.state, plan.total_steps)
    train_seconds = time.perf_counter() - train_started
    if not run.writer:  # another process of a multi-process run: the main one finishes it
        return TrainOutcome(run_dir=run.path, summary={})
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
    final = evaluate(model, tokenizer, name=str(run.path / "model"), chat_template=config.model.chat_template,
                     suites=suites, task=task, ood=ood,
                     reference=reference, base_logprobs=baseline.logprobs, settings=probe.settings)
    run.write_json("final_eval.json", final.to_dict())
    epochs_done = trainer.state.global_step / plan.steps_per_epoch
    summary = summary_of(config, guard.state, base_result, final, restored=restored,
                       steps=trainer.state.global_step, train_seconds=train_seconds,
                       tokens=sum(len(row.input_ids) for row in plan.train_rows) * epochs_done,
                       seconds=time.perf_counter() - started, train_output=train_metrics,
                       rehearsal=rehearsal)
    run.write_summary(summary)
    return TrainOutcome(run_dir=run.path, summary=summary)


class _MetricsOnly(TrainerCallback):
    """With the guards off, the trainer's logs still stream into ``metrics.jsonl``."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs:
            self.run.append_metrics({"event": "log", "step": state.global_step, "epoch": state.epoch, **logs})


# --- before training ------------------------------------------------------------------


def _check_blended_rows(rows: list[Encoded], suites: list, config: RetainConfig,
                        echo: Callable[[str], None]) -> dict[str, Any]:
    """Looks for probe items in the rows the methods blended in (the audit's
    probe-contamination check on exactly what training will see), one line per source.

    Returns:
        ``{"rows": {source: count}, "items": {suite: [ids]}}``: the blended rows by source,
        and the probe items some blended row stated (forgetting is reported apart on them).
    """
    texts: dict[str, list[str]] = {}
    for row in rows:
        if row.source != TASK:
            texts.setdefault(row.source, []).append(row.text or "")
    items: dict[str, set[str]] = {}
    for source, blended in texts.items():
        finding = blended_contamination(blended, suites, f"the {len(blended):,} rows {source} blended in",
                                        config.audit.near_duplicate_threshold)
        if finding is None:
            echo(f"{source}: no probe item in the {len(blended):,} rows it blended in")
            continue
        echo(f"warning: {finding.title}; forgetting is reported on them apart")
        for suite, ids in rehearsed_ids(finding).items():
            items.setdefault(suite, set()).update(ids)
    return {"rows": {source: len(blended) for source, blended in texts.items()},
            "items": {suite: sorted(ids) for suite, ids in items.items()}}


def _preflight(config: RetainConfig, run: RunDir, suites: list, *, force: bool,
               echo: Callable[[str], None]) -> None:
    """Runs the audit and the doctor; refuses blockers unless ``force``."""
    audit = run_audit(config, config.data.train, eval_data=config.data.eval, probes=suites)
    run.write_json("audit.json", audit.to_dict())
    doctor = run_doctor(config)
    run.write_json("doctor.json", doctor.to_dict())
    for name, report in (("audit", audit), ("doctor", doctor)):
        blockers = [finding for finding in report.findings if finding.severity == "blocker"]
        echo(f"{name}: {report.count('blocker')} blockers, {report.count('warning')} warnings")
        for finding in blockers:
            echo(f"  blocker {finding.code}: {finding.title}")
        if blockers and not force:
            raise TrainRefused(
                f"the {name} found {len(blockers)} blocker(s), first: {blockers[0].title}",
                fix=f"{blockers[0].fix}; see {run.path / (name + '.json')}, or pass --force to "
                "train anyway (with --overwrite to reuse this run's name)",
            )
        if blockers:
            logger.warning("training despite %d %s blocker(s) (--force)", len(blockers), name)


def _baseline(config: RetainConfig, run: RunDir, loaded: LoadedModel, probe: Probe,
              task: list[Example] | None, ood: list[Example] | None, *, resume: bool) -> tuple[dict[str, Any], Baseline]:
    """Measures (or, resuming, reads) the base model; returns its result and baseline numbers."""
    path = run.path / "base_eval.json"
    cached = _base_eval_cache(config, probe, task, ood)
    if resume and path.is_file():
        result = json.loads(path.read_text())
    elif cached is not None and cached.is_file():
        result = json.loads(cached.read_text())
        logger.info("base model evaluation reused from %s", cached)
        run.write_json(path.name, result)
    else:
        # The task too, held-out and OOD: the "before" of task accuracy, and what the
        # verdict checks that training improved on.
        result = evaluate(loaded.model, loaded.tokenizer, name=config.model.name_or_path,
                          chat_template=config.model.chat_template, suites=probe.suites,
                          task=task, ood=ood,
                          reference=probe.reference, settings=probe.settings).to_dict()
        run.write_json(path.name, result)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cached, result)
    reference = probe.reference
    logprobs = None
    if reference:
        logprobs = (cached_base_logprobs(loaded, config.model.name_or_path, reference) if cached is not None
                    else compute_base_logprobs(loaded.model, loaded.tokenizer, reference))
    smoke_share, _, _, stopped = probe.smoke(loaded.model)
    # A resumed run has its check of step 0 already (or redoes it, with no checkpoint).
    start = _start_validation(config, loaded, probe) if config.guards.enabled and not resume else None
    return result, Baseline(
        probe_accuracy=overall_accuracy(result, config.guards.forgetting.method),
        smoke_fail_share=smoke_share,
        perplexity=(result.get("drift") or {}).get("perplexity"),
        logprobs=logprobs,
        smoke_stopped=stopped,
        start_validation=start,
    )


def _base_eval_cache(config: RetainConfig, probe: Probe, task: list[Example] | None,
                     ood: list[Example] | None) -> Path | None:
    """Returns where the base model's evaluation for this config is cached, or None when
    the model is neither a registered name nor a local directory (a hub id's weights can
    change under its name).

    The key holds everything the result depends on: the weights (path, sizes and
    modification times), the tokenizer and template settings, the device and dtype, every
    probe item, task row and reference text, the evaluation settings, and the versions of
    retain and torch. Several runs on one base (a comparison, a sweep) then measure it
    once.
    """
    return _base_cache(config, "", {
        "suites": [asdict(suite) for suite in probe.suites],
        "task": [vars(example) for example in task or []],
        "ood": [vars(example) for example in ood or []],
        "reference": probe.reference,
        "settings": asdict(probe.settings),
    })


def _base_cache(config: RetainConfig, kind: str, key: dict[str, Any]) -> Path | None:
    """Returns the cache file of one measurement of the base model, keyed by ``key`` with the
    model's identity and settings and the versions of retain and torch; None when the model
    is neither a registered name nor a local directory."""
    name = config.model.name_or_path
    if model_family(name) is None and not Path(name).is_dir():
        return None

    key = key | {
        "model": model_identity(config.model.name_or_path),
        "model_settings": config.model.model_dump(mode="json"),
        "versions": [retain.__version__, torch.__version__],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "base-eval" / f"{digest}{kind}.json"


def _start_validation(config: RetainConfig, loaded: LoadedModel, probe: Probe) -> tuple[float | None, float | None]:
    """Returns the base model's validation loss and task accuracy, cached per base model and
    validation rows: the figures of the check of step 0, since the starting model computes
    as the base (see :meth:`GuardCallback.on_train_begin`)."""
    if not probe.validation and not probe.validation_encoded:
        return None, None
    cached = _base_cache(config, "-validation", {
        "validation": [vars(example) for example in probe.validation],
        "encoded": [row.feature() for row in probe.validation_encoded],
        "collator": config.train.collator,
        "settings": asdict(probe.settings),
    })
    if cached is not None and cached.is_file():
        try:
            stored = json.loads(cached.read_text())
            return stored["val_loss"], stored["task_accuracy"]
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unusable cached validation figures %s: %s", cached, error)
    figures = probe.validation_loss(loaded.model), probe.task_accuracy(loaded.model)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cached, {"val_loss": figures[0], "task_accuracy": figures[1]})
    return figures


def _encode(config: RetainConfig, examples: list[Example], path: str, tokenizer,
            prompt_format: PromptFormat) -> list[Encoded]:
    """Encodes the rows of a data file for training; rows with no supervised token are
    dropped (logged)."""
    rows, rejected = encode_examples(examples, tokenizer, prompt_format, max_length=config.data.max_length,
                                     loss_on=config.train.loss_on)
    kept = [row for row in rows if row.supervised > 0]
    if rejected or len(kept) < len(rows):
        logger.warning("%s: %d rows dropped (%d the chat template rejects, %d with no supervised token)",
                       path, len(rejected) + len(rows) - len(kept), len(rejected), len(rows) - len(kept))
    if not kept:
        raise TrainRefused(f"no row of {path} has a supervised token", file=path,
                           fix="run retain doctor on this config: answers are probably truncated away")
    return kept


def _training_args(config: RetainConfig, run: RunDir, plan: _Plan) -> TrainingArguments:
    train = config.train
    interval, total_steps = plan.interval, plan.total_steps
    device = config.model.device
    precision = resolve_precision(train.precision, None if device == "auto" else device)
    return TrainingArguments(
        output_dir=str(run.checkpoints_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        max_steps=total_steps,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a share of all steps
        lr_scheduler_type=train.lr_scheduler,
        max_grad_norm=train.max_grad_norm or 0.0,
        weight_decay=train.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=train.seed,
        data_seed=train.seed,
        # Every step's loss reaches the loss guard, unfiltered: transformers would otherwise
        # replace a NaN or inf loss with the running mean and hide it.
        logging_steps=1,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=train.save_every or interval,
        save_total_limit=train.save_total_limit,
        report_to=train.report_to or "none",
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()),
    )


def _run_trainer(trainer: RetainTrainer, checkpoint: Path | None, state: GuardState,
                 total_steps: int) -> dict[str, Any]:
    """Trains, from ``checkpoint`` when resuming; returns the trainer's metrics.

    A checkpoint saved when training had ended (at its last step, or when a guard stopped
    it) is loaded as it is, without training: the trainer would take one more step from
    the last step of a partial epoch, and would not stop again for a guard that already
    had. Its metrics are then ``{}``.
    """
    if checkpoint is None:
        return trainer.train().metrics
    if state.stopped_by is None and _step(checkpoint) < total_steps:
        try:
            return trainer.train(resume_from_checkpoint=str(checkpoint)).metrics
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
    return {}


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def _last_checkpoint(run: RunDir) -> Path | None:
    """Returns the newest complete checkpoint (:func:`checkpoint_problem`); incomplete ones
    after it (killed mid-save) are removed, since the steps they hold are redone."""
    for path in reversed(_checkpoints(run)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if run.writer:
            logger.warning("removing incomplete checkpoint %s: %s", path, problem)
            shutil.rmtree(path, ignore_errors=True)
    return None


def _checkpoints(run: RunDir) -> list[Path]:
    """Returns the run's ``checkpoint-N`` folders, oldest first."""
    if not run.checkpoints_dir.is_dir():
        return []
    return sorted((path for path in run.checkpoints_dir.glob("checkpoint-*")
                   if path.is_dir() and path.name.rsplit("-", 1)[-1].isdigit()),
                  key=_step)


# --- a full disk ----------------------------------------------------------------------

LOW_SPACE = 1 << 20  # bytes free under which a failed write is put down to a full disk
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def _disk_full(error: BaseException, run: RunDir) -> DiskFull | None:
    """Returns the error to raise when ``error`` came from a full disk, else None.

    The disk is full when an error in the chain says so (ENOSPC, EDQUOT, or their text:
    safetensors wraps the OS error in its own) or, since ``torch.save`` reports only
    "unexpected pos", when less than :data:`LOW_SPACE` is left on the run's disk. The
    checkpoint being written is removed (it is incomplete, and its space is what a
    resume needs); the complete ones are left as they are.
    """
    if isinstance(error, RetainError) or not run.writer:  # already a clear error; or not the writer
        return None
    reason = _full_reason(error, run.path)
    if reason is None:
        return None
    written = next((link.filename for link in _chain(error)
                    if isinstance(link, OSError) and link.filename), None)
    incomplete = [path for path in _checkpoints(run) if checkpoint_problem(path) is not None]
    if written is None and incomplete:
        written = incomplete[-1]
    last = _last_checkpoint(run)  # removes the incomplete ones after it
    for staging in (*run.path.glob("*.partial"), *run.checkpoints_dir.glob("*.partial")):
        shutil.rmtree(staging, ignore_errors=True)
    mount = _mount_point(run.path)
    free = shutil.disk_usage(run.path).free
    if last is None:
        kept = "no checkpoint was complete yet, so --resume starts the training over"
        room = f"free space on {mount} ({_size(free)} free now)"
    else:
        need = sum(path.stat().st_size for path in last.rglob("*") if path.is_file())
        kept = f"the last complete checkpoint, {last}, is intact and --resume continues from it"
        room = (f"free at least {_size(need)} on {mount} (one checkpoint of this run; {_size(free)} "
                "free now)")
    return DiskFull(
        f"the disk filled up ({reason}) while this was being written; {kept}", file=written or run.path,
        fix=f"{room}, or set output.dir to a larger disk or lower train.save_total_limit, then run "
        "the same command with --resume",
    )


def _full_reason(error: BaseException, path: Path) -> str | None:
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(link.errno)
        if any(words in str(link) for words in _FULL_WORDS):
            return str(link)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    return f"{_size(free)} free after {type(error).__name__}: {error}" if free < LOW_SPACE else None


def _chain(error: BaseException) -> list[BaseException]:
    """Returns ``error`` and the errors it was raised from or during, without repeats."""
    links: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in links:
        links.append(link)
        link = link.__cause__ or link.__context__
    return links


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            break
    return f"{count:.1f} {unit}"


# --- small helpers --------------------------------------------------------------------


def _reference(config: RetainConfig, suites: list) -> str | None:
    if config.eval.reference:
        from retain.data.rows import read_text

        return read_text(config.eval.reference, "eval.reference")
    return default_reference_text(suites)


def _read(config: RetainConfig, path: str | None):
    return load_examples_for(config.data, path) if path else None


def _data_hashes(config: RetainConfig) -> dict[str, str]:
    """Returns the SHA-256 of every file the config names, for reproducing the run: the data
    splits by name (``train``, ``eval``, ...), the others by dotted field (``probes.suites.0``,
    ``eval.reference``, ``method.replay.source``)."""
    hashes = config_file_hashes(config.model_dump(mode="json"))
    return {field.removeprefix("data."): digest for field, digest in hashes.items()}


def finished_summary(config: RetainConfig) -> dict[str, Any] | None:
    """Returns the summary of the run ``config`` names if that run finished with this very
    config, else None: comparisons and evidence scripts read such a run back instead of
    training it again.

    The saved ``config.yaml`` is read as a config, so a setting added to retain since the
    run was saved takes its default, which keeps the old behaviour: the run still counts.
    A saved config that no longer validates (a setting since removed) does not, and
    neither does a run whose data files (their SHA-256 in ``meta.json``) have changed
    since: the same paths with new contents, as when the lab's data are regenerated.
    """
    folder = Path(config.output.dir) / (config.output.name or "")
    summary, saved = folder / "summary.json", folder / "config.yaml"
    if not (config.output.name and summary.is_file() and saved.is_file()):
        return None
    if not _same_config(saved, config) or not _same_data(folder / "meta.json", config):
        return None
    return json.loads(summary.read_text())


def _same_data(meta: Path, config: RetainConfig) -> bool:
    """True when the data hashes a run recorded in ``meta`` are those of the files
    ``config`` names now (also when it recorded none: a run from before they were kept);
    False when ``meta`` is missing or unreadable."""
    recorded = _recorded_data(meta)
    return recorded is not None and not _changed_data(recorded, config)


def _recorded_data(meta: Path) -> dict[str, str] | None:
    """Returns the data hashes a run recorded in ``meta`` (``{}`` when it recorded none);
    None when ``meta`` is missing or unreadable."""
    try:
        return json.loads(meta.read_text()).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return None


def _changed_data(recorded: dict[str, str], config: RetainConfig) -> list[str]:
    """Returns the fields of ``recorded`` whose file changed or went away since."""
    now = _data_hashes(config)
    return [field for field, digest in recorded.items() if now.get(field) != digest]


def _check_same_data(run: RunDir, config: RetainConfig) -> None:
    """Resuming, refuses a file the run read whose contents changed since it started: the
    rest of the run would train, and be judged, on other rows than its first steps.

    Runs that recorded no hashes (``meta.json`` missing or from before they were kept)
    resume unchecked.
    """
    recorded = _recorded_data(run.path / "meta.json") or {}
    changed = _changed_data(recorded, config)
    if not changed:
        return
    field = changed[0]
    dotted = field if "." in field else f"data.{field}"
    path = _setting(config.model_dump(mode="json"), dotted)
    state = "has changed" if Path(path).is_file() else "is gone"
    raise RunDirError(
        f"this file {state} since the run started (its SHA-256 then began {recorded[field][:12]})"
        + (f"; {len(changed) - 1} more file(s) too" if len(changed) > 1 else ""),
        file=path, field=dotted,
        fix="put the file back as it was to resume, or start a new run (another --name, or --overwrite)",
    )


def _setting(settings: dict[str, Any], dotted: str) -> Any:
    """Returns the value at a dotted field of a config as plain data (list items by index)."""
    value: Any = settings
    for part in dotted.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _same_config(saved: Path, config: RetainConfig) -> bool:
    """True when the config saved at ``saved`` means ``config``: read as a config, so that
    settings added to retain since take their defaults; False when it no longer validates."""
    dumped = dump_config(config)
    if saved.read_bytes() == dumped.encode():
        return True
    try:
        return dump_config(load_config(saved)) == dumped
    except RetainError:
        return False


def _check_same_config(run: RunDir, config: RetainConfig) -> RetainConfig:
    """Resuming, the run's own config wins; a different one given now is an error (a
    setting added to retain since the run started takes its default, see
    :func:`_same_config`)."""
    if not run.config_path.is_file():
        raise RetainError(f"{run.path} has no config.yaml, so it cannot be resumed",
                          fix="start a new run (drop --resume)")
    if not _same_config(run.config_path, config):
        raise ConfigError(
            "the config differs from the one the run started with", file=run.config_path,
            fix="resume with the same config and --set options, or start a new run with another --name",
        )
    return config


