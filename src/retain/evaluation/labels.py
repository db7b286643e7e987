"""Labels of classification-like tasks, and the label a free-text generation commits to.

A model asked "yes, no or maybe?" rarely says exactly ``yes``: it says ``Yes.``,
``**Yes**``, ``Answer: yes`` or ``Yes, because ...``. Exact match would score all of
those wrong and report forgetting where there is only a change of style, so
classification tasks are scored by :func:`parse_label` instead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import pairwise

MAX_LABEL_WORDS = 3
# Quotes and markdown that wrap an answer without being part of it.
_WRAPPERS = "\"'`*_“”‘’"
# What may precede an answer: also whitespace, headings, block quotes, brackets, bullets.
_LEADING_NOISE = _WRAPPERS + " \t\r\n#>()[]-"
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
# A clause ends at punctuation before a space or the end ("4.5" stays whole), or a newline.
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|\n")
_PREFIX = re.compile(
    r"(?:(?:the|my)\s+)?(?:final\s+)?answer\b(?:\s+is|\s+would\s+be)?\s*:?", re.IGNORECASE
)
_STATEMENT = re.compile(r"\banswer(?:\s+is|\s+would\s+be|\s*:)", re.IGNORECASE)
# Words that join options without choosing one: "yes or no", "yes and no", "yes/no".
_CONNECTORS = frozenset({"or", "and", "nor", "vs", "versus"})


def normalize_answer(text: str) -> str:
    """Returns ``text`` reduced for exact-match comparison.

    Case, surrounding whitespace, inner runs of whitespace and trailing sentence
    punctuation are not part of the answer; everything else is.
    """
    collapsed = " ".join(text.split()).casefold()
    return collapsed.rstrip(".!?;,").strip()


def normalize_label(text: str) -> str:
    """Returns ``text`` reduced to a label.

    Case, surrounding whitespace, inner runs of whitespace, surrounding quotes and
    markdown marks (``**``, backticks) and trailing punctuation are not part of a label.
    """
    previous = None
    while text != previous:
        previous = text
        text = normalize_answer(text).strip(_WRAPPERS).rstrip(".!?;:,")
    return text


def infer_label_set(responses: Iterable[str], max_labels: int = 10) -> tuple[str, ...] | None:
    """Returns the label set of a task whose answers look like classification labels.

    A task looks like classification when every normalised response (see
    :func:`normalize_label`) is non-empty and at most three words long, there are
    between 2 and ``max_labels`` distinct ones, and at least one of them occurs more
    than once (a few short, all-different answers are short-answer QA, not labels).

    Args:
        responses: The reference answers of the task.
        max_labels: Most distinct labels a classification task may have.

    Returns:
        The distinct normalised labels, sorted; None when the task does not look like
        classification.
    """
    labels = [normalize_label(response) for response in responses]
    if not labels or any(not label or len(label.split()) > MAX_LABEL_WORDS for label in labels):
        return None
    counts = Counter(labels)
    if not 2 <= len(counts) <= max_labels or max(counts.values()) < 2:
        return None
    return tuple(sorted(counts))


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """Returns the label a free-text generation commits to, or None if it commits to none.

    The rule, in order:

    1. Leading whitespace, quotes, markdown and bullets are skipped, then one leading
       answer prefix: ``answer``, ``answer:``, ``answer is``, ``the answer is``,
       ``final answer:``, ``my answer would be``.
    2. If the words that follow start with a label, that label is the answer
       (``Yes.``, ``**no**, because ...``, ``Maybe\\n\\nExplanation ...``). Labels
       match whole words, case-insensitively, and may be several words long; the
       longest label that fits wins, and ``nobody`` is not ``no``.
    3. Otherwise the first statement ``answer is X`` / ``answer: X`` later in the text
       that names a label gives the answer (``Based on the study, the answer is no.``).
    4. A label found in 2 or 3 is rejected when its clause (up to the first
       ``. , ; : ! ?`` followed by a space, or a line break) joins it to a different
       label with nothing but ``or``, ``and``, ``nor``, ``vs`` or a slash between them:
       ``yes or no``, ``maybe yes, maybe no`` and ``yes/no`` hedge instead of answering.

    Anything else, including empty output and answers that only mention a label
    mid-sentence (``I think yes``), gives None.

    Args:
        text: The model's generation (new tokens only).
        labels: The task's labels; normalised with :func:`normalize_label`.

    Returns:
        The normalised label, or None.
    """
    label_words = _label_words(labels)
    opening = text.lstrip(_LEADING_NOISE)
    prefix = _PREFIX.match(opening)
    label = _label_at_start(opening[prefix.end() :] if prefix else opening, label_words)
    if label is not None:
        return label
    for statement in _STATEMENT.finditer(text):
        label = _label_at_start(text[statement.end() :], label_words)
        if label is not None:
            return label
    return None


def label_settled(text: str, labels: Sequence[str]) -> bool:
    """True when :func:`parse_label` gives ``text`` and every continuation of it the same
    label, so that generating further cannot change the answer: the text opens with a
    label (no answer prefix, which more words could still extend) whose first clause has
    already ended (punctuation followed by a space, or a line break: ``No, the results``).

    A generation scored by its label alone may stop there (task accuracy at a guard
    check, brittleness). A label reached any other way (``the answer is no`` later in
    the text) is not settled: a later clause could still hedge or the text go on.
    """
    opening = text.lstrip(_LEADING_NOISE)
    end = _CLAUSE_END.search(opening)
    # A clause end at the very end of the text ("No.") may still become "No.5".
    if end is None or (end.group() != "\n" and end.end() == len(opening)):
        return False
    first = _WORD.match(opening.casefold())
    if first is None or first.group() in _PREFIX_STARTS:
        return False
    return _label_at_start(opening, _words_of(tuple(labels))) is not None


# The words an answer prefix can open with (``the answer is``, ``my answer would be``, ...).
_PREFIX_STARTS = frozenset({"the", "my", "final", "answer"})


@lru_cache(maxsize=64)
def _words_of(labels: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """:func:`_label_words` of one label set, once: :func:`label_settled` runs at every
    decoding step of every row."""
    return _label_words(labels)


def _label_words(labels: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Returns each normalised label by its words, longest first (the longest match wins)."""
    normalized = [normalize_label(label) for label in labels]
    by_words = {tuple(_WORD.findall(label)): label for label in normalized}
    by_words.pop((), None)  # a label without a single word can never be matched
    return dict(sorted(by_words.items(), key=lambda item: -len(item[0])))


def _label_at_start(text: str, label_words: dict[tuple[str, ...], str]) -> str | None:
    """Returns the label ``text`` opens with, unless its first clause hedges between two."""
    clause = _CLAUSE_END.split(text.lstrip(_LEADING_NOISE), maxsplit=1)[0]
    words = _WORD.findall(clause.casefold())
    mentions = _label_mentions(words, label_words)
    if not mentions or mentions[0][0] != 0:
        return None
    for (_, end, label), (next_start, _, next_label) in pairwise(mentions):
        if label != next_label and set(words[end:next_start]) <= _CONNECTORS:
            return None
    return mentions[0][2]


def _label_mentions(
    words: list[str], label_words: dict[tuple[str, ...], str]
) -> list[tuple[int, int, str]]:
    """Returns (start, end, label) of each label in ``words``, scanning left to right."""
    mentions = []
    position = 0
    while position < len(words):
        for candidate, label in label_words.items():
            if tuple(words[position : position + len(candidate)]) == candidate:
                mentions.append((position, position + len(candidate), label))
                position += len(candidate)
                break
        else:
            position += 1
    return mentions
