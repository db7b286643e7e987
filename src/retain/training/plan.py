"""A run's data and step counts: the encoded rows (the methods' blended rows in), or under
``train.objective: dpo`` the encoded preference pairs, the validation rows the guards
read, the steps per epoch, the total and the check interval, and the
``TrainingArguments`` that carry them to the trainer."""


from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainingArguments

from retain.audit.contamination import contamination_by_source
from retain.config import RetainConfig
from retain.data.encoding import (
    Encoded,
    encode_examples,
)
from retain.data.pairs import EncodedPair, encode_pairs
from retain.data.prompting import PromptFormat
from retain.data.rows import Example, load_examples_for
from retain.errors import ConfigError, TrainRefused
from retain.evaluation.preference import is_preference_set
from retain.hardware import resolve_precision
from retain.paths import process_count
from retain.rundir import RunDir
from retain.training.sampling import TASK

logger = logging.getLogger("retain.train")


VALIDATION_LIMIT = 200  # validation rows whose answers are generated at each check


class TrainingRows(torch.utils.data.Dataset):
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


@dataclass
class Plan:
    """The encoded data and the step counts of a run.

    Attributes:
        train_rows: The SFT rows (``train.objective: sft``), blended rows included.
        train_pairs: The preference pairs (``train.objective: dpo``) that kept both answers.
        validation: The validation rows as read.
        validation_rows: The validation rows encoded for the SFT loss (empty for pairs).
        validation_pairs: The validation pairs, when ``data.validation`` holds pairs.
    """

    train_rows: list[Encoded]
    validation: list[Example]
    validation_rows: list[Encoded]
    steps_per_epoch: int
    total_steps: int
    interval: int
    task_prompts: list[Example]
    train_pairs: list[EncodedPair] = dataclasses.field(default_factory=list)
    validation_pairs: list[EncodedPair] = dataclasses.field(default_factory=list)

    @property
    def rows(self) -> int:
        """Training rows (or pairs) per epoch."""
        return len(self.train_pairs) if self.train_pairs else len(self.train_rows)

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens one epoch computes (a pair: the prompt with each answer)."""
        if self.train_pairs:
            return sum(2 * len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
                       for pair in self.train_pairs)
        return sum(len(row.input_ids) for row in self.train_rows)

    @classmethod
    def of(cls, config: RetainConfig, tokenizer, prompt_format: PromptFormat,
           transform: Callable[[list[Encoded]], list[Encoded]]) -> Plan:
        train = load_examples_for(config.data, config.data.train)[: config.data.size]  # size None: all
        train_rows: list[Encoded] = []
        train_pairs: list[EncodedPair] = []
        if config.train.objective == "dpo":
            train_pairs = encode_pair_split(config, train, config.data.train, tokenizer, prompt_format)
        else:
            # The methods may blend rows in (replay) or mark tokens (token-level forgetting).
            train_rows = transform(encode_split(config, train, config.data.train, tokenizer, prompt_format))
        validation = load_examples_for(config.data, config.data.validation) if config.data.validation else []
        pairs = is_preference_set(validation)
        validation_rows = (encode_split(config, validation, config.data.validation, tokenizer, prompt_format)
                           if validation and not pairs else [])
        validation_pairs = (encode_pair_split(config, validation[:VALIDATION_LIMIT], config.data.validation,
                                              tokenizer, prompt_format) if pairs else [])
        settings = config.train
        processes = process_count()  # `accelerate launch` splits each batch
        rows = len(train_pairs) if train_pairs else len(train_rows)
        steps_per_epoch = max(1, math.ceil(rows / (settings.batch_size * settings.grad_accum * processes)))
        total_steps = settings.max_steps or max(1, math.ceil(steps_per_epoch * settings.epochs))
        interval = config.guards.interval(steps_per_epoch)
        # Smoke-test task prompts: held-out rows if there are any, else training rows.
        count = config.guards.smoke.task_prompts
        task_prompts = (validation or train)[:count]
        return cls(train_rows, validation, validation_rows, steps_per_epoch, total_steps, interval,
                   task_prompts, train_pairs, validation_pairs)


def encode_pair_split(config: RetainConfig, examples: list[Example], path: str, tokenizer,
                      prompt_format: PromptFormat) -> list[EncodedPair]:
    """Encodes the preference rows of a data file for DPO; pairs that truncation leaves
    without an answer are dropped (logged).

    Raises:
        TrainRefused: If no pair keeps both answers.
    """
    pairs, rejected = encode_pairs(examples, tokenizer, prompt_format, max_length=config.data.max_length)
    kept = [pair for pair in pairs if pair.trainable]
    if rejected or len(kept) < len(pairs):
        logger.warning("%s: %d pairs dropped (%d the chat template rejects, %d whose prompt fills "
                       "data.max_length)", path, len(rejected) + len(pairs) - len(kept), len(rejected),
                       len(pairs) - len(kept))
    if not kept:
        raise TrainRefused(f"no pair of {path} keeps an answer within data.max_length", file=path,
                           fix="run retain doctor on this config: raise data.max_length or shorten the prompts")
    return kept


def encode_split(config: RetainConfig, examples: list[Example], path: str, tokenizer,
            prompt_format: PromptFormat) -> list[Encoded]:
    """Encodes the rows of a data file for training; rows with no supervised token are
    dropped (logged)."""
    rows, rejected = encode_examples(examples, tokenizer, prompt_format, max_length=config.data.max_length,
                                     loss_on=config.train.loss_on, train_turns=config.data.train_turns)
    kept = [row for row in rows if row.supervised > 0]
    if rejected or len(kept) < len(rows):
        logger.warning("%s: %d rows dropped (%d the chat template rejects, %d with no supervised token)",
                       path, len(rejected) + len(rows) - len(kept), len(rejected), len(rows) - len(kept))
    if not kept:
        raise TrainRefused(f"no row of {path} has a supervised token", file=path,
                           fix="run retain doctor on this config: answers are probably truncated away")
    return kept


def check_blended_rows(rows: list[Encoded], suites: list, config: RetainConfig,
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
    findings, items = contamination_by_source(texts, suites, config.audit.near_duplicate_threshold)
    for source, blended in texts.items():
        echo(f"warning: {findings[source].title}; forgetting is reported on them apart" if source in findings
             else f"{source}: no probe item in the {len(blended):,} rows it blended in")
    return {"rows": {source: len(blended) for source, blended in texts.items()}, "items": items}


# TrainingArguments that retain sets from its own settings, or needs as it sets them:
# train.trainer_args refuses them, saying what to set instead.
OWNED_TRAINER_ARGS = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "warmup_steps": "train.warmup_ratio", "lr_scheduler_type": "train.lr_scheduler",
    "max_grad_norm": "train.max_grad_norm", "weight_decay": "train.weight_decay", "bf16": "train.precision",
    "fp16": "train.precision", "seed": "train.seed", "data_seed": "train.seed", "save_steps": "train.save_every",
    "save_total_limit": "train.save_total_limit", "report_to": "train.report_to",
    "train_sampling_strategy": "train.group_by_length", "use_cpu": "model.device",
    "output_dir": "output.dir and the run's name (retain train --name)",
    "save_strategy": "train.save_every (checkpoints are saved at the guard checks)",
    "logging_steps": "nothing: the loss guard reads every step's loss",
    "logging_nan_inf_filter": "nothing: the loss guard must see a NaN or infinite loss",
    "remove_unused_columns": "nothing: retain's collator reads columns transformers would drop",
    "disable_tqdm": "nothing: retain shows its own progress",
    "eval_strategy": "guards.every_steps (the guards run the checks)",
    "load_best_model_at_end": "guards.forgetting.action (the forgetting guard restores the best checkpoint)",
    "metric_for_best_model": "guards.forgetting (the forgetting guard chooses the checkpoint kept)",
    "resume_from_checkpoint": "retain train --resume",
}


def check_trainer_args(config: RetainConfig) -> None:
    """Refuses a ``train.trainer_args`` entry that is not a ``TrainingArguments`` setting
    (naming the nearest) or that retain sets itself (naming the setting to use).

    Raises:
        ConfigError: On the first such entry.
    """
    known = [field.name for field in dataclasses.fields(TrainingArguments) if field.init]
    for name in config.train.trainer_args:
        where = f"train.trainer_args.{name}"
        if name in OWNED_TRAINER_ARGS:
            raise ConfigError(f"retain sets '{name}' itself", field=where,
                              fix=f"remove it from train.trainer_args; set {OWNED_TRAINER_ARGS[name]}")
        if name not in known:
            nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            raise ConfigError(f"'{name}' is not a setting of transformers' TrainingArguments", field=where,
                              fix=(f"did you mean '{nearest[0]}'? " if nearest else "")
                              + "see the TrainingArguments reference of transformers")


def training_args(config: RetainConfig, run: RunDir, plan: Plan,
                  build: Callable[[dict[str, Any]], TrainingArguments] = lambda values: TrainingArguments(**values)
                  ) -> TrainingArguments:
    """The ``TrainingArguments`` of a run: retain's settings, then ``train.trainer_args``.

    Args:
        build: Makes the arguments from their values: ``TrainingArguments`` itself, or
            TRL's ``DPOConfig`` with DPO's settings added
            (:func:`retain.training.preference.dpo_config`).

    Raises:
        ConfigError: If ``train.trainer_args`` names a setting it may not, or transformers
            refuses one of its values.
    """
    check_trainer_args(config)
    try:
        return build(_argument_values(config, run, plan))
    except (ValueError, TypeError) as error:  # transformers' own checks of a passed-through value
        if not config.train.trainer_args:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"transformers refused the training arguments: {first}", field="train.trainer_args",
                          fix="correct or remove the value in train.trainer_args") from None


def _argument_values(config: RetainConfig, run: RunDir, plan: Plan) -> dict[str, Any]:
    train = config.train
    interval, total_steps = plan.interval, plan.total_steps
    device = config.model.device
    precision = resolve_precision(train.precision, None if device == "auto" else device)
    return dict(
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
        **train.trainer_args,
    )
