"""Reading summary.json: the rehearsed / not-rehearsed split of forgetting, tolerant of old
and damaged summaries."""

from __future__ import annotations

import pytest

from retain.evaluation.engine import forgetting_by_rehearsal
from retain.summary import NOT_REHEARSED, REHEARSED, blended_rows, group_forgetting, rehearsal_note


def result(flags: dict[str, bool]) -> dict:
    items = [{"id": item_id, "category": item_id.split("/")[0], "correct": correct}
             for item_id, correct in flags.items()]
    return {"probes": {"toy": {"generation": {"suite": "toy", "version": "1", "items": items}}}}


BEFORE = result({"a/1": True, "a/2": True, "b/1": True, "b/2": True})
AFTER = result({"a/1": False, "a/2": True, "b/1": True, "b/2": True})


def test_forgetting_is_compared_on_the_rehearsed_items_and_on_the_rest_apart() -> None:
    groups = forgetting_by_rehearsal(BEFORE, AFTER, "generation", {"toy": ["b/1", "b/2"]})["toy"]
    assert groups[REHEARSED].overall.items == 2 and groups[REHEARSED].overall.relative_drop == 0.0
    assert groups[NOT_REHEARSED].overall.items == 2 and groups[NOT_REHEARSED].overall.relative_drop == 0.5
    assert set(groups[NOT_REHEARSED].categories) == {"a", "overall"}
    alone = forgetting_by_rehearsal(BEFORE, AFTER, "generation", {})["toy"]
    assert set(alone) == {NOT_REHEARSED} and alone[NOT_REHEARSED].overall.relative_drop == 0.25
    assert forgetting_by_rehearsal(BEFORE, AFTER, "loglik", {}) == {}


def summary(rehearsed: list[str], rows: int = 10) -> dict:
    groups = forgetting_by_rehearsal(BEFORE, AFTER, "generation", {"toy": rehearsed})
    return {"rehearsal": {"rows": {"replay": rows}, "items": {"toy": rehearsed}},
            "forgetting_by_rehearsal": {suite: {group: report.to_dict() for group, report in by.items()}
                                        for suite, by in groups.items()}}


def test_the_note_gives_both_groups_or_says_no_item_was_rehearsed() -> None:
    assert group_forgetting(summary(["a/1"]), REHEARSED) == (1.0, 1)
    assert group_forgetting(summary(["a/1"]), NOT_REHEARSED) == (0.0, 3)
    assert rehearsal_note(summary(["a/1"])) == (" (on the 3 probe items no blended row states: +0.0%; "
                                               "on the 1 items a blended row states: +100.0%)")
    assert rehearsal_note(summary([])) == " (no probe item is stated in the 10 rows blended in)"
    assert rehearsal_note(summary([], rows=0)) == ""


@pytest.mark.parametrize("damaged", [None, [], "text", {"rehearsal": "x"}, {"rehearsal": {"rows": {"replay": "7"}}},
                                     {"rehearsal": {"rows": {"replay": 3}}, "forgetting_by_rehearsal": [1]},
                                     {"rehearsal": {"rows": {"replay": True}}},
                                     {"forgetting_by_rehearsal": {"toy": {"rehearsed": {"categories": {
                                         "overall": {"relative_drop": "big", "items": None}}}}}}])
def test_old_and_damaged_summaries_read_as_nothing_blended(damaged) -> None:
    assert blended_rows(damaged) in (0, 3)
    assert group_forgetting(damaged, REHEARSED) == (None, 0)
    note = rehearsal_note(damaged)
    assert note in ("", " (no probe item is stated in the 3 rows blended in)")
