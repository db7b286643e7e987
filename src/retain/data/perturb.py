"""Input perturbations that measure brittleness: the same question, worded or laid out
differently.

A model that learned the task answers a perturbed prompt as it answers the original;
one that learned the template does not. Each perturbation is a named, deterministic
function from prompt to prompt. :func:`perturb` returns None when a perturbation does
not change a prompt (``option_order`` without an option list, ``lowercase`` on text
already in lower case), so that prompt is left out of the perturbation's score rather
than counted as robust. Answers are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from retain.data.rows import Example, chat_prompt_text
from retain.errors import ConfigError

Perturbation = Callable[[str], str]

_BETWEEN_WORDS = re.compile(r"(?<=\S) +(?=\S)")
_INNER_NEWLINES = re.compile(r"(?<=\S)[ \t]*(?:\r?\n[ \t]*)+(?=\S)")
_TEMPLATE_WORDS = {
    "Question": "Q", "Q": "Question", "Context": "Background", "Background": "Context",
    "Answer": "Response",
}
_TEMPLATE = re.compile(
    r"\bAnswer (?:with )?(?P<options>\w+(?:, \w+)*,? or \w+)"
    r"|\b(?P<word>" + "|".join(_TEMPLATE_WORDS) + r"):"
)
# Option lists: lettered options, an "Options:" line, or a short list after an instruction.
_SEPARATOR = r"\s*(?:[/|;]|,\s*or\b|,|\bor\b)\s*"
_MARKER = re.compile(
    r"(?:(?<=\s)|^)\((?P<paren>[A-Ja-j])\)(?=\s)|^[ \t]*(?P<line>[A-Ja-j])[.)](?=\s)", re.MULTILINE
)
_OPTIONS_LINE = re.compile(
    r"^[ \t]*(?:options|choices)[ \t]*:[ \t]*(?P<items>\S[^\n]*?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_INSTRUCTION_LIST = re.compile(
    r"\b(?:answer|respond|reply|choose|select|pick)(?:\s+(?:with|from|between))?(?:\s+one\s+of)?"
    rf":?\s+(?P<items>[\w'-]+(?:{_SEPARATOR}[\w'-]+)+)",
    re.IGNORECASE,
)


def lowercase(prompt: str) -> str:
    """Returns ``prompt`` in lower case."""
    return prompt.lower()


def uppercase(prompt: str) -> str:
    """Returns ``prompt`` in upper case."""
    return prompt.upper()


def extra_whitespace(prompt: str) -> str:
    """Returns ``prompt`` with the spaces between words doubled and a newline in front.

    Spaces at either end are left alone: a trailing space changes how the answer is
    tokenized, which is a tokenizer artefact rather than brittleness.
    """
    return "\n" + _BETWEEN_WORDS.sub(lambda spaces: spaces.group() * 2, prompt)


def strip_newlines(prompt: str) -> str:
    """Returns ``prompt`` with each line break between text (and the blanks around it)
    replaced by one space; line breaks at either end are left alone."""
    return _INNER_NEWLINES.sub(" ", prompt)


def template_wording(prompt: str) -> str:
    """Returns ``prompt`` with common template words reworded.

    ``Question:`` and ``Q:`` swap, as do ``Context:`` and ``Background:``; ``Answer:``
    becomes ``Response:``, and an instruction such as ``Answer yes, no or maybe``
    becomes ``Respond with yes, no or maybe``. All in one pass, so a swap is never
    swapped back.
    """
    return _TEMPLATE.sub(_reword, prompt)


def _reword(match: re.Match[str]) -> str:
    if match.group("options"):
        return f"Respond with {match.group('options')}"
    return _TEMPLATE_WORDS[match.group("word")] + ":"


def option_order(prompt: str) -> str:
    """Returns ``prompt`` with the options of its first option list rotated by one.

    Found, in this order: lettered options (``(A) ... (B) ...`` anywhere, or ``A.``/``A)``
    at the start of lines), an ``Options:``/``Choices:`` line (``a / b / c``), and a
    short list after an instruction word (``Answer yes, no or maybe``). Rotation moves
    every option: ``yes, no or maybe`` becomes ``no, maybe or yes``. Lettered options
    move with their letters, so an answer given as a letter stays right. A prompt
    without an option list comes back unchanged.
    """
    spans = _lettered_options(prompt) or _listed_options(prompt)
    if not spans:
        return prompt
    texts = [prompt[start:end] for start, end in spans]
    rotated = texts[1:] + texts[:1]
    for (start, end), text in zip(reversed(spans), reversed(rotated)):
        prompt = prompt[:start] + text + prompt[end:]
    return prompt


def _lettered_options(prompt: str) -> list[tuple[int, int]]:
    """Returns the spans (letter and text) of the first run of lettered options A, B, ..."""
    run: list[tuple[int, str, str]] = []
    for match in _MARKER.finditer(prompt):
        style = "paren" if match.group("paren") else "line"
        # A "(A)" option starts at its parenthesis; an "A." option after its indentation.
        start = match.start() if style == "paren" else match.start("line")
        marker = (start, match.group(style), style)
        if run and style == run[-1][2] and ord(marker[1]) == ord(run[-1][1]) + 1:
            run.append(marker)
        elif len(run) >= 2:
            break
        else:
            run = [marker] if marker[1] in "Aa" else []
    if len(run) < 2:
        return []
    starts = [start for start, _, _ in run]
    limits = [*starts[1:], len(prompt)]
    return [_option_span(prompt, start, limit) for start, limit in zip(starts, limits)]


def _option_span(prompt: str, start: int, limit: int) -> tuple[int, int]:
    """Returns the span from ``start`` to the end of its line or ``limit``, blanks trimmed."""
    line_end = prompt.find("\n", start)
    end = min(limit, line_end if line_end != -1 else len(prompt))
    return start, start + len(prompt[start:end].rstrip())


def _listed_options(prompt: str) -> list[tuple[int, int]]:
    """Returns the spans of the items of an ``Options:`` line or an instruction's list."""
    match = _OPTIONS_LINE.search(prompt) or _INSTRUCTION_LIST.search(prompt)
    if match is None:
        return []
    spans, position = [], match.start("items")
    for separator in re.finditer(_SEPARATOR, match.group("items")):
        spans.append((position, match.start("items") + separator.start()))
        position = match.start("items") + separator.end()
    spans.append((position, match.end("items")))
    spans = [(start, end) for start, end in spans if start < end]
    return spans if len(spans) >= 2 else []


PERTURBATIONS: dict[str, Perturbation] = {
    "lowercase": lowercase,
    "uppercase": uppercase,
    "extra_whitespace": extra_whitespace,
    "strip_newlines": strip_newlines,
    "template_wording": template_wording,
    "option_order": option_order,
}


def perturb(prompt: str, name: str) -> str | None:
    """Returns ``prompt`` perturbed by the perturbation called ``name``.

    Returns:
        The perturbed prompt, or None when the perturbation leaves it unchanged (it does
        not apply, and the prompt must not count towards that perturbation's score).

    Raises:
        ConfigError: If no perturbation is called ``name``.
    """
    if name not in PERTURBATIONS:
        raise ConfigError(
            f"unknown perturbation '{name}'", fix=f"use one of {', '.join(PERTURBATIONS)}"
        )
    perturbed = PERTURBATIONS[name](prompt)
    return None if perturbed == prompt else perturbed


def perturb_example(example: Example, name: str) -> Example | None:
    """Returns ``example`` with its prompt perturbed, its response untouched.

    For chat examples only the last user turn before the answer changes, and the plain
    text prompt is rebuilt from the turns.

    Returns:
        The perturbed example, or None when the perturbation does not apply (see
        :func:`perturb`) or a chat example has no user turn before its answer.

    Raises:
        ConfigError: If no perturbation is called ``name``.
    """
    if example.messages is None:
        prompt = perturb(example.prompt, name)
        return None if prompt is None else replace(example, prompt=prompt)
    turns = [dict(turn) for turn in example.messages]
    assistant = [index for index, turn in enumerate(turns) if turn["role"] == "assistant"]
    answer = assistant[-1] if assistant else len(turns)
    users = [index for index in range(answer) if turns[index]["role"] == "user"]
    content = perturb(turns[users[-1]]["content"], name) if users else None
    if content is None:
        return None
    turns[users[-1]]["content"] = content
    return replace(example, prompt=chat_prompt_text(turns[:answer]), messages=tuple(turns))
