"""Reading user examples from JSONL, CSV, Parquet or a ``datasets`` directory.

A row is prompt/response data (two text columns) or chat data (a list of
``{"role": ..., "content": ...}`` turns, the OpenAI format); one file may mix both.
A malformed row does not stop reading: it becomes a :class:`Problem` naming its line,
field and fix, so one pass shows every mistake. Commands that need clean data call
:func:`load_examples`, which turns any problem into a :class:`~retain.errors.DataError`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from retain.errors import DataError

FORMATS = ("jsonl", "csv", "parquet", "datasets")
CHAT_ROLES = ("system", "user", "assistant", "tool")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
_JSON_TYPES = (
    (type(None), "null"), (bool, "boolean"), ((int, float), "number"), (str, "string"),
    (Mapping, "object"), ((list, tuple), "array"),
)
_PROBLEMS_NAMED = 3
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_FIELD_SETTINGS = "data.prompt_field, data.response_field or data.messages_field"
_CHAT_EXAMPLE = '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'


@dataclass(frozen=True)
class Example:
    """One example, whatever format it came from.

    Attributes:
        prompt: The text before the answer. For chat rows, the turns before the last
            assistant turn as plain text (``User: ...\\nAssistant:``): a fallback and a
            label only; render ``messages`` with the model's chat template instead.
        response: The answer; for chat rows, the content of the last assistant turn.
        messages: The chat turns as given, for chat rows; None for prompt/response rows.
        line: Where the row is: the 1-based line in JSONL and CSV (the header is line 1),
            the 1-based row number in Parquet and ``datasets`` data.
        fields: The row's other columns (an ``id``, a ``label``, ...), unchanged.
    """

    prompt: str
    response: str
    messages: tuple[dict[str, Any], ...] | None = None
    line: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        """Returns whether the row was chat data."""
        return self.messages is not None


@dataclass(frozen=True)
class Problem:
    """A malformed row: where it is, what is wrong and how to fix it."""

    file: str
    line: int
    field: str | None
    message: str
    fix: str

    def as_error(self) -> DataError:
        """Returns the problem as a :class:`DataError`; its ``render()`` is one line."""
        return DataError(
            self.message, fix=self.fix, file=self.file, line=self.line, field=self.field
        )


class _Fields(NamedTuple):
    """The column names that hold prompt, response and chat turns."""

    prompt: str
    response: str
    messages: str


class _BadRow(Exception):
    """Why a row cannot become an :class:`Example`.

    Readers yield one in place of a row they cannot decode (invalid JSON, say), so that
    every row, decoded or not, reaches :func:`_parse_row` with its line number.
    """

    def __init__(self, field: str | None, message: str, fix: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.fix = fix


def read_examples(
    path: str | Path,
    *,
    format: str = "auto",
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str = "messages",
) -> tuple[list[Example], list[Problem]]:
    """Reads every example of a data file, collecting malformed rows instead of stopping.

    Args:
        path: A ``.jsonl``/``.ndjson``, ``.csv`` or ``.parquet``/``.pq`` file, or a
            directory written by ``datasets.Dataset.save_to_disk``.
        format: ``auto`` (by extension; a directory is ``datasets``), ``jsonl``, ``csv``,
            ``parquet`` or ``datasets``.
        prompt_field: Column holding the prompt of prompt/response rows.
        response_field: Column holding the answer of prompt/response rows.
        messages_field: Column holding the turns of chat rows; a row where it is set is
            read as chat, whatever else it holds.

    Returns:
        The good examples in file order, and one :class:`Problem` per malformed row.

    Raises:
        DataError: If the file is missing, of unknown format or unreadable, or if it has
            no usable example at all (empty, or every row malformed).
    """
    path = Path(path)
    fields = _Fields(prompt_field, response_field, messages_field)
    examples: list[Example] = []
    problems: list[Problem] = []
    for line, row in _READERS[_resolve_format(path, format)](path, fields):
        try:
            examples.append(_parse_row(row, line, fields))
        except _BadRow as bad:
            problems.append(Problem(str(path), line, bad.field, bad.message, bad.fix))
    if not examples:
        raise _nothing_usable(path, problems)
    return examples, problems


def load_examples(
    path: str | Path,
    *,
    format: str = "auto",
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str = "messages",
) -> list[Example]:
    """Returns every example of a data file that must be clean.

    Takes the arguments of :func:`read_examples`.

    Raises:
        DataError: As :func:`read_examples` does, and if any row is malformed; the error
            points at the first bad row and names the lines of the next few.
    """
    examples, problems = read_examples(
        path, format=format, prompt_field=prompt_field, response_field=response_field,
        messages_field=messages_field,
    )
    if not problems:
        return examples
    first = problems[0]
    message = f"{len(problems)} malformed row(s); the first: {first.message}"
    if len(problems) > 1:
        named = ", ".join(str(problem.line) for problem in problems[1 : 1 + _PROBLEMS_NAMED])
        more = ", ..." if len(problems) > 1 + _PROBLEMS_NAMED else ""
        message += f" (also lines {named}{more})"
    raise DataError(message, fix=first.fix, file=first.file, line=first.line, field=first.field)


class RowFormat(Protocol):
    """How a file's rows are read: what a config's ``data`` section says of them
    (:class:`retain.config.schema.DataConfig` is one)."""

    format: str
    prompt_field: str
    response_field: str
    messages_field: str


def read_examples_for(
    data: RowFormat, path: str | Path
) -> tuple[list[Example], list[Problem]]:
    """Returns :func:`read_examples` of ``path``, read as the ``data`` config section says.

    Args:
        data: The config's ``data`` section; its format and field names are used.
        path: The file to read, e.g. ``data.train``.

    Raises:
        DataError: As :func:`read_examples` does.
    """
    return read_examples(
        path, format=data.format, prompt_field=data.prompt_field,
        response_field=data.response_field, messages_field=data.messages_field,
    )


def load_examples_for(data: RowFormat, path: str | Path) -> list[Example]:
    """Returns :func:`load_examples` of ``path``, read as the ``data`` config section says.

    Raises:
        DataError: As :func:`load_examples` does.
    """
    return load_examples(
        path, format=data.format, prompt_field=data.prompt_field,
        response_field=data.response_field, messages_field=data.messages_field,
    )


def read_text(path: str | Path, what: str) -> str:
    """Returns a user's UTF-8 text file, or a :class:`DataError` saying what is wrong.

    Args:
        path: The file.
        what: What the file should be, for the fix (``"a probe suite"``).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", file=path, fix=f"give the path of {what}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text (byte {error.start})", file=path,
                        fix=f"save {what} as UTF-8") from None
    except OSError as error:
        raise DataError(f"cannot read the file ({error.strerror})", file=path,
                        fix=f"check the path and permissions of {what}") from None


def decode_json(text: str) -> object:
    """Returns the JSON value in ``text`` (one JSONL line, or one cell).

    Raises:
        ValueError: Saying in a few words why it is not valid JSON: the parser's
            complaint and column, a number of more than 4,300 digits (Python refuses
            to convert them), nesting deeper than Python's recursion limit, or a lone
            surrogate escape (``"\\ud800"``: valid JSON, but not Unicode text).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} (column {error.colno})") from None
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


def chat_prompt_text(turns: Sequence[Mapping[str, Any]]) -> str:
    """Returns ``turns`` as plain text ending in an ``Assistant:`` cue.

    This is the fallback prompt of chat examples (``User: hi\\nAssistant: hello\\n...``),
    for labels and for models without a chat template.
    """
    lines = [f"{str(turn['role']).capitalize()}: {turn['content']}" for turn in turns]
    return "\n".join([*lines, "Assistant:"])


# --- rows -----------------------------------------------------------------------------


def _parse_row(row: object, line: int, fields: _Fields) -> Example:
    """Returns ``row`` as an :class:`Example`; raises :class:`_BadRow` if malformed."""
    if isinstance(row, _BadRow):
        raise row
    if not isinstance(row, Mapping):
        raise _BadRow(
            None, f"the row is a JSON {_json_type(row)}, not an object",
            f'write one object per line: {{"{fields.prompt}": ..., "{fields.response}": ...}}',
        )
    others = {key: value for key, value in row.items() if key not in fields}
    if row.get(fields.messages) is not None:
        prompt, response, turns = _chat(row[fields.messages], fields.messages)
        return Example(prompt, response, turns, line, others)
    prompt, response = _prompt_response(row, fields)
    return Example(prompt, response, None, line, others)


def _prompt_response(row: Mapping[str, Any], fields: _Fields) -> tuple[str, str]:
    """Returns the prompt and response of a prompt/response row; raises :class:`_BadRow`."""
    if row.get(fields.prompt) is None and row.get(fields.response) is None:
        raise _BadRow(
            fields.prompt,
            f"the row has neither '{fields.prompt}'/'{fields.response}' nor '{fields.messages}'",
            f"add '{fields.prompt}' and '{fields.response}', or chat turns under "
            f"'{fields.messages}'; if your columns have other names, set {_FIELD_SETTINGS}",
        )
    prompt = _text(row, fields.prompt, "data.prompt_field")
    response = _text(row, fields.response, "data.response_field")
    if not response.strip():
        raise _BadRow(fields.response, "the response is empty", "give the row an answer or drop it")
    return prompt, response


def _text(row: Mapping[str, Any], name: str, setting: str) -> str:
    """Returns the text in column ``name``; raises :class:`_BadRow` if missing or not text."""
    value = row.get(name)
    if value is None:
        raise _BadRow(
            name, f"missing field '{name}'",
            f"add '{name}' to the row, or set {setting} to the column that holds it",
        )
    if not isinstance(value, str):
        raise _BadRow(
            name, f"'{name}' must be text, got a JSON {_json_type(value)}",
            "write it as a string (in quotes)",
        )
    return value


def _chat(turns: object, name: str) -> tuple[str, str, tuple[dict[str, Any], ...]]:
    """Returns the prompt text, the last assistant answer and the turns of a chat row.

    Turns after the last assistant turn are kept in the turns but are not in the prompt.

    Raises:
        _BadRow: Unless ``turns`` is a non-empty list of valid turns with an answer.
    """
    if not isinstance(turns, (list, tuple)):
        raise _BadRow(
            name, f"'{name}' must be a list of turns, got a JSON {_json_type(turns)}",
            f"write it as {_CHAT_EXAMPLE}",
        )
    if not turns:
        raise _BadRow(name, f"'{name}' is empty", f"write the conversation as {_CHAT_EXAMPLE}")
    for index, turn in enumerate(turns):
        _check_turn(turn, f"{name}[{index}]")
    answers = [index for index, turn in enumerate(turns) if turn["role"] == "assistant"]
    if not answers:
        raise _BadRow(
            name, "the conversation has no assistant turn",
            "end the conversation with the answer as an assistant turn",
        )
    last = answers[-1]
    if not turns[last]["content"].strip():
        raise _BadRow(
            f"{name}[{last}].content", "the last assistant turn is empty",
            "give the conversation an answer or drop it",
        )
    turns_kept = tuple(dict(turn) for turn in turns)
    return chat_prompt_text(turns[:last]), turns[last]["content"], turns_kept


def _check_turn(turn: object, where: str) -> None:
    """Raises :class:`_BadRow` unless ``turn`` has a known role and text content."""
    if not isinstance(turn, Mapping):
        raise _BadRow(
            where, f"a turn must be an object, got a JSON {_json_type(turn)}",
            'write it as {"role": "user", "content": "..."}',
        )
    role = turn.get("role")
    if role not in CHAT_ROLES:
        fix = f"use one of {', '.join(CHAT_ROLES)}"
        if "from" in turn and "value" in turn:
            fix = (
                "convert ShareGPT turns {from, value} to {role, content}, "
                "human to user and gpt to assistant"
            )
        problem = "missing role" if role is None else f"unknown role {role!r}"
        raise _BadRow(f"{where}.role", problem, fix)
    content = turn.get("content")
    if not isinstance(content, str):
        raise _BadRow(
            f"{where}.content", f"the content must be text, got a JSON {_json_type(content)}",
            "write the turn's text as a string",
        )


def _json_type(value: object) -> str:
    """Returns the JSON name of ``value``'s type, for messages."""
    names = (name for kind, name in _JSON_TYPES if isinstance(value, kind))
    return next(names, type(value).__name__)


def _nothing_usable(path: Path, problems: list[Problem]) -> DataError:
    """Returns the error for a file without a single usable example."""
    if not problems:
        return DataError("the file has no examples", file=path, fix="add at least one row")
    first = problems[0]
    return DataError(
        f"no usable examples: all {len(problems)} row(s) are malformed; the first: {first.message}",
        fix=first.fix, file=path, line=first.line, field=first.field,
    )


# --- formats --------------------------------------------------------------------------


def _resolve_format(path: Path, format: str) -> str:
    """Returns the format to read ``path`` with; raises :class:`DataError` if none fits."""
    if not path.exists():
        raise DataError(
            "file not found", file=path,
            fix="check the path; relative paths start at the current directory",
        )
    if format == "auto":
        if path.is_dir():
            return "datasets"
        if path.suffix.lower() not in _EXTENSIONS:
            raise DataError(
                f"cannot tell the format from the extension '{path.suffix}'", file=path,
                fix="name the file .jsonl, .csv or .parquet, or set data.format "
                "(jsonl for one JSON object per line)",
            )
        return _EXTENSIONS[path.suffix.lower()]
    if format not in FORMATS:
        raise DataError(
            f"unknown format '{format}'", file=path, fix=f"use auto or one of {', '.join(FORMATS)}"
        )
    if path.is_dir() != (format == "datasets"):
        raise DataError(
            f"format '{format}' does not fit a {'directory' if path.is_dir() else 'file'}",
            file=path, fix="use datasets for a directory written by save_to_disk, "
            "jsonl, csv or parquet for a file",
        )
    return format


def _check_columns(columns: Sequence[str], fields: _Fields, path: Path) -> None:
    """Raises :class:`DataError` if a table has the columns of neither kind of row."""
    if fields.messages in columns or {fields.prompt, fields.response} <= set(columns):
        return
    missing = " or ".join(repr(name) for name in fields[:2] if name not in columns)
    raise DataError(
        f"no column {missing} for prompt/response data and no '{fields.messages}' column "
        f"for chat data; the columns are: {', '.join(columns) or 'none'}",
        file=path, fix=f"rename the columns, or set {_FIELD_SETTINGS} to the names you use",
    )


def _unreadable(path: Path, error: OSError) -> DataError:
    """Returns the error for a file the operating system will not let us read."""
    return DataError(
        f"cannot read the file: {error.strerror or error}", file=path,
        fix="check that it is a file you may read",
    )


def _jsonl_rows(path: Path, fields: _Fields) -> Iterator[tuple[int, object]]:
    """Yields (line, row) per non-blank line; a :class:`_BadRow` for lines that do not decode."""
    try:
        with path.open("rb") as handle:
            for line, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield line, _decode_json_line(raw)
    except OSError as error:
        raise _unreadable(path, error) from error


def _decode_json_line(raw: bytes) -> object:
    """Returns the JSON value on one line, or a :class:`_BadRow` saying why there is none."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return _BadRow(None, "the line is not UTF-8 text", "save the file as UTF-8")
    try:
        return decode_json(text)
    except ValueError as error:
        return _BadRow(
            None, f"invalid JSON: {error}",
            "make the line one complete JSON object; a JSONL record cannot span lines",
        )


def _csv_rows(path: Path, fields: _Fields) -> Iterator[tuple[int, object]]:
    """Yields (line, row) per CSV record, the line where it starts; the header is line 1."""
    # Long contexts exceed the csv module's 128 KiB default cell limit.
    csv.field_size_limit(2**31 - 1)
    ended = 0  # the line the last record ended on: the next one starts after it
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            # strict: a quote left open is an error, not a cell that swallows the file.
            reader = csv.DictReader(handle, strict=True)
            _check_columns(reader.fieldnames or [], fields, path)
            ended = reader.line_num
            for record in reader:
                # line_num is where the record ends; quoted cells may hold line breaks.
                cells = [cell for cell in record.values() if isinstance(cell, str)]
                breaks = sum(len(_LINE_BREAK.findall(cell)) for cell in cells)
                ended = reader.line_num
                yield reader.line_num - breaks, _csv_row(record, fields)
    except UnicodeDecodeError as error:
        raise DataError("the file is not UTF-8 text", file=path, fix="save it as UTF-8") from error
    except csv.Error as error:
        raise DataError(
            f"malformed CSV: {error}", file=path, line=ended + 1,
            fix='close every quoted cell with a quote, and double the quotes inside one ("")',
        ) from error
    except OSError as error:
        raise _unreadable(path, error) from error


def _csv_row(record: dict[Any, Any], fields: _Fields) -> object:
    """Returns a CSV record as a row: empty cells are missing, chat turns are JSON text."""
    if None in record:  # DictReader files cells beyond the header under the key None
        return _BadRow(
            None, f"the row has {len(record[None])} more cell(s) than the header",
            "quote cells that contain commas",
        )
    row = {key: (value if value != "" else None) for key, value in record.items()}
    turns = row.get(fields.messages)
    if isinstance(turns, str):
        try:
            row[fields.messages] = decode_json(turns)
        except ValueError as error:
            return _BadRow(
                fields.messages, f"the chat turns are not valid JSON: {error}",
                f"write the cell as a JSON list: {_CHAT_EXAMPLE}",
            )
    return row


def _parquet_rows(path: Path, fields: _Fields) -> Iterator[tuple[int, object]]:
    """Yields (row number, row) per Parquet row, reading one batch at a time."""
    import pyarrow.parquet as pq  # installed with datasets; imported late, it is slow
    from pyarrow import ArrowException

    try:
        table = pq.ParquetFile(path)
        _check_columns(table.schema_arrow.names, fields, path)
        number = 0
        for batch in table.iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield number, row
    # ArrowInvalid is a ValueError; ArrowException covers its other errors (types, not implemented).
    except (OSError, ValueError, ArrowException) as error:
        raise DataError(
            f"cannot read it as Parquet: {error}", file=path,
            fix="check that it is a Parquet file, or set data.format to its real format",
        ) from error


def _datasets_rows(path: Path, fields: _Fields) -> Iterator[tuple[int, object]]:
    """Yields (row number, row) per row of a directory written by ``save_to_disk``."""
    from datasets import Dataset, load_from_disk  # imported late, it is slow

    try:
        dataset = load_from_disk(str(path))
    # A folder of the wrong files fails inside datasets in many ways (a KeyError for a
    # state.json without its keys, ...); every one means it is not a saved dataset.
    except Exception as error:  # noqa: BLE001
        raise DataError(
            f"not a dataset saved with save_to_disk ({type(error).__name__}: {str(error)[:200]})", file=path,
            fix="point to a directory written by save_to_disk, or to a .jsonl, .csv or "
            ".parquet file",
        ) from error
    if not isinstance(dataset, Dataset):
        splits = list(dataset)
        raise DataError(
            f"the directory holds a dataset with splits ({', '.join(splits) or 'none'}), not one split",
            file=path,
            fix=f"point to one split, e.g. {path / splits[0]}" if splits else "save one split with save_to_disk",
        )
    _check_columns(dataset.column_names, fields, path)
    yield from enumerate(dataset, start=1)


_READERS = {
    "jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows, "datasets": _datasets_rows,
}
