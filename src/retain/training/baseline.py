"""The base model measured once per run (or read back): probes, task, smoke prompts,
reference text, and the validation figures of the check of step 0, cached per base model
and settings so that several runs on one base measure it once."""


from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from retain.config import RetainConfig
from retain.data.rows import Example
from retain.evaluation.base_logprobs import compute_base_logprobs
from retain.evaluation.calibration import (
    CALIBRATION_FILE,
    calibrate_suites,
    calibrated_result,
    measurable,
    read_calibrations,
)
from retain.evaluation.commands import (
    base_cache_file,
    cached_base_logprobs,
    calibration_cache,
    probe_cache,
)
from retain.evaluation.engine import (
    evaluate,
)
from retain.guards.measure import Baseline, Probe
from retain.io import read_cached_json, write_cached_json
from retain.models import LoadedModel
from retain.rundir import RunDir
from retain.training.finish import (
    overall_accuracy,
)

logger = logging.getLogger("retain.train")


def measure_base(config: RetainConfig, run: RunDir, loaded: LoadedModel, probe: Probe,
              task: list[Example] | None, ood: list[Example] | None, *, resume: bool,
              echo: Callable[[str], None] = lambda line: None) -> tuple[dict[str, Any], Baseline]:
    """Measures (or, resuming, reads) the base model; returns its result and baseline numbers.

    Under ``probes.calibrate`` the probe suites become the base's known items
    (``probe.suites`` is replaced), the result is cut to them, and ``calibration.json``
    records the calibration, which a resumed run reads back."""
    path = run.path / "base_eval.json"
    cached = _base_eval_cache(config, probe, task, ood)
    stored = read_cached_json(cached)
    if resume and path.is_file():
        result = json.loads(path.read_text())
    elif stored is not None:
        result = stored
        logger.info("base model evaluation reused from %s", cached)
        run.write_json(path.name, result)
    else:
        # The probes as `retain eval` scored them on this base, when it did.
        probes = read_cached_json(probe_cache(config, config.model.name_or_path, probe.suites, probe.settings))
        if probes is not None:
            logger.info("base model probe scores reused from retain eval's cache")
        # The task too, held-out and OOD: the "before" of task accuracy, and what the
        # verdict checks that training improved on.
        result = evaluate(loaded.model, loaded.tokenizer, name=config.model.name_or_path,
                          chat_template=config.model.chat_template, suites=() if probes else probe.suites,
                          task=task, ood=ood,
                          reference=probe.reference, settings=probe.settings).to_dict()
        if probes is not None:
            result["probes"] = probes
        run.write_json(path.name, result)
        write_cached_json(cached, result)
    if config.probes.calibrate:
        result = _calibrated(config, run, loaded, probe, result, echo)
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
        check_perplexity=probe.check_perplexity(loaded.model, logprobs),
    )


def _calibrated(config: RetainConfig, run: RunDir, loaded: LoadedModel, probe: Probe, result: dict[str, Any],
                echo: Callable[[str], None]) -> dict[str, Any]:
    """Calibrates the probes to the base (or reads the run's calibration back); returns the
    base result cut to the known items."""
    path = run.path / CALIBRATION_FILE
    calibrations = None
    if path.is_file():
        try:
            calibrations = read_calibrations(path, list(probe.suites))
        except ValueError as error:
            logger.warning("%s is not this run's calibration (%s): calibrating again", path, error)
        if calibrations is not None and len(calibrations) != len(probe.suites):
            calibrations = None
    if calibrations is None:
        calibrations = calibrate_suites(loaded.model, loaded.tokenizer, list(probe.suites), result,
                                        chat_template=config.model.chat_template, settings=probe.settings,
                                        min_items=config.probes.calibrate_min_items,
                                        limit=config.probes.per_category,
                                        cache=calibration_cache(config, config.model.name_or_path,
                                                                list(probe.suites), probe.settings))
        run.write_json(CALIBRATION_FILE, [calibration.to_dict() for calibration in calibrations])
    for calibration in calibrations:
        echo(calibration.summary())
    probe.suites = measurable(calibrations)
    result = calibrated_result(result, calibrations)
    run.write_json("base_eval.json", result)
    return result


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
    return base_cache_file(config, config.model.name_or_path, "", {
        "suites": [asdict(suite) for suite in probe.suites],
        "task": [vars(example) for example in task or []],
        "ood": [vars(example) for example in ood or []],
        "reference": probe.reference,
        "settings": asdict(probe.settings),
    })


def _start_validation(config: RetainConfig, loaded: LoadedModel, probe: Probe) -> tuple[float | None, float | None]:
    """Returns the base model's validation loss and task accuracy, cached per base model and
    validation rows: the figures of the check of step 0, since the starting model computes
    as the base (see :meth:`GuardCallback.on_train_begin`)."""
    if not probe.validation and not probe.validation_encoded:
        return None, None
    cached = base_cache_file(config, config.model.name_or_path, "-validation", {
        "validation": [vars(example) for example in probe.validation],
        "encoded": [row.feature() for row in probe.validation_encoded],
        "collator": config.train.collator,
        "settings": asdict(probe.settings),
    })
    stored = read_cached_json(cached)
    if stored is not None:
        try:
            return stored["val_loss"], stored["task_accuracy"]
        except KeyError as error:
            logger.warning("ignoring unusable cached validation figures %s: %s", cached, error)
    figures = probe.validation_loss(loaded.model), probe.task_accuracy(loaded.model)
    write_cached_json(cached, {"val_loss": figures[0], "task_accuracy": figures[1]})
    return figures
