"""Tests for retain.rundir: atomic files, run directory lifecycle, metrics, meta, log."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import retain
from retain import rundir as rundir_module
from retain.errors import RunDirError
from retain.io import atomic_write_json, atomic_write_text, read_jsonl
from retain.rundir import LOCK_FILE, RunDir, default_run_name


def leftovers(directory: Path) -> list[str]:
    """Returns names of temp files or moved-aside directories left in ``directory``."""
    return [path.name for path in directory.iterdir() if path.name.startswith(".")]


# --- atomic writes --------------------------------------------------------------------


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_failed_serialization_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"ok": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rundir_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"ok": 2})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert leftovers(tmp_path) == []


def test_json_is_indented_with_trailing_newline(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text.endswith("}\n") and '\n  "b": 1' in text
    assert list(json.loads(text)) == ["b", "a"]  # insertion order kept


class Scalar:
    """Stands in for a numpy or torch scalar."""

    def item(self) -> float:
        return -math.inf


def test_non_finite_floats_write_valid_json(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"loss": math.nan, "up": math.inf, "down": [Scalar()], "fine": 0.5})

    def reject(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    assert json.loads(target.read_text(), parse_constant=reject) == {
        "loss": "NaN",
        "up": "Infinity",
        "down": ["-Infinity"],
        "fine": 0.5,
    }


# --- creating run directories ---------------------------------------------------------


def test_create_makes_the_directory(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "first")
    assert run.path == tmp_path / "runs" / "first" and run.path.is_dir()
    assert run.config_path.name == "config.yaml" and run.metrics_path.name == "metrics.jsonl"
    assert run.summary_path.name == "summary.json" and run.meta_path.name == "meta.json"
    assert run.log_path.name == "log.txt" and run.checkpoints_dir.name == "checkpoints"


def test_create_refuses_an_existing_run(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("a")
    with pytest.raises(RunDirError) as caught:
        RunDir.create(tmp_path, "x")
    assert "already exists" in caught.value.message
    assert "--overwrite" in (caught.value.fix or "") and "--resume" in (caught.value.fix or "")


def test_create_reuses_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    assert RunDir.create(tmp_path, "x").path.is_dir()


def test_overwrite_replaces_the_old_run(tmp_path: Path) -> None:
    old = RunDir.create(tmp_path, "x")
    old.write_config("old: true\n")
    (old.path / "checkpoints").mkdir()
    old.release()  # the process that wrote it has finished
    run = RunDir.create(tmp_path, "x", overwrite=True)
    assert run.path.is_dir() and [path.name for path in run.path.iterdir()] == [LOCK_FILE]
    assert leftovers(tmp_path) == []


def test_resume_keeps_the_files(tmp_path: Path) -> None:
    old = RunDir.create(tmp_path, "x")
    old.append_metrics({"step": 1})
    old.release()
    run = RunDir.create(tmp_path, "x", resume=True)
    assert [record["step"] for record in run.read_metrics()] == [1]


def test_resume_of_a_missing_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirError) as caught:
        RunDir.create(tmp_path, "missing", resume=True)
    assert "drop --resume" in (caught.value.fix or "")


def test_overwrite_and_resume_together_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError):
        RunDir.create(tmp_path, "x", overwrite=True, resume=True)


@pytest.mark.parametrize("name", ["", ".", "..", "../evil", "a/b", "a\\b", "has space", ".hidden"])
def test_bad_run_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(RunDirError) as caught:
        RunDir.create(tmp_path, name)
    assert caught.value.field == "output.name"
    assert list(tmp_path.iterdir()) == []


def test_default_run_name() -> None:
    assert re.fullmatch(r"train-\d{8}-\d{6}", default_run_name("train"))


# --- metrics --------------------------------------------------------------------------


def test_metrics_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    assert run.read_metrics() == []
    run.append_metrics({"step": 1, "loss": 2.5})
    run.append_metrics({"step": 2, "loss": math.nan, "time": 7.0})
    records = run.read_metrics()
    assert [record["step"] for record in records] == [1, 2]
    assert isinstance(records[0]["time"], float)
    assert records[1]["time"] == 7.0 and records[1]["loss"] == "NaN"


def test_truncated_last_line_is_skipped(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    run.append_metrics({"step": 1})
    with open(run.metrics_path, "a") as file:
        file.write('{"step": 2, "lo')  # a crash mid-write
    assert [record["step"] for record in run.read_metrics()] == [1]
    run.release()
    resumed = RunDir.create(tmp_path, "x", resume=True)
    resumed.append_metrics({"step": 2})  # must not glue onto the partial line
    assert [record["step"] for record in resumed.read_metrics()] == [1, 2]


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(RunDirError) as caught:
        read_jsonl(path)
    assert caught.value.line == 2
    assert caught.value.file == str(path)
    assert ":2:" in caught.value.render()


# --- meta, summary, log ---------------------------------------------------------------


def test_meta_records_versions(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    run.write_meta({"probe_suites": {"lab": "1"}})
    meta = json.loads(run.meta_path.read_text())
    assert meta["retain_version"] == retain.__version__
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(meta["packages"]) == {"torch", "transformers", "peft"}
    assert meta["command"] == sys.argv
    assert meta["started_at"].endswith("+00:00")
    assert meta["probe_suites"] == {"lab": "1"}


def test_meta_survives_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    run = RunDir.create(tmp_path, "x")
    assert run.write_meta()["git_commit"] is None


def test_summary_round_trip_and_missing_summary(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    with pytest.raises(RunDirError, match="not finished"):
        run.read_summary()
    run.write_summary({"forgetting": 0.01})
    assert run.read_summary() == {"forgetting": 0.01}


def test_log_file_receives_retain_messages(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    retain_logger = logging.getLogger("retain")
    level_before = retain_logger.level
    with run:
        logging.getLogger("retain.training").info("step %d done", 3)
        logging.getLogger("other").warning("not ours")
    logging.getLogger("retain").info("after detach")
    text = run.log_path.read_text()
    assert "INFO retain.training: step 3 done" in text
    assert "not ours" not in text and "after detach" not in text
    assert retain_logger.level == level_before
    assert not any(isinstance(handler, logging.FileHandler) for handler in retain_logger.handlers)


def test_attach_and_detach_log(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    handler = run.attach_log()
    logging.getLogger("retain").warning("careful")
    run.detach_log(handler)
    assert "WARNING retain: careful" in run.log_path.read_text()
    assert os.path.getsize(run.log_path) > 0


@pytest.mark.parametrize("flags", [{"resume": True}, {"overwrite": True}])
def test_a_run_another_process_writes_is_neither_resumed_nor_replaced(tmp_path: Path, flags: dict) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from retain.rundir import RunDir; "
        f"run = RunDir.create({str(tmp_path)!r}, 'x'); run.append_metrics({{'step': 1}}); "
        "print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunDirError) as caught:
            RunDir.create(tmp_path, "x", **flags)
        assert f"pid {holder.pid}" in caught.value.message and "in use" in caught.value.message
        assert [record["step"] for record in RunDir(tmp_path / "x").read_metrics()] == [1]  # untouched
    finally:
        holder.kill()
        holder.wait()
    # Killed, it holds nothing: the kernel dropped its lock with the process.
    assert RunDir.create(tmp_path, "x", resume=True).read_metrics()[0]["step"] == 1


def test_a_released_run_opens_again_in_the_same_process(tmp_path: Path) -> None:
    with RunDir.create(tmp_path, "x"):
        with pytest.raises(RunDirError):
            RunDir.create(tmp_path, "x", resume=True)
    RunDir.create(tmp_path, "x", resume=True).release()  # leaving `with` released it
