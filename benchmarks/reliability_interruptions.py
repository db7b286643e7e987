"""Interruptions of ``retain train``: kill -9 at random moments, kill inside a checkpoint's
save and inside an old checkpoint's deletion, and a full disk; each resumed with
``retain train --resume`` and compared with an uninterrupted run.

``run()`` runs the scenarios of ``tests/test_interruptions.py`` on the micro lab model
(12 steps of full fine-tuning, a checkpoint every 2 steps): :data:`TRIALS` kill trials
(the test runs 3) at seeded random moments, one kill paused inside the save of
checkpoint-6, one inside the deletion of an old checkpoint, and one run on a disk that
fills up. ``markdown()`` renders the result as a section of docs/RELIABILITY.md
(``benchmarks/reliability.py`` collects every ``benchmarks/results/reliability_*.json``).

    python benchmarks/reliability_interruptions.py   # writes benchmarks/results/reliability_interruptions.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "reliability_interruptions.json"
TRIALS = 10


def run() -> dict[str, Any]:
    """Runs the kill trials, the two kills inside checkpoint writes, and the full disk.

    Returns:
        ``{"date", "versions", "setup", "tolerance", "reference_seconds", "trials": [{"seed",
        "kill_share", "kill_seconds", "killed", "steps_done_at_kill",
        "complete_checkpoint_at_kill", "incomplete_at_kill", "resumed_from", "lost_steps",
        "differences"}], "in_save", "in_rotation", "full_disk"}``.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import test_interruptions as scenarios
    import torch
    import transformers

    from retain.paths import cache_dir as default_cache_dir

    with tempfile.TemporaryDirectory(prefix="retain-interruptions-") as scratch:
        root = Path(scratch)
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["RETAIN_CACHE_DIR"] = str(root / "cache")  # the base evaluation measured afresh
        lab = scenarios.make_lab(root / "lab", default_cache_dir())
        reference = scenarios.reference_run(lab, root / "reference")
        trials = [scenarios.kill_trial(lab, root / f"trial-{seed}", reference, seed) for seed in range(TRIALS)]
        in_save = scenarios.pause_and_kill(lab, root / "in-save", "save")
        in_rotation = scenarios.pause_and_kill(lab, root / "in-rotation", "rotation")
        full_disk = scenarios.full_disk_run(lab, root / "full-disk")
    return {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "setup": {"model": "micro lab model", "method": "full fine-tuning", "steps": scenarios.MAX_STEPS,
                  "save_every": scenarios.SAVE_EVERY, "save_total_limit": 2, "checks_every": 4},
        "tolerance": scenarios.TOLERANCE,
        "reference_seconds": round(reference["seconds"], 2),
        "trials": trials,
        "in_save": _paused(in_save, reference, scenarios),
        "in_rotation": _paused(in_rotation, reference, scenarios),
        "full_disk": {key: full_disk[key] for key in ("disk", "exit_code", "error", "traceback", "resumed_from")}
        | {"kept": full_disk["after"]["complete"], "left_incomplete": full_disk["after"]["incomplete"],
           "differences": scenarios.differences(full_disk["metrics"], reference["metrics"])},
    }


def _paused(result: dict[str, Any], reference: dict[str, Any], scenarios: Any) -> dict[str, Any]:
    """Keeps what the report needs of a kill inside a checkpoint write."""
    half = result["paused_in"]
    return {"paused_in": half, "files_of_it": result["folders"].get(half, []),
            "sealed_at_kill": sorted((name for name, files in result["folders"].items()
                                      if scenarios.STATE_FILE in files), key=lambda name: int(name.split("-")[1])),
            "complete_at_kill": result["at_kill"]["complete"], "incomplete_at_kill": result["at_kill"]["incomplete"],
            "resumed_from": result["resumed_from"],
            "differences": scenarios.differences(result["metrics"], reference["metrics"])}


def _same(differences: list[str]) -> str:
    return "identical" if not differences else f"{len(differences)} differences, first: `{differences[0]}`"


def markdown(result: dict[str, Any]) -> str:
    """Returns the section of docs/RELIABILITY.md for ``result``."""
    setup, trials = result["setup"], result["trials"]
    killed = [trial for trial in trials if trial["killed"]]
    exact = [trial for trial in trials if not trial["differences"]]
    newest = [trial for trial in killed if trial["resumed_from"] == trial["complete_checkpoint_at_kill"]]
    lost = [trial["lost_steps"] for trial in killed]
    lines = [
        "## Interruptions: kill -9, kill while saving, a full disk",
        "",
        f"Measured {result['date']} by `python benchmarks/reliability_interruptions.py` (torch "
        f"{result['versions']['torch']}, transformers {result['versions']['transformers']}); "
        "`tests/test_interruptions.py` runs the same scenarios with 3 kill trials in CI. Every run is "
        f"`retain train` on the {setup['model']}: {setup['method']}, {setup['steps']} steps, a checkpoint "
        f"every {setup['save_every']} steps (the last {setup['save_total_limit']} kept, and the best), "
        f"checks every {setup['checks_every']}. Each interrupted run is continued with `retain train "
        "--resume` and compared with an uninterrupted run on everything it ends with: every step's "
        "loss, every check, every guard decision, the final evaluation and the verdict. Tolerance: "
        f"{result['tolerance']:g} (bit-for-bit equality).",
        "",
        "How a checkpoint is kept safe: the trainer writes `checkpoint-N`; retain then flushes every "
        "file to disk (fsync) and writes `retain_state.json` last, atomically (temp file, fsync, "
        "rename), with the guard state and each file's size. `--resume` takes the newest checkpoint "
        "whose seal is there and whose files all match it, and removes the incomplete ones after it, "
        "with a log line.",
        "",
        f"### kill -9 at random moments: {len(killed)} of {len(trials)} trials killed, "
        f"{len(exact)} of {len(trials)} end identical to the uninterrupted run",
        "",
        f"The kill falls at a seeded share, uniform in [0, 1), of the uninterrupted run's "
        f"{result['reference_seconds']:.1f} s from its first metric record to its exit (steps, checks, "
        "checkpoints, the final evaluation and save), followed along that run's timeline: the killed run "
        "is killed once it has written the metric records the uninterrupted one had by then, plus the "
        "time that one took from the last of them. "
        f"{len(newest)} of {len(killed)} resumes continued from the newest complete checkpoint at the "
        f"kill; work lost: {min(lost, default=0)} to {max(lost, default=0)} steps (at most one "
        f"checkpoint interval, {setup['save_every']}).",
        "",
        "| seed | killed at | steps done | newest complete checkpoint | incomplete at the kill "
        "| resumed from | steps lost | final metrics vs uninterrupted |",
        "|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for trial in trials:
        if not trial["killed"]:
            lines.append(f"| {trial['seed']} | {trial['kill_seconds']:.2f} s | (ended first) | | | | | "
                         f"{_same(trial['differences'])} |")
            continue
        incomplete = ", ".join(f"{name} ({problem})" for name, problem in trial["incomplete_at_kill"].items())
        lines.append(
            f"| {trial['seed']} | {trial['kill_seconds']:.2f} s | {trial['steps_done_at_kill']} "
            f"| {_step(trial['complete_checkpoint_at_kill'])} | {incomplete or 'none'} "
            f"| {_step(trial['resumed_from'])} | {trial['lost_steps']} | {_same(trial['differences'])} |")
    save, rotation, disk = result["in_save"], result["in_rotation"], result["full_disk"]
    lines += [
        "",
        "### A kill inside a checkpoint's save",
        "",
        f"Paused inside the trainer's save of `{save['paused_in']}` (files written: "
        f"{', '.join(f'`{name}`' for name in save['files_of_it'])}; no trainer state, no seal) and "
        f"killed. `--resume` found it incomplete ({_problems(save)}), continued from "
        f"{_step(save['resumed_from'])} and ended {_same(save['differences'])}.",
        "",
        "### A kill while an old checkpoint is deleted",
        "",
        "The trainer deletes old checkpoints (`train.save_total_limit`) before the new one is sealed, "
        "one file at a time. Paused inside the deletion of "
        f"`{rotation['paused_in']}` with its `optimizer.pt` gone and killed: sealed folders at the "
        f"kill were {', '.join(f'`{name}`' for name in rotation['sealed_at_kill'])}, so the "
        f"half-deleted one was the newest with a seal. A seal alone (retain before this check) would "
        "have resumed from it, and the trainer, finding no `optimizer.pt`, would have continued "
        "silently with a fresh optimizer and scheduler. With the file sizes in the seal, `--resume` "
        f"found {_problems(rotation)}, continued from {_step(rotation['resumed_from'])} and ended "
        f"{_same(rotation['differences'])}.",
        "",
        "### A full disk",
        "",
        f"Disk: {disk['disk']}. `retain train` exited with code {disk['exit_code']}, "
        f"{'with' if disk['traceback'] else 'without'} a traceback, on one line:",
        "",
        "```",
        disk["error"],
        "```",
        "",
        f"Checkpoint kept: {_step(disk['kept'])}; incomplete checkpoints left behind: "
        f"{len(disk['left_incomplete'])}. After the ballast was deleted, `--resume` continued from "
        f"{_step(disk['resumed_from'])} and ended {_same(disk['differences'])}.",
        "",
    ]
    return "\n".join(lines)


def _step(step: int | None) -> str:
    return "the start" if step is None else f"checkpoint-{step}"


def _problems(result: dict[str, Any]) -> str:
    return "; ".join(f"`{name}`: {problem}" for name, problem in result["incomplete_at_kill"].items()) or "none"


if __name__ == "__main__":
    outcome = run()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(outcome, indent=2) + "\n")
    print(markdown(outcome))
