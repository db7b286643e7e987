"""Checkpoints that are complete or absent: the starting weights, the final model, and
the seal of every checkpoint the trainer saves.

Every checkpoint is sealed (:class:`CheckpointSeal`): once the trainer has saved
everything else, the files are flushed to disk and ``retain_state.json`` is written last,
atomically, with the guard state (checks, decisions, warnings given, recent losses) and
the size of every other file, and the SHA-256 of every file up to :data:`HASHED_BYTES`
(the trainer's state, the adapters, the scheduler: an edited ``global_step`` changes the
hash, not the size). ``--resume`` takes only a checkpoint whose seal is there, reads as
retain wrote it, and whose files still match it (:func:`checkpoint_problem`).
"""

from __future__ import annotations

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

from retain.errors import RunDirError
from retain.io import atomic_write_json, decode_json, fsync_tree, sha256_file
from retain.rundir import RunDir

logger = logging.getLogger("retain.train")

STATE_FILE = "retain_state.json"  # a checkpoint's seal, written last: guard state and file sizes
MODEL_CARD = "README.md"  # a model folder's card: peft's blank template, or retain's (training.card)
HASHED_BYTES = 64 * 2**20  # files up to this size are hashed in the seal; larger ones (full weights) by size


def start_folder(run: RunDir) -> Path:
    """Returns where the starting weights of a run are kept for ``restore_best``."""
    return run.checkpoints_dir / "start"


def save_model(model: PreTrainedModel, target: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Saves ``model`` (its adapters, or all its weights) and the tokenizer, if given, into
    ``target``: written beside it, flushed to disk, then renamed, so the folder is complete
    or absent.

    The blank model card peft writes beside adapters is dropped: it claims nothing true of
    the run, and retain writes its own once the run is judged (:mod:`retain.training.card`).
    """
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    (staging / MODEL_CARD).unlink(missing_ok=True)
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
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != STATE_FILE:
            size = path.stat().st_size
            files[path.relative_to(folder).as_posix()] = (
                {"bytes": size, "sha256": sha256_file(path)} if size <= HASHED_BYTES else {"bytes": size})
    atomic_write_json(folder / STATE_FILE, {"files": files, "guards": guards})


def checkpoint_problem(folder: Path) -> str | None:
    """Returns why ``folder`` is not a complete checkpoint, or None when it is one.

    Complete means sealed (:func:`seal_checkpoint`) with every file the seal lists still
    there at its size and, where the seal keeps one, its SHA-256: a kill while the trainer
    saves leaves no seal, a kill while the trainer deletes an old checkpoint
    (``train.save_total_limit``) leaves files missing, and an edit changes a hash. A seal
    from before file sizes were recorded is trusted as it is.
    """
    found = _problem(folder)
    return found[0] if found else None


def _problem(folder: Path) -> tuple[str, bool] | None:
    """Returns why ``folder`` is not a complete checkpoint and whether it was edited (rather
    than cut short by a kill), or None when it is complete."""
    seal = folder / STATE_FILE
    if not seal.is_file():
        return f"no {STATE_FILE}: interrupted while saving", False
    try:
        files, _ = _read_seal(seal)
    except ValueError as error:
        return f"{STATE_FILE} is not as retain wrote it: {error}", True
    for name, (size, digest) in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (interrupted while deleting an old checkpoint?)", False
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes where the seal says {size}", False
        if digest is not None and sha256_file(path) != digest:
            return f"{name} was changed after the checkpoint was saved (its SHA-256 is not the seal's)", True
    return None


def read_seal(checkpoint: Path) -> dict[str, Any] | None:
    """Returns the guard state a checkpoint's seal keeps (JSON data), or None if it keeps
    none (the guards were off, or the checkpoint has no seal).

    Raises:
        RunDirError: The seal is not as retain wrote it (names the file).
    """
    path = checkpoint / STATE_FILE
    if not path.is_file():
        return None
    try:
        return _read_seal(path)[1]
    except ValueError as error:
        raise RunDirError(f"{STATE_FILE} is not as retain wrote it: {error}", file=path,
                          fix=f"delete {checkpoint.name} to resume from the checkpoint before it, or start the "
                          "run again") from None


def _read_seal(path: Path) -> tuple[dict[str, tuple[int, str | None]], dict[str, Any] | None]:
    """Returns a seal's files (name: size and SHA-256 if hashed) and its guard state.

    Raises:
        ValueError: It is not UTF-8 JSON of the shape :func:`seal_checkpoint` writes (a seal
            from before sizes were recorded is the guard state alone, and lists no files).
    """
    data = decode_json(path.read_text(encoding="utf-8"))  # UnicodeDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "files" not in data:  # a seal from before file sizes were recorded: the state itself
        return {}, data
    files, guards = data["files"], data.get("guards")
    if not isinstance(files, dict):
        raise ValueError("'files' is not a mapping of file names")
    if guards is not None and not isinstance(guards, dict):
        raise ValueError("'guards' is not a mapping")
    read: dict[str, tuple[int, str | None]] = {}
    for name, entry in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"the file name {name[:80]!r} leads outside the checkpoint")
        size, digest = (entry, None) if isinstance(entry, int) else (
            (entry.get("bytes"), entry.get("sha256")) if isinstance(entry, dict) else (None, None))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not (digest is None or isinstance(digest, str)):
            raise ValueError(f"the entry of {name[:80]!r} is not a size (and SHA-256)")
        read[name] = (size, digest)
    return read, guards


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def last_checkpoint(run: RunDir) -> Path | None:
    """Returns the newest complete checkpoint (:func:`checkpoint_problem`); incomplete ones
    after it (killed mid-save) are removed, since the steps they hold are redone.

    Raises:
        RunDirError: A checkpoint newer than any complete one was edited after it was
            saved (a hash differs, or its seal is not as retain wrote it); it is left as is.
    """
    for path in reversed(checkpoints_of(run)):
        found = _problem(path)
        if found is None:
            return path
        problem, edited = found
        if edited:  # not retain's to delete: someone changed it on purpose, or the disk did
            raise RunDirError(f"{path.name} was changed since retain saved it: {problem}", file=path,
                              fix=f"put the file back, or delete {path.name} to resume from the checkpoint "
                              "before it")
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
