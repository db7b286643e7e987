"""Probes calibrated to the base (issue 25): the items the base knew, the categories it
could not do reported as not measurable, in eval and in training."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.config import load_config
from retain.errors import ConfigError
from retain.evaluation import calibration
from retain.evaluation.calibration import calibrate, calibrated_result, restored, stable_ids
from retain.evaluation.engine import EvalSettings
from retain.evaluation.probes import ProbeItem, ProbeScore, ProbeSuite
from retain.evaluation.suites import load_suite, write_suite

runner = CliRunner()


def _suite() -> ProbeSuite:
    items = [ProbeItem(f"a{i}", "arithmetic", f"What is {i} + 1?", str(i + 1)) for i in range(6)]
    items += [ProbeItem(f"c{i}", "capitals", f"Capital number {i}?", f"City{i}") for i in range(6)]
    return ProbeSuite("mini", "3", tuple(items))


def _result(suite: ProbeSuite, right: set[str]) -> dict:
    flags = [item.id in right for item in suite.items]
    scores = {method: ProbeScore.from_flags(suite, suite.items, method, flags, ["x"] * len(flags)).to_dict(True)
              for method in ("generation", "loglik")}
    return {"model": "m", "probes": {suite.name: scores}, "task": {}, "drift": None}


def test_calibration_keeps_the_known_items_and_names_the_categories_it_cannot_measure() -> None:
    suite = _suite()
    known = {"a0", "a1", "a2", "a3", "a5", "c1", "c4"}
    result = calibrate(suite, known, min_items=3)
    assert [item.id for item in result.suite.items] == ["a0", "a1", "a2", "a3", "a5"]
    assert result.not_measurable == ("capitals",)
    assert result.known == {"arithmetic": 5, "capitals": 2} and result.total == {"arithmetic": 6, "capitals": 6}
    assert result.suite.version.startswith("3+known-") and result.suite.name == "mini"
    assert "5 of 12 items known in 1 of 2 categories" in result.summary()
    assert "not measurable (under 3 known items): capitals 2/6" in result.summary()
    # Another set of known items is another version: results are compared only with the same cut.
    assert calibrate(suite, known - {"a5"}, 3).suite.version != result.suite.version
    # probes.per_category cuts the known items, not the suite.
    assert [item.id for item in calibrate(suite, known, 1, limit=2).suite.items] == ["a0", "a1", "c1", "c4"]


def test_the_base_result_is_cut_to_the_calibrated_items_and_read_back_unchanged() -> None:
    suite = _suite()
    right = {"a0", "a1", "a2", "c0"}
    known = calibrate(suite, right, min_items=1)
    cut = calibrated_result(_result(suite, right | {"c5"}), [known])
    generation = cut["probes"]["mini"]["generation"]
    assert generation["version"] == known.suite.version
    assert [entry["id"] for entry in generation["items"]] == ["a0", "a1", "a2", "c0"]
    assert generation["counts"] == {"arithmetic": 3, "capitals": 1} and generation["accuracy"]["overall"] == 1.0
    assert calibrated_result(cut, [known]) == cut  # a resumed run cuts it again: nothing changes
    assert "mini" not in calibrated_result(_result(suite, right), [calibrate(suite, right, min_items=9)])["probes"]
    back = restored(json.loads(json.dumps(known.to_dict())), suite)
    assert back == known
    with pytest.raises(ValueError):
        restored(known.to_dict(), replace(suite, version="4"))


def test_an_item_the_base_gets_wrong_when_paraphrased_is_not_known(monkeypatch) -> None:
    suite = _suite()

    def fake_generation(model, tokenizer, scored, prompt_format, *, max_new_tokens, batch_size):
        # Right on every paraphrase but the lower-cased "capital number 1?".
        flags = [item.prompt != "capital number 1?" for item in scored.items]
        assert all(item.prompt != original.prompt for item, original in
                   zip(scored.items, [next(i for i in suite.items if i.id == item.id) for item in scored.items]))
        return ProbeScore.from_flags(scored, scored.items, "generation", flags, [""] * len(flags))

    monkeypatch.setattr(calibration, "score_probes_by_generation", fake_generation)
    stable = stable_ids(None, None, suite, {"a0", "c1", "c2"}, None, EvalSettings())
    assert stable == {"a0", "c2"}


def test_the_paraphrase_pass_is_cached_and_a_damaged_cache_is_run_again(monkeypatch, tmp_path) -> None:
    suite = _suite()
    passes = []

    def fake_stable(model, tokenizer, scored, known, prompt_format, settings):
        passes.append(scored.name)
        return known - {"a5"}

    monkeypatch.setattr(calibration, "stable_ids", fake_stable)
    monkeypatch.setattr(calibration.PromptFormat, "for_tokenizer", lambda *args: None)
    cache = tmp_path / "base-eval" / "key-calibration.json"
    result = _result(suite, {"a0", "a1", "a2", "a5", "c0"})

    def calibrated(min_items: int, limit: int | None = None):
        return calibration.calibrate_suites(None, None, [suite], result, chat_template="auto",
                                            settings=EvalSettings(), min_items=min_items, limit=limit, cache=cache)

    first = calibrated(3)
    assert passes == ["mini"] and [item.id for item in first[0].suite.items] == ["a0", "a1", "a2"]
    assert calibrated(3) == first and passes == ["mini"]  # from the cache
    assert [item.id for item in calibrated(1, limit=1)[0].suite.items] == ["a0", "c0"]  # cut afresh
    assert passes == ["mini"]
    for damaged in ("{", '{"mini": ["zz"]}', '{"other": []}', "[]"):
        cache.write_text(damaged)
        passes.clear()
        assert calibrated(3) == first and passes == ["mini"]
    assert json.loads(cache.read_text()) == {"mini": ["a0", "a1", "a2", "c0"]}


def test_calibrating_needs_generation_among_the_methods() -> None:
    with pytest.raises(ConfigError, match="probes.calibrate"):
        load_config(None, ["probes.calibrate=true", "probes.methods=[loglik]"])


@pytest.mark.slow
def test_eval_calibrate_measures_what_the_model_knows_and_saves_the_suite(micro_base, tmp_path) -> None:
    base, _ = micro_base
    world_suite = load_suite("lab")
    small = ProbeSuite("lab-small", "1", world_suite.items[::6], world_suite.delimiter)
    write_suite(small, tmp_path / "probes.jsonl")
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["-q", "eval", str(base.path), "--suite", str(tmp_path / "probes.jsonl"),
                                 "--calibrate", "--save-suites", str(tmp_path / "suites"), "--no-drift",
                                 "--json", str(out), "--set", "probes.calibrate_min_items=2"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "probes calibrated to the base (lab-small)" in result.output
    data = json.loads(out.read_text())
    (entry,) = data["calibration"]
    right = {item["id"] for item in data["probes"]["lab-small"]["generation"]["items"] if item["correct"]}
    assert entry["kept_ids"] and set(entry["kept_ids"]) <= right
    saved = load_suite(tmp_path / "suites" / "lab-small.calibrated.jsonl")
    assert [item.id for item in saved.items] == entry["kept_ids"] and saved.version == entry["version"]
    # Forgetting of the model against itself on its calibrated suite: none, every item right.
    again = runner.invoke(app, ["-q", "eval", str(base.path), "--suite", str(tmp_path / "suites" /
                                "lab-small.calibrated.jsonl"), "--no-drift", "--json", str(tmp_path / "2.json")],
                          catch_exceptions=False)
    assert again.exit_code == 0
    assert json.loads((tmp_path / "2.json").read_text())["probes"]["lab-small"]["generation"]["accuracy"][
        "overall"] == 1.0


def test_save_suites_without_calibrate_is_one_line(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "retain.cli", "eval", "lab", "--save-suites", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("Fix: add --calibrate") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_save_suites_into_a_file_is_refused_before_any_work(tmp_path, where) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    target = blocker if where == "a_file" else blocker / "suites"
    result = subprocess.run([sys.executable, "-m", "retain.cli", "eval", "no-such-model", "--calibrate",
                             "--save-suites", str(target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--save-suites" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("text", ["not json", "{\"a\": 1}", "[1, 2]", "[{\"suite\": \"mini\"}]"])
def test_a_damaged_calibration_file_is_a_value_error_naming_it(tmp_path, text) -> None:
    from retain.evaluation.calibration import read_calibrations

    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="calibration"):
        read_calibrations(path, [_suite()])
