"""Errors a user can cause, each carrying where it happened and how to fix it.

The CLI turns any :class:`RetainError` into one clean line and exit code 2; anything
else is a bug in retain and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class RetainError(Exception):
    """A mistake in the user's input, with its location and a fix.

    Args:
        message: What is wrong, in one sentence.
        fix: What the user should do about it.
        file: The file the mistake is in, if any.
        line: The 1-based line in ``file``, if known.
        field: The dotted field or column name, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.fix = fix
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self.render())

    def __reduce__(self):
        # Keeps fix, file, line and field when the error crosses a process boundary
        # (``retain lab compare --workers``); Exception pickles only its positional args.
        return _rebuild, (type(self), self.message,
                          {"fix": self.fix, "file": self.file, "line": self.line, "field": self.field})

    def render(self) -> str:
        """Returns the error as one line: ``file:line: field: message (fix: ...)``."""
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        if self.field:
            where += f"{self.field}: "
        text = where + self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class ConfigError(RetainError):
    """The configuration file or an override is invalid."""


class DataError(RetainError):
    """A data file cannot be read or has the wrong shape."""


class RunDirError(RetainError):
    """A run directory cannot be created, resumed or written."""


class ModelLoadError(RetainError):
    """The model named by the user cannot be found or loaded, or one of its files is damaged."""


class OutputRefused(RetainError):
    """An output path names something a write must not replace (a device, a FIFO, a
    symlink, a folder) or a folder that cannot be written."""


def _rebuild(cls: type[RetainError], message: str, details: dict) -> RetainError:
    return cls(message, **details)


class TrainRefused(RetainError):
    """The audit or the doctor found blockers, and ``--force`` was not given."""
