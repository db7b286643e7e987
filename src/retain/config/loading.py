"""Reads a YAML config, applies ``--set`` overrides, validates it, and dumps it back."""

from __future__ import annotations

import copy
import difflib
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from retain import yamlfile
from retain.config.messages import OVERRIDE_SOURCE, config_error, yaml_kind
from retain.config.methods import expand_method_shorthand
from retain.config.registry import discover_methods
from retain.config.schema import RetainConfig
from retain.config.walk import aliases, dotted_fields, field_at, plain_type, valid_paths
from retain.errors import ConfigError
from retain.yamlfile import YamlProblem

# PyYAML follows YAML 1.1, which reads "1e-4" (no dot) as a string, not a float.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --- loading --------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RetainConfig:
    """Reads, overrides and validates a configuration.

    Args:
        path: The YAML file; None (or an empty file) means all defaults.
        overrides: ``section.key=value`` strings applied on top of the file; values are
            YAML (``train.lr=1e-4``, ``method.use=[lora,replay]``, ``model.revision=null``).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file is missing, unreadable, not YAML, not a mapping, or an
            override or value is invalid. The error names the file (``--set`` for
            overrides), line, dotted field and a fix.
    """
    try:
        return _load(path, overrides)
    except ConfigError as error:
        # A method in a file of its own under retain/methods/ makes its name and section
        # known when that file is imported; a config naming one is read again once they are.
        if not (error.field or "").startswith("method") or not discover_methods():
            raise
    return _load(path, overrides)


ConfigSource = str | Path | RetainConfig | Mapping[str, Any] | None
"""What the Python API takes as a config: a YAML path, a config, its sections, or None."""


def resolve_config(source: ConfigSource, overrides: Sequence[str] = ()) -> RetainConfig:
    """Returns the configuration ``source`` names, with ``overrides`` applied on top: a
    YAML file (as :func:`load_config`), a :class:`RetainConfig`, a mapping of the same
    sections, or None for all defaults.

    Raises:
        ConfigError: As :func:`load_config`; a mapping's mistakes name the dotted field.
    """
    if source is None or isinstance(source, (str, Path)):
        return load_config(source, overrides)
    raw = source.model_dump(mode="json") if isinstance(source, RetainConfig) else dict(source)
    return _validated(apply_overrides(raw, overrides), None, {}, overrides)


def _load(path: str | Path | None, overrides: Sequence[str]) -> RetainConfig:
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        text = read_text_file(Path(path))
        lines = key_lines(text, path)
        raw = parse_yaml(text, path)
    return _validated(apply_overrides(raw, overrides), path, lines, overrides)


def _validated(raw: dict[str, Any], path: str | Path | None, lines: dict[str, int],
               overrides: Sequence[str]) -> RetainConfig:
    # (dotted key, override text), so validation errors can blame the override.
    sources = [(override.partition("=")[0].strip(), override) for override in overrides]
    try:
        return RetainConfig.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, path, lines, sources) from None


def read_text_file(path: Path) -> str:
    """Returns the text of the config file, or raises ConfigError saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fix = "check the path, or omit it to use the defaults"
        raise ConfigError("config file not found", file=path, fix=fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        fix = "pass a readable, UTF-8 encoded .yaml file"
        raise ConfigError(f"cannot read the file: {exc}", file=path, fix=fix) from None


def parse_yaml(text: str, path: str | Path) -> dict[str, Any]:
    """Returns the file's top-level mapping ({} for an empty file), read within the bounds
    of :mod:`retain.yamlfile` (aliases, repeated keys, huge integers, depth)."""
    try:
        data = yamlfile.load(text)
    except YamlProblem as problem:
        raise ConfigError(problem.message, file=path, line=problem.line, fix=problem.fix) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of sections, got a {yaml_kind(data)}",
            file=path,
            line=1,
            fix="start the file with section names such as 'train:', each followed by "
            "indented 'key: value' lines",
        )
    return data


def _key_name(node: yaml.Node) -> str:
    """Returns a mapping key as pydantic names it: ``~`` is ``None``, ``0x10`` is ``16``."""
    if isinstance(node, yaml.ScalarNode):
        try:
            return str(yamlfile.scalar(node))
        except yaml.YAMLError:
            pass
    return str(node.value)


def key_lines(text: str, path: str | Path) -> dict[str, int]:
    """Maps each dotted key (list items by index) to its 1-based line in the YAML text.

    Raises:
        ConfigError: The YAML is invalid or a key appears twice in one mapping (PyYAML
            would silently keep the last one).
    """
    try:
        root = yamlfile.compose(text)
    except YamlProblem as problem:
        raise ConfigError(problem.message, file=path, line=problem.line, field=problem.key, fix=problem.fix) from None
    lines: dict[str, int] = {}

    def visit(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = prefix + _key_name(key_node)
                line = key_node.start_mark.line + 1
                if dotted in lines:
                    raise ConfigError(
                        f"key '{key_node.value}' appears twice",
                        file=path,
                        line=line,
                        field=dotted,
                        fix=f"keep only one of them (the other is on line {lines[dotted]})",
                    )
                lines[dotted] = line
                visit(value_node, dotted + ".")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[f"{prefix}{index}"] = item.start_mark.line + 1
                visit(item, f"{prefix}{index}.")

    if root is not None:
        visit(root, "")  # compose checked the depth
    return lines


# --- overrides ------------------------------------------------------------------------


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``section.key=value`` overrides to a raw (unvalidated) config mapping.

    Args:
        raw: The mapping read from YAML; it is not modified.
        overrides: Override strings; later ones win.

    Returns:
        A new mapping with the overrides applied.

    Raises:
        ConfigError: An override is malformed, names an unknown setting, or its value
            is not valid YAML.
    """
    for text in overrides:
        key, value = _parse_override(text)
        raw = _set_path(raw, key, value, text)
    return raw


def _parse_override(text: str) -> tuple[str, Any]:
    """Returns the dotted key and the parsed value of one override."""
    key, equals, value_text = text.partition("=")
    key, value_text = key.strip(), value_text.strip()
    if not equals or not key:
        raise ConfigError(
            f"malformed override '{text}'",
            file=OVERRIDE_SOURCE,
            fix="write it as section.key=value, e.g. --set train.lr=1e-4",
        )
    key = aliases().get(key, key)  # Hugging Face's name of a setting sets retain's
    if key not in valid_paths() and not _inside_mapping(key):
        raise ConfigError(
            f"unknown setting '{key}' in override '{text}'",
            file=OVERRIDE_SOURCE,
            field=key,
            fix=_unknown_path_fix(key),
        )
    try:
        value = yamlfile.load(value_text)
    except YamlProblem as problem:
        shown = text if len(text) <= 80 else f"{text[:60]}...({len(text):,} characters)"
        raise ConfigError(
            f"cannot parse the value of override '{shown}': {problem.message}",
            file=OVERRIDE_SOURCE,
            field=key,
            fix=("quote the value, e.g. key='a: b', or write lists as [a, b]"
                 if problem.message.startswith("invalid YAML") else problem.fix),
        ) from None
    if key == "method" and isinstance(value, (str, list)):
        key = "method.use"  # the shorthand picks methods; it keeps their settings
    return key, _coerce_override(value, value_text, field_at(key.split(".")))


def _coerce_override(value: Any, value_text: str, field: FieldInfo | None) -> Any:
    """Adjusts a YAML-parsed override value to what its field expects."""
    accepted = _leaf_types(field.annotation) if field else set()
    if isinstance(value, str) and _NUMBER.fullmatch(value) and accepted & {int, float}:
        return float(value)
    # model.revision=1.10 must stay "1.10", not become the float 1.1.
    if isinstance(value, (bool, int, float)) and str in accepted:
        return value_text
    return value


def _leaf_types(annotation: Any) -> set[Any]:
    """Returns the plain types a (possibly optional) annotation accepts."""
    if get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in get_args(annotation)))
    return {plain_type(annotation)}


def _set_path(raw: dict[str, Any], key: str, value: Any, text: str) -> dict[str, Any]:
    """Returns a copy of ``raw`` with ``value`` stored at dotted ``key``."""
    result = copy.deepcopy(raw)
    node = result
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if part == "method" and depth == 0:
            child = expand_method_shorthand(child)
        if child is None:
            child = {}
        if not isinstance(child, dict):
            section = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"cannot apply override '{text}': '{section}' is a {yaml_kind(child)}, "
                "not a section",
                file=OVERRIDE_SOURCE,
                field=key,
                fix=f"make '{section}' a mapping in the file, or override '{section}' as a whole",
            )
        node[part] = child
        node = child
    node[parts[-1]] = value
    return result


def _inside_mapping(key: str) -> bool:
    """Returns whether ``key`` names an entry of a free mapping setting, such as
    ``train.trainer_args.optim`` (checked where the mapping is used)."""
    parts = key.split(".")
    return any(get_origin(plain_type(field.annotation)) is dict
               for field in (field_at(parts[:end]) for end in range(1, len(parts))) if field is not None)


def _unknown_path_fix(key: str) -> str:
    """Returns a "did you mean" fix for an override of an unknown dotted name, among
    retain's names and Hugging Face's (:func:`aliases`)."""
    other_names = aliases()
    valid = [*valid_paths(), *other_names]
    guesses = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    last = key.rsplit(".", 1)[-1]
    guesses += [name for name in valid if name.rsplit(".", 1)[-1] == last and name not in guesses]
    if guesses:
        guess = guesses[0]
        return f"did you mean '{guess}'" + (f" ({other_names[guess]})?" if guess in other_names else "?")
    examples = ", ".join(dotted_fields()[:6])
    return f"valid settings include {examples}, ...; see the configuration reference"


# --- output ---------------------------------------------------------------------------


def dump_config(cfg: RetainConfig) -> str:
    """Returns the fully resolved configuration as YAML that :func:`load_config` reads back."""
    return yaml.safe_dump(
        cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=10_000
    )
