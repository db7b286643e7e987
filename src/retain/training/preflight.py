"""Before anything trains: every input read, the audit and the doctor run, and their
blockers refused unless ``--force``."""


from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence

from retain.audit.doctor import run_doctor
from retain.audit.runner import run_audit
from retain.config import RetainConfig
from retain.data.pairs import check_rows_fit
from retain.data.rows import describe_schemas, load_examples_for
from retain.errors import ConfigError, TrainRefused
from retain.evaluation.commands import (
    default_suites,
)
from retain.evaluation.suites import load_suite
from retain.io import decode_json
from retain.memory import check_training_memory, count_parameters
from retain.methods import Method, methods_for
from retain.models import load_model_parts
from retain.rundir import RunDir

logger = logging.getLogger("retain.train")


def check_inputs(config: RetainConfig, *, memory: bool = True, merge: bool = False) -> None:
    """Reads every data file and probe suite the config names, checks the memory the run
    needs (unless ``memory`` is False: --force) and loads the model's tokenizer and config,
    before anything is written, so a missing, unreadable, damaged or too large one is
    refused with no run directory left behind."""
    for setting, path in data_sources(config):
        examples = load_examples_for(config.data, path, setting)
        if setting in ("data.train", "data.validation"):  # eval and ood may hold pairs under either objective
            check_rows_fit(examples, config.train.objective, path, setting)
    check_objective(config, methods_for(config))
    for name in config.probes.suites or default_suites(config.model.name_or_path):
        load_suite(name)
    # The memory the run needs (``memory``: not under --force), from the weight headers, then
    # the model's tokenizer and config (not its weights): a model that cannot fit or cannot
    # load fails here, before its run directory exists.
    model = config.model
    if memory:
        check_training_memory(config, merge=merge)
    else:
        count_parameters(model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code)
    load_model_parts(model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code,
                     progress=False)


def check_objective(config: RetainConfig, methods: Sequence[Method]) -> None:
    """Refuses, under ``train.objective: dpo``, a missing TRL and the methods DPO cannot run:
    those that change the training rows (they blend or mark SFT rows: replay,
    self_augment, token_forget) and those whose loss reads the model's logits (DPO's loss
    computes no logits for them).

    Raises:
        ConfigError: Naming TRL or the first such method, in one line.
    """
    if config.train.objective != "dpo":
        return
    if importlib.util.find_spec("trl") is None:
        raise ConfigError("train.objective dpo trains with TRL's DPOTrainer, and TRL is not installed",
                          field="train.objective", fix="pip install 'trl>=1.16,<2' (Python 3.11 or later), or "
                          "set train.objective: sft")
    for method in methods:
        changes_rows = type(method).transform_rows is not Method.transform_rows
        if changes_rows or method.needs_every_logit():
            what = ("changes the training rows (it blends in or marks SFT rows)" if changes_rows
                    else "reads the logits of the SFT loss")
            raise ConfigError(
                f"method {method.name} does not combine with train.objective: dpo: it {what}",
                field="method.use",
                fix=f"remove {method.name} from method.use (with dpo: full, lora, qlora, freeze, llrd, ewc, "
                "l2sp, fapm), or set train.objective: sft",
            )


def data_sources(config: RetainConfig) -> list[tuple[str, str]]:
    """Returns the data the config names, as (setting, path) pairs: ``data.train`` first."""
    data = config.data
    named = (("data.train", data.train), ("data.validation", data.validation), ("data.eval", data.eval),
             ("data.ood", data.ood))
    return [(setting, path) for setting, path in named if path]


def preflight(config: RetainConfig, run: RunDir, suites: list, *, force: bool,
               echo: Callable[[str], None]) -> None:
    """Says how each data file was read (``data.train: 1,000 rows, Alpaca format
    (instruction/input/output)``), runs the audit and the doctor, and refuses their
    blockers unless ``force``."""
    for setting, path in data_sources(config):
        examples = load_examples_for(config.data, path, setting)
        echo(f"{setting}: {len(examples):,} rows, {describe_schemas(examples)}")
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


def doctor_passed(run: RunDir) -> bool:
    """Returns whether the run's doctor found no blocker (its ``doctor.json``): the labels,
    EOS and masking of the training batches are right. False when it did, or cannot say."""
    try:
        report = decode_json(run.path.joinpath("doctor.json").read_text(encoding="utf-8"))
        return not any(finding.get("severity") == "blocker" for finding in report["findings"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
