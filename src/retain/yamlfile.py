"""YAML read within bounds, for every YAML file retain reads (configs, sweep files, probe
suites, a run's ``config.yaml``).

PyYAML parses; what it does not do is written here. It expands aliases without a limit
(a nine-line "billion laughs" file grows to billions of nodes once anything walks it),
accepts an alias inside its own anchor (a structure that contains itself), parses
integers of any length (Python refuses to convert one of over 4,300 digits, after the
fact, with a ValueError), keeps the last of two equal keys without a word, and reads
``yes``, ``no``, ``on`` and ``off`` as booleans (YAML 1.1), so ``lr: yes`` became 1.0.

Here, a document's nodes are counted as if every alias were expanded, and past
:data:`MAX_NODES` it is refused; a structure that contains itself is refused; an integer
of more than :data:`MAX_DIGITS` digits is refused at its line; two equal keys in one
mapping are refused at the second; only ``true`` and ``false`` are booleans (YAML 1.2's
core schema), so ``yes`` is the string "yes" (a yes/no setting still reads it as yes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

MAX_NODES = 1_000_000  # a config has about a hundred; a 5,000-item probe suite about 50,000
MAX_DIGITS = 1_000  # Python's own limit on converting digits to an int is 4,300

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"

# libyaml's parser where PyYAML was built with it: a sweep's 50 configs parse 20x faster.
_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """A safe loader whose only booleans are ``true`` and ``false`` (YAML 1.2 core)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in _Base.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


@dataclass
class YamlProblem(Exception):
    """Why a YAML text cannot be read: a sentence, its 1-based line if known, the fix, and
    the dotted key it concerns if any (``train.lr``)."""

    message: str
    line: int | None
    fix: str
    key: str | None = None

    def __str__(self) -> str:
        return self.message


def compose(text: str) -> yaml.Node | None:
    """Returns the document's node tree (None for an empty document), checked against the
    bounds of this module.

    Raises:
        YamlProblem: The text is not YAML, is nested past Python's recursion limit, or
            breaks a bound (size after aliases, a self-containing alias, a huge integer,
            a repeated key).
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if "nesting depth" in problem:  # libyaml's own limit, where the Python parser recurses
            raise _too_deep() from None
        raise YamlProblem(f"invalid YAML: {problem}", _line(mark, text),
                          "check the indentation and the ':' after each key; quote values that contain "
                          "': ' or start with '{', '[', '*' or '&'") from None
    except RecursionError:
        raise _too_deep() from None
    if root is not None:
        try:
            _check(root)
        except RecursionError:
            raise _too_deep() from None
    return root


def _line(mark: Any, text: str) -> int | None:
    """The 1-based line of a parser's mark, at most the text's last line: a document cut
    short (an unclosed ``[`` at the end) is reported past its end by PyYAML."""
    if mark is None:
        return None
    return min(mark.line + 1, text.count("\n") + 1)


def load(text: str) -> Any:
    """Returns the document as Python values (None for an empty document).

    Raises:
        YamlProblem: As :func:`compose`.
    """
    root = compose(text)
    if root is None:
        return None
    loader = _Loader("")
    try:
        return loader.construct_document(root)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise YamlProblem(f"invalid YAML: {getattr(error, 'problem', None) or error}", _line(mark, text),
                          "check the value on this line") from None
    except RecursionError:
        raise _too_deep() from None
    finally:
        loader.dispose()


def scalar(node: yaml.ScalarNode) -> Any:
    """Returns one scalar node's value as :func:`load` reads it (``~`` is None, ``0x10`` 16).

    Raises:
        yaml.YAMLError: The scalar is not a valid value of its tag.
    """
    loader = _Loader("")
    try:
        return loader.construct_object(node)
    finally:
        loader.dispose()


def _too_deep() -> YamlProblem:
    return YamlProblem("invalid YAML: nested too deeply", None, "remove the nested brackets or indentation")


def _check(root: yaml.Node) -> None:
    """Walks the tree once per distinct node (an alias is the same node object again)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, prefix: str) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlProblem("an alias refers to the anchor it is inside of (a structure that contains itself)",
                              node.start_mark.line + 1, "write the values out instead of the alias")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    line = key_node.start_mark.line + 1
                    if key_node.value in seen:
                        raise YamlProblem(f"key '{key_node.value}' appears twice in one mapping", line,
                                          f"keep only one of them (the other is on line {seen[key_node.value]})",
                                          prefix + key_node.value)
                    seen[key_node.value] = line
                total += size(key_node, prefix) + size(value_node, f"{prefix}{key_node.value}.")
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, f"{prefix}{index}.") for index, item in enumerate(node.value))
        elif node.tag == _INT and len(node.value) > MAX_DIGITS:
            raise YamlProblem(f"an integer of {len(node.value):,} digits", node.start_mark.line + 1,
                              "write a number of at most a few dozen digits, or quote it if it is text")
        if total > MAX_NODES:
            raise YamlProblem(f"the document expands to more than {MAX_NODES:,} values through its aliases",
                              node.start_mark.line + 1, "write the values out, or use fewer nested aliases")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, "")
