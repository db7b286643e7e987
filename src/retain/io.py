"""Whole files or none: atomic writes, strict JSON, fsync, SHA-256, and JSONL read back
tolerant of a torn last line (a kill mid-append)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from retain.errors import OutputRefused, RunDirError

logger = logging.getLogger("retain")

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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
    problem = replace_problem(path)
    if problem is not None:
        raise OutputRefused(problem, file=path, fix="give the path of a regular file (new or to replace)")
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


def replace_problem(path: Path) -> str | None:
    """Returns why an atomic write must not replace what stands at ``path`` (None: nothing
    stands there, or a regular file does).

    A write goes to a temp file renamed over ``path``, which would swap a device
    (``/dev/null``), a FIFO, a socket or a symlink for a regular file, or fail on a folder.
    """
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot look at {path}: {error.strerror or error}"
    if stat.S_ISREG(status.st_mode):
        return None
    return f"{path} is {file_kind(status.st_mode)}, which retain will not replace with a file"


def file_kind(mode: int) -> str:
    """Names what a ``st_mode`` describes when it is not a regular file: "a device", "a FIFO"..."""
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def output_problem(path: Path) -> str | None:
    """Returns why ``path`` cannot be written as an output file, checked before any work:
    :func:`replace_problem`, or its folder missing or not writable."""
    problem = replace_problem(path)
    if problem is not None:
        return problem
    folder = path.parent
    if not folder.is_dir():
        return f"no folder {folder} to write {path.name} into"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


def folder_problem(path: Path) -> str | None:
    """Returns why ``path`` cannot be used as an output folder (created if absent), checked
    before any work: a file in its place, or no writable folder to create it in."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    existing = next((parent for parent in (path, *path.absolute().parents) if parent.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} cannot be created or written ({existing} is not a writable folder)"
    return None


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON with a trailing newline.

    Raises:
        TypeError: ``obj`` is not JSON-serializable; nothing is written.
        OSError: The file cannot be written; ``path`` is unchanged.
    """
    # Serialize first: a failure then never touches the disk.
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def read_cached_json(path: Path | None) -> dict | None:
    """Returns a JSON object retain cached, or None when absent or unusable (a damaged
    cache file is reported and measured again, never trusted)."""
    if path is None or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("ignoring unusable cached result %s: %s", path, error)
        return None
    if not isinstance(stored, dict):
        logger.warning("ignoring unusable cached result %s: not a JSON object", path)
        return None
    return stored


def write_cached_json(path: Path | None, obj: dict) -> None:
    """Stores an object for :func:`read_cached_json` (atomically: a crash leaves the old file)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, obj)


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


class _RepeatedKey(ValueError):
    pass


class JsonProblem(ValueError):
    """Why a text is not the JSON it should be; ``line`` is 1-based where the parser knows it."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key appears twice (json keeps the last without a word)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _RepeatedKey(f"the key '{repeated[:60]}' appears twice in one object")
    return found


def decode_json(text: str) -> object:
    """Returns the JSON value in ``text`` (a file retain wrote, one JSONL line, or one cell).

    Raises:
        ValueError: Saying in a few words why it is not valid JSON: the parser's
            complaint and column, a number of more than 4,300 digits (Python refuses
            to convert them), nesting deeper than Python's recursion limit, a key twice
            in one object (json would keep the last without a word), or a lone
            surrogate escape (``"\\ud800"``: valid JSON, but not Unicode text).
    """
    try:
        value = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}" if error.lineno > 1 else f"column {error.colno}"
        raise JsonProblem(f"{error.msg} ({where})", error.lineno) from None
    except _RepeatedKey as error:
        raise ValueError(str(error)) from None
    except ValueError:  # int() refuses 4,301+ digits: quadratic-time conversion (CVE-2020-10735)
        raise ValueError("a number has more than 4,300 digits") from None
    except RecursionError:
        raise ValueError("nested too deeply (arrays or objects hundreds of levels deep)") from None
    if _SURROGATE_ESCAPE.search(text):  # "\ud800" alone decodes to a str that is not text
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(error.object[error.start])
            raise ValueError(f"a string holds \\u{code:04x}, half of a surrogate pair, which is not text; "
                             "the file was cut or converted badly") from None
    return value


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
            record = decode_json(line)
        except ValueError:
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


def drop_partial_last_line(path: Path) -> None:
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
