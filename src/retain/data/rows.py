"""Reading user examples from JSONL, CSV, Parquet or a ``datasets`` directory.

A row is prompt/response data (two text columns) or chat data (a list of
``{"role": ..., "content": ...}`` turns, the OpenAI format); one file may mix both.
A malformed row does not stop reading: it becomes a :class:`Problem` naming its line,
field and fix, so one pass shows every mistake. Commands that need clean data call
:func:`load_examples`, which turns any problem into a :class:`~retain.errors.DataError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retain.data.formats import CHAT_EXAMPLE, FIELD_SETTINGS, READERS, BadRow, Fields, resolve_format
from retain.errors import DataError

CHAT_ROLES = ("system", "user", "assistant", "tool")
_JSON_TYPES = (
    (type(None), "null"), (bool, "boolean"), ((int, float), "number"), (str, "string"),
    (Mapping, "object"), ((list, tuple), "array"),
)
_PROBLEMS_NAMED = 3


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
    fields = Fields(prompt_field, response_field, messages_field)
    examples: list[Example] = []
    problems: list[Problem] = []
    for line, row in READERS[resolve_format(path, format)](path, fields):
        try:
            examples.append(_parse_row(row, line, fields))
        except BadRow as bad:
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


def chat_prompt_text(turns: Sequence[Mapping[str, Any]]) -> str:
    """Returns ``turns`` as plain text ending in an ``Assistant:`` cue.

    This is the fallback prompt of chat examples (``User: hi\\nAssistant: hello\\n...``),
    for labels and for models without a chat template.
    """
    lines = [f"{str(turn['role']).capitalize()}: {turn['content']}" for turn in turns]
    return "\n".join([*lines, "Assistant:"])


# --- rows -----------------------------------------------------------------------------


def _parse_row(row: object, line: int, fields: Fields) -> Example:
    """Returns ``row`` as an :class:`Example`; raises :class:`BadRow` if malformed."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, Mapping):
        raise BadRow(
            None, f"the row is a JSON {_json_type(row)}, not an object",
            f'write one object per line: {{"{fields.prompt}": ..., "{fields.response}": ...}}',
        )
    others = {key: value for key, value in row.items() if key not in fields}
    if row.get(fields.messages) is not None:
        prompt, response, turns = _chat(row[fields.messages], fields.messages)
        return Example(prompt, response, turns, line, others)
    prompt, response = _prompt_response(row, fields)
    return Example(prompt, response, None, line, others)


def _prompt_response(row: Mapping[str, Any], fields: Fields) -> tuple[str, str]:
    """Returns the prompt and response of a prompt/response row; raises :class:`BadRow`."""
    if row.get(fields.prompt) is None and row.get(fields.response) is None:
        raise BadRow(
            fields.prompt,
            f"the row has neither '{fields.prompt}'/'{fields.response}' nor '{fields.messages}'",
            f"add '{fields.prompt}' and '{fields.response}', or chat turns under "
            f"'{fields.messages}'; if your columns have other names, set {FIELD_SETTINGS}",
        )
    prompt = _text(row, fields.prompt, "data.prompt_field")
    response = _text(row, fields.response, "data.response_field")
    if not response.strip():
        raise BadRow(fields.response, "the response is empty", "give the row an answer or drop it")
    return prompt, response


def _text(row: Mapping[str, Any], name: str, setting: str) -> str:
    """Returns the text in column ``name``; raises :class:`BadRow` if missing or not text."""
    value = row.get(name)
    if value is None:
        raise BadRow(
            name, f"missing field '{name}'",
            f"add '{name}' to the row, or set {setting} to the column that holds it",
        )
    if not isinstance(value, str):
        raise BadRow(
            name, f"'{name}' must be text, got a JSON {_json_type(value)}",
            "write it as a string (in quotes)",
        )
    return value


def _chat(turns: object, name: str) -> tuple[str, str, tuple[dict[str, Any], ...]]:
    """Returns the prompt text, the last assistant answer and the turns of a chat row.

    Turns after the last assistant turn are kept in the turns but are not in the prompt.

    Raises:
        BadRow: Unless ``turns`` is a non-empty list of valid turns with an answer.
    """
    if not isinstance(turns, (list, tuple)):
        raise BadRow(
            name, f"'{name}' must be a list of turns, got a JSON {_json_type(turns)}",
            f"write it as {CHAT_EXAMPLE}",
        )
    if not turns:
        raise BadRow(name, f"'{name}' is empty", f"write the conversation as {CHAT_EXAMPLE}")
    for index, turn in enumerate(turns):
        _check_turn(turn, f"{name}[{index}]")
    answers = [index for index, turn in enumerate(turns) if turn["role"] == "assistant"]
    if not answers:
        raise BadRow(
            name, "the conversation has no assistant turn",
            "end the conversation with the answer as an assistant turn",
        )
    last = answers[-1]
    if not turns[last]["content"].strip():
        raise BadRow(
            f"{name}[{last}].content", "the last assistant turn is empty",
            "give the conversation an answer or drop it",
        )
    turns_kept = tuple(dict(turn) for turn in turns)
    return chat_prompt_text(turns[:last]), turns[last]["content"], turns_kept


def _check_turn(turn: object, where: str) -> None:
    """Raises :class:`BadRow` unless ``turn`` has a known role and text content."""
    if not isinstance(turn, Mapping):
        raise BadRow(
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
        raise BadRow(f"{where}.role", problem, fix)
    content = turn.get("content")
    if not isinstance(content, str):
        raise BadRow(
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
