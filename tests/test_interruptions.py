"""Interruptions of ``retain train``, for real: kill -9 at random moments, kill inside a
checkpoint's save and inside the deletion of an old checkpoint, and a full disk.

Every run is the real CLI (``python -m retain.cli train``) in its own process on the micro
lab model: 12 steps of full fine-tuning, a checkpoint every 2 steps, checks every 4. Each
interrupted run is resumed with ``retain train --resume`` and must end with the same
numbers as an uninterrupted run, within :data:`TOLERANCE` (the final metrics: every step's
loss, every check, the final evaluation and the verdict; see :func:`final_metrics`).

``benchmarks/reliability_interruptions.py`` imports this module to run more trials for
docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retain.checkpoints import STATE_FILE, checkpoint_problem
from retain.io import read_jsonl

pytestmark = pytest.mark.slow

SAVE_EVERY = 2
MAX_STEPS = 12
# Resuming restores the weights, the optimizer, the scheduler, the random state, the data
# order and the guard state exactly, and the CPU kernels are deterministic, so a resumed
# run repeats an uninterrupted one bit for bit: the tolerance on every number is zero.
TOLERANCE = 0.0
TIMEOUT = 900  # seconds for one training process; a hang fails instead of blocking CI


# --- the lab and the config -----------------------------------------------------------


def make_lab(root: Path, cache: Path) -> dict[str, Path]:
    """Builds (or reuses from ``cache``) the micro lab model, and writes a small domain task
    and the lab's probe suite into ``root``; returns the paths a config needs."""
    from retain.lab.base import build_base, lab_size
    from retain.lab.export import export_lab_data

    base = build_base(lab_size("micro"), cache, progress=False)
    export_lab_data(root, size="micro", n_train=64, n_eval=16)
    return {"root": root, "model": base.path}


def write_config(lab: dict[str, Path], out: Path, runs: Path | None = None) -> Path:
    """Writes the config every run here uses into ``out``; returns it. The run goes to
    ``runs/run`` (``runs`` defaults to ``out``).

    Full fine-tuning, so a checkpoint holds the optimizer's moments beside the weights; the
    forgetting and smoke guards warn instead of stopping, so every run trains its 12 steps;
    ``min_train_loss`` 1.5 makes the loss guard warn near the end, from a window of the last
    10 losses that straddles the checkpoints (the guard state a resume must restore).
    """
    root = lab["root"]
    values = {
        "model": {"name_or_path": str(lab["model"])},
        "data": {"train": str(root / "train.jsonl"), "validation": str(root / "validation.jsonl"),
                 "eval": str(root / "test.jsonl"), "ood": str(root / "ood.jsonl")},
        "probes": {"suites": [str(root / "probes.jsonl")]},
        "method": {"use": ["full"]},
        "train": {"max_steps": MAX_STEPS, "batch_size": 8, "lr": 3e-4, "save_every": SAVE_EVERY},
        "guards": {"every_steps": 4, "forgetting": {"action": "warn"}, "smoke": {"action": "warn"},
                   "overfitting": {"min_train_loss": 1.5}},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(runs or out), "name": "run"},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(json.dumps(values, indent=1))  # JSON is YAML
    return path


# --- training processes ---------------------------------------------------------------
#
# Each training is `retain -q train CONFIG [--resume]` (the CLI's own main()) in a process
# of its own, forked from a fork server that imported retain once: a process then starts
# in a fraction of a second instead of paying ~10 s of imports, and is still killed with a
# real SIGKILL. Its stderr goes to a file.

_PRELOAD = ["retain.cli", "retain.training.run"]


def _context():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


class Training:
    """One ``retain train`` process.

    Args:
        config: The config file.
        resume: Pass ``--resume``.
        plant: A fault to plant in the process first: ``("pause_in_save", step, flag)``,
            ``("pause_in_rotation", flag)`` or ``("enospc_at_fsync", step)`` (see below).
    """

    def __init__(self, config: Path, *, resume: bool = False, plant: tuple | None = None) -> None:
        arguments = ["-q", "train", str(config), *(["--resume"] if resume else [])]
        self.stderr = config.parent / f"stderr-{time.time_ns()}.txt"
        self.process = _context().Process(target=_cli, args=(arguments, str(self.stderr), plant))
        self.process.start()

    def running(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        """Sends SIGKILL and waits for the process to die."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()

    def finish(self) -> tuple[int, str]:
        """Waits for the process; returns its exit code and stderr."""
        self.process.join(TIMEOUT)
        if self.process.is_alive():
            self.kill()
            raise AssertionError(f"training still running after {TIMEOUT} s")
        return self.process.exitcode, self.stderr.read_text() if self.stderr.exists() else ""


def _cli(arguments: list[str], stderr: str, plant: tuple | None) -> None:
    """The body of a training process: plants the fault, then runs the CLI."""
    handle = open(stderr, "w", buffering=1)  # noqa: SIM115 (the process's stderr until it exits)
    os.dup2(handle.fileno(), 2)
    sys.stderr = handle
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    os.environ["OMP_NUM_THREADS"] = "1"
    if plant is not None:
        globals()[plant[0]](*plant[1:])
    sys.argv = ["retain", *arguments]
    from retain.cli import main

    main()


def _pause(flag: str, note: str) -> None:
    Path(flag).write_text(note)
    time.sleep(3600)  # until killed


def pause_in_save(step: int, flag: str) -> None:
    """Pauses inside the trainer's save of checkpoint-``step``: the weights, the optimizer and
    the random state written, the trainer state not yet."""
    import transformers.trainer as trainer_module

    original = trainer_module.Trainer._save_rng_state

    def save_rng_state(self, output_dir):
        original(self, output_dir)
        if self.state.global_step == step:
            _pause(flag, output_dir)

    trainer_module.Trainer._save_rng_state = save_rng_state


def pause_in_rotation(flag: str) -> None:
    """Pauses inside the trainer's deletion of an old checkpoint newer than the best one
    (``train.save_total_limit``), once its optimizer.pt is gone.

    Which check is the best depends on the model's path; the plant makes the oldest
    checkpoint the best (the trainer keeps the best), so that the one deleted is newer than
    it: the case where the half-deleted checkpoint is the newest one with a seal.
    """
    import transformers.trainer as trainer_module

    rotate, rmtree = trainer_module.rotate_checkpoints, shutil.rmtree

    def rotate_pausing(output_dir, save_total_limit=None, best_model_checkpoint=None, **kwargs):
        steps = sorted(int(path.name.rsplit("-", 1)[-1]) for path in Path(output_dir).glob("checkpoint-*"))
        best = steps[0]
        best_model_checkpoint = os.path.join(output_dir, f"checkpoint-{best}")

        def half_delete(path, ignore_errors=False):
            if int(str(path).rsplit("-", 1)[-1]) > best:
                os.remove(os.path.join(path, "optimizer.pt"))
                _pause(flag, str(path))
            rmtree(path, ignore_errors=ignore_errors)

        shutil.rmtree = half_delete
        try:
            rotate(output_dir, save_total_limit, best_model_checkpoint, **kwargs)
        finally:
            shutil.rmtree = rmtree

    trainer_module.rotate_checkpoints = rotate_pausing


def enospc_at_fsync(step: int) -> None:
    """Makes ``os.fsync`` fail with ENOSPC for the files of checkpoint-``step``, as a full disk
    does on file systems that allocate blocks late (the disk test without a tmpfs)."""
    import errno

    fsync = os.fsync

    def failing(fd):
        if f"checkpoint-{step}" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    os.fsync = failing


def wait_for_records(training: Training, run_dir: Path, since: float, count: int = 1) -> float | None:
    """Waits until ``training`` has written ``count`` metric records since ``since`` (the
    first: training has begun, the check of step 0 or a resumed step's loss); returns when,
    or None if the process ended first."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while training.running() and time.time() < deadline:
        if metrics.exists() and sum(record.get("time", 0) >= since for record in read_jsonl(metrics)) >= count:
            return time.time()
        time.sleep(0.02)
    return None


def wait_for_file(training: Training, path: Path) -> bool:
    """Waits until ``path`` exists; False if ``training`` ended first."""
    deadline = time.time() + TIMEOUT
    while not path.exists() and training.running() and time.time() < deadline:
        time.sleep(0.02)
    return path.exists()


# --- what a run leaves ----------------------------------------------------------------


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """Returns the numbers a run ends with: each step's loss, each check's measures, the
    final evaluation (probes, task, drift, smoke) and the verdict with the guards' events.

    Times and durations are left out (the trainer's runtime and throughputs among them);
    so are records a resume dropped and redid.
    """
    records = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    final = json.loads((run_dir / "final_eval.json").read_text())
    return {
        "losses": {record["step"]: record["loss"] for record in records
                   if record.get("event") == "log" and "loss" in record},
        "checks": [{key: value for key, value in record.items() if key != "time"}
                   for record in records if record.get("event") == "check"],
        "guard_decisions": [{key: value for key, value in record.items() if key != "time"}
                            for record in records if record.get("event") == "guard"],
        "final_eval": {key: value for key, value in final.items() if key not in ("model", "seconds")},
        "summary": {key: summary[key] for key in (
            "status", "steps", "best_step", "restored_step", "final_probe_accuracy", "forgetting_relative",
            "task", "drift", "smoke", "guard_events", "checks", "verdict")},
        # The trainer's mean loss over the whole run; its runtime and throughputs are the last call's.
        "train_loss": (summary.get("trainer") or {}).get("train_loss"),
    }


def differences(got: Any, want: Any, where: str = "", tolerance: float = TOLERANCE) -> list[str]:
    """Returns where ``got`` differs from ``want`` (numbers beyond ``tolerance``, relative)."""
    if isinstance(want, dict) and isinstance(got, dict):
        found = [f"{where}.{key}: missing" for key in want if key not in got]
        found += [f"{where}.{key}: unexpected" for key in got if key not in want]
        for key in want.keys() & got.keys():
            found += differences(got[key], want[key], f"{where}.{key}", tolerance)
        return found
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, not {len(want)}"]
        return [line for index, (a, b) in enumerate(zip(got, want, strict=True))
                for line in differences(a, b, f"{where}[{index}]", tolerance)]
    numbers = (int, float)
    if (isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(want, bool)
            and math.isfinite(want) and math.isfinite(got)):
        return [] if abs(got - want) <= tolerance * max(abs(want), 1e-12) else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def checkpoint_state(run_dir: Path) -> dict[str, Any]:
    """Returns the newest complete checkpoint's step (None if none) and the problems of the
    incomplete ones, as ``retain train --resume`` will find them."""
    folders = sorted((path for path in (run_dir / "checkpoints").glob("checkpoint-*") if path.is_dir()),
                     key=lambda path: int(path.name.rsplit("-", 1)[-1]))
    problems = {path.name: checkpoint_problem(path) for path in folders}
    complete = [int(name.rsplit("-", 1)[-1]) for name, problem in problems.items() if problem is None]
    return {"complete": max(complete) if complete else None,
            "incomplete": {name: problem for name, problem in problems.items() if problem}}


def resumed_from(run_dir: Path) -> int | None:
    """Returns the step the last ``--resume`` of the run continued from (None: the start)."""
    lines = [line for line in (run_dir / "log.txt").read_text().splitlines() if "resuming from" in line]
    assert lines, "the run was not resumed"
    found = re.search(r"resuming from \S*checkpoint-(\d+);", lines[-1])
    return int(found.group(1)) if found else None


def steps_done(run_dir: Path) -> int:
    """Returns the last step whose loss is in ``metrics.jsonl``."""
    return max((record["step"] for record in read_jsonl(run_dir / "metrics.jsonl")
                if record.get("event") == "log" and "loss" in record), default=0)


# --- the scenarios (the benchmark runs them too) --------------------------------------


def reference_run(lab: dict[str, Path], out: Path) -> dict[str, Any]:
    """Trains uninterrupted; returns its final metrics and its timeline: the time of each
    metric record and of its exit, counted from its first record (the window a random kill
    falls in)."""
    config = write_config(lab, out)
    started = time.time()
    training = Training(config)
    began = wait_for_records(training, out / "run", started)
    code, stderr = training.finish()
    assert code == 0 and began is not None, stderr[-3000:]
    ended = time.time()
    times = [record["time"] for record in read_jsonl(out / "run" / "metrics.jsonl")]
    return {"metrics": final_metrics(out / "run"), "records": [round(t - times[0], 3) for t in times],
            "seconds": ended - times[0]}


def resume(config: Path, run_dir: Path) -> int | None:
    """Runs ``retain train CONFIG --resume`` to the end; returns the step it continued from."""
    code, stderr = Training(config, resume=True).finish()
    assert code == 0, stderr[-3000:]
    return resumed_from(run_dir)


def kill_trial(lab: dict[str, Path], out: Path, reference: dict[str, Any], seed: int) -> dict[str, Any]:
    """Kills a training with SIGKILL at a random moment, resumes it to the end with
    ``--resume``, and returns what happened and how its numbers compare.

    The moment is seeded: a share, uniform in [0, 1), of the reference's time from its
    first metric record to its exit (training, checks, checkpoints, the final evaluation).
    The run is followed along the reference's timeline, so that a run slower or faster
    than the reference is killed at the same point of its work: it is killed once it has
    written the records the reference had by then, and the time the reference took from
    the last of them.
    """
    share = random.Random(seed).random()
    moment = share * reference["seconds"]
    passed = [offset for offset in reference["records"] if offset <= moment]
    config = write_config(lab, out)
    run_dir = out / "run"
    started = time.time()
    training = Training(config)
    reached = wait_for_records(training, run_dir, started, count=len(passed))
    assert reached is not None, training.finish()[1][-3000:]
    time.sleep(max(0.0, moment - passed[-1]))
    killed = training.running()
    if killed:
        training.kill()
    else:  # the run ended before its kill time
        assert training.finish()[0] == 0
    trial: dict[str, Any] = {"seed": seed, "kill_share": round(share, 3), "kill_seconds": round(moment, 2),
                             "killed": killed}
    if killed:
        at_kill = checkpoint_state(run_dir)
        done = steps_done(run_dir)
        start = resume(config, run_dir)
        trial |= {"steps_done_at_kill": done, "complete_checkpoint_at_kill": at_kill["complete"],
                  "incomplete_at_kill": at_kill["incomplete"], "resumed_from": start,
                  "lost_steps": done - (start or 0)}
    trial["differences"] = differences(final_metrics(run_dir), reference["metrics"])
    return trial


def pause_and_kill(lab: dict[str, Path], out: Path, where: str, step: int = 6) -> dict[str, Any]:
    """Kills a training inside the save of checkpoint-``step`` (``where="save"``) or inside
    the deletion of an old checkpoint (``"rotation"``), then resumes it to the end.

    Returns the checkpoints' files as the kill left them, what ``--resume`` finds complete,
    where it continued from, its log and the run's final metrics.
    """
    config = write_config(lab, out)
    run_dir, flag = out / "run", out / "paused"
    plant = ("pause_in_save", step, str(flag)) if where == "save" else ("pause_in_rotation", str(flag))
    training = Training(config, plant=plant)
    if not wait_for_file(training, flag):
        code, stderr = training.finish()
        raise AssertionError(f"the run never reached the pause ({where}); exit {code}: {stderr[-3000:]}")
    training.kill()
    folders = {path.name: sorted(child.name for child in path.iterdir())
               for path in (run_dir / "checkpoints").glob("checkpoint-*")}
    at_kill = checkpoint_state(run_dir)
    start = resume(config, run_dir)
    return {"paused_in": Path(flag.read_text()).name, "folders": folders, "at_kill": at_kill,
            "resumed_from": start, "metrics": final_metrics(run_dir),
            "log": (run_dir / "log.txt").read_text()}


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64m") -> Iterator[bool]:
    """Mounts a tmpfs of ``size`` on ``path`` (root only); yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def full_disk_run(lab: dict[str, Path], out: Path) -> dict[str, Any]:
    """Trains on a disk that fills up after the first checkpoints, then frees it and resumes.

    On a tmpfs (when it can be mounted) a ballast file takes all but 256 KiB once
    checkpoint-4 is sealed, so a later checkpoint (1.5 MB) cannot be written; elsewhere
    the fsync of checkpoint-6's files fails with ENOSPC (:func:`enospc_at_fsync`).

    Returns how the disk was filled, the CLI's exit code and error line, the checkpoints
    after the failure, and the final metrics after freeing the space and resuming.
    """
    disk = out / "disk"
    with small_disk(disk) as mounted:
        config = write_config(lab, out, runs=disk)  # the config and stderr off the full disk
        run_dir, ballast = disk / "run", disk / "ballast"
        if mounted:
            training = Training(config)
            if wait_for_file(training, run_dir / "checkpoints" / "checkpoint-4" / STATE_FILE):
                try:
                    with open(ballast, "wb") as handle:
                        handle.write(b"\0" * max(0, shutil.disk_usage(disk).free - 256 * 1024))
                except OSError as error:  # the training wrote meanwhile and the disk is full: as meant
                    if error.errno != errno.ENOSPC:
                        raise
        else:
            training = Training(config, plant=("enospc_at_fsync", 6))
        code, stderr = training.finish()
        after = checkpoint_state(run_dir)
        ballast.unlink(missing_ok=True)
        start = resume(config, run_dir)
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        return {"disk": "tmpfs of 64 MiB, filled by a ballast file after checkpoint-4" if mounted
                else "os.fsync failing with ENOSPC on checkpoint-6 (a tmpfs needs root)",
                "exit_code": code, "error": errors[0] if len(errors) == 1 else stderr,
                "traceback": "Traceback" in stderr, "after": after, "resumed_from": start,
                "metrics": final_metrics(run_dir)}


# --- tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(micro_base, tmp_path_factory) -> dict[str, Path]:
    base, cache = micro_base
    return make_lab(tmp_path_factory.mktemp("interruptions-data"), cache)


@pytest.fixture(scope="module")
def reference(lab, tmp_path_factory) -> dict[str, Any]:
    return reference_run(lab, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("seed", [1, 9, 19])
def test_kill_9_at_a_random_moment_then_resume_ends_as_an_uninterrupted_run(lab, reference, tmp_path,
                                                                             seed) -> None:
    trial = kill_trial(lab, tmp_path, reference, seed)
    assert trial["killed"], "the run ended before its kill time"
    # No work lost beyond the last checkpoint: the resume continued from the newest complete
    # one, at most one checkpoint interval behind the last step done.
    assert trial["resumed_from"] == trial["complete_checkpoint_at_kill"]
    assert 0 <= trial["lost_steps"] <= SAVE_EVERY
    assert trial["differences"] == []


def test_a_kill_inside_a_checkpoint_save_resumes_from_the_one_before(lab, reference, tmp_path) -> None:
    result = pause_and_kill(lab, tmp_path, "save")
    half = result["folders"]["checkpoint-6"]
    # Killed with the weights and the optimizer written, the trainer state not yet.
    assert "optimizer.pt" in half and "trainer_state.json" not in half and STATE_FILE not in half
    assert result["at_kill"]["complete"] == 4
    assert result["resumed_from"] == 4
    assert "removing incomplete checkpoint" in result["log"] and "checkpoint-6: no retain_state.json" in result["log"]
    assert differences(result["metrics"], reference["metrics"]) == []


def test_a_kill_while_an_old_checkpoint_is_deleted_never_resumes_the_half_deleted_one(lab, reference,
                                                                                      tmp_path) -> None:
    result = pause_and_kill(lab, tmp_path, "rotation")
    half = result["paused_in"]
    # The trainer deletes old checkpoints before the new one is sealed: the half-deleted
    # one still has its seal and is the newest that does. A seal alone would choose it, and
    # the trainer would resume from it silently with a fresh optimizer (optimizer.pt gone).
    sealed = [name for name, files in result["folders"].items() if STATE_FILE in files]
    assert "optimizer.pt" not in result["folders"][half] and STATE_FILE in result["folders"][half]
    assert max(sealed, key=lambda name: int(name.rsplit("-", 1)[-1])) == half
    assert "optimizer.pt is missing" in result["at_kill"]["incomplete"][half]
    assert result["resumed_from"] == result["at_kill"]["complete"] < int(half.rsplit("-", 1)[-1])
    assert differences(result["metrics"], reference["metrics"]) == []


def test_a_full_disk_is_one_clear_error_and_the_last_checkpoint_is_kept(lab, reference, tmp_path) -> None:
    result = full_disk_run(lab, tmp_path)
    line = result["error"]
    assert result["exit_code"] == 2 and not result["traceback"] and line.startswith("error: "), line
    # What filled up, what to free, and which checkpoint is kept.
    assert "the disk filled up" in line and "checkpoint-" in line and "free at least" in line
    assert "is intact and --resume continues from it" in line and "--resume" in line.split("Fix:")[1]
    kept = result["after"]["complete"]
    assert kept is not None and f"checkpoint-{kept}," in line and result["after"]["incomplete"] == {}
    assert result["resumed_from"] == kept
    assert differences(result["metrics"], reference["metrics"]) == []


def test_a_checkpoint_is_complete_only_with_its_seal_and_every_file_at_its_size(tmp_path) -> None:
    import torch

    from retain.checkpoints import last_checkpoint as _last_checkpoint
    from retain.checkpoints import seal_checkpoint
    from retain.guards.state import GuardState, read_guard_state
    from retain.rundir import RunDir

    run = RunDir(tmp_path)
    folders = [run.checkpoints_dir / f"checkpoint-{step}" for step in (2, 4, 6, 8)]
    for folder in folders:
        folder.mkdir(parents=True)
        torch.save({"step": folder.name}, folder / "optimizer.pt")
        seal_checkpoint(folder, GuardState(best_step=2, recent_losses=[1.0, 0.5]).to_dict())
    assert all(checkpoint_problem(folder) is None for folder in folders)
    assert read_guard_state(folders[0]).recent_losses == [1.0, 0.5]
    (folders[3] / "optimizer.pt").unlink()  # half deleted
    (folders[2] / "optimizer.pt").write_bytes(b"\0" * 10)  # overwritten after its seal
    assert _last_checkpoint(run) == folders[1]
    assert not folders[2].exists() and not folders[3].exists()
    (folders[1] / STATE_FILE).unlink()  # never sealed
    assert _last_checkpoint(run) == folders[0]


def test_only_a_full_disk_becomes_the_disk_error(tmp_path) -> None:
    import errno

    import torch

    from retain.checkpoints import seal_checkpoint
    from retain.errors import RetainError
    from retain.rundir import RunDir
    from retain.training.disk import DiskFull
    from retain.training.disk import disk_full as _disk_full

    run = RunDir(tmp_path)
    kept, half = run.checkpoints_dir / "checkpoint-4", run.checkpoints_dir / "checkpoint-6"
    for folder in (kept, half):
        folder.mkdir(parents=True)
        torch.save({}, folder / "optimizer.pt")
    seal_checkpoint(kept, None)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(half / "model.safetensors"))
    error = _disk_full(full, run)
    assert isinstance(error, DiskFull) and error.file == str(half / "model.safetensors")
    assert f"{kept}, is intact" in error.message and "free at least" in error.fix and "--resume" in error.fix
    assert not half.exists() and checkpoint_problem(kept) is None  # the half-written one is removed
    # The same text wrapped by another library (safetensors) counts; other errors do not,
    # nor does an error retain already explains, on a disk with room.
    wrapped = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert isinstance(_disk_full(wrapped, run), DiskFull)
    assert _disk_full(ValueError("shapes do not match"), run) is None
    assert _disk_full(RetainError("no space left on device in the data"), run) is None
