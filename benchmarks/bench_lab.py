"""How long ``make lab`` takes: ``retain lab`` cold (empty cache) and warm (cache filled).

Both runs are the command a newcomer runs (``retain lab``, default size, seed 0), as a
subprocess with its own ``RETAIN_CACHE_DIR``:

- ``cold``: an empty cache, so the base model is pretrained and every evaluation of it
  measured; the issue's target is 5 minutes on 2 cores;
- ``warm``: the same command again on the filled cache (the base model and its
  evaluation are reused; every training runs again); target 2 minutes;
- the peer: ``warm`` again with ``--workers 1`` (the trainings one after another, each
  with both cores' threads), to measure what two one-thread worker processes buy.

Each step's seconds come from the lab's ``steps/*.json``. The warm run's table is also
written to ``results/evidence_lab.json``, the "lab" section of docs/RESULTS.md, so the
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

HERE = Path(__file__).resolve().parent
TARGETS = {"cold": 300.0, "warm": 120.0}


def _lab(cache: Path, out: Path, name: str, *extra: str) -> dict:
    env = {**os.environ, "RETAIN_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retain.cli", "-q", "lab", "--output-dir", str(out), "--name", name, *extra],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    steps = {}
    for path in sorted((out / name / "steps").glob("*.json")):
        step = json.loads(path.read_text())
        steps[step["step"]] = {"seconds": step["seconds"], "line": step["line"], "figures": step["figures"]}
    return {"seconds": round(seconds, 1), "steps": steps}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="retain-bench-lab-") as tmp:
        root = Path(tmp)
        cold = _lab(root / "cache", root / "runs", "cold")
        warm = _lab(root / "cache", root / "runs", "warm")
        result = {"cold": _times(cold), "warm": _times(warm)}
        if os.environ.get("BENCH_LAB_PEER", "1") != "0":  # BENCH_LAB_PEER=0 skips the peer run
            result["warm_one_worker"] = _times(_lab(root / "cache", root / "runs", "serial", "--workers", "1"))
    table = {"date": time.strftime("%Y-%m-%d", time.gmtime()),
             "lines": {name: step["line"] for name, step in warm["steps"].items()},
             "rows": warm["steps"]["report"]["figures"]["rows"],
             "cold_rows": cold["steps"]["report"]["figures"]["rows"]}
    from retain.io import atomic_write_json, atomic_write_text

    atomic_write_json(HERE / "results" / "evidence_lab.json", table)
    sys.path.insert(0, str(HERE))
    from evidence_guards import DOC, render

    atomic_write_text(DOC, render())
    return result


def _times(run: dict) -> dict:
    return {"seconds": run["seconds"], "steps": {name: step["seconds"] for name, step in run["steps"].items()}}


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


def markdown(result: dict) -> str:
    machine = result.get("machine", {})
    steps = list(result["warm"]["steps"])
    lines = [
        "## `make lab`: the whole story, cold and warm\n",
        f"Measured {result.get('date', '?')} on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores. "
        "Command: `python benchmarks/run.py lab`. `retain lab` (default size, seed 0) as a subprocess, first "
        "with an empty cache (the base model is pretrained), then again on the filled cache (the base model "
        "and its evaluation reused, every training run again). Seconds per step from the lab's `steps/`; the "
        "whole command includes starting Python, loading torch and (cold) building the base model. With "
        "worker processes (the default on a CPU) the jobs start at once, the recipe's training on one "
        "worker and the others in step order on the other, so a step's seconds are its wait for its own "
        "jobs after the steps before it.\n",
        "| step | cold s | warm s | warm, --workers 1 s |", "| --- | --- | --- | --- |",
    ]
    serial = result.get("warm_one_worker") or {"seconds": None, "steps": {}}
    for name in steps:
        lines.append(f"| {name} | {result['cold']['steps'].get(name, 0):.0f} | {result['warm']['steps'][name]:.0f} | "
                     f"{_s(serial['steps'].get(name))} |")
    lines.append(f"| **whole command** | **{result['cold']['seconds']:.0f}** | **{result['warm']['seconds']:.0f}** | "
                 f"**{_s(serial['seconds'])}** |")
    if serial["seconds"]:
        lines.append(f"\nTwo worker processes (the default on a CPU) / one: "
                     f"{result['warm']['seconds'] / serial['seconds']:.2f}x the wall time of the warm command.")
    else:
        lines.append("\nThe `--workers 1` peer was not run (`BENCH_LAB_PEER=0`).")
    verdicts = [f"{kind}: {result[kind]['seconds']:.0f} s against a target of {TARGETS[kind]:.0f} s "
                f"({'met' if result[kind]['seconds'] <= TARGETS[kind] else 'NOT met'})" for kind in ("cold", "warm")]
    lines.append("\nTargets (issue 8): " + "; ".join(verdicts) + ".\n")
    return "\n".join(lines)
