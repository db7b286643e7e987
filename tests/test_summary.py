"""summary.json through RunSummary: the round trip, the rehearsed / not-rehearsed split of
forgetting, and old or damaged summaries read as empty, never an error."""

from __future__ import annotations

import json

import pytest

from retain.evaluation.engine import forgetting_by_rehearsal
from retain.summary import NOT_REHEARSED, REHEARSED, SCHEMA_VERSION, RunSummary, Verdict


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


def summary(rehearsed: list[str], rows: int = 10) -> RunSummary:
    groups = forgetting_by_rehearsal(BEFORE, AFTER, "generation", {"toy": rehearsed})
    return RunSummary(rehearsal={"rows": {"replay": rows}, "items": {"toy": rehearsed}},
                      forgetting_by_rehearsal={suite: {group: report.to_dict() for group, report in by.items()}
                                               for suite, by in groups.items()},
                      task={"eval": {"accuracy": 0.8}}, verdict=Verdict(ship=True))


def test_the_note_gives_both_groups_or_says_no_item_was_rehearsed() -> None:
    assert summary(["a/1"]).group_forgetting(REHEARSED) == (1.0, 1)
    assert summary(["a/1"]).group_forgetting(NOT_REHEARSED) == (0.0, 3)
    assert summary(["a/1"]).rehearsal_note() == (" (on the 3 probe items no blended row states: +0.0%; "
                                                 "on the 1 items a blended row states: +100.0%)")
    assert summary([]).rehearsal_note() == " (no probe item is stated in the 10 rows blended in)"
    assert summary([], rows=0).rehearsal_note() == ""


def test_a_summary_survives_its_json_and_carries_its_schema_version() -> None:
    written = summary(["a/1"])
    data = json.loads(json.dumps(written.to_dict()))
    assert list(data)[0] == "schema_version" and data["schema_version"] == SCHEMA_VERSION
    read = RunSummary.from_dict(data)
    # JSON has no tuples: the intervals come back as lists, the same figures.
    assert json.loads(json.dumps(read.to_dict())) == data
    assert read.forgetting_by_rehearsal.keys() == written.forgetting_by_rehearsal.keys()
    assert RunSummary.from_dict(data).task_accuracy() == 0.8 and RunSummary.from_dict(data).verdict.ship


def test_a_summary_from_before_the_version_reads_as_version_1_with_its_figures() -> None:
    old = {"status": "stopped", "steps": 30, "forgetting_relative": 0.5, "verdict": {"ship": False, "reasons": ["x"]},
           "task": {"eval": {"accuracy": 0.5}}, "guard_events": [{"guard": "forgetting"}]}
    read = RunSummary.from_dict(old, run_dir="runs/old")
    assert read.schema_version == 1 and read.status == "stopped" and read.steps == 30
    assert read.verdict == Verdict(ship=False, reasons=("x",)) and read.run_dir == "runs/old"
    assert read.rehearsal_note() == "" and read.group_forgetting(REHEARSED) == (None, 0)


@pytest.mark.parametrize("damaged", [None, [], "text", {"rehearsal": "x"}, {"rehearsal": {"rows": {"replay": "7"}}},
                                     {"rehearsal": {"rows": {"replay": 3}}, "forgetting_by_rehearsal": [1]},
                                     {"rehearsal": {"rows": {"replay": True}}},
                                     {"steps": "many", "verdict": {"ship": "yes"}, "task": [1], "method": "lora",
                                      "guard_events": [1, {"guard": "smoke"}]},
                                     {"forgetting_by_rehearsal": {"toy": {"rehearsed": {"categories": {
                                         "overall": {"relative_drop": "big", "items": None}}}}}}])
def test_old_and_damaged_summaries_read_as_empty_never_an_error(damaged) -> None:
    read = RunSummary.from_dict(damaged)
    assert read.blended_rows() in (0, 3) and read.group_forgetting(REHEARSED) == (None, 0)
    assert read.rehearsal_note() in ("", " (no probe item is stated in the 3 rows blended in)")
    assert read.verdict is None and read.task_accuracy() is None and isinstance(read.steps, int)
    assert all(isinstance(event, dict) for event in read.guard_events)
