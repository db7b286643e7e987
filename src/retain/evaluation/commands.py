"""What ``retain eval`` and ``retain baseline`` do, as library calls the CLI only prints.

``retain eval`` measures one model and, when it knows the base, what the model forgot:
for a PEFT adapter the base is the same weights with the adapters switched off (no second
copy in memory); for a full model it is ``--base`` (evaluated first, then freed) or a
previous ``retain eval --json`` result (``--compare-to``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import retain
from retain.config import RetainConfig
from retain.data.prompting import PromptFormat
from retain.data.rows import Example, load_examples_for, read_text
from retain.errors import ConfigError, DataError, RetainError
from retain.evaluation.base_logprobs import BaseLogprobs, compute_base_logprobs
from retain.evaluation.baseline import BaselineResult, run_baseline
from retain.evaluation.calibration import (
    CALIBRATION_FILE,
    PARAPHRASES,
    Calibration,
    cached_calibrations,
    calibrate_suites,
    calibrated_result,
    measurable,
    read_calibrations,
)
from retain.evaluation.engine import (
    EvalResult,
    EvalSettings,
    default_reference_text,
    evaluate,
    forgetting,
)
from retain.evaluation.forgetting import ForgettingReport
from retain.evaluation.probes import ProbeSuite
from retain.evaluation.suites import GENERAL_SUITE, load_suite
from retain.io import read_cached_json, write_cached_json
from retain.models import LoadedModel, load_model, resolve_model_path
from retain.paths import cache_dir
from retain.progress import bars_when_asked
from retain.sources import family_of, model_family

logger = logging.getLogger("retain.evaluation")


@dataclass
class EvalOutcome:
    """What ``retain eval`` found.

    Attributes:
        result: The model's evaluation.
        base: The base model's evaluation, when a base was known.
        forgetting: ``{suite: {method: ForgettingReport}}`` of base versus model.
        base_source: What the base was (``adapters disabled``, a path, a JSON file).
        calibrations: The probes calibrated to the base (or, with no base, to the model):
            the known items measured, the categories not measurable.
    """

    result: EvalResult
    base: EvalResult | dict | None = None
    forgetting: dict[str, dict[str, ForgettingReport]] = field(default_factory=dict)
    base_source: str | None = None
    calibrations: list[Calibration] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Returns JSON-ready data: the model's result, the base's and the forgetting."""
        base = self.base.to_dict() if isinstance(self.base, EvalResult) else self.base
        return {
            **self.result.to_dict(),
            "base": {"source": self.base_source, "result": base} if base is not None else None,
            "forgetting": {
                suite: {method: report.to_dict() for method, report in methods.items()}
                for suite, methods in self.forgetting.items()
            },
            "calibration": [calibration.to_dict() for calibration in self.calibrations] or None,
        }


def default_suites(model_name: str) -> list[str]:
    """Returns the probe suites for a model when none are named: its family's (for a
    model of a registered family, and anything trained from one: :mod:`retain.sources`),
    else ``general``."""
    family = family_of(model_name)
    return list(family.suites) if family is not None and family.suites else [GENERAL_SUITE]


def config_suites(config: RetainConfig, names: list[str] | None = None, whole: bool = False) -> list[ProbeSuite]:
    """Returns the probe suites a command measures: ``names``, else the config's, else the
    model's default ones, each cut to ``probes.per_category`` items per category (whole
    under ``probes.calibrate``: the cut then keeps known items, see ``calibration``)."""
    names = names or config.probes.suites or default_suites(config.model.name_or_path)
    limit = None if whole or config.probes.calibrate else config.probes.per_category
    return [load_suite(name).first_per_category(limit) for name in names]


def settings_from(config: RetainConfig, smoke: bool = True) -> EvalSettings:
    """Returns the evaluation settings of a config."""
    return EvalSettings(
        methods=tuple(config.probes.methods),
        perturbations=tuple(config.eval.perturbations),
        perturb_limit=config.eval.perturb_limit,
        smoke_prompts=tuple(config.guards.smoke.prompts) if smoke else (),
        probe_max_new_tokens=config.probes.max_new_tokens,
        task_max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
        generation_batch_size=config.eval.generation_batch_size,
    )


def read_task(config: RetainConfig, path: str | None) -> list[Example] | None:
    """Reads task examples with the config's format and field names; None without a path."""
    return load_examples_for(config.data, path) if path else None


@bars_when_asked
def run_eval(
    config: RetainConfig,
    model_name: str,
    *,
    suites: list[str] | None = None,
    task: str | None = None,
    ood: str | None = None,
    reference: str | None = None,
    drift: bool = True,
    base: str | None = None,
    compare_to: Path | None = None,
    calibrate: bool = False,
    progress: bool = True,
) -> EvalOutcome:
    """Evaluates ``model_name`` and, when a base is known, what it forgot.

    With ``calibrate`` (or ``probes.calibrate``) the probes are first calibrated to the
    base (``retain.evaluation.calibration``), or to the model itself when no base is known,
    and a run directory's own calibration (``calibration.json``) is used as it is.

    Raises:
        RetainError: For anything the user named that cannot be read or loaded.
    """
    calibrating = calibrate or config.probes.calibrate
    probe_suites = config_suites(config, suites or config.probes.suites or default_suites(base or model_name),
                                 whole=calibrating)
    examples = read_task(config, task or config.data.eval)
    ood_examples = read_task(config, ood or config.data.ood)
    settings = settings_from(config)
    reference_text = _reference(reference or config.eval.reference, probe_suites) if drift else None
    calibrations = _run_calibration(model_name, probe_suites) if calibrating else []
    if calibrating and not calibrations and compare_to is not None:
        raise ConfigError("calibrating needs the base model itself, not its earlier result", file="--compare-to",
                          fix="give the base with --base instead, or leave out --calibrate")
    if calibrations:
        probe_suites = measurable(calibrations)
    previous = _read_previous(compare_to) if compare_to else None
    base_result: EvalResult | dict | None = calibrated_result(previous, calibrations) if previous and calibrations \
        else previous
    base_source = str(compare_to) if compare_to else None
    base_logprobs = None

    def measure_base(loaded_base: LoadedModel | None, name: str, measured: dict | None = None) -> dict:
        """Measures the base (or takes its ``measured`` result) and calibrates to it (or
        takes the calibration already known)."""
        nonlocal base_result, probe_suites, calibrations
        measured = measured or _evaluate(loaded_base, config, probe_suites, None, None, None, settings,
                                         "base").to_dict()
        base_result = measured
        if calibrating:
            calibrations = calibrations or _calibrate(loaded_base, config, name, probe_suites, measured, settings)
            probe_suites = measurable(calibrations)
            base_result = calibrated_result(measured, calibrations)
        return measured

    # A base named by --base is measured once per (weights, suites, settings): comparing
    # several checkpoints to one base measures it once, and loads it only when something
    # is missing (its calibration needs it; so do log-probabilities not yet cached).
    stored = None
    if base is not None:
        base_source = base
        cache = base_cache_file(config, base, "-eval", {"suites": [asdict(suite) for suite in probe_suites],
                                                        "settings": asdict(settings)})
        stored = read_cached_json(cache)
        if stored is not None:
            logger.info("base model evaluation reused from %s", cache)
        if calibrating and not calibrations:
            calibrations = _cached_calibrations(config, base, probe_suites, settings) or []
        if stored is None or (calibrating and not calibrations) or \
                (reference_text and not _logprobs_file(base, reference_text).is_file()):
            loaded_base = _load(config, base, progress)
            write_cached_json(cache, measure_base(loaded_base, base, stored))
            if reference_text:
                base_logprobs = cached_base_logprobs(loaded_base, base, reference_text)
            del loaded_base
            gc.collect()
            stored = None
        else:
            measure_base(None, base, stored)  # nothing to load: calibration and logprobs cached too
    loaded = _load(config, model_name, progress)
    if stored is not None and reference_text:
        # Checked against this model's tokenizer: KL compares the two on the same tokens.
        base_logprobs = _read_logprobs(_logprobs_file(base, reference_text), reference_text, loaded.tokenizer)
        if base_logprobs is None:  # damaged, or of another tokenizer: the base computes them, as before
            loaded_base = _load(config, base, progress)
            base_logprobs = cached_base_logprobs(loaded_base, base, reference_text)
            del loaded_base
            gc.collect()
    if loaded.is_adapter and base is None and previous is None:
        with loaded.model.disable_adapter():
            measure_base(loaded, loaded.base)
            if reference_text:
                base_logprobs = cached_base_logprobs(loaded, loaded.base, reference_text)
        base_source = f"{loaded.base} (adapters disabled)"
    result = evaluate(
        loaded.model, loaded.tokenizer, name=model_name, chat_template=config.model.chat_template,
        suites=probe_suites, task=examples, ood=ood_examples, reference=reference_text,
        base_logprobs=base_logprobs, settings=settings,
    )
    if not loaded.is_adapter:  # a training on this model as its base reads them back
        write_cached_json(probe_cache(config, model_name, probe_suites, settings), result.to_dict()["probes"])
    if calibrating and not calibrations:  # no base: what this model itself knows
        calibrations = _calibrate(loaded, config, model_name, probe_suites, result.to_dict(), settings)
    outcome = EvalOutcome(result=result, base=base_result, base_source=base_source, calibrations=calibrations)
    if base_result is not None:
        outcome.forgetting = _forgetting(base_result, result)
    return outcome


def _calibrate(loaded: LoadedModel, config: RetainConfig, name: str, suites: list[ProbeSuite], result: dict,
               settings: EvalSettings) -> list[Calibration]:
    """Calibrates ``suites`` to the model ``name`` (loaded), its paraphrase pass cached."""
    return calibrate_suites(loaded.model, loaded.tokenizer, suites, result, chat_template=config.model.chat_template,
                            settings=settings, min_items=config.probes.calibrate_min_items,
                            limit=config.probes.per_category,
                            cache=calibration_cache(config, name, suites, settings))


def _cached_calibrations(config: RetainConfig, name: str, suites: list[ProbeSuite],
                         settings: EvalSettings) -> list[Calibration] | None:
    return cached_calibrations(calibration_cache(config, name, suites, settings), suites,
                               config.probes.calibrate_min_items, config.probes.per_category)


def calibration_cache(config: RetainConfig, name: str, suites: list[ProbeSuite], settings: EvalSettings) -> Path | None:
    """Where the items model ``name`` answers right, also paraphrased, are cached per
    suites and settings (:func:`retain.evaluation.calibration.calibrate_suites`); None
    for a model with no stable identity (a hub id)."""
    # Only the settings the probe answers depend on: a training (whose smoke prompts hold its
    # task's rows) and `retain eval` then share one calibration of the same base.
    answers = {"probe_max_new_tokens": settings.probe_max_new_tokens,
               "generation_batch_size": settings.generation_batch_size}
    return base_cache_file(config, name, "-calibration", {
        "suites": [asdict(suite) for suite in suites], "settings": answers, "paraphrases": PARAPHRASES,
    })


def probe_cache(config: RetainConfig, name: str, suites: Sequence[ProbeSuite], settings: EvalSettings) -> Path | None:
    """Where model ``name``'s probe scores are cached per suites and the settings they
    depend on: ``retain eval`` writes them, and a training on that model as its base reads
    them instead of scoring the probes again (``retain lab --model``'s base step spares
    the first training its probe pass). None for a model with no stable identity."""
    depends = {"methods": list(settings.methods), "probe_max_new_tokens": settings.probe_max_new_tokens,
               "generation_batch_size": settings.generation_batch_size, "batch_size": settings.batch_size}
    return base_cache_file(config, name, "-probes", {"suites": [asdict(suite) for suite in suites],
                                                      "settings": depends})


def _run_calibration(model_name: str, suites: list[ProbeSuite]) -> list[Calibration]:
    """The calibration a run directory (``model_name``, or the run holding it) was trained
    with, for the same suites; empty for anything else."""
    path = Path(model_name)
    for folder in (path, path.parent):
        calibration = folder / CALIBRATION_FILE
        if calibration.is_file() and (folder / "meta.json").is_file():
            try:
                return read_calibrations(calibration, suites)
            except ValueError as error:
                raise DataError(f"{error}", file=calibration,
                                fix="evaluate without --calibrate, or retrain the run") from None
    return []


def _load(config: RetainConfig, name: str, progress: bool) -> LoadedModel:
    model = config.model
    return load_model(
        name, device=model.device, dtype=model.dtype, revision=model.revision,
        trust_remote_code=model.trust_remote_code, progress=progress,
    )


def _evaluate(
    loaded: LoadedModel,
    config: RetainConfig,
    suites: list[ProbeSuite],
    task: list[Example] | None,
    ood: list[Example] | None,
    reference: str | None,
    settings: EvalSettings,
    name: str,
) -> EvalResult:
    return evaluate(
        loaded.model, loaded.tokenizer, name=name, chat_template=config.model.chat_template,
        suites=suites, task=task, ood=ood, reference=reference, settings=settings,
    )


def _forgetting(before: EvalResult | dict, after: EvalResult) -> dict[str, dict[str, ForgettingReport]]:
    try:
        return forgetting(before, after)
    except ValueError as error:
        raise RetainError(
            f"cannot compare with the base: {error}",
            fix="compare results of the same probe suites and versions",
        ) from None


def _reference(path: str | None, suites: list[ProbeSuite]) -> str:
    if path is None:
        return default_reference_text(suites)
    return read_text(path, "a reference text (eval.reference)")


def _read_previous(path: Path) -> dict:
    text = read_text(path, "the JSON written by retain eval --json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg})", file=path, line=error.lineno,
                        fix="give the JSON written by retain eval --json") from None
    if not isinstance(data, dict) or "probes" not in data:
        raise DataError("not a retain eval result (no 'probes')", file=path, field="probes",
                        fix="give the JSON written by retain eval --json")
    return data


def cached_base_logprobs(loaded: LoadedModel, base_name: str, text: str) -> BaseLogprobs:
    """Returns the base's log-probabilities on ``text``, computed once per base and text."""
    path = _logprobs_file(base_name, text)
    stored = _read_logprobs(path, text, loaded.tokenizer)
    if stored is not None:
        return stored
    base = compute_base_logprobs(loaded.model, loaded.tokenizer, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    base.save(path)
    return base


def _logprobs_file(base_name: str, text: str) -> Path:
    key = hashlib.sha256(f"{model_identity(base_name)}\n{text}".encode()).hexdigest()[:16]
    return cache_dir() / "drift" / f"base-{key}.safetensors"


def _read_logprobs(path: Path, text: str, tokenizer) -> BaseLogprobs | None:
    """Cached base log-probabilities, checked against ``text`` as ``tokenizer`` splits it."""
    if not path.is_file():
        return None
    try:
        return BaseLogprobs.load(path, text, tokenizer)
    except (ValueError, OSError) as error:
        logger.warning("ignoring unusable cached base log-probabilities %s: %s", path, error)
        return None


def model_identity(name: str) -> str:
    """Returns a string that changes when the named model's weights change (a registered
    name: its model's directory, which changes with the provider's version; a run
    directory: its model's)."""
    path = resolve_model_path(name, progress=False)
    if not path.is_dir():
        return name
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    stamps = [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
    return f"{path.resolve()}|{'|'.join(stamps)}"


def base_cache_file(config: RetainConfig, name: str, kind: str, key: dict[str, Any]) -> Path | None:
    """Returns the cache file of one measurement of the base model ``name``, keyed by
    ``key`` with the model's identity (weights' path, sizes and modification times), the
    config's model settings (template, device, dtype) and the versions of retain and
    torch; None when the model is neither a registered name nor a local directory (a hub
    id's weights can change under its name)."""
    if model_family(name) is None and not Path(name).is_dir():
        return None
    key = key | {
        "model": model_identity(name),
        # Not the pad token: padding is masked, so which token pads changes no score (the
        # trap of `retain lab`, pad = EOS, then shares its base's measurements).
        "model_settings": config.model.model_dump(mode="json", exclude={"name_or_path", "pad_token"}),
        "versions": [retain.__version__, torch.__version__],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "base-eval" / f"{digest}{kind}.json"


@bars_when_asked
def run_baseline_command(config: RetainConfig, progress: bool = True) -> BaselineResult:
    """Runs ``retain baseline``: few-shot accuracy of ``model`` on ``data.eval``.

    Raises:
        RetainError: When the config names no eval data, or data cannot be read.
    """
    if not config.data.eval:
        raise RetainError("no evaluation data to measure the baseline on", field="data.eval",
                          fix="set data.eval to a held-out file of the task (--set data.eval=PATH)")
    if any(k > 0 for k in config.eval.shots) and not config.data.train:
        raise RetainError("few-shot prompts take their examples from the training data",
                          field="data.train", fix="set data.train, or use eval.shots=[0]")
    examples = read_task(config, config.data.eval) or []
    train = read_task(config, config.data.train) or []
    loaded = _load(config, config.model.name_or_path, progress)
    prompt_format = PromptFormat.for_tokenizer(loaded.tokenizer, config.model.chat_template)
    return run_baseline(
        loaded.model, loaded.tokenizer, train, examples, prompt_format,
        shots=config.eval.shots, target=config.eval.target, margin=config.eval.margin,
        seed=config.train.seed, max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size, generation_batch_size=config.eval.generation_batch_size,
    )
