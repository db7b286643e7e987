"""A full disk while training: the error to raise, what is kept, and what to free.

A write can fail anywhere in a long run (a checkpoint, the metrics, the final model);
:func:`disk_full` turns a failure that came from a full disk into one clear error that
names the file, the space to free and the checkpoint ``--resume`` continues from, after
removing the checkpoint that was being written.
"""


from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from retain.checkpoints import checkpoint_problem, checkpoints_of, last_checkpoint
from retain.errors import RetainError, RunDirError
from retain.rundir import RunDir


class DiskFull(RunDirError):
    """The disk of the run directory filled up; the last complete checkpoint is kept."""


LOW_SPACE = 1 << 20  # bytes free under which a failed write is put down to a full disk


_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def disk_full(error: BaseException, run: RunDir) -> DiskFull | None:
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
    incomplete = [path for path in checkpoints_of(run) if checkpoint_problem(path) is not None]
    if written is None and incomplete:
        written = incomplete[-1]
    last = last_checkpoint(run)  # removes the incomplete ones after it
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
