"""Reading user examples from JSONL, JSON, CSV, Parquet, a ``datasets`` directory or a
dataset of the local Hugging Face cache (``hf:NAME[:SPLIT]``).

Each row is recognised by its fields (:mod:`retain.data.schemas`): prompt/response, OpenAI
chat, ShareGPT, Alpaca, TRL prompt/completion, preference pairs (prompt/chosen/rejected)
or plain text; one file may mix them.
A malformed row does not stop reading: it becomes a :class:`Problem` naming its line,
field and fix, so one pass shows every mistake. Commands that need clean data call
:func:`load_examples`, which turns any problem into a :class:`~retain.errors.DataError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retain.data.formats import READERS, BadRow, Fields, resolve_format
from retain.data.hub import HF_PREFIX, hub_rows
from retain.data.schemas import (
    CHAT_ROLES,
    RowSchema,
    chat_prompt_text,
    json_type,
    parse_row,
    prompt_response_schema,
)
from retain.errors import DataError

__all__ = ["CHAT_ROLES", "Example", "Problem", "chat_prompt_text", "describe_schemas", "load_examples",
           "load_examples_for", "read_examples", "read_examples_for", "read_text"]

_PROBLEMS_NAMED = 3
_PROMPT_RESPONSE = prompt_response_schema(Fields("prompt", "response", "messages"))


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
        schema: The format the row was written in. Alpaca, ShareGPT and TRL's
            conversational prompt/completion rows are chat rows; plain-text rows have an
            empty prompt and their whole text as the response.
        rejected: For a preference row (prompt/chosen/rejected), the rejected answer;
            ``response`` and ``messages`` hold the chosen one. None for other rows.
        rejected_messages: For a conversational preference row, the prompt's turns
            followed by the rejected answer's turn.
    """

    prompt: str
    response: str
    messages: tuple[dict[str, Any], ...] | None = None
    line: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    schema: RowSchema = _PROMPT_RESPONSE
    rejected: str | None = None
    rejected_messages: tuple[dict[str, Any], ...] | None = None

    @property
    def is_chat(self) -> bool:
        """Returns whether the row was chat data."""
        return self.messages is not None

    @property
    def is_preference(self) -> bool:
        """Returns whether the row is a preference pair (it has a rejected answer)."""
        return self.rejected is not None

    def rejected_example(self) -> Example:
        """Returns the row with its rejected answer in place of the chosen one (rendered
        and encoded as any row is).

        Raises:
            ValueError: If the row is not a preference pair.
        """
        if self.rejected is None:
            raise ValueError(f"line {self.line} is not a preference row: it has no rejected answer")
        return Example(self.prompt, self.rejected, self.rejected_messages, self.line, self.fields, self.schema)


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


def read_examples(
    path: str | Path,
    *,
    format: str = "auto",
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str = "messages",
    setting: str | None = None,
) -> tuple[list[Example], list[Problem]]:
    """Reads every example of a data file, collecting malformed rows instead of stopping.

    Args:
        path: A ``.jsonl``/``.ndjson``, ``.json`` (an array of rows, or JSON Lines),
            ``.csv`` or ``.parquet``/``.pq`` file, a directory written by
            ``datasets.Dataset.save_to_disk``, or ``hf:NAME[:SPLIT]``, a dataset of the
            local Hugging Face datasets cache (split ``train`` by default).
        format: ``auto`` (by extension; a directory is ``datasets``), ``jsonl``, ``json``,
            ``csv``, ``parquet`` or ``datasets``; ignored for ``hf:`` datasets.
        prompt_field: Column holding the prompt of prompt/response rows.
        response_field: Column holding the answer of prompt/response rows.
        messages_field: Column holding the turns of chat rows; a row where it is set is
            read as chat, whatever else it holds. The configured columns are tried before
            the other formats (:mod:`retain.data.schemas`).
        setting: The config setting that names the file (``data.train``), for errors
            that concern the whole source.

    Returns:
        The good examples in file order, and one :class:`Problem` per malformed row.

    Raises:
        DataError: If the file is missing, of unknown format or unreadable, if an ``hf:``
            dataset is not in the local cache, or if it has no usable example at all
            (empty, or every row malformed).
    """
    fields = Fields(prompt_field, response_field, messages_field)
    source = str(path)
    if source.startswith(HF_PREFIX):
        rows: Iterable[tuple[int, object]] = hub_rows(source, fields, setting)
    else:
        path = Path(path)
        rows = READERS[resolve_format(path, format)](path, fields)
    examples: list[Example] = []
    problems: list[Problem] = []
    for line, row in rows:
        try:
            examples.append(_parse_row(row, line, fields))
        except BadRow as bad:
            problems.append(Problem(source, line, bad.field, bad.message, bad.fix))
    if not examples:
        raise _nothing_usable(source, problems)
    return examples, problems


def load_examples(
    path: str | Path,
    *,
    format: str = "auto",
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str = "messages",
    setting: str | None = None,
) -> list[Example]:
    """Returns every example of a data file that must be clean.

    Takes the arguments of :func:`read_examples`.

    Raises:
        DataError: As :func:`read_examples` does, and if any row is malformed; the error
            points at the first bad row and names the lines of the next few.
    """
    examples, problems = read_examples(
        path, format=format, prompt_field=prompt_field, response_field=response_field,
        messages_field=messages_field, setting=setting,
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


def describe_schemas(examples: Iterable[Example]) -> str:
    """Returns the formats of ``examples`` in a few words, for the line that reports a file:
    ``Alpaca format (instruction/input/output)``, or, for a file that mixes formats,
    ``mixed formats: 900 Alpaca (instruction/input/output), 100 OpenAI chat (messages)``."""
    counts = Counter(example.schema for example in examples)
    if len(counts) == 1:
        return str(next(iter(counts)))
    return "mixed formats: " + ", ".join(f"{count:,} {schema.name} ({schema.columns})"
                                         for schema, count in counts.most_common())


class RowFormat(Protocol):
    """How a file's rows are read: what a config's ``data`` section says of them
    (:class:`retain.config.schema.DataConfig` is one)."""

    format: str
    prompt_field: str
    response_field: str
    messages_field: str


def read_examples_for(
    data: RowFormat, path: str | Path, setting: str | None = None
) -> tuple[list[Example], list[Problem]]:
    """Returns :func:`read_examples` of ``path``, read as the ``data`` config section says.

    Args:
        data: The config's ``data`` section; its format and field names are used.
        path: The file to read, e.g. ``data.train``.
        setting: The setting that names ``path`` (``data.train``), for errors.

    Raises:
        DataError: As :func:`read_examples` does.
    """
    return read_examples(
        path, format=data.format, prompt_field=data.prompt_field,
        response_field=data.response_field, messages_field=data.messages_field, setting=setting,
    )


def load_examples_for(data: RowFormat, path: str | Path, setting: str | None = None) -> list[Example]:
    """Returns :func:`load_examples` of ``path``, read as the ``data`` config section says.

    Raises:
        DataError: As :func:`load_examples` does.
    """
    return load_examples(
        path, format=data.format, prompt_field=data.prompt_field,
        response_field=data.response_field, messages_field=data.messages_field, setting=setting,
    )


def read_text(path: str | Path, what: str) -> str:
    """Returns a user's UTF-8 text file, or a :class:`DataError` saying what is wrong.

    Args:
        path: The file.
        what: What the file should be, for the fix (``"a probe suite"``).
    """
    if Path(path).exists() and not Path(path).is_file():  # a folder, or /dev/zero, which never ends
        raise DataError("not a regular file", file=path, fix=f"give the path of {what}")
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


# --- rows -----------------------------------------------------------------------------


def _parse_row(row: object, line: int, fields: Fields) -> Example:
    """Returns ``row`` as an :class:`Example`; raises :class:`BadRow` if malformed."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, Mapping):
        raise BadRow(
            None, f"the row is a JSON {json_type(row)}, not an object",
            f'write one object per line: {{"{fields.prompt}": ..., "{fields.response}": ...}}',
        )
    parsed = parse_row(row, fields)
    read = set(parsed.columns) | set(fields)
    others = {key: value for key, value in row.items() if key not in read}
    return Example(parsed.prompt, parsed.response, parsed.turns, line, others, parsed.schema, parsed.rejected,
                   parsed.rejected_turns)


def _nothing_usable(path: str, problems: list[Problem]) -> DataError:
    """Returns the error for a file without a single usable example."""
    if not problems:
        return DataError("the file has no examples", file=path, fix="add at least one row")
    first = problems[0]
    return DataError(
        f"no usable examples: all {len(problems)} row(s) are malformed; the first: {first.message}",
        fix=first.fix, file=path, line=first.line, field=first.field,
    )
