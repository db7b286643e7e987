"""Checkpoints that are complete or absent: the starting weights, the final model, and
the seal of every checkpoint the trainer saves.

Every checkpoint is sealed (:class:`CheckpointSeal`): once the trainer has saved
everything else, the files are flushed to disk and ``retain_state.json`` is written last,
atomically, with the guard state (checks, decisions, warnings given, recent losses) and
the size of every other file. ``--resume`` takes only a checkpoint whose seal is there and
whose files still match it (:func:`checkpoint_problem`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
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

from retain.io import atomic_write_json, decode_json, fsync_tree
from retain.rundir import RunDir

logger = logging.getLogger("retain.train")

STATE_FILE = "retain_state.json"  # a checkpoint's seal, written last: guard state and file sizes


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


class CheckpointSeal(TrainerCallback):
    """Seals each checkpoint the trainer saves (see :func:`seal_checkpoint`).

    The trainer writes ``checkpoint-N`` in place, file by file, and then calls
    ``on_save``; a kill before the seal leaves a folder without one, which ``--resume``
    removes instead of loading.

    Args:
        guard_state: Returns the guard state to keep with the checkpoint, as JSON-ready
            data; None when the guards are off.
    """

    def __init__(self, guard_state: Callable[[], dict[str, Any]] | None = None) -> None:
        self.guard_state = guard_state

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            seal_checkpoint(folder, self.guard_state() if self.guard_state else None)


def seal_checkpoint(folder: Path, guards: dict[str, Any] | None) -> None:
    """Marks ``folder`` complete: flushes its files to disk, then writes ``retain_state.json``
    (atomically: temp file, fsync, rename) with ``guards`` and each other file's size.

    Raises:
        OSError: A file cannot be flushed or the seal written (a full disk); the folder
            is then left unsealed.
    """
    fsync_tree(folder)
    files = {path.relative_to(folder).as_posix(): path.stat().st_size
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != STATE_FILE}
    atomic_write_json(folder / STATE_FILE, {"files": files, "guards": guards})


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
        files = decode_json(seal.read_text(encoding="utf-8")).get("files", {})
    except (ValueError, AttributeError):  # not UTF-8 or JSON (UnicodeDecodeError is a ValueError), not an object
        return f"{STATE_FILE} is not a JSON object"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (interrupted while deleting an old checkpoint?)"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes where the seal says {size}"
    return None


def read_seal(checkpoint: Path) -> dict[str, Any] | None:
    """Returns the guard state a checkpoint's seal keeps (JSON data), or None if it keeps
    none (the guards were off, or the checkpoint has no seal)."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if "files" not in data:  # a seal from before file sizes were recorded: the state itself
        return data
    return data["guards"]


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def last_checkpoint(run: RunDir) -> Path | None:
    """Returns the newest complete checkpoint (:func:`checkpoint_problem`); incomplete ones
    after it (killed mid-save) are removed, since the steps they hold are redone."""
    for path in reversed(checkpoints_of(run)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if run.writer:
            logger.warning("removing incomplete checkpoint %s: %s", path, problem)
            shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoints_of(run: RunDir) -> list[Path]:
    """Returns the run's ``checkpoint-N`` folders, oldest first."""
    if not run.checkpoints_dir.is_dir():
        return []
    return sorted((path for path in run.checkpoints_dir.glob("checkpoint-*")
                   if path.is_dir() and path.name.rsplit("-", 1)[-1].isdigit()),
                  key=checkpoint_step)
