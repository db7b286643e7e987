"""`retain lab` end to end at micro size: every step runs and says what it found."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.lab.story import STEPS, step_named

pytestmark = pytest.mark.slow
runner = CliRunner()


def _step(run: Path, name: str) -> dict:
    return json.loads((run / "steps" / f"{STEPS.index(name) + 1}-{name}.json").read_text())


@pytest.fixture(scope="module")
def lab_run(micro_base, tmp_path_factory) -> tuple[Path, str, list[str]]:
    _, cache = micro_base
    out = tmp_path_factory.mktemp("lab")
    args = ["--size", "micro", "--cache-dir", str(cache), "--output-dir", str(out)]
    result = runner.invoke(app, ["-q", "lab", *args, "--name", "story"])
    assert result.exit_code == 0, result.output
    return out / "story", result.stdout, args


def test_the_lab_tells_the_whole_story_at_micro_size(lab_run) -> None:
    run, stdout, _ = lab_run
    for number, name in enumerate(STEPS, 1):
        assert f"[{number}/7] {name}" in stdout
    # 1. the base model, per category
    base = _step(run, "base")["figures"]
    assert base["reused"] and "overall" in base["accuracy"] and "overall" in stdout
    # 2. the size rule blocks 200 rows (40 at micro size); the flaws are found; the clean set goes
    audit = _step(run, "audit")["figures"]
    assert "dataset_size" in audit["small"]["blockers"]
    flawed = {*audit["flawed"]["blockers"], *audit["flawed"]["warnings"]}
    assert {"exact_duplicates", "conflicting_labels", "train_eval_overlap"} <= flawed
    assert audit["clean"]["blockers"] == []  # the lab config relaxes the size rule to a warning
    # 3. the few-shot baseline on the held-out task
    baseline = _step(run, "baseline")
    assert set(baseline["figures"]["accuracy"]) == {"0", "1"}
    assert baseline["figures"]["fine_tuning_needed"] and "commonest label" in baseline["line"]
    # 4. the trap: the doctor refuses it; forced past it, the run still trains under the guards
    trap = _step(run, "trap")["figures"]
    assert trap["refused"] and "doctor" in trap["refused"]
    assert "refused the run" in _step(run, "trap")["line"]
    assert trap["forced"]["steps"] <= 8 and not trap["forced"]["ship"]
    # 5. forgetting shown (per category) and prevented by the guarded run
    aggressive = _step(run, "aggressive")["figures"]
    naive, guarded = aggressive["naive"], aggressive["guarded"]
    assert naive["forgetting"] > 0.03 and aggressive["categories_lost"]
    assert guarded["guard_events"] and guarded["forgetting"] <= 0.03 < naive["forgetting"]
    # 6. the recipe ran under the default guards
    assert _step(run, "recipe")["figures"]["run"]["steps"] == 8
    # 7. the table and a report that names every training
    rows = _step(run, "report")["figures"]["rows"]
    assert [row["model"].split(",")[0] for row in rows][:2] == ["base model", "pad = EOS trap"]
    assert len(rows) == 5 and "full fine-tuning" in stdout and " model " in stdout  # a rich table, not raw Markdown
    assert not [line for line in stdout.splitlines() if line.startswith("| ")]
    # every training's checks, printed under its step (trainings in worker processes print theirs when they end)
    assert re.search(r"^    aggressive-guarded: step \d+, probes \d", stdout, re.MULTILINE)
    assert re.search(r"^    recipe: step \d+, probes \d", stdout, re.MULTILINE)
    html = (run / "report.html").read_text()
    assert all(Path(row["run_dir"]).name in html for row in rows[1:])
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["steps"]) == set(STEPS)
    assert json.loads((run / "meta.json").read_text())["workers"] == 2  # the default on a 2-core CPU


def test_one_step_reruns_alone_and_bad_steps_are_one_line(lab_run) -> None:
    run, _, args = lab_run
    before = _step(run, "aggressive")
    # The lab above sent its trainings to two worker processes; this step trains here.
    result = runner.invoke(app, ["-q", "lab", "step", "recipe", "--workers", "1", "--name", "story", *args])
    assert result.exit_code == 0, result.output
    assert "[6/7] recipe" in result.stdout and _step(run, "recipe")["figures"]["run"]["steps"] == 8
    result = runner.invoke(app, ["-q", "lab", "step", "7", "--name", "story", *args])
    assert result.exit_code == 0, result.output
    assert "[7/7] report" in result.stdout and "[5/7]" not in result.stdout
    assert _step(run, "aggressive") == before  # earlier steps are not rerun
    bad = subprocess.run([sys.executable, "-m", "retain.cli", "lab", "step", "train-harder"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "no lab step 'train-harder'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_an_interrupted_lab_resumes_keeping_its_finished_steps_and_trainings(lab_run, monkeypatch) -> None:
    run, _, args = lab_run
    recipe, report = _step(run, "recipe"), _step(run, "report")
    # As if Ctrl-C had come during the recipe's step: its training had finished, its step
    # result and the report had not been written.
    for name in ("recipe", "report"):
        (run / "steps" / f"{STEPS.index(name) + 1}-{name}.json").unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training was run again")

    monkeypatch.setattr("retain.training.run.run_train", no_training)
    result = runner.invoke(app, ["-q", "lab", "--name", "story", "--resume", "--workers", "1", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("(kept from before the interruption)") == 5
    assert "[6/7] recipe" in result.stdout and "[7/7] report" in result.stdout
    assert _step(run, "recipe")["line"] == recipe["line"]
    assert _step(run, "report")["figures"]["rows"] == report["figures"]["rows"]
    # A training cut short is not read back: it runs again.
    summary = Path(recipe["figures"]["run"]["run_dir"]) / "summary.json"
    saved = summary.read_text()
    summary.unlink()
    (run / "steps" / "6-recipe.json").unlink()
    try:
        result = runner.invoke(app, ["-q", "lab", "--name", "story", "--resume", "--workers", "1", *args])
        assert result.exit_code == 1 and "a finished training was run again" in repr(result.exception)
    finally:
        summary.write_text(saved)
        monkeypatch.undo()
        assert runner.invoke(app, ["-q", "lab", "step", "recipe", "--name", "story", "--workers", "1", *args]).exit_code == 0


def test_ctrl_c_names_the_command_that_continues_and_resume_refuses_bad_input(monkeypatch, tmp_path) -> None:
    def interrupted(lab, steps):
        lab.step_file("base").parent.mkdir(parents=True, exist_ok=True)
        lab.step_file("base").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr("retain.lab.story.run_story", interrupted)
    where = ["--size", "micro", "--output-dir", str(tmp_path)]
    result = runner.invoke(app, ["-q", "lab", "--name", "cut", *where])
    assert result.exit_code == 130
    assert "1 of 7 steps finished and are kept in" in result.stderr
    assert f"retain lab --name cut --output-dir {tmp_path} --resume" in result.stderr.replace("\n", "")
    for bad, message in ((["--resume"], "--resume needs the name"),
                         (["--resume", "--name", "nothing"], "nothing to resume"),
                         (["--resume", "--name", "cut", "--seed", "3"], "started with --size micro --seed 0")):
        result = subprocess.run([sys.executable, "-m", "retain.cli", "lab", *where, *bad],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 2 and message in result.stderr.replace("\n", " "), result.stderr
        assert "Traceback" not in result.stderr


def test_steps_are_named_by_number_or_name() -> None:
    assert step_named("1") == "base" and step_named("7") == "report" and step_named("trap") == "trap"
    for wrong in ("0", "8", "Base", ""):
        with pytest.raises(Exception, match="no lab step"):
            step_named(wrong)
