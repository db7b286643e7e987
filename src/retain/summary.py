"""Reading ``summary.json``, the verdict and figures of one ``retain train`` run.

Light on purpose (no torch): the CLI, the lab and the report read summaries, some of them
written by older versions of retain or damaged, so every reader here tolerates a missing
or malformed field and answers None or nothing for it.
"""

from __future__ import annotations

from typing import Any

OVERALL = "overall"  # the all-items key of a forgetting report's categories
REHEARSED, NOT_REHEARSED = "rehearsed", "not_rehearsed"
"""The two groups of probe items forgetting is reported on: items whose fact a training
or rehearsal row stated (the audit's ``probe_contamination``), and the others."""


def group_forgetting(summary: Any, group: str) -> tuple[float | None, int]:
    """Returns the largest relative forgetting of any suite on one group of probe items
    (:data:`REHEARSED` or :data:`NOT_REHEARSED`) and the group's item count over the
    suites; (None, 0) when the group is empty or the summary predates the split."""
    by_suite = _mapping(_mapping(summary).get("forgetting_by_rehearsal"))
    overall = [_mapping(_mapping(_mapping(groups).get(group)).get("categories")).get(OVERALL)
               for groups in by_suite.values()]
    overall = [figures for figures in overall if isinstance(figures, dict)]
    drops = [figures.get("relative_drop") for figures in overall]
    drops = [drop for drop in drops if isinstance(drop, (int, float)) and not isinstance(drop, bool)]
    items = sum(figures.get("items") for figures in overall if isinstance(figures.get("items"), int))
    return (max(drops) if drops else None), items


def blended_rows(summary: Any) -> int:
    """Returns how many rows the run's methods blended into the task rows (0 if none, or
    for a summary that predates the count)."""
    rows = _mapping(_mapping(_mapping(summary).get("rehearsal")).get("rows"))
    return sum(count for count in rows.values() if isinstance(count, int) and not isinstance(count, bool))


def rehearsal_note(summary: Any) -> str:
    """Returns what a summary says of rehearsed probe items, to follow its forgetting
    figure: both groups' forgetting when a blended row stated some item, else that none
    did; empty when nothing was blended in."""
    rows = blended_rows(summary)
    if not rows:
        return ""
    rehearsed, count = group_forgetting(summary, REHEARSED)
    if not count:
        return f" (no probe item is stated in the {rows:,} rows blended in)"
    kept, others = group_forgetting(summary, NOT_REHEARSED)
    return (f" (on the {others:,} probe items no blended row states: {_signed(kept)}; on the {count:,} "
            f"items a blended row states: {_signed(rehearsed)})")


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"
