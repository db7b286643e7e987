"""Which format a row is written in, and how it becomes a prompt, an answer and chat turns.

A row is recognised by its fields, row by row, so one file may mix formats:

- prompt/response: ``data.prompt_field`` and ``data.response_field`` (``prompt``,
  ``response``), the text trained as written, ``prompt + response``;
- OpenAI chat: ``data.messages_field`` (``messages``), a list of ``{role, content}``;
- ShareGPT: ``conversations``, a list of ``{from, value}`` (``from`` human, gpt or
  system), read as the same turns as OpenAI chat;
- Alpaca: ``instruction``, an optional ``input``, ``output`` (and an optional
  ``system``): a user turn (the instruction, a blank line and the input when there is
  one) and an assistant turn (the output);
- TRL prompt/completion: ``prompt`` and ``completion``, both text (a continuation, as
  prompt/response) or both lists of chat turns (TRL's conversational variant);
- plain text: ``text``, language modelling: the whole text is the answer, with an
  empty prompt, so every token of it is trained;
- preference (TRL's, for ``train.objective: dpo``): ``prompt``, ``chosen`` and
  ``rejected``, three texts, or TRL's conversational form: ``prompt`` a list of turns and
  ``chosen`` and ``rejected`` each one assistant turn (``prompt`` may be left out when
  ``chosen`` and ``rejected`` are whole conversations that share every turn but the
  last). The row reads as the chosen answer's row, with the rejected answer beside it.

The configured fields are tried first, so ``data.prompt_field`` and friends win over
detection. This per-row mapping is written by hand: ``datasets`` reads files, but no
library maps these formats to the same turns with a line, a field and a fix per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from retain.data.formats import CHAT_EXAMPLE, FIELD_SETTINGS, BadRow, Fields

CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                     "system": "system"}
SHAREGPT_TOOL_SPEAKERS = ("function_call", "observation", "tool")
SHAREGPT_COLUMN = "conversations"
FORMATS_READ = (
    "prompt/response, messages (OpenAI chat), conversations (ShareGPT), "
    "instruction/input/output (Alpaca), prompt/completion (TRL), prompt/chosen/rejected (preference) "
    "or text (plain text)"
)
_JSON_TYPES = (
    (type(None), "null"), (bool, "boolean"), ((int, float), "number"), (str, "string"),
    (Mapping, "object"), ((list, tuple), "array"),
)


class RowSchema(NamedTuple):
    """The format a row was written in: its name and the columns that say so."""

    name: str
    columns: str

    def __str__(self) -> str:
        return f"{self.name} format ({self.columns})"


ALPACA = RowSchema("Alpaca", "instruction/input/output")
PROMPT_COMPLETION = RowSchema("TRL prompt/completion", "prompt/completion")
TEXT = RowSchema("plain text", "text")
PREFERENCE = RowSchema("preference", "prompt/chosen/rejected")
PREFERENCE_CHAT = RowSchema("conversational preference", "prompt/chosen/rejected")
PREFERENCE_COLUMNS = ("chosen", "rejected")


def prompt_response_schema(fields: Fields) -> RowSchema:
    """Returns the schema of prompt/response rows under the configured column names."""
    return RowSchema("prompt/response", f"{fields.prompt}/{fields.response}")


class Parsed(NamedTuple):
    """A row as retain reads it (see :class:`retain.data.rows.Example`).

    Attributes:
        prompt: The text before the answer (for chat rows, the plain-text fallback).
        response: The answer: the last assistant turn's content for chat rows.
        turns: The chat turns in OpenAI form, or None for text rows.
        schema: The format the row was written in.
        columns: The row's columns this format read; the others are kept as fields.
        rejected: For a preference row, the rejected answer (its assistant turn's text);
            ``response`` is the chosen one.
        rejected_turns: For a conversational preference row, the prompt's turns and the
            rejected answer's turn, as ``turns`` holds them with the chosen one.
    """

    prompt: str
    response: str
    turns: tuple[dict[str, Any], ...] | None
    schema: RowSchema
    columns: tuple[str, ...]
    rejected: str | None = None
    rejected_turns: tuple[dict[str, Any], ...] | None = None


def parse_row(row: Mapping[str, Any], fields: Fields) -> Parsed:
    """Returns what ``row`` holds, in whichever format it is written.

    Raises:
        BadRow: If the row matches no format, or matches one and breaks its rules.
    """
    if row.get(fields.messages) is not None:
        return _chat_column(row, fields.messages)
    if any(row.get(name) is not None for name in PREFERENCE_COLUMNS):
        return _preference(row, fields)
    has_prompt, has_response = row.get(fields.prompt) is not None, row.get(fields.response) is not None
    if has_response or (has_prompt and row.get("completion") is None):
        prompt, response = _prompt_response(row, fields)
        return Parsed(prompt, response, None, prompt_response_schema(fields), tuple(fields))
    if row.get("completion") is not None:
        return _prompt_completion(row)
    if row.get(SHAREGPT_COLUMN) is not None:
        return _chat_column(row, SHAREGPT_COLUMN)
    if row.get("instruction") is not None or row.get("output") is not None:
        return _alpaca(row)
    if row.get("text") is not None:
        text = _text(row, "text", "data.prompt_field")
        if not text.strip():
            raise BadRow("text", "the text is empty", "give the row its text or drop it")
        return Parsed("", text, None, TEXT, ("text",))
    named = ", ".join(repr(str(key)) for key in list(row)[:8]) or "none"
    raise BadRow(
        fields.prompt, f"the row matches no format retain reads (its fields: {named})",
        f"write each row as {FORMATS_READ}; if your columns have other names, set {FIELD_SETTINGS}",
    )


def chat_prompt_text(turns: Sequence[Mapping[str, Any]]) -> str:
    """Returns ``turns`` as plain text ending in an ``Assistant:`` cue.

    This is the fallback prompt of chat examples (``User: hi\\nAssistant: hello\\n...``),
    for labels and for models without a chat template.
    """
    lines = [f"{str(turn['role']).capitalize()}: {turn['content']}" for turn in turns]
    return "\n".join([*lines, "Assistant:"])


def json_type(value: object) -> str:
    """Returns the JSON name of ``value``'s type, for messages."""
    names = (name for kind, name in _JSON_TYPES if isinstance(value, kind))
    return next(names, type(value).__name__)


# --- prompt/response and TRL prompt/completion ----------------------------------------


def _prompt_response(row: Mapping[str, Any], fields: Fields) -> tuple[str, str]:
    """Returns the prompt and response of a prompt/response row; raises :class:`BadRow`."""
    prompt = _text(row, fields.prompt, "data.prompt_field")
    response = _text(row, fields.response, "data.response_field")
    if not response.strip():
        raise BadRow(fields.response, "the response is empty", "give the row an answer or drop it")
    return prompt, response


def _prompt_completion(row: Mapping[str, Any]) -> Parsed:
    """Returns a TRL prompt/completion row: two texts, or two lists of chat turns."""
    prompt, completion = row.get("prompt"), row.get("completion")
    columns = ("prompt", "completion")
    if isinstance(prompt, (list, tuple)) and isinstance(completion, (list, tuple)):
        turns = [*_turns(prompt, "prompt"), *_turns(completion, "completion")]
        if not any(turn["role"] == "assistant" for turn in turns[len(prompt):]):
            raise BadRow("completion", "the completion has no assistant turn",
                         'write it as [{"role": "assistant", "content": "..."}]')
        text, answer, kept = _conversation(turns, "completion")
        return Parsed(text, answer, kept, PROMPT_COMPLETION, columns)
    if isinstance(prompt, (list, tuple)) or isinstance(completion, (list, tuple)):
        raise BadRow("completion", "'prompt' and 'completion' must both be text or both be chat turns",
                     f"write both as strings, or both as lists of turns ({CHAT_EXAMPLE})")
    prompt_text = _text(row, "prompt", "data.prompt_field")
    answer = _text(row, "completion", "data.response_field")
    if not answer.strip():
        raise BadRow("completion", "the completion is empty", "give the row an answer or drop it")
    return Parsed(prompt_text, answer, None, PROMPT_COMPLETION, columns)


# --- preference pairs (DPO) ----------------------------------------------------------


def _preference(row: Mapping[str, Any], fields: Fields) -> Parsed:
    """Returns a preference row: its prompt with the chosen answer, and the rejected answer
    beside it; three texts, or TRL's conversational form (module docstring).

    Raises:
        BadRow: If ``chosen`` or ``rejected`` is missing, empty or not text (or not one
            assistant turn), or the two are the same answer.
    """
    for name in PREFERENCE_COLUMNS:
        if row.get(name) is None:
            other = "rejected" if name == "chosen" else "chosen"
            raise BadRow(name, f"a preference row (prompt/chosen/rejected) without '{name}'",
                         f"add the answer to prefer {'more' if name == 'chosen' else 'less'} as '{name}' "
                         f"beside '{other}', or drop the row")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, (list, tuple)) and isinstance(rejected, (list, tuple)):
        return _conversational_preference(row, chosen, rejected)
    if isinstance(chosen, (list, tuple)) or isinstance(rejected, (list, tuple)):
        raise BadRow("rejected", "'chosen' and 'rejected' must both be text or both be chat turns",
                     'write both as strings, or both as [{"role": "assistant", "content": "..."}]')
    prompt = _text(row, fields.prompt, "data.prompt_field")
    chosen_text, rejected_text = _text(row, "chosen", "data.response_field"), _text(row, "rejected", "data.response_field")
    _distinct_answers(chosen_text, rejected_text)
    return Parsed(prompt, chosen_text, None, PREFERENCE, (fields.prompt, *PREFERENCE_COLUMNS), rejected_text)


def _conversational_preference(row: Mapping[str, Any], chosen: Sequence[object],
                               rejected: Sequence[object]) -> Parsed:
    """Returns a conversational preference row: the prompt's turns, then one assistant turn
    each for the chosen and the rejected answer. Without ``prompt``, the turns both
    conversations share before their last one are the prompt (TRL's implicit prompt)."""
    chosen_turns, rejected_turns = _turns(chosen, "chosen"), _turns(rejected, "rejected")
    prompt = row.get("prompt")
    if prompt is None:
        shared = chosen_turns[:-1]
        if not shared or rejected_turns[:-1] != shared:
            raise BadRow("prompt", "a conversational preference row without 'prompt' whose chosen and rejected "
                         "conversations differ before their last turn",
                         "add 'prompt' (the turns before the answer), with 'chosen' and 'rejected' one "
                         "assistant turn each")
        prompt_turns, chosen_turns, rejected_turns = shared, chosen_turns[-1:], rejected_turns[-1:]
    elif isinstance(prompt, (list, tuple)):
        prompt_turns = _turns(prompt, "prompt")
    else:
        raise BadRow("prompt", f"'prompt' must be a list of turns when 'chosen' and 'rejected' are, got a JSON "
                     f"{json_type(prompt)}", f"write the prompt as turns ({CHAT_EXAMPLE}), or all three as text")
    for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise BadRow(name, f"'{name}' must be one assistant turn, got {len(turns)} turn(s)",
                         'write it as [{"role": "assistant", "content": "..."}]')
        if not turns[0]["content"].strip():
            raise BadRow(f"{name}[0].content", f"the {name} answer is empty", "give the row both answers or drop it")
    if not prompt_turns or prompt_turns[-1]["role"] == "assistant":
        raise BadRow("prompt", "the prompt must end with a user (or system) turn for the answers to follow",
                     "end 'prompt' with the user's turn")
    _distinct_answers(chosen_turns[0]["content"], rejected_turns[0]["content"])
    return Parsed(chat_prompt_text(prompt_turns), chosen_turns[0]["content"], (*prompt_turns, *chosen_turns),
                  PREFERENCE_CHAT, ("prompt", *PREFERENCE_COLUMNS), rejected_turns[0]["content"],
                  (*prompt_turns, *rejected_turns))


def _distinct_answers(chosen: str, rejected: str) -> None:
    """Raises :class:`BadRow` for an empty answer, or two answers that are the same."""
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise BadRow(name, f"the {name} answer is empty", "give the row both answers or drop it")
    if chosen.strip() == rejected.strip():
        raise BadRow("rejected", "'chosen' and 'rejected' are the same answer: the pair teaches nothing",
                     "give the row a rejected answer that differs from the chosen one, or drop the row")


# --- Alpaca and plain text ------------------------------------------------------------


def _alpaca(row: Mapping[str, Any]) -> Parsed:
    """Returns an Alpaca row as a user turn (instruction, then the input after a blank line
    when it has one) and an assistant turn (the output), after its system turn if any."""
    for name in ("instruction", "output"):
        if row.get(name) is None:
            raise BadRow(name, f"an Alpaca row (instruction/input/output) without '{name}'",
                         f"add '{name}' to the row, or drop the row")
    instruction, output = _text(row, "instruction", "data.prompt_field"), _text(row, "output", "data.response_field")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise BadRow("input", f"'input' must be text, got a JSON {json_type(extra)}",
                     'write it as a string (in quotes), or "" when there is none')
    if not output.strip():
        raise BadRow("output", "the output is empty", "give the row an answer or drop it")
    request = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    turns: list[dict[str, Any]] = [{"role": "user", "content": request}, {"role": "assistant", "content": output}]
    columns = ("instruction", "input", "output")
    if row.get("system") is not None:
        turns.insert(0, {"role": "system", "content": _text(row, "system", "data.prompt_field")})
        columns += ("system",)
    return Parsed(chat_prompt_text(turns[:-1]), output, tuple(turns), ALPACA, columns)


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
            name, f"'{name}' must be text, got a JSON {json_type(value)}",
            "write it as a string (in quotes)",
        )
    return value


# --- chat: OpenAI and ShareGPT --------------------------------------------------------


def _chat_column(row: Mapping[str, Any], name: str) -> Parsed:
    """Returns the chat row under column ``name``: OpenAI ``{role, content}`` turns, or
    ShareGPT ``{from, value}`` turns (told apart by the first turn)."""
    turns = row[name]
    if not isinstance(turns, (list, tuple)):
        raise BadRow(
            name, f"'{name}' must be a list of turns, got a JSON {json_type(turns)}",
            f"write it as {CHAT_EXAMPLE}",
        )
    if not turns:
        raise BadRow(name, f"'{name}' is empty", f"write the conversation as {CHAT_EXAMPLE}")
    first = turns[0]
    sharegpt = isinstance(first, Mapping) and "from" in first and "role" not in first
    read = _sharegpt_turns(turns, name) if sharegpt else _turns(turns, name)
    prompt, response, kept = _conversation(read, name)
    schema = RowSchema("ShareGPT" if sharegpt else "OpenAI chat", name)
    return Parsed(prompt, response, kept, schema, (name,))


def _conversation(turns: list[dict[str, Any]], name: str) -> tuple[str, str, tuple[dict[str, Any], ...]]:
    """Returns the prompt text, the last assistant answer and the turns of a chat.

    Turns after the last assistant turn are kept in the turns but are not in the prompt.

    Raises:
        BadRow: Unless the chat has an assistant turn and the last one has text.
    """
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
    return chat_prompt_text(turns[:last]), turns[last]["content"], tuple(turns)


def _turns(turns: Sequence[object], name: str) -> list[dict[str, Any]]:
    """Returns OpenAI turns, checked; raises :class:`BadRow` at the first bad one."""
    for index, turn in enumerate(turns):
        where = f"{name}[{index}]"
        if not isinstance(turn, Mapping):
            raise BadRow(where, f"a turn must be an object, got a JSON {json_type(turn)}",
                         'write it as {"role": "user", "content": "..."}')
        role = turn.get("role")
        if role not in CHAT_ROLES:
            fix = f"use one of {', '.join(CHAT_ROLES)}"
            if "from" in turn:
                fix = "write every turn of the row the same way: all {role, content} or all {from, value}"
            problem = "missing role" if role is None else f"unknown role {role!r}"
            raise BadRow(f"{where}.role", problem, fix)
        _turn_text(turn.get("content"), f"{where}.content")
    return [dict(turn) for turn in turns]  # type: ignore[arg-type]


def _sharegpt_turns(turns: Sequence[object], name: str) -> list[dict[str, Any]]:
    """Returns ShareGPT turns as OpenAI turns (human to user, gpt to assistant), checked."""
    read = []
    for index, turn in enumerate(turns):
        where = f"{name}[{index}]"
        if not isinstance(turn, Mapping):
            raise BadRow(where, f"a turn must be an object, got a JSON {json_type(turn)}",
                         'write it as {"from": "human", "value": "..."}')
        speaker = turn.get("from")
        if speaker in SHAREGPT_TOOL_SPEAKERS:
            raise BadRow(f"{where}.from", f"ShareGPT tool turns ('{speaker}') are not supported",
                         "drop the row, or its tool turns (function_call, observation)")
        if speaker not in SHAREGPT_SPEAKERS:
            problem = "missing 'from'" if speaker is None else f"unknown speaker {speaker!r}"
            fix = "use human, gpt or system (user and assistant also work)"
            if "role" in turn:
                fix = "write every turn of the row the same way: all {from, value} or all {role, content}"
            raise BadRow(f"{where}.from", problem, fix)
        read.append({"role": SHAREGPT_SPEAKERS[speaker], "content": _turn_text(turn.get("value"), f"{where}.value")})
    return read


def _turn_text(content: object, where: str) -> str:
    """Returns a turn's text; raises :class:`BadRow` unless it is a string."""
    if not isinstance(content, str):
        raise BadRow(where, f"the content must be text, got a JSON {json_type(content)}",
                     "write the turn's text as a string")
    return content
