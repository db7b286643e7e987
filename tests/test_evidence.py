"""The evidence scripts' decisions: which recipe the search chooses, and when a setting
counts as having learned the task. A wrong rule here would publish a wrong reading, so
the rules are tested on made-up trials rather than trusted."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from evidence_recipe import choose, learned_at_last_check

CHANCE = ("no", 0.44, 100)  # the lab task's validation split on SmolLM2: 44% answer "no"


def trial(number: int, checks: list[tuple[int, float, float]], *, ship: bool = False,
          task: float | None = None) -> dict:
    """A search trial whose checks are (step, forgetting, task accuracy)."""
    return {"number": number, "params": {"train.lr": number * 1e-4}, "ship": ship, "task_accuracy": task,
            "checks": [{"step": step, "forgetting": forgetting, "task_accuracy": accuracy}
                       for step, forgetting, accuracy in checks]}


def test_a_model_that_answers_like_the_base_has_not_learned_even_above_the_label():
    # The base already beats "no" (55% against 44%): staying there is not learning.
    assert not learned_at_last_check(trial(1, [(0, 0.0, 0.55), (30, 0.02, 0.56)]), CHANCE)
    assert learned_at_last_check(trial(1, [(0, 0.0, 0.55), (30, 0.02, 0.70)]), CHANCE)


def test_without_a_check_at_step_zero_the_label_is_the_floor():
    assert learned_at_last_check(trial(1, [(10, 0.0, 0.60), (20, 0.01, 0.60)]), CHANCE)
    assert not learned_at_last_check(trial(1, [(10, 0.0, 0.50)]), CHANCE)


def test_the_step_zero_check_alone_is_not_learning():
    assert not learned_at_last_check(trial(1, [(0, 0.0, 0.90)]), CHANCE)
    assert not learned_at_last_check(trial(1, []), CHANCE)


def test_choose_prefers_a_shipped_setting_then_the_least_forgetting_that_learned():
    shipped = trial(1, [(0, 0.0, 0.55), (60, 0.01, 0.60)], ship=True, task=0.62)
    learned_more_forgetting = trial(2, [(0, 0.0, 0.55), (60, 0.09, 0.80)])
    learned_less_forgetting = trial(3, [(0, 0.0, 0.55), (60, 0.05, 0.72)])
    unlearned_no_forgetting = trial(4, [(0, 0.0, 0.55), (60, 0.0, 0.55)])
    grid, setting, why = choose({"a": [shipped, learned_more_forgetting]}, CHANCE)
    assert (grid, setting) == ("a", shipped["params"]) and "shipped" in why
    grid, setting, why = choose({"a": [learned_more_forgetting, unlearned_no_forgetting],
                                 "b": [learned_less_forgetting]}, CHANCE)
    assert (grid, setting) == ("b", learned_less_forgetting["params"]) and "least forgetting" in why
    assert choose({"a": [unlearned_no_forgetting]}, CHANCE) is None


def test_the_real_recipe_reading_names_the_best_trade_off_and_the_missed_target():
    from evidence_real_recipe import _tradeoff

    result = {"chance": {"validation": list(CHANCE)}, "sweeps": {
        "grid": {"trials": [trial(1, [(0, 0.0, 0.55), (15, 0.06, 0.46), (30, 0.09, 0.74)]),
                            trial(2, [(0, 0.0, 0.55), (30, 0.071, 0.76), (60, 0.12, 0.80)])]}}}
    text = _tradeoff(result)
    assert "the least forgetting was 6.0% (`grid` trial 1, step 15" in text
    assert "3 checks saw the task learned" in text and "at 7.1% to 12.0% forgetting" in text
    assert "`grid` trial 2 at step 30, task 76.0% with 7.1% forgetting" in text
    assert "No setting learned the task within the 3% limit" in text
    within = {"chance": result["chance"], "sweeps": {"grid": {"trials": [trial(3, [(0, 0.0, 0.55), (30, 0.02, 0.8)])]}}}
    assert "within the 3% limit" not in _tradeoff(within) and "task 80.0% with 2.0% forgetting" in _tradeoff(within)


def test_the_floor_reading_follows_the_rule_declared_with_it():
    from evidence_real_recipe import _floor

    def floor(*paths: list[float]) -> dict:
        return {"probe_items": 113, "controls": {"real-floor": {"overrides": ["method=[lora]", "data.train=x.jsonl"],
                "trials": [trial(n, [(0, 0.0, 0.55)] + [(10 * (i + 1), f, 0.55) for i, f in enumerate(path)])
                           | {"forgetting": path[-1], "seconds": 300.0} for n, path in enumerate(paths)]}}}

    quiet = "\n".join(_floor(floor([0.0, 0.009], [0.018, 0.009])))
    assert "Of the floor's 4 checks after the start, 0 forgot 3% or more (range 0.0% to 1.8%" in quiet
    assert "the task training's own" in quiet and "one item is 0.9%" in quiet
    assert "`method=[lora]`" in quiet and "x.jsonl" not in quiet and "(2 trials, 10 min on 2 CPU cores)" in quiet
    noisy = "\n".join(_floor(floor([0.0, 0.009], [0.035, 0.018])))
    assert "1 forgot 3% or more" in noisy and "read against this floor, not against zero" in noisy
    assert _floor({"controls": {}}) == [] and _floor({}) == []


def test_the_probe_items_are_the_measurable_known_ones(tmp_path):
    import json

    from evidence_real_recipe import _probe_items

    trial_dir = tmp_path / "sweep-a" / "trials" / "trial-0000"
    trial_dir.mkdir(parents=True)
    (trial_dir / "calibration.json").write_text(json.dumps([{"known": {"arithmetic": 9, "instruction": 3},
                                                             "not_measurable": ["instruction"]}]))
    assert _probe_items(tmp_path) == 9
    assert _probe_items(tmp_path / "none") is None


def test_the_real_methods_reading_judges_the_target_against_the_label_and_the_base():
    from evidence_real_methods import REAL_RECIPE, REFERENCE, _reading

    def row(name: str, forgetting: float, task: tuple[float, float]) -> dict:
        return {"recipe": name, "forgetting": [forgetting, 0.01], "forgetting_not_rehearsed": [forgetting, 0.01],
                "task_accuracy": list(task)}

    rows = [row(REFERENCE, 0.75, (0.80, 0.03)), row(REAL_RECIPE, 0.02, (0.66, 0.115)),
            row("full + fapm", 0.025, (0.69, 0.08))]
    text = _reading(rows, 0.44, 0.55)
    # 0.66 - 0.115 clears the label (44%) but not the base (55%); 0.69 - 0.08 clears both
    assert "The base model answers 55.0%" in text and "): NOT met; forgetting" in text
    assert "Methods that meet it: `full + fapm`." in text
    assert "): met; forgetting" in _reading(rows, 0.44, None)  # without the base, the label alone
    assert "No other method meets that target either." in _reading(rows[:2], 0.44, 0.55)


def test_a_sweep_stopped_before_its_index_is_read_from_its_finished_trials(tmp_path):
    import json

    import yaml
    from evidence_real_recipe import _floor
    from evidence_recipe import _trials

    runs = tmp_path / "runs"
    (tmp_path / "real-floor.yaml").write_text(yaml.safe_dump({"space": {"train.lr": [2e-4, 5e-4], "train.seed": [0, 1]}}))
    for number, seed in ((0, 0), (1, 1)):
        trial = runs / "sweep-real-floor" / "trials" / f"trial-{number:04d}"
        trial.mkdir(parents=True)
        (trial / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": 2e-4, "seed": seed}}))
        (trial / "metrics.jsonl").write_text("".join(json.dumps({"event": "check", "step": step, "forgetting": f,
                                                                 "task_accuracy": 0.59}) + "\n"
                                                     for step, f in ((0, 0.0), (8, 0.053), (16, 0.088))))
        if number == 0:  # the second was cut short: no summary
            (trial / "summary.json").write_text(json.dumps({
                "verdict": {"ship": False}, "stopped_by": None, "restored_step": None, "steps": 60,
                "guard_events": [], "task": {"eval": {"accuracy": 0.58}}, "forgetting_relative": 0.088,
                "seconds": 770.0}))
    floor = _trials(runs / "sweep-real-floor")
    assert floor["stopped_early"] and [t["params"] for t in floor["trials"]] == [{"train.lr": 2e-4, "train.seed": 0}]
    assert [c["forgetting"] for c in floor["trials"][0]["checks"]] == [0.0, 0.053, 0.088]
    text = "\n".join(_floor({"probe_items": 113, "controls": {"real-floor": floor | {"overrides": []}}}))
    assert "stopped after 1 of its 4 trials" in text and "2 forgot 3% or more" in text
