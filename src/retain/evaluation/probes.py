"""Probe items and suites: the fixed questions that measure general capability.

A probe item is a prompt and the text that should follow it. ``answer`` and every entry
of ``options`` are *continuations*: they are appended to the prompt exactly as written
(leading space included), which is how a causal LM sees them and how log-likelihood
ranking must score them. Exact-match scoring compares normalised text, so the leading
space does not matter there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retain.rundir import atomic_write_text


@dataclass(frozen=True)
class ProbeItem:
    """One probe question.

    Attributes:
        id: Unique within its suite, stable across versions of the suite.
        category: What the item measures (``arithmetic``, ``capitals``, ...).
        prompt: Text given to the model.
        answer: The correct continuation of ``prompt``.
        options: Candidate continuations for log-likelihood ranking; includes ``answer``.
            Empty when the item is scored by generation only.
        held_out: True when neither this item nor its fact appeared in training (lab only:
            e.g. a sum the base model never saw). Tells generalisation from recall.
    """

    id: str
    category: str
    prompt: str
    answer: str
    options: tuple[str, ...] = ()
    held_out: bool = False


@dataclass(frozen=True)
class ProbeSuite:
    """A named, versioned list of probe items.

    Forgetting numbers are only comparable between runs of the same suite name and
    version, so both are recorded with every result.
    """

    name: str
    version: str
    items: tuple[ProbeItem, ...] = field(default_factory=tuple)

    def categories(self) -> list[str]:
        """Returns the categories in order of first appearance."""
        return list(dict.fromkeys(item.category for item in self.items))

    def by_category(self) -> dict[str, list[ProbeItem]]:
        """Returns the items grouped by category, in order of first appearance."""
        groups: dict[str, list[ProbeItem]] = {name: [] for name in self.categories()}
        for item in self.items:
            groups[item.category].append(item)
        return groups


def normalize_answer(text: str) -> str:
    """Returns ``text`` reduced for exact-match comparison.

    Case, surrounding whitespace, inner runs of whitespace and trailing sentence
    punctuation are not part of the answer; everything else is.
    """
    collapsed = " ".join(text.split()).casefold()
    return collapsed.rstrip(".!?;,").strip()


def exact_match(prediction: str, answer: str) -> bool:
    """Returns whether ``prediction`` equals ``answer`` after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


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


def write_probe_suite(suite: ProbeSuite, path: Path) -> int:
    """Writes ``suite`` as JSONL, one item per line, atomically; returns the item count.

    The first line is a header ``{"suite": name, "version": version}``; each following
    line is one item with the fields of :class:`ProbeItem`.
    """
    header = json.dumps({"suite": suite.name, "version": suite.version})
    lines = [json.dumps(asdict(item), ensure_ascii=False) for item in suite.items]
    atomic_write_text(path, "".join(line + "\n" for line in [header, *lines]))
    return len(lines)
