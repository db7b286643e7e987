"""Turns pydantic's validation errors into one :class:`~retain.errors.ConfigError`.

The error names the file (or ``--set``), the line, the dotted field and a fix in plain words.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from retain.config.walk import (
    BOUNDS,
    bounds,
    choices,
    default,
    field_at,
    model_at,
    section_aliases,
    section_model,
    valid_paths,
)
from retain.errors import ConfigError

#: Shown as the "file" of errors that come from ``--set`` overrides.
OVERRIDE_SOURCE = "--set"


def config_error(
    exc: ValidationError,
    path: str | Path | None,
    lines: dict[str, int],
    overrides: Sequence[tuple[str, str]],
) -> ConfigError:
    """Turns pydantic's errors into one ConfigError about the one nearest the file's top."""
    errors = sorted(exc.errors(), key=lambda error: _line_for(_loc_parts(error), lines) or math.inf)
    first = errors[0]
    parts = _loc_parts(first)
    dotted = ".".join(parts)
    message, fix = _describe(first, parts)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    override = _override_for(parts, overrides)
    if override is not None:
        return ConfigError(
            f"{message}, from override '{override}'", file=OVERRIDE_SOURCE, field=dotted, fix=fix
        )
    return ConfigError(message, file=path, line=_line_for(parts, lines), field=dotted, fix=fix)


def _loc_parts(error: Any) -> list[str]:
    """Returns a pydantic error's location as dotted-name parts (list indices as digits).

    A section validator's own error may name the setting it is about (``ctx["field"]``).
    """
    parts = [str(part) for part in error["loc"]]
    field = (error.get("ctx") or {}).get("field") if error["type"] == "retain" else None
    return [*parts, field] if field else parts


def _override_for(parts: Sequence[str], overrides: Sequence[tuple[str, str]]) -> str | None:
    """Returns the last override that set ``parts`` or a section containing it."""
    for key, text in reversed(overrides):
        key_parts = key.split(".")
        if list(parts[: len(key_parts)]) == key_parts:
            return text
    return None


def _line_for(parts: Sequence[str], lines: dict[str, int]) -> int | None:
    """Returns the line of ``parts`` or of its nearest enclosing key present in the file."""
    for end in range(len(parts), 0, -1):
        line = lines.get(".".join(parts[:end]))
        if line is not None:
            return line
    return None


_NUMBER_WORDS = ("expected a number, got {got}", "set it to a number{example}")
_WHOLE_WORDS = ("expected a whole number, got {got}", "set it to a whole number{example}")
_BOOL_WORDS = ("expected true or false, got {got}", "set it to true or false")
_SECTION_WORDS = (
    "expected a section of 'key: value' settings, got {got}",
    "indent its settings under it, one 'key: value' per line",
)
# Pydantic error types whose words depend only on the bad input and the field's default.
_PLAIN_WORDS = {
    "float_parsing": _NUMBER_WORDS,
    "float_type": _NUMBER_WORDS,
    "finite_number": ("must be a finite number, got {got}", "set it to a number{example}"),
    "int_parsing": _WHOLE_WORDS,
    "int_type": _WHOLE_WORDS,
    "int_from_float": _WHOLE_WORDS,
    "bool_parsing": _BOOL_WORDS,
    "bool_type": _BOOL_WORDS,
    "string_type": ("expected a single text value, got {got}", "set it to one value{example}"),
    "list_type": ("expected a list, got {got}", "write it as a list{example}"),
    "model_type": _SECTION_WORDS,
    "dict_type": _SECTION_WORDS,
    "too_short": ("must not be empty", "list at least one item{example}"),
    "invalid_key": ("keys must be text, got {got}", "quote the key or fix its indentation"),
}


def _describe(error: Any, parts: Sequence[str]) -> tuple[str, str]:
    """Returns (message, fix) in plain words for one pydantic error."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, _show(error["input"])
    if kind == "extra_forbidden":
        name = section_aliases(parts[:-1]).get(parts[-1])
        if name is not None:  # an alias is unknown only when the setting's own name is set too
            message = (f"'{parts[-1]}' and '{name}' are the same setting ('{parts[-1]}' is another name "
                       f"for '{name}'), set twice")
            return message, f"keep one of them, e.g. '{name}'"
        return f"unknown key '{parts[-1]}'", _unknown_key_fix(parts[:-1], parts[-1])
    if kind == "retain":
        return error["msg"], ctx["fix"]
    in_list = any(part.isdigit() for part in parts)
    field = field_at([part for part in parts if not part.isdigit()])
    # Examples only for plain settings: a list item's default is the whole list.
    plain = field is not None and not in_list and section_model(field.annotation) is None
    default_value = default(field) if field is not None and plain else None
    example = f", such as {inline(default_value)}" if default_value is not None else ""
    if kind in _PLAIN_WORDS:
        message, fix = _PLAIN_WORDS[kind]
        return message.format(got=got), fix.format(example=example)
    if kind == "literal_error":
        choice_text = ", ".join(choices(field)) if field is not None else ctx.get("expected", "")
        return f"expected one of {choice_text}; got {got}", f"set it to one of: {choice_text}"
    bound = next((attr for attr in BOUNDS if attr in ctx), None)  # e.g. ctx == {"gt": 0}
    if bound is not None:
        limit = ctx[bound]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        allowed = f" {_range_words(field)}" if field is not None else ""
        return (
            f"must be {BOUNDS[bound][0]} {limit}, got {got}",
            f"set it to a value{allowed}{example}",
        )
    text = str(error.get("msg", "invalid value"))
    return (
        f"{text[:1].lower()}{text[1:]}, got {got}",
        "see the configuration reference in the README",
    )


def _range_words(field: FieldInfo) -> str:
    """Returns e.g. ``"at least 0 and less than 1"`` for a bounded field."""
    return " and ".join(f"{BOUNDS[attr][0]} {value}" for attr, value in bounds(field))


def _unknown_key_fix(section: Sequence[str], key: str) -> str:
    """Returns a "did you mean" fix listing the valid keys of ``section``."""
    model = model_at(section)
    valid = list(model.model_fields) if model else []
    where = f"in {'.'.join(section)}" if section else "at the top level"
    listing = f"valid keys {where}: {', '.join(valid)}"
    other_names = section_aliases(section)
    guesses = difflib.get_close_matches(key, [*valid, *other_names], n=1, cutoff=0.6)
    if guesses:
        guess = guesses[0]
        named = f" ({other_names[guess]})" if guess in other_names else ""
        return f"did you mean '{guess}'{named}? {listing}"
    elsewhere = [name for name in valid_paths() if name.rsplit(".", 1)[-1] == key]
    if elsewhere:
        section_name = elsewhere[0].rsplit(".", 1)[0]
        return f"'{key}' belongs under {section_name}: did you mean '{elsewhere[0]}'? {listing}"
    return listing


def _show(value: Any) -> str:
    """Returns a short, YAML-flavoured rendering of a bad input value."""
    text = f"'{value}'" if isinstance(value, str) else inline(value)
    return text if len(text) <= 60 else text[:57] + "..."


def inline(value: Any) -> str:
    """Returns ``value`` as one line of YAML, e.g. ``[lora, replay]`` or ``null``."""
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        # 1e-4 reads better than 0.0001, and YAML + pydantic read it back as a float.
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()


def yaml_kind(value: Any) -> str:
    """Returns the YAML name of a value's kind ("list", "number", ...)."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else type(value).__name__
