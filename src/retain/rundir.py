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

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import retain
from retain.errors import RunDirError

logger = logging.getLogger(__name__)

_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# Libraries beside the model stack (``packages``) whose version can change a result:
# tokenisation, data loading, random numbers, the distributed runtime.
_DEPENDENCIES = ("accelerate", "tokenizers", "safetensors", "datasets", "numpy")
# Environment variables that change what a run computes. Only these are recorded: the
# environment also holds secrets (HF_TOKEN, cloud keys) that must never reach a run.
_REPRODUCIBILITY_ENV = (
    "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG", "WORLD_SIZE", "HF_HUB_OFFLINE",
)
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# --- atomic files and JSON ------------------------------------------------------------


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """Returns ``obj`` as strict JSON, with NaN and infinities spelled as strings.

    Numpy and torch scalars are written as their Python values, paths as strings.

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent.
    """
    return json.dumps(
        _finite(obj), indent=indent, allow_nan=False, default=_to_plain, ensure_ascii=False
    )


def _finite(obj: Any) -> Any:
    """Returns ``obj`` with every non-finite float replaced by its string spelling."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def _to_plain(obj: Any) -> Any:
    """``json.dumps`` hook for values it does not know: scalars with ``.item()``, paths."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return _finite(obj.item())
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replaces ``path`` with ``text`` so that readers see the old or the new file, never half.

    The text goes to a temp file in the same directory, is fsynced, renamed over
    ``path``, and the directory is fsynced so the rename itself survives a power loss.

    Raises:
        OSError: The file cannot be written; ``path`` is then unchanged and no temp
            file is left behind.
    """
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)  # mkstemp creates 0600; keep the file as readable as before
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON with a trailing newline.

    Raises:
        TypeError: ``obj`` is not JSON-serializable; nothing is written.
        OSError: The file cannot be written; ``path`` is unchanged.
    """
    # Serialize first: a failure then never touches the disk.
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def fsync_tree(folder: str | Path) -> None:
    """Flushes every file under ``folder``, then the folders themselves, to disk.

    Files written by someone else (``torch.save``, safetensors) reach the disk only when
    the kernel gets round to it; after this call a marker written next can no longer
    survive a power loss that the files it vouches for do not.

    Raises:
        OSError: A file cannot be opened or flushed (e.g. ENOSPC reported at fsync).
    """
    folder = Path(folder)
    for directory, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))
    _fsync_dir(folder.parent)


def sha256_file(path: str | Path) -> str:
    """Returns the SHA-256 hex digest of a file, read in 1 MiB blocks.

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_file_hashes(settings: dict[str, Any]) -> dict[str, str]:
    """Returns the SHA-256 of every existing file a config names, by dotted field.

    ``settings`` is a config as plain data (``model_dump(mode="json")``); every string in
    it that names a file is hashed: data splits, probe suite files (``probes.suites.0``),
    the reference text, a replay source, a chat template. Hub names (``hf:...``) and
    directories (the model) are not files and are left to ``config.yaml``.
    """
    hashes: dict[str, str] = {}

    def visit(value: Any, field: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{field}.{key}" if field else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{field}.{index}")
        elif isinstance(value, str) and value and "\n" not in value and len(value) < 4096:
            with contextlib.suppress(OSError, ValueError):
                if Path(value).is_file():
                    hashes[field] = sha256_file(value)

    visit(settings, "")
    return hashes


def _fsync_dir(directory: Path) -> None:
    """Flushes a directory entry to disk; a no-op where directories cannot be opened."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads a JSON-lines file written by :meth:`RunDir.append_metrics`.

    A last line without a newline that does not parse is the mark of a crash mid-write
    and is skipped silently. Blank lines are ignored.

    Returns:
        One dict per line, in file order.

    Raises:
        RunDirError: The file is missing, or a complete line is not a JSON object
            (names the file and 1-based line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError("file not found", file=path, fix="check the run directory path") from None
    lines = text.split("\n")  # a complete file ends with "\n", so the last item is ""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut short
                continue
            record = None
        if not isinstance(record, dict):
            raise RunDirError(
                "corrupt line: not a JSON object",
                file=path,
                line=number,
                fix=f"repair or delete line {number}; the other lines are intact",
            )
        records.append(record)
    return records


# --- run names ------------------------------------------------------------------------


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
            return cls(path)
        has_content = path.is_dir() and any(path.iterdir())
        if has_content and not overwrite:
            raise RunDirError(
                f"{path} already exists",
                fix="pass --overwrite to replace it or --resume to continue it, "
                "or choose another --name",
            )
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
        return cls(path)

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
            summary = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(
                "no summary.json: the run has not finished",
                file=self.summary_path,
                fix="finish or rerun it",
            ) from None
        except json.JSONDecodeError as exc:
            raise RunDirError(
                f"invalid JSON: {exc.msg}",
                file=self.summary_path,
                line=exc.lineno,
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
        source = Path(retain.__file__).resolve().parent
        meta: dict[str, Any] = {
            "retain_version": retain.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": {
                name: _package_version(name) for name in ("torch", "transformers", "peft")
            },
            "dependencies": {name: _package_version(name) for name in _DEPENDENCIES},
            # retain's own source when it runs from a git checkout (None from a wheel), and
            # whether its tracked files differ from that commit.
            "git_commit": _git_commit(source),
            "git_dirty": _git_dirty(source),
            # The checkout retain was run from (the user's project), if it is one.
            "project_git_commit": _git_commit(Path.cwd()),
            "command": list(sys.argv),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "torch_threads": _torch_threads(),
            "deterministic_algorithms": _deterministic_algorithms(),
            "environment": {name: os.environ[name] for name in _REPRODUCIBILITY_ENV if name in os.environ},
            **(extra or {}),
        }
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
            _drop_partial_last_line(self.metrics_path)
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

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


# --- helpers --------------------------------------------------------------------------


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


def _drop_partial_last_line(path: Path) -> None:
    """Truncates a file after its last newline, if a crash left a partial line there."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as file:
        data = file.read()
        if data.endswith(b"\n"):
            return
        file.truncate(data.rfind(b"\n") + 1)
        file.flush()
        os.fsync(file.fileno())
    logger.warning("dropped a partial last line from %s (an earlier run was cut short)", path)


def _package_version(name: str) -> str | None:
    """Returns the installed version of ``name``, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str] | None:
    """Runs ``git -C directory ...``; None where git is missing or hangs."""
    try:
        return subprocess.run(["git", "-C", str(directory), *arguments], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit(directory: Path) -> str | None:
    """Returns the commit checked out where ``directory`` is, or None if it is in no checkout
    (or, for retain's source, in a checkout that does not track it: a virtualenv inside
    someone's project)."""
    tracked = _git(directory, "ls-files", "--error-unmatch", "--", ".")
    result = _git(directory, "rev-parse", "HEAD")
    if tracked is None or result is None or tracked.returncode != 0 or result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _git_dirty(directory: Path) -> bool | None:
    """Returns whether tracked files under ``directory`` differ from the commit; None
    outside a checkout."""
    if _git_commit(directory) is None:
        return None
    result = _git(directory, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return None if result is None or result.returncode != 0 else bool(result.stdout.strip())


def _torch_threads() -> int | None:
    """Returns torch's intra-op thread count (float sums depend on it), if torch is loaded."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _deterministic_algorithms() -> bool | None:
    """Returns whether torch was told to use deterministic algorithms only, if torch is loaded."""
    torch = sys.modules.get("torch")
    return torch.are_deterministic_algorithms_enabled() if torch is not None else None
