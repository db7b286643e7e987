"""The checks that fail a command for CI, on made-up figures: `retain train --fail-on`
(retain.training.gate), `retain eval --max-forgetting` (retain.evaluation.limit) and the
reading of its value (retain.console.share_option)."""

from __future__ import annotations

import click
import pytest

from retain.console import share_option
from retain.errors import ConfigError
from retain.evaluation.forgetting import ItemResults, compare
from retain.evaluation.limit import check_forgetting
from retain.summary import RunSummary, Verdict
from retain.training.gate import FailOn, failures

STOPPED = {"guard": "forgetting", "step": 12, "message": "general probe accuracy 40.0%, +20.0% relative drop"}


def test_not_ship_fails_with_the_verdicts_own_reasons_and_a_shipped_run_passes() -> None:
    refused = RunSummary(verdict=Verdict(ship=False, reasons=("task accuracy did not improve", "forgetting 9%")))
    assert failures(refused, [FailOn.NOT_SHIP], 0.03) == [
        "not-ship: not safe to ship: task accuracy did not improve; forgetting 9%"]
    shipped = RunSummary(forgetting_relative=0.01, verdict=Verdict(ship=True))
    assert failures(shipped, list(FailOn), 0.03) == []
    assert failures(refused, [], 0.03) == []  # without --fail-on, nothing fails


def test_forgetting_fails_over_the_limit_and_when_it_was_not_measured() -> None:
    forgot = RunSummary(forgetting_relative=0.05, base_probe_accuracy=0.6, final_probe_accuracy=0.57,
                        verdict=Verdict(ship=True))
    assert failures(forgot, [FailOn.FORGETTING], 0.03) == [
        "forgetting: the final model forgets +5.0% relative (+3.0 points of probe accuracy), over the limit of 3.0%"]
    assert failures(forgot, [FailOn.FORGETTING], 0.05) == []  # at the limit is within it, as for the guard
    unmeasured = failures(RunSummary(verdict=Verdict(ship=True)), [FailOn.FORGETTING], 0.03)
    assert len(unmeasured) == 1 and "not measured" in unmeasured[0]


@pytest.mark.parametrize(("restored", "words"), [
    (None, "no checkpoint was restored"),
    (0, "it was rolled back to its starting weights"),
    (8, "the checkpoint of step 8 was restored"),
])
def test_guard_stop_names_the_guard_the_step_and_what_was_restored(restored, words) -> None:
    summary = RunSummary(status="stopped", stopped_by=STOPPED, restored_step=restored, verdict=Verdict(ship=True))
    (clause,) = failures(summary, [FailOn.GUARD_STOP], 0.03)
    assert clause.startswith("guard-stop: the forgetting guard stopped the run at step 12 (general probe")
    assert clause.endswith(words)
    assert failures(RunSummary(verdict=Verdict(ship=True)), [FailOn.GUARD_STOP], 0.03) == []


def test_each_outcome_met_gives_one_clause_in_the_order_asked_once() -> None:
    summary = RunSummary(status="stopped", stopped_by=STOPPED, restored_step=0, forgetting_relative=0.0,
                         verdict=Verdict(ship=False, reasons=("rolled back",)))
    clauses = failures(summary, [FailOn.GUARD_STOP, FailOn.NOT_SHIP, FailOn.GUARD_STOP, FailOn.FORGETTING], 0.03)
    assert [clause.split(":")[0] for clause in clauses] == ["guard-stop", "not-ship"]


def _option() -> click.Option:
    return click.Option(["--max-forgetting"])


@pytest.mark.parametrize(("text", "share"), [("3%", 0.03), ("0.03", 0.03), (" 2.5 % ", 0.025), ("0", 0.0)])
def test_a_limit_reads_as_a_percentage_or_a_fraction(text, share) -> None:
    assert share_option(_option(), text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["3", "abc", "3%%", "-1%", "100%", "nan", "inf", ""])
def test_a_bad_limit_names_the_option_and_the_fix(text) -> None:
    with pytest.raises(ConfigError) as raised:
        share_option(_option(), text)
    assert raised.value.file == "--max-forgetting" and "3% or 0.03" in raised.value.render()


def _report(suite: str, after: dict[str, list[bool]]):
    """A report of a base that answered every item right against ``after`` (category: flags)."""
    categories = [name for name, flags in after.items() for _ in flags]
    ids = [f"{suite}-{index}" for index in range(len(categories))]
    before = ItemResults(suite, "1", tuple(ids), tuple(categories), (True,) * len(ids))
    now = ItemResults(suite, "1", tuple(ids), tuple(categories), tuple(flag for flags in after.values() for flag in flags))
    return compare(before, now, n_bootstrap=10)


def test_forgetting_over_the_limit_names_the_suite_and_the_categories_over_it() -> None:
    # One of arithmetic's four items forgotten: arithmetic -25%, the suite -12.5% overall.
    reports = {"general": {"generation": _report("general", {"arithmetic": [True, True, True, False],
                                                             "science": [True] * 4})}}
    check = check_forgetting(reports, "generation", 0.03)
    assert check.over
    assert check.line == ("forgetting over --max-forgetting 3% (by generation): general +12.5% relative (+12.5 points); "
                          "categories over the limit: general/arithmetic +25.0% relative (+25.0 points)")
    # The guard's measure is the suite's overall drop: a category over a limit the suite is within passes.
    within = check_forgetting(reports, "generation", 0.2)
    assert not within.over and within.line.startswith("forgetting within --max-forgetting 20% (by generation): general +12.5%")


def test_forgetting_by_a_method_not_scored_is_a_config_error_naming_the_field() -> None:
    reports = {"general": {"loglik": _report("general", {"arithmetic": [True, False]})}}
    with pytest.raises(ConfigError) as raised:
        check_forgetting(reports, "generation", 0.03)
    assert raised.value.field == "guards.forgetting.method"
    assert check_forgetting(reports, "loglik", 0.03).over
