"""What makes two runs the same run: ``--resume`` continues only the run it started,
and a finished run is read back instead of trained again (:func:`finished_summary`).

A run records its config (``config.yaml``) and the SHA-256 of every file the config
names (``meta.json``); resuming refuses a different config or a changed file.
"""


from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from retain.config import RetainConfig
from retain.config.loading import dump_config, load_config
from retain.errors import ConfigError, RetainError, RunDirError
from retain.io import config_file_hashes
from retain.rundir import RunDir
from retain.summary import RunSummary

logger = logging.getLogger("retain.train")


def data_hashes(config: RetainConfig) -> dict[str, str]:
    """Returns the SHA-256 of every file the config names, for reproducing the run: the data
    splits by name (``train``, ``eval``, ...), the others by dotted field (``probes.suites.0``,
    ``eval.reference``, ``method.replay.source``)."""
    hashes = config_file_hashes(config.model_dump(mode="json"))
    return {field.removeprefix("data."): digest for field, digest in hashes.items()}


def finished_summary(config: RetainConfig) -> RunSummary | None:
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
    return RunSummary.read(summary)


def _same_data(meta: Path, config: RetainConfig) -> bool:
    """True when the data hashes a run recorded in ``meta`` are those of the files
    ``config`` names now (also when it recorded none: a run from before they were kept);
    False when ``meta`` is missing or unreadable."""
    recorded = recorded_data(meta)
    return recorded is not None and not _changed_data(recorded, config)


def recorded_data(meta: Path) -> dict[str, str] | None:
    """Returns the data hashes a run recorded in ``meta`` (``{}`` when it recorded none);
    None when ``meta`` is missing or unreadable."""
    try:
        return json.loads(meta.read_text()).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return None


def _changed_data(recorded: dict[str, str], config: RetainConfig) -> list[str]:
    """Returns the fields of ``recorded`` whose file changed or went away since."""
    now = data_hashes(config)
    return [field for field, digest in recorded.items() if now.get(field) != digest]


def check_same_data(run: RunDir, config: RetainConfig) -> None:
    """Resuming, refuses a file the run read whose contents changed since it started: the
    rest of the run would train, and be judged, on other rows than its first steps.

    Runs that recorded no hashes (``meta.json`` missing or from before they were kept)
    resume unchecked.
    """
    recorded = recorded_data(run.path / "meta.json") or {}
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


def check_same_config(run: RunDir, config: RetainConfig) -> RetainConfig:
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


def same_threads_note(run: RunDir) -> str | None:
    """Returns a warning when this process has another torch thread count than the one the
    run started with (``meta.json``'s ``torch_threads``), else None.

    Float sums are split across threads, so a resume under another count trains the
    remaining steps to slightly different numbers than an uninterrupted run would.
    """
    try:
        started = json.loads(run.meta_path.read_text()).get("torch_threads")
    except (OSError, ValueError, AttributeError):
        return None
    now = torch.get_num_threads()
    if not isinstance(started, int) or started == now:
        return None
    return (f"this run started with {started} torch threads and resumes with {now}: the remaining steps will "
            f"not match an uninterrupted run to the last digit; set OMP_NUM_THREADS={started} to match")
