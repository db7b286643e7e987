"""The run directory: everything one run leaves behind, written so a crash cannot corrupt it.

Layout of ``<output.dir>/<name>/``::

    config.yaml     the fully resolved configuration
    meta.json       versions, platform, git commit, command line, start time, and what
                    else a rerun must match (threads, determinism settings, input hashes)
    metrics.jsonl   one JSON object per line, appended as training goes
    summary.json    the final results
    log.txt         everything logged on the ``retain`` logger
    checkpoints/    saved adapters or weights

Whole files are replaced atomically (temp file, fsync, rename); metrics are appended
one fsynced line at a time, so a crash leaves at most a partial last line, which
:func:`read_jsonl` skips.

JSON has no NaN or infinity; they are written as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (the spellings Python's ``json`` module uses).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from retain.errors import RunDirError
from retain.io import atomic_write_json, atomic_write_text, decode_json, drop_partial_last_line, read_jsonl, to_json
from retain.provenance import provenance

try:  # advisory locks where the platform has them (not on Windows)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_RUN_NAME = 200
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOCK_FILE = ".retain.lock"  # held by the process writing the run directory


# --- run names ------------------------------------------------------------------------


def own_config(path: str | Path) -> Path | None:
    """Returns the ``config.yaml`` of a run directory that ``retain train`` wrote (its
    ``meta.json`` beside it), or None for anything else: what ``retain eval RUN`` judges a
    run with when no config is given, so that it uses the run's own suites and settings."""
    run = RunDir(path, writer=False)
    return run.config_path if run.config_path.is_file() and run.meta_path.is_file() else None


def default_run_name(command: str) -> str:
    """Returns ``"<command>-YYYYmmdd-HHMMSS"`` for the current UTC time."""
    return f"{command}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def validate_run_name(name: str) -> str:
    """Checks that ``name`` is one safe path component.

    Returns:
        ``name`` unchanged.

    Raises:
        RunDirError: ``name`` is empty, has a path separator or other characters
            outside ``[A-Za-z0-9._-]``, or starts with a dot (hidden, or ``..``).
    """
    if len(name) > MAX_RUN_NAME:
        raise RunDirError(
            f"the run name has {len(name)} characters",
            field="output.name",
            fix=f"use at most {MAX_RUN_NAME} (a file name holds 255, and retain adds to it when it replaces a run)",
        )
    if not _RUN_NAME.fullmatch(name):
        raise RunDirError(
            f"invalid run name '{name}'",
            field="output.name",
            fix="use letters, digits, '.', '_' and '-' only, not starting with '.', e.g. lora-r16",
        )
    return name


# --- the run directory ----------------------------------------------------------------


class RunDir:
    """One run's directory and the files in it.

    Use :meth:`create` to make or reopen one; ``RunDir(path)`` only wraps an existing
    directory (e.g. to read a finished run). As a context manager it copies the
    ``retain`` logger into ``log.txt`` while the block runs.

    Args:
        path: The run directory.
        writer: False in the other processes of a multi-process run (``accelerate
            launch``): every write is then skipped, so only the main process writes.

    Attributes:
        path: The run directory.
        config_path: ``config.yaml``, the resolved configuration.
        meta_path: ``meta.json``, versions and provenance.
        metrics_path: ``metrics.jsonl``, the metrics stream.
        summary_path: ``summary.json``, the final results.
        log_path: ``log.txt``, the run log.
        checkpoints_dir: ``checkpoints/``; whoever saves the first checkpoint creates it.
        started_at: When this object was made (UTC); recorded in ``meta.json``.
    """

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.config_path = self.path / "config.yaml"
        self.meta_path = self.path / "meta.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.log_path = self.path / "log.txt"
        self.checkpoints_dir = self.path / "checkpoints"
        self.started_at = datetime.now(timezone.utc)
        self._saved_levels: dict[logging.Handler, int] = {}
        self._metrics_checked = False
        self._log_handler: logging.Handler | None = None
        self._lock: IO[str] | None = None  # an open LOCK_FILE while this process writes here

    @classmethod
    def create(
        cls, root: str | Path, name: str, *, overwrite: bool = False, resume: bool = False
    ) -> RunDir:
        """Creates ``root/name``, or replaces or reopens it.

        Args:
            root: The folder holding run directories (``output.dir``).
            name: The run name (``output.name``).
            overwrite: Replace an existing directory. The old one is moved aside and
                deleted only once the new, empty one is in place.
            resume: Reopen an existing directory, keeping its files.

        Returns:
            The run directory, existing and empty unless resumed.

        Raises:
            RunDirError: The name is invalid; both flags are set; the directory exists
                with content and neither flag is set; ``resume`` is set but there is no
                directory; or the file system refuses.
        """
        validate_run_name(name)
        if overwrite and resume:
            raise RunDirError(
                "--overwrite and --resume contradict each other", fix="pass only one of them"
            )
        path = Path(root) / name
        if path.exists() and not path.is_dir():
            raise RunDirError(
                f"{path} exists and is not a directory",
                fix="choose another --name or move the file",
            )
        if resume:
            if not path.is_dir():
                raise RunDirError(
                    f"{path} does not exist, so there is nothing to resume", fix="drop --resume"
                )
            return cls(path)._locked(take_lock(path))
        has_content = path.is_dir() and any(path.iterdir())
        if has_content and not overwrite:
            raise RunDirError(
                f"{path} already exists",
                fix="pass --overwrite to replace it or --resume to continue it, "
                "or choose another --name",
            )
        # Replacing a run another process is writing would pull it from under that process.
        old = take_lock(path) if has_content else None
        try:
            if has_content:
                _replace_with_empty_dir(path)
            else:
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"cannot create {path}: {exc.strerror}",
                fix="check permissions or choose another output.dir",
            ) from None
        finally:
            if old is not None:
                old.close()
        return cls(path)._locked(take_lock(path))

    def _locked(self, lock: IO[str] | None) -> RunDir:
        self._lock = lock
        return self

    def release(self) -> None:
        """Lets another process open this run directory (closing the file drops the lock)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # Whole files.

    def write_config(self, text: str) -> None:
        """Atomically writes the resolved configuration YAML (see ``dump_config``)."""
        if self.writer:
            atomic_write_text(self.config_path, text)

    def write_json(self, name: str, obj: Any) -> None:
        """Atomically writes ``obj`` as ``<run>/<name>`` (e.g. ``audit.json``).

        Raises:
            RunDirError: ``name`` leads outside the run directory.
        """
        if self.writer:
            atomic_write_json(self.inside(name), obj)

    def inside(self, name: str | Path) -> Path:
        """Returns ``<run>/<name>``, checked to stay inside the run directory.

        Raises:
            RunDirError: ``name`` is absolute, climbs out with ``..``, or passes through a
                symbolic link that points outside the run directory.
        """
        root = self.path.resolve()
        target = (root / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(root):
            raise RunDirError(
                f"'{name}' leads outside the run directory {self.path}",
                file=self.path,
                fix="name files inside the run directory, without '..', absolute paths or "
                "links that lead out",
            )
        return self.path / name

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Atomically writes ``summary.json``.

        Raises:
            TypeError: ``summary`` is not JSON-serializable; nothing is written.
        """
        if self.writer:
            atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        """Returns the contents of ``summary.json``.

        Raises:
            RunDirError: There is no summary (the run has not finished) or it is not a
                JSON object.
        """
        try:
            summary = decode_json(self.summary_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(
                "no summary.json: the run has not finished",
                file=self.summary_path,
                fix="finish or rerun it",
            ) from None
        except ValueError as exc:  # not JSON, not UTF-8, a huge number, nesting past the limit
            raise RunDirError(
                f"invalid JSON: {exc}",
                file=self.summary_path,
                line=getattr(exc, "line", None),
                fix="rerun to rewrite it",
            ) from None
        if not isinstance(summary, dict):
            raise RunDirError(
                "summary.json is not a JSON object",
                file=self.summary_path,
                fix="rerun to rewrite it",
            )
        return summary

    def write_meta(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Atomically writes ``meta.json``: what produced this run, for reproducing it.

        Args:
            extra: More entries, e.g. the probe suite versions; they win over the defaults.

        Returns:
            The metadata written.
        """
        meta = {**provenance(), "started_at": self.started_at.isoformat(timespec="seconds"), **(extra or {})}
        if self.writer:
            atomic_write_json(self.meta_path, meta)
        return meta

    # Metrics.

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Appends one record to ``metrics.jsonl`` and fsyncs it.

        A ``time`` field (Unix seconds) is added unless the record has one. The first
        append of this object cuts off a partial line left by an earlier crash, so a
        resumed run does not glue its first record onto it.

        Raises:
            TypeError: ``record`` is not JSON-serializable; nothing is written.
        """
        if not self.writer:
            return
        line = to_json({**record, "time": record.get("time", round(time.time(), 3))}) + "\n"
        if not self._metrics_checked:
            drop_partial_last_line(self.metrics_path)
            self._metrics_checked = True
        with open(self.metrics_path, "a", encoding="utf-8", newline="\n") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def rewind_metrics(self, step: int) -> int:
        """Drops the records of steps after ``step`` (a resumed run redoes them).

        Records without a step are kept. The file is replaced atomically.

        Returns:
            The number of records dropped.
        """
        if not self.writer:
            return 0
        records = self.read_metrics()
        kept = [record for record in records if record.get("step") is None or record["step"] <= step]
        if len(kept) < len(records):
            atomic_write_text(self.metrics_path, "".join(to_json(record) + "\n" for record in kept))
        self._metrics_checked = True
        return len(records) - len(kept)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Returns the metric records; ``[]`` if none were written yet.

        Raises:
            RunDirError: A line other than a crash-truncated last one is corrupt.
        """
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    # Logging.

    def attach_log(self, level: int = logging.INFO) -> logging.Handler:
        """Copies records of the ``retain`` logger (and its children) into ``log.txt``.

        The logger's level is lowered to ``level`` if needed, and restored by
        :meth:`detach_log`.

        Returns:
            The handler, to pass to :meth:`detach_log`.
        """
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        formatter = logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime  # UTC, like every other timestamp of a run
        handler.setFormatter(formatter)
        handler.setLevel(level)
        retain_logger = logging.getLogger("retain")
        self._saved_levels[handler] = retain_logger.level
        if retain_logger.getEffectiveLevel() > level:
            retain_logger.setLevel(level)
        retain_logger.addHandler(handler)
        return handler

    def detach_log(self, handler: logging.Handler) -> None:
        """Stops copying to ``log.txt``, closes the file and restores the logger's level."""
        retain_logger = logging.getLogger("retain")
        retain_logger.removeHandler(handler)
        handler.close()
        if handler in self._saved_levels:
            retain_logger.setLevel(self._saved_levels.pop(handler))

    def __enter__(self) -> RunDir:
        if self.writer:
            self._log_handler = self.attach_log()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._log_handler is not None:
            self.detach_log(self._log_handler)
            self._log_handler = None
        self.release()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


# --- helpers --------------------------------------------------------------------------


def take_lock(path: Path) -> IO[str] | None:
    """Returns the open lock file of run directory ``path``, locked for this process (an
    advisory ``flock``: the kernel drops it when the process ends, however it ends, so a
    killed run leaves no stale lock). None where the platform has no such locks.

    Raises:
        RunDirError: Another live process holds it (its PID, host and start are named).
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        handle = open(path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the run lives
    except OSError as exc:
        raise RunDirError(f"cannot open {path / LOCK_FILE}: {exc.strerror}", file=path,
                          fix="check the run directory's permissions") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read(500).strip() or "a process that has not said who it is"
        handle.close()
        raise RunDirError(f"{path} is in use by another retain process: {holder}", file=path,
                          fix="wait for that run to finish or stop it, then --resume or --overwrite; "
                          "or choose another --name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC\n")
    handle.flush()
    return handle


def _replace_with_empty_dir(path: Path) -> None:
    """Swaps ``path`` for an empty directory, deleting the old one last."""
    aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    try:
        path.mkdir()
    except OSError:
        os.replace(aside, path)  # put the old run back rather than lose it
        raise
    try:
        shutil.rmtree(aside)
    except OSError as exc:
        logger.warning(
            "could not delete the replaced run at %s (%s); delete it by hand", aside, exc
        )

