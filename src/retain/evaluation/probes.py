"""Probe items and suites: the fixed questions that measure general capability.

A probe item has a prompt and a correct ``answer``; optionally a list of ``options``
(the answer among them) for log-likelihood ranking. Answers and options are written as
plain text; the suite's ``delimiter`` (a space by default) joins prompt and option when a
causal LM scores ``prompt + delimiter + option``. Generated answers are judged by the
item's ``checker``: ``exact`` (after :func:`normalize_answer`), ``label`` (the option the
answer commits to, read as :func:`~retain.evaluation.labels.parse_label` reads a task's
labels: "Yes, fish live in water." is ``yes``), ``contains`` (whole words), ``regex``
(``pattern`` searched, case-insensitive) or ``numeric`` (the answer number equal:
:func:`answer_number`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from retain.evaluation.labels import normalize_answer, normalize_label, parse_label

Checker = Literal["exact", "label", "contains", "regex", "numeric"]
CHECKERS: tuple[str, ...] = ("exact", "label", "contains", "regex", "numeric")


@dataclass(frozen=True)
class ProbeItem:
    """One probe question.

    Attributes:
        id: Unique within its suite, stable across versions of the suite.
        category: What the item measures (``arithmetic``, ``capitals``, ...).
        prompt: Text given to the model (a chat template is applied on top for chat models).
        answer: The correct answer, as plain text.
        options: Candidate answers for log-likelihood ranking, ``answer`` among them. Empty
            when the item is scored by generation only.
        checker: How a generated answer is judged: ``exact``, ``label``, ``contains``,
            ``regex`` or ``numeric``.
        pattern: The regular expression of the ``regex`` checker.
        held_out: True when neither this item nor its fact appeared in training (lab only:
            e.g. a sum the base model never saw). Tells generalisation from recall.
        statements: Other texts that state this item's fact ("The capital of France is
            Paris." beside the question); a training or rehearsal row holding one, or the
            question with its answer, has rehearsed the item (the audit's
            ``probe_contamination``).
    """

    id: str
    category: str
    prompt: str
    answer: str
    options: tuple[str, ...] = ()
    checker: Checker = "exact"
    pattern: str | None = None
    held_out: bool = False
    statements: tuple[str, ...] = ()

    @property
    def answer_index(self) -> int:
        """Position of ``answer`` in ``options``; -1 when the item has no options."""
        return self.options.index(self.answer) if self.options else -1


@dataclass(frozen=True)
class ProbeSuite:
    """A named, versioned list of probe items.

    Forgetting numbers are only comparable between runs of the same suite name and
    version, so both are recorded with every result.

    Attributes:
        name: Suite name (``lab``, ``general``, or the user's).
        version: Changes whenever an item changes.
        items: The probe items, ids unique.
        delimiter: Text between prompt and option in log-likelihood scoring.
        stop: Generated text is cut at the first of these strings before it is judged
            (``"\\n"`` for base models that go on to invent the next question).
        description: One sentence on what the suite measures.
    """

    name: str
    version: str
    items: tuple[ProbeItem, ...] = field(default_factory=tuple)
    delimiter: str = " "
    stop: tuple[str, ...] = ()
    description: str = ""

    def categories(self) -> list[str]:
        """Returns the categories in order of first appearance."""
        return list(dict.fromkeys(item.category for item in self.items))

    def by_category(self) -> dict[str, list[ProbeItem]]:
        """Returns the items grouped by category, in order of first appearance."""
        groups: dict[str, list[ProbeItem]] = {name: [] for name in self.categories()}
        for item in self.items:
            groups[item.category].append(item)
        return groups

    def first_per_category(self, limit: int | None) -> ProbeSuite:
        """Returns the suite cut to the first ``limit`` items of each category (all of it for
        None), for quick checks. The version says so (``2+first10``): a cut suite's results
        are compared, and cached, only with the same cut."""
        if limit is None or all(len(items) <= limit for items in self.by_category().values()):
            return self
        kept = [item for items in self.by_category().values() for item in items[:limit]]
        return ProbeSuite(self.name, f"{self.version}+first{limit}", tuple(kept), self.delimiter, self.stop,
                          self.description)

    def with_options(self) -> list[ProbeItem]:
        """Returns the items that log-likelihood ranking can score."""
        return [item for item in self.items if item.options]


def exact_match(prediction: str, answer: str) -> bool:
    """Returns whether ``prediction`` equals ``answer`` after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
# Where a sentence states its result: "= 12", "is 12", "equals 12", "answer: 12", "gives 12".
_STATED = re.compile(
    r"(?:=|\b(?:is|equals|makes|gives|answer(?:\s+is)?\s*:?))\s*\$?\s*"
    r"(?P<number>[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+)", re.IGNORECASE)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def answer_number(text: str) -> float | None:
    """Returns the number ``text`` gives as its answer (``1,200`` reads as 1200), or None.

    A chat model restates the question before answering ("7 + 5 = 12", "The sum of 7 and
    5 is 12."), so the answer is the last number a result is stated with (after ``=``,
    ``is``, ``equals``, ``makes``, ``gives`` or ``answer``), else the last number written.
    A bare answer ("12") reads the same either way.
    """
    stated = [match.group("number") for match in _STATED.finditer(text)]
    if stated:
        return _number(stated[-1])
    numbers = _NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Returns ``text`` up to the first occurrence of any string in ``stop``.

    Leading whitespace is skipped first, so a model that opens with a newline is judged
    on the line it then writes, not on an empty one.
    """
    body = text.lstrip()
    cut = len(body)
    for marker in stop:
        position = body.find(marker) if marker else -1
        if position != -1:
            cut = min(cut, position)
    return body[:cut]


def check_answer(item: ProbeItem, text: str) -> bool:
    """Returns whether the generated ``text`` answers ``item`` correctly by its checker."""
    if item.checker == "exact":
        return exact_match(text, item.answer)
    if item.checker == "label":  # the option it commits to, as the task scorer reads labels
        return parse_label(text, item.options or (item.answer,)) == normalize_label(item.answer)
    if item.checker == "contains":
        answer = re.escape(normalize_answer(item.answer))
        return re.search(rf"(?<!\w){answer}(?!\w)", " ".join(text.split()).casefold()) is not None
    if item.checker == "regex":
        return re.search(item.pattern or "", text, flags=re.IGNORECASE) is not None
    expected, got = answer_number(item.answer), answer_number(text)
    return expected is not None and got is not None and math.isclose(got, expected, abs_tol=1e-9)


def accuracy_by_category(
    items: Sequence[ProbeItem], correct: Iterable[bool]
) -> dict[str, float]:
    """Returns the share of correct items per category, plus ``"overall"``.

    ``overall`` is the mean over items (not over categories), so large categories weigh
    more; per-category figures are there to show where the loss is.

    Raises:
        ValueError: If ``correct`` does not have one entry per item.
    """
    flags = list(correct)
    if len(flags) != len(items):
        raise ValueError(f"got {len(flags)} results for {len(items)} probe items")
    totals: dict[str, list[int]] = {}
    for item, ok in zip(items, flags):
        hits_and_count = totals.setdefault(item.category, [0, 0])
        hits_and_count[0] += int(ok)
        hits_and_count[1] += 1
    result = {name: hits / count for name, (hits, count) in totals.items()}
    result["overall"] = sum(flags) / len(flags) if flags else 0.0
    return result


def count_by_category(items: Sequence[ProbeItem]) -> dict[str, int]:
    """Returns the number of items per category, in order of first appearance."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.category] = counts.get(item.category, 0) + 1
    return counts


Method = Literal["generation", "loglik", "loglik_norm"]


@dataclass(frozen=True)
class ProbeScore:
    """Results of one model on one suite by one scoring method.

    Attributes:
        suite: Suite name.
        version: Suite version: only equal versions are comparable.
        method: ``generation`` (what the model says, judged by each item's checker),
            ``loglik`` (highest summed log-likelihood option) or ``loglik_norm``
            (highest log-likelihood per character).
        accuracy: Share correct per category, plus ``"overall"``.
        counts: Items per category.
        ids: Item ids, in suite order.
        categories: Item categories, in suite order.
        correct: Whether each item was answered correctly.
        outputs: The generated answer (cut at the suite's stop strings) or the chosen
            option, per item.
        generations: The raw generations (generation method only), for health checks.
    """

    suite: str
    version: str
    method: Method
    accuracy: dict[str, float]
    counts: dict[str, int]
    ids: tuple[str, ...]
    categories: tuple[str, ...]
    correct: tuple[bool, ...]
    outputs: tuple[str, ...]
    generations: tuple = ()

    @classmethod
    def from_flags(
        cls,
        suite: ProbeSuite,
        items: Sequence[ProbeItem],
        method: Method,
        correct: Sequence[bool],
        outputs: Sequence[str],
        generations: Sequence = (),
    ) -> ProbeScore:
        """Returns the score of ``items`` (all of ``suite`` or the part a method can score)."""
        return cls(
            suite=suite.name,
            version=suite.version,
            method=method,
            accuracy=accuracy_by_category(items, correct),
            counts=count_by_category(items),
            ids=tuple(item.id for item in items),
            categories=tuple(item.category for item in items),
            correct=tuple(bool(flag) for flag in correct),
            outputs=tuple(outputs),
            generations=tuple(generations),
        )

    def to_dict(self, with_items: bool = False) -> dict:
        """Returns the score as JSON-ready data; per-item results when ``with_items``."""
        data = {
            "suite": self.suite,
            "version": self.version,
            "method": self.method,
            "accuracy": self.accuracy,
            "counts": self.counts,
        }
        if with_items:
            data["items"] = [
                {"id": id_, "category": category, "correct": ok, "output": output}
                for id_, category, ok, output in zip(self.ids, self.categories, self.correct, self.outputs)
            ]
        return data
