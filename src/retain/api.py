"""retain's commands as Python functions, each returning the typed result the command
prints: ``retain.audit``, ``retain.doctor``, ``retain.evaluate`` and ``retain.train``
(docs/API.md).

Each takes a config as a YAML path, a :class:`~retain.config.RetainConfig`, a mapping of
its sections, or None for the defaults, plus ``overrides`` in ``--set`` form. What a user
can get wrong raises a :class:`~retain.errors.RetainError` (``ConfigError``,
``DataError``, ``ModelLoadError``, ``TrainRefused``, ...); nothing here exits the process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from retain.audit.doctor import DoctorReport, run_doctor

# retain.audit's function lives in its package (retain.audit is callable); re-exported here.
from retain.audit.runner import audit
from retain.config.loading import ConfigSource, resolve_config
from retain.evaluation.commands import EvalOutcome, run_eval
from retain.training.run import TrainOutcome, run_train

__all__ = ["audit", "doctor", "evaluate", "train"]


def doctor(config: ConfigSource, *, overrides: Sequence[str] = ()) -> DoctorReport:
    """Checks the training pipeline a config builds on every training row (``retain doctor``).

    Returns:
        The report; ``report.count("blocker")`` says whether to train.

    Raises:
        ConfigError: ``data.train`` unset, or an invalid config.
        DataError: Training data that cannot be read.
        ModelLoadError: A model that cannot be found.
    """
    return run_doctor(resolve_config(config, overrides))


def evaluate(model: str | Path, config: ConfigSource = None, *, base: str | Path | None = None,
             compare_to: str | Path | None = None, suites: Sequence[str] | None = None, task: str | None = None,
             ood: str | None = None, drift: bool = True, calibrate: bool = False, progress: bool = False,
             overrides: Sequence[str] = ()) -> EvalOutcome:
    """Measures a model and, when its base is known, what it forgot (``retain eval``).

    Args:
        model: ``lab``, a model or adapter directory, a run directory or a hub id.
        config: Probe suites, evaluation settings, data format.
        base: The base model forgetting is measured against; an adapter's base is its
            own weights with the adapters off.
        compare_to: A previous result (``retain eval --json``) to compare against.
        suites: Probe suites (default ``probes.suites``, else the model's own).
        task: Held-out task examples (default ``data.eval``).
        ood: Out-of-distribution task examples (default ``data.ood``).
        drift: Measure KL and perplexity on the reference text.
        calibrate: Measure on the items the base answers right, also paraphrased.
        progress: Show progress bars.
        overrides: ``section.key=value`` settings applied on top of ``config``.

    Returns:
        The outcome: ``outcome.result`` (the model), ``outcome.base`` and
        ``outcome.forgetting`` (``{suite: {method: ForgettingReport}}``).

    Raises:
        RetainError: For anything named that cannot be read or loaded.
    """
    return run_eval(resolve_config(config, overrides), str(model), suites=list(suites) if suites else None,
                    task=task, ood=ood, drift=drift, base=str(base) if base is not None else None,
                    compare_to=Path(compare_to) if compare_to is not None else None, calibrate=calibrate,
                    progress=progress)


def train(config: ConfigSource, *, overrides: Sequence[str] = (), overwrite: bool = False, resume: bool = False,
          force: bool = False, merge: bool = False, progress: bool = False,
          echo: Callable[[str], None] | None = None) -> TrainOutcome:
    """Runs a guarded fine-tuning (``retain train``): audit, doctor, base, training under
    the guards, restore, final evaluation, verdict.

    Args:
        config: The run's config; ``data.train`` must be set.
        overrides: ``section.key=value`` settings applied on top of ``config``.
        overwrite: Replace an existing run directory of the same name.
        resume: Continue the run ``output.dir/output.name`` from its last checkpoint.
        force: Train even when the audit or the doctor found blockers.
        merge: Also save the model with adapters merged (``merged/``).
        progress: Show progress bars.
        echo: Called with each line ``retain train`` prints; None prints nothing (the run's
            ``log.txt`` has every line).

    Returns:
        The run directory and its summary (``outcome.summary.verdict.ship``).

    Raises:
        ConfigError: ``data.train`` unset, or an invalid config.
        TrainRefused: The audit or the doctor found blockers and ``force`` is False.
        DiskFull: The disk filled up (the message names the checkpoint to resume from).
        RetainError: For anything named that cannot be read or loaded.
    """
    return run_train(resolve_config(config, overrides), overwrite=overwrite, resume=resume, force=force,
                     merge=merge, progress=progress, echo=echo or (lambda line: None))
