"""Probe suite files: the schema, the built-in suites, loading and writing.

A suite file is JSONL or YAML (schema in ``docs/PROBES.md``):

* JSONL: an optional first line ``{"suite": ..., "version": ..., "delimiter": " ",
  "stop": ["\\n"], "description": ...}``, then one item per line.
* YAML: a mapping with the same header keys and an ``items`` list.

Every item has ``id``, ``category``, ``prompt`` and ``answer``; optional ``options`` (the
answer among them) make it rankable by log-likelihood; ``checker`` (``exact``,
``contains``, ``regex`` with ``pattern``, ``numeric``) says how a generated answer is
judged. Mistakes are reported with the file, the line and the field, and a fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retain import yamlfile
from retain.data.rows import read_text
from retain.errors import DataError
from retain.evaluation.lmeval import is_lmeval_name, load_lmeval_suite
from retain.evaluation.probes import CHECKERS, Checker, ProbeItem, ProbeSuite
from retain.io import atomic_write_text, decode_json
from retain.sources import suite_names, suite_source
from retain.yamlfile import YamlProblem

GENERAL_SUITE = "general"
BUILTIN_SUITES: tuple[str, ...] = (GENERAL_SUITE,)  # shipped as files; others register (retain.sources)
_HEADER_KEYS = frozenset({"suite", "version", "delimiter", "stop", "description"})


class _ItemModel(BaseModel):
    """One probe item as written in a suite file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1)
    category: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    answer: str
    options: list[str] = Field(default_factory=list)
    checker: Checker = "exact"
    pattern: str | None = None
    held_out: bool = False
    statements: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> _ItemModel:
        if self.options:
            if len(self.options) < 2:
                raise ValueError("options needs at least two entries; drop it to score by generation only")
            if len(set(self.options)) != len(self.options):
                raise ValueError("options are not distinct; list each option once")
            if self.answer not in self.options:
                raise ValueError(f"answer {self.answer!r} is not one of the options; add it exactly as written")
        if self.checker == "regex":
            if not self.pattern:
                raise ValueError("checker 'regex' needs a 'pattern'")
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ValueError(f"pattern is not a valid regular expression ({error})") from None
        return self

    def to_item(self) -> ProbeItem:
        return ProbeItem(
            id=self.id,
            category=self.category,
            prompt=self.prompt,
            answer=self.answer,
            options=tuple(self.options),
            checker=self.checker,
            pattern=self.pattern,
            held_out=self.held_out,
            statements=tuple(self.statements),
        )


def load_suite(name_or_path: str | Path) -> ProbeSuite:
    """Returns a built-in suite (``general``), a registered one (:mod:`retain.sources`),
    lm-eval tasks (``lmeval:TASK``, see :mod:`retain.evaluation.lmeval`) or a suite file
    by path.

    Raises:
        DataError: If the name is unknown, the file is missing, or any item is malformed
            (the error names file, line, field and fix).
    """
    text = str(name_or_path)
    if is_lmeval_name(text):
        return load_lmeval_suite(text)
    registered = suite_source(text)
    if registered is not None:
        return registered.load()
    if text in BUILTIN_SUITES:
        resource = resources.files("retain.evaluation").joinpath(f"builtin_suites/{text}.jsonl")
        with resources.as_file(resource) as path:
            return _read_suite_file(path, default_name=text)
    path = Path(text)
    if not path.exists():
        names = ", ".join([*BUILTIN_SUITES, *suite_names()])
        raise DataError(
            f"no probe suite named '{text}' and no such file",
            fix=f"use a built-in suite ({names}) or the path of a .jsonl/.yaml suite file",
        )
    return _read_suite_file(path, default_name=path.stem)


def _read_suite_file(path: Path, default_name: str) -> ProbeSuite:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        header, rows = _jsonl_rows(path)
    elif suffix in (".yaml", ".yml"):
        header, rows = _yaml_rows(path)
    else:
        raise DataError(
            f"unknown probe suite format '{suffix or path.name}'",
            file=path,
            fix="name the file .jsonl, .yaml or .yml",
        )
    items = [_parse_item(row, line, path) for line, row in rows]
    if not items:
        raise DataError("the probe suite has no items", file=path, fix="add at least one item")
    _check_unique_ids(items, [line for line, _ in rows], path)
    return _suite_from_header(header, items, default_name, path)


def _jsonl_rows(path: Path) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    header: dict[str, Any] = {}
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(read_text(path, "a probe suite").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = decode_json(line)
        except ValueError as error:
            raise DataError(f"not valid JSON ({error})", file=path, line=number,
                            fix="write one JSON object per line") from None
        if not rows and not header and isinstance(row, dict) and "suite" in row:
            header = row
            _check_header(header, path, number)
            continue
        rows.append((number, row))
    return header, rows


def _yaml_rows(path: Path) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    text = read_text(path, "a probe suite")
    try:
        document = yamlfile.compose(text)
        data = yamlfile.load(text)
    except YamlProblem as problem:
        raise DataError(problem.message, file=path, line=problem.line, fix=problem.fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise DataError(
            "a YAML probe suite is a mapping with an 'items' list",
            file=path,
            field="items",
            fix="write 'suite: NAME', 'version: V' and 'items:' followed by one mapping per item",
        )
    header = {key: value for key, value in data.items() if key != "items"}
    _check_header(header, path, 1)
    # The items' lines, where the document spells them out (not through a merge key '<<').
    item_nodes = next((value.value for key, value in document.value
                       if key.value == "items" and isinstance(value, yaml.SequenceNode)), [])
    lines = [node.start_mark.line + 1 for node in item_nodes]
    if len(lines) != len(data["items"]):
        lines = [document.start_mark.line + 1] * len(data["items"])
    return header, list(zip(lines, data["items"]))


def _check_header(header: dict[str, Any], path: Path, line: int) -> None:
    unknown = sorted(set(header) - _HEADER_KEYS - {"items"})
    if unknown:
        raise DataError(
            f"unknown suite header key '{unknown[0]}'",
            file=path,
            line=line,
            field=unknown[0],
            fix=f"use only {', '.join(sorted(_HEADER_KEYS))}",
        )
    stop = header.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(entry, str) for entry in stop):
        raise DataError("stop must be a list of strings", file=path, line=line, field="stop",
                        fix='write e.g. "stop": ["\\n"]')
    for key in ("suite", "version", "delimiter", "description"):
        if key in header and not isinstance(header[key], (str, int, float)):
            raise DataError(f"{key} must be text", file=path, line=line, field=key,
                            fix=f"quote the {key}")


def _parse_item(row: Any, line: int, path: Path) -> ProbeItem:
    if not isinstance(row, dict):
        raise DataError("an item must be a JSON object / YAML mapping", file=path, line=line,
                        fix="write the item as {\"id\": ..., \"category\": ..., \"prompt\": ..., \"answer\": ...}")
    try:
        return _ItemModel.model_validate(row).to_item()
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message, fix = _describe(first)
        raise DataError(message, file=path, line=line, field=field, fix=fix) from None


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    kind = error["type"]
    name = str(error["loc"][0]) if error["loc"] else "item"
    if kind == "missing":
        return "required field is missing", f"add '{name}' to the item"
    if kind == "extra_forbidden":
        return "unknown field", f"remove it; item fields are {', '.join(_ItemModel.model_fields)}"
    if kind == "literal_error":
        return f"unknown checker {error.get('input')!r}", f"use one of {', '.join(CHECKERS)}"
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        text, _, fix = message.partition("; ")
        return text, fix or "correct the item"
    return error["msg"], f"give '{name}' the right type (see docs/PROBES.md)"


def _check_unique_ids(items: list[ProbeItem], lines: list[int], path: Path) -> None:
    seen: dict[str, int] = {}
    for item, line in zip(items, lines):
        if item.id in seen:
            raise DataError(
                f"duplicate id '{item.id}' (first on line {seen[item.id]})",
                file=path,
                line=line,
                field="id",
                fix="give every item its own id",
            )
        seen[item.id] = line


def _suite_from_header(
    header: dict[str, Any], items: list[ProbeItem], default_name: str, path: Path
) -> ProbeSuite:
    if "version" not in header:
        # A suite without a version is comparable only with itself: tie it to the content.
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        version = f"sha256-{digest}"
    else:
        version = str(header["version"])
    return ProbeSuite(
        name=str(header.get("suite", default_name)),
        version=version,
        items=tuple(items),
        delimiter=str(header.get("delimiter", " ")),
        stop=tuple(header.get("stop", [])),
        description=str(header.get("description", "")),
    )


def write_suite(suite: ProbeSuite, path: Path) -> int:
    """Writes ``suite`` as JSONL (header line, then one item per line) atomically.

    Returns:
        The number of items written. :func:`load_suite` reads the file back unchanged.
    """
    header = {
        "suite": suite.name,
        "version": suite.version,
        "delimiter": suite.delimiter,
        "stop": list(suite.stop),
        "description": suite.description,
    }
    lines = [json.dumps(header, ensure_ascii=False)]
    for item in suite.items:
        row = {key: value for key, value in asdict(item).items() if value not in (None, (), False)}
        row["options"] = list(item.options)
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(suite.items)
