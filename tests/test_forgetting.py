from __future__ import annotations

import json
import time

import numpy as np
import pytest

from retain.evaluation.forgetting import OVERALL, ItemResults, compare
from retain.evaluation.probes import ProbeItem


def _results(correct: list[bool], categories: list[str] | None = None, suite: str = "s",
             version: str = "1") -> ItemResults:
    categories = categories or ["general"] * len(correct)
    items = [ProbeItem(f"item-{i}", cat, "p", " a") for i, cat in enumerate(categories)]
    return ItemResults.from_flags(suite, version, items, correct)


def test_identical_results_have_no_drop() -> None:
    results = _results([True] * 60 + [False] * 40)
    report = compare(results, results)
    overall = report.overall
    assert overall.absolute_drop == 0.0 and overall.relative_drop == 0.0
    low, high = overall.absolute_drop_ci
    assert low <= 0.0 <= high
    assert (overall.newly_wrong, overall.newly_right) == (0, 0)
    assert not report.exceeds(0.0)


def test_planted_drop_of_ten_items() -> None:
    before = [True] * 80 + [False] * 20
    after = [False] * 10 + [True] * 70 + [False] * 20
    report = compare(_results(before), _results(after))
    overall = report.overall
    assert overall.accuracy_before == pytest.approx(0.8)
    assert overall.accuracy_after == pytest.approx(0.7)
    assert overall.absolute_drop == pytest.approx(0.1)
    assert overall.relative_drop == pytest.approx(0.1 / 0.8)
    low, high = overall.absolute_drop_ci
    assert 0.0 < low <= 0.1 <= high
    rel_low, rel_high = overall.relative_drop_ci
    assert 0.0 < rel_low <= 0.125 <= rel_high
    assert (overall.items, overall.newly_wrong, overall.newly_right) == (100, 10, 0)
    assert report.exceeds(0.1) and not report.exceeds(0.2)


def test_per_category_figures() -> None:
    categories = ["math"] * 4 + ["capitals"] * 4
    before = _results([True, True, True, True, True, True, False, False], categories)
    after = _results([True, False, False, True, True, True, True, False], categories)
    report = compare(before, after)
    assert list(report.categories) == ["math", "capitals", OVERALL]
    math, capitals = report.categories["math"], report.categories["capitals"]
    assert (math.accuracy_before, math.accuracy_after) == (1.0, 0.5)
    assert math.relative_drop == pytest.approx(0.5)
    assert (math.newly_wrong, math.newly_right) == (2, 0)
    assert capitals.absolute_drop == pytest.approx(-0.25)
    assert capitals.relative_drop == pytest.approx(-0.5)
    assert (capitals.newly_wrong, capitals.newly_right) == (0, 1)
    assert report.overall.absolute_drop == pytest.approx(0.125)
    assert report.categories_exceeding(0.2) == ["math"]


def test_items_are_matched_by_id() -> None:
    before = _results([True, False, True])
    shuffled = ItemResults("s", "1", tuple(reversed(before.ids)), before.categories,
                           tuple(reversed(before.correct)))
    report = compare(before, shuffled)
    assert report.overall.absolute_drop == 0.0


@pytest.mark.parametrize(
    ("after", "message"),
    [
        (_results([True, True], suite="other"), "suite"),
        (_results([True, True], version="2"), "version"),
        (_results([True, True, True]), "ids differ"),
        (_results([True, True], ["a", "b"]), "changed category"),
    ],
)
def test_mismatched_results_raise(after: ItemResults, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare(_results([True, True], ["a", "a"]), after)


def test_invalid_item_results_raise() -> None:
    with pytest.raises(ValueError, match="one per item"):
        ItemResults("s", "1", ("a", "b"), ("x",), (True, False))
    with pytest.raises(ValueError, match="unique"):
        ItemResults("s", "1", ("a", "a"), ("x", "x"), (True, False))


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    before = _results(list(rng.random(200) < 0.7))
    after = _results(list(rng.random(200) < 0.6))
    first, second = compare(before, after, seed=3), compare(before, after, seed=3)
    assert first.to_dict() == second.to_dict()
    assert compare(before, after, seed=4).overall.absolute_drop_ci != first.overall.absolute_drop_ci


def test_nothing_right_before_has_no_relative_drop() -> None:
    report = compare(_results([False] * 5), _results([False, True, False, False, False]))
    assert report.overall.relative_drop is None
    assert report.overall.relative_drop_ci is None
    assert report.overall.absolute_drop == pytest.approx(-0.2)
    assert not report.exceeds(0.0)


def test_report_is_json_ready_and_fast() -> None:
    rng = np.random.default_rng(0)
    categories = [f"c{i % 6}" for i in range(300)]
    before = _results(list(rng.random(300) < 0.8), categories)
    after = _results(list(rng.random(300) < 0.7), categories)
    start = time.perf_counter()
    report = compare(before, after, n_bootstrap=2000)
    assert time.perf_counter() - start < 0.5
    data = json.loads(json.dumps(report.to_dict()))
    assert data["categories"][OVERALL]["items"] == 300


def test_invalid_arguments_raise() -> None:
    results = _results([True])
    with pytest.raises(ValueError, match="n_bootstrap"):
        compare(results, results, n_bootstrap=0)
    with pytest.raises(ValueError, match="confidence"):
        compare(results, results, confidence=1.0)


def test_interval_matches_explicit_index_resampling() -> None:
    rng = np.random.default_rng(2)
    before = rng.random(150) < 0.75
    after = before & (rng.random(150) < 0.85) | (rng.random(150) < 0.05)
    report = compare(_results(list(before)), _results(list(after)), n_bootstrap=20000)
    indices = rng.integers(0, 150, size=(20000, 150))  # same items before and after
    drops = before[indices].mean(axis=1) - after[indices].mean(axis=1)
    expected = np.quantile(drops, [0.025, 0.975])
    assert report.overall.absolute_drop_ci == pytest.approx(tuple(expected), abs=0.01)


def _scored(flags_by_method: dict[str, list[bool]]) -> dict:
    from retain.evaluation.probes import ProbeItem, ProbeScore, ProbeSuite

    items = tuple(ProbeItem(f"i{index}", "facts", f"q{index}", "a", ("a", "b")) for index in range(10))
    suite = ProbeSuite("s", "1", items)
    return {"probes": {"s": {method: ProbeScore.from_flags(suite, items, method, flags, [""] * 10).to_dict(True)
                             for method, flags in flags_by_method.items()}}}


def test_a_drop_by_generation_with_log_likelihood_held_is_named_a_format_collapse() -> None:
    # Issue 25: SmolLM2 after 15 LoRA steps answered in one word: 44% forgotten by
    # generation while log-likelihood ranking did not drop. The verdict names it.
    from retain.evaluation.engine import forgetting
    from retain.training.finish import format_collapse

    base = _scored({"generation": [True] * 8 + [False] * 2, "loglik": [True] * 6 + [False] * 4})
    terse = _scored({"generation": [True] * 3 + [False] * 7, "loglik": [True] * 6 + [False] * 4})
    reason = format_collapse(forgetting(base, terse), "generation", 0.03)
    assert "format collapse" in reason and "s: 62.5% by generation, +0.0% by log-likelihood" in reason
    lost = _scored({"generation": [True] * 3 + [False] * 7, "loglik": [True] * 2 + [False] * 8})
    assert format_collapse(forgetting(base, lost), "generation", 0.03) == ""  # both dropped: forgetting
    assert format_collapse(forgetting(base, terse), "loglik", 0.03) == ""
