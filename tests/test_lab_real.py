"""`retain lab --model`: the story's seven steps on a model retain did not build.

A copy of the micro lab model stands in for a real one: no lab marker (so no family, no
lab corpus), the real scale shrunk to a few steps. It has no chat template (it was
pretrained on raw Q/A text and answers nothing through one); the chat path is SmolLM2's
(`make real`, tests/test_real_model.py). What is checked is the machinery: the probes
calibrated to the model in the base step, the shipped instructions rehearsed by
self_augment, every step's finding, the table's names, and the run's settings kept for
--resume. The figures themselves come from SmolLM2 (docs/RESULTS.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retain.lab.runs as runs
from retain.cli import app
from retain.config import load_config
from retain.errors import ConfigError
from retain.lab.base import METADATA_FILE
from retain.lab.story import STEPS
from retain.methods.general import INSTRUCTIONS, general_source

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def outside_model(micro_base, tmp_path_factory) -> Path:
    base, _ = micro_base
    folder = tmp_path_factory.mktemp("outside") / "model"
    shutil.copytree(base.path, folder)
    (folder / METADATA_FILE).unlink()  # not a lab model any more: no family, no lab corpus
    return folder


def _step(run: Path, name: str) -> dict:
    return json.loads((run / "steps" / f"{STEPS.index(name) + 1}-{name}.json").read_text())


@pytest.fixture(scope="module")
def real_run(outside_model, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("real")
    # The micro model knows nothing of the general suite: it is judged, calibrated, on the
    # probes of its own world (which the lab writes beside the task data).
    probes = ("probes.suites=[" + str(out / "story" / "data" / "probes.jsonl") + "]", "probes.calibrate=true",
              "probes.per_category=3", "probes.calibrate_min_items=1")
    small = replace(runs.REAL, size="micro", n_train=64, small_rows=40, n_eval=16, trap_every=2, guarded_every=2,
                    shots=(0, 1), train=("train.max_steps=4", "train.batch_size=4"), probes=probes)
    patch = pytest.MonkeyPatch()
    patch.setattr(runs, "REAL", small)
    try:
        result = runner.invoke(app, ["-q", "lab", "--model", str(outside_model), "--output-dir", str(out),
                                     "--name", "story"])
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    return out / "story", result.stdout


def test_the_story_runs_on_a_model_retain_did_not_build(real_run, outside_model) -> None:
    run, stdout = real_run
    for number, name in enumerate(STEPS, 1):
        assert f"[{number}/7] {name}" in stdout
    base = _step(run, "base")["figures"]
    assert base["model"] == str(outside_model) and set(base["scores"]) == {"lab"}
    assert {"generation", "loglik"} <= set(base["scores"]["lab"])
    [calibration] = base["calibration"]
    assert calibration["suite"] == "lab" and sum(calibration["known"].values()) > 0
    assert "probes calibrated to the base (lab)" in _step(run, "base")["line"]
    assert runs.REAL.probes[0] == "probes.suites=[general]"  # what the real story judges by
    recipe = _step(run, "recipe")["figures"]
    assert recipe["overrides"][0] == "method=[lora,self_augment]"
    config = (Path(recipe["run"]["run_dir"]) / "config.yaml").read_text()
    assert "self_augment" in config
    # self_augment ran on the shipped instructions (the micro model answers few of them well).
    assert general_source(load_config(Path(recipe["run"]["run_dir"]) / "config.yaml")) == INSTRUCTIONS
    assert "self_augment: only" in (Path(recipe["run"]["run_dir"]) / "log.txt").read_text()
    rows = _step(run, "report")["figures"]["rows"]
    # The base row is measured on the calibrated probes, as every training row is.
    assert rows[0]["general"] == _step(run, "trap")["figures"]["forced"]["base_general"] != base["accuracy"]["overall"]
    assert [row["model"] for row in rows][2:] == [
        "full fine-tuning, lr 1e-4, guards off", "full fine-tuning, lr 1e-4, guarded",
        "recipe: LoRA + self-rehearsal, guarded"]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"] == str(outside_model) and meta["workers"] == 1  # one real training at a time


def test_resuming_with_another_model_or_a_missing_one_is_one_line(real_run, outside_model, tmp_path) -> None:
    run, _ = real_run
    where = ["--output-dir", str(run.parent), "--name", run.name, "--resume"]
    for args, message in (([], "started with --size default --seed 0 --model"),
                          (["--model", str(tmp_path / "nothing")], "there is no model at"),
                          (["--model", "smollm2-135m-instruct", "--size", "micro"], "leave out --size")):
        result = subprocess.run([sys.executable, "-m", "retain.cli", "lab", *where, *args],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 2 and message in result.stderr.replace("\n", " "), result.stderr
        assert "Traceback" not in result.stderr


def test_compare_trains_the_methods_on_a_model_retain_did_not_build(outside_model, tmp_path) -> None:
    out = tmp_path / "cmp"
    # As the story above: the micro model is judged, calibrated, on its own world's probes.
    small = replace(runs.REAL, size="micro", n_eval=16, train=("train.max_steps=2", "train.batch_size=4"),
                    probes=("probes.suites=[" + str(out / "data" / "probes.jsonl") + "]", "probes.calibrate=true",
                            "probes.per_category=3", "probes.calibrate_min_items=1"))
    patch = pytest.MonkeyPatch()
    patch.setattr(runs, "REAL", small)
    try:
        result = runner.invoke(app, ["-q", "lab", "compare", str(out), "--model", str(outside_model), "--seeds", "1",
                                     "--n-train", "64", "--method", "full (aggressive)", "--method", "lora, lr 2e-4"])
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["model"] == str(outside_model) and saved["n_eval"] == 16
    assert [row["recipe"] for row in saved["rows"]] == ["full (aggressive)", "lora, lr 2e-4"]
    for row in saved["rows"]:
        [run] = row["runs"]
        config = load_config(Path(run["run_dir"]) / "config.yaml")
        assert config.model.name_or_path == str(outside_model) and config.probes.calibrate
        assert config.train.max_steps == 2 and not config.guards.enabled
        assert row["forgetting"][0] is not None and row["task_accuracy"][0] is not None
    # The real model's settings, not the lab's: full fine-tuning at lr 1e-4 is the aggressive run.
    assert load_config(Path(saved["rows"][0]["runs"][0]["run_dir"]) / "config.yaml").train.lr == pytest.approx(1e-4)
    assert sum(1 for _ in (out / "data" / "validation.jsonl").open()) == 16


@pytest.mark.parametrize("args", [["--quick"], ["--size", "micro"]])
def test_compare_on_a_model_refuses_the_lab_presets(args, tmp_path) -> None:
    result = runner.invoke(app, ["lab", "compare", str(tmp_path / "cmp"), "--model", "smollm2-135m-instruct", *args])
    assert isinstance(result.exception, ConfigError) and "leave out --quick and --size" in result.exception.fix
    assert not (tmp_path / "cmp").exists()
