"""The file formats rows are read from: JSONL, JSON, CSV, Parquet and ``datasets`` folders,
each yielding (line, row) pairs, with a clear error for a file that cannot be read.

JSON and JSONL are read by hand, not by ``datasets``: its JSON loader casts every row to
one Arrow schema, so a single row with a number where the others hold text fails the
whole file, with no line number; here each bad row is its own problem, with its line."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from retain.errors import DataError
from retain.io import decode_json, file_kind

CHAT_EXAMPLE = '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
FORMATS = ("jsonl", "json", "csv", "parquet", "datasets")

_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
    ".pq": "parquet",
}

LINE_BREAK = re.compile(r"\r\n|\r|\n")


FIELD_SETTINGS = "data.prompt_field, data.response_field or data.messages_field"
FORMATS_READ = (
    "prompt/response, messages (OpenAI chat), conversations (ShareGPT), "
    "instruction/input/output (Alpaca), prompt/completion (TRL), prompt/chosen/rejected (preference) "
    "or text (plain text)"
)
TURN_COLUMNS = ("conversations",)  # columns of chat turns besides data.messages_field (ShareGPT's)
# The columns that make a table's rows readable, besides the configured fields.
_SCHEMA_COLUMNS = ({"prompt", "completion"}, {"conversations"}, {"instruction", "output"}, {"text"},
                   {"chosen", "rejected"})


class Fields(NamedTuple):
    """The column names that hold prompt, response and chat turns."""

    prompt: str
    response: str
    messages: str


class BadRow(Exception):
    """Why a row cannot become an :class:`Example`.

    Readers yield one in place of a row they cannot decode (invalid JSON, say), so that
    every row, decoded or not, reaches :func:`_parse_row` with its line number.
    """

    def __init__(self, field: str | None, message: str, fix: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.fix = fix


def _special(path: Path) -> str:
    """Says what ``path`` is when it is neither a file nor a folder."""
    return f"{path} is {file_kind(path.stat().st_mode)}, not a file to read rows from"


def resolve_format(path: Path, format: str) -> str:
    """Returns the format to read ``path`` with; raises :class:`DataError` if none fits."""
    if not path.exists():
        raise DataError(
            "file not found", file=path,
            fix="check the path; relative paths start at the current directory",
        )
    if not path.is_file() and not path.is_dir():  # /dev/zero never ends, a FIFO may never start
        raise DataError(_special(path), file=path, fix="give the path of a data file")
    if format == "auto":
        if path.is_dir():
            return "datasets"
        if path.suffix.lower() not in _EXTENSIONS:
            raise DataError(
                f"cannot tell the format from the extension '{path.suffix}'", file=path,
                fix="name the file .jsonl, .json, .csv or .parquet, or set data.format "
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


def check_columns(columns: Sequence[str], fields: Fields, path: Path | str) -> None:
    """Raises :class:`DataError` if a table has a column twice (a reader would keep one and
    drop the other without a word) or the columns of no format retain reads."""
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise DataError(f"the column '{repeated[0]}' appears twice in the header", file=path, line=1,
                        field=repeated[0], fix="rename or remove one of them")
    present = set(columns)
    if fields.messages in present or {fields.prompt, fields.response} <= present:
        return
    if any(needed <= present for needed in _SCHEMA_COLUMNS):
        return
    missing = " or ".join(repr(name) for name in fields[:2] if name not in columns)
    raise DataError(
        f"no column {missing} for prompt/response data, nor the columns of another format "
        f"retain reads; the columns are: {', '.join(columns) or 'none'}",
        file=path, fix=f"name the columns as one of {FORMATS_READ}, or set {FIELD_SETTINGS} to "
        "the names you use",
    )


def _unreadable(path: Path, error: OSError) -> DataError:
    """Returns the error for a file the operating system will not let us read."""
    return DataError(
        f"cannot read the file: {error.strerror or error}", file=path,
        fix="check that it is a file you may read",
    )


def _jsonl_rows(path: Path, fields: Fields) -> Iterator[tuple[int, object]]:
    """Yields (line, row) per non-blank line; a :class:`BadRow` for lines that do not decode."""
    try:
        with path.open("rb") as handle:
            for line, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield line, _decode_json_line(raw)
    except OSError as error:
        raise _unreadable(path, error) from error


def _decode_json_line(raw: bytes) -> object:
    """Returns the JSON value on one line, or a :class:`BadRow` saying why there is none."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return BadRow(None, "the line is not UTF-8 text", "save the file as UTF-8")
    try:
        return decode_json(text)
    except ValueError as error:
        return BadRow(
            None, f"invalid JSON: {error}",
            "make the line one complete JSON object; a JSONL record cannot span lines",
        )


def _json_rows(path: Path, fields: Fields) -> Iterator[tuple[int, object]]:
    """Yields (line, row) per row of a ``.json`` file: a JSON array of rows, each at the line
    where it starts, or JSON Lines, which people save as ``.json`` too."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"the file is not UTF-8 text (byte {error.start})", file=path,
                        fix="save it as UTF-8") from error
    except OSError as error:
        raise _unreadable(path, error) from error
    if not text.lstrip().startswith("["):
        _refuse_one_object(text, path)
        yield from _jsonl_rows(path, fields)
        return
    try:
        rows = decode_json(text)
    except ValueError as error:
        raise DataError(
            f"invalid JSON: {error}", file=path, line=getattr(error, "line", None),
            fix="make the file one JSON array of rows ([{...}, {...}]), or one JSON object per line "
            "(JSON Lines)",
        ) from None
    yield from zip(_element_lines(text), rows, strict=True)  # type: ignore[arg-type]


def _refuse_one_object(text: str, path: Path) -> None:
    """Raises :class:`DataError` when ``text`` is one JSON object written over several lines:
    no row per line, and no array of rows (often the rows sit under a key, ``{"data": [...]}``)."""
    if len([line for line in LINE_BREAK.split(text.strip()) if line.strip()]) < 2:
        return
    try:
        value = decode_json(text)
    except ValueError:
        return  # JSON Lines, or broken lines that the JSONL reader names one by one
    if not isinstance(value, dict):
        return
    lists = [key for key, item in value.items() if isinstance(item, list)]
    raise DataError(
        "the file holds one JSON object over several lines, neither an array of rows nor one row per line",
        file=path, line=1,
        fix="write the rows as a JSON array ([{...}, {...}]) or one object per line (JSON Lines)"
        + (f"; the rows seem to be under '{lists[0]}': save that list alone" if lists else ""),
    )


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _element_lines(text: str) -> list[int]:
    """Returns the line each element of the JSON array ``text`` starts on (``text`` is valid
    JSON, already decoded)."""
    decoder = json.JSONDecoder()
    index = _JSON_SPACE.match(text, text.index("[") + 1).end()
    line, counted, lines = 1, 0, []
    while text[index] != "]":
        line += text.count("\n", counted, index)
        counted = index
        lines.append(line)
        _, index = decoder.raw_decode(text, index)
        index = _JSON_SPACE.match(text, index).end()
        if text[index] == ",":
            index = _JSON_SPACE.match(text, index + 1).end()
    return lines


def _csv_rows(path: Path, fields: Fields) -> Iterator[tuple[int, object]]:
    """Yields (line, row) per CSV record, the line where it starts; the header is line 1."""
    # Long contexts exceed the csv module's 128 KiB default cell limit.
    csv.field_size_limit(2**31 - 1)
    ended = 0  # the line the last record ended on: the next one starts after it
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            # strict: a quote left open is an error, not a cell that swallows the file.
            reader = csv.DictReader(handle, strict=True)
            check_columns(reader.fieldnames or [], fields, path)
            ended = reader.line_num
            for record in reader:
                # line_num is where the record ends; quoted cells may hold line breaks.
                cells = [cell for cell in record.values() if isinstance(cell, str)]
                breaks = sum(len(LINE_BREAK.findall(cell)) for cell in cells)
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


def _csv_row(record: dict[Any, Any], fields: Fields) -> object:
    """Returns a CSV record as a row: empty cells are missing, chat turns are JSON text."""
    if None in record:  # DictReader files cells beyond the header under the key None
        return BadRow(
            None, f"the row has {len(record[None])} more cell(s) than the header",
            "quote cells that contain commas",
        )
    row = {key: (value if value != "" else None) for key, value in record.items()}
    for column in (fields.messages, *TURN_COLUMNS):
        turns = row.get(column)
        if isinstance(turns, str):
            try:
                row[column] = decode_json(turns)
            except ValueError as error:
                return BadRow(
                    column, f"the chat turns are not valid JSON: {error}",
                    f"write the cell as a JSON list: {CHAT_EXAMPLE}",
                )
    return row


def _parquet_rows(path: Path, fields: Fields) -> Iterator[tuple[int, object]]:
    """Yields (row number, row) per Parquet row, reading one batch at a time."""
    import pyarrow.parquet as pq  # installed with datasets; imported late, it is slow
    from pyarrow import ArrowException

    try:
        table = pq.ParquetFile(path)
        check_columns(table.schema_arrow.names, fields, path)
        number = 0
        for batch in table.iter_batches():
            for row in _batch_rows(batch):
                number += 1
                yield number, row
    # ArrowInvalid is a ValueError; ArrowException covers its other errors (types, not implemented).
    except (OSError, ValueError, ArrowException) as error:
        raise DataError(
            f"cannot read it as Parquet: {error}", file=path,
            fix="check that it is a Parquet file, or set data.format to its real format",
        ) from error


def _batch_rows(batch: Any) -> list[object]:
    """Returns a Parquet record batch as rows; a row with a cell Python cannot hold (a
    timestamp past the year 9999, say) becomes a :class:`BadRow` naming the column."""
    try:
        return batch.to_pylist()
    except (OverflowError, ValueError):
        pass
    rows: list[object] = []
    for index in range(batch.num_rows):
        row: dict[str, object] = {}
        for name, column in zip(batch.schema.names, batch.columns):
            try:
                row[name] = column[index].as_py()
            except (OverflowError, ValueError) as error:
                row = BadRow(name, f"the value in column '{name}' cannot be read: {error}",
                             f"fix or drop the column '{name}' (a {column.type} value out of range)")
                break
        rows.append(row)
    return rows


def _datasets_rows(path: Path, fields: Fields) -> Iterator[tuple[int, object]]:
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
    check_columns(dataset.column_names, fields, path)
    yield from enumerate(dataset, start=1)


READERS = {
    "jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows, "datasets": _datasets_rows,
}
