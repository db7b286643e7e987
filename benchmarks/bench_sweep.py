"""What ``retain sweep`` costs per trial, beside the trial's own ``retain train``.

The same three trainings (the micro lab model on a small lab task, guarded, LoRA,
``train.seed`` 0, 1, 2) run twice:

- ``direct``: ``run_train`` in this process, one after another: what ``retain train`` does;
- ``sweep``: a grid sweep over ``train.seed`` in its own SQLite study: each trial is forked
  from the sweep's fork server, scored, and recorded in Optuna's storage.

A trial's overhead is its wall time in the sweep process minus the ``seconds`` its own
``run_train`` reports (summary.json): forking, config loading, Optuna's ask/tell and
heartbeats, sending the summary back. The fork server's start (importing torch and
transformers once per sweep process) is reported apart. The micro model makes trials
short, so the overhead's share is a pessimistic bound for lab-sized trials.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from retain.config import load_config
from retain.lab.base import build_base, lab_size
from retain.lab.export import export_lab_data
from retain.rundir import RunDir
from retain.sweep import load_sweep, run_sweep
from retain.training.run import run_train

SEEDS = (0, 1, 2)
TARGET = 0.05  # the limit: overhead under 5% of a trial's time


def _lab(root: Path) -> Path:
    base = build_base(lab_size("micro"), progress=False)
    export_lab_data(root, size="micro", n_train=200, n_eval=64)
    config = root / "config.yaml"  # replaces the exported default: the micro base, a few steps
    config.write_text(f"""
model: {{name_or_path: {base.path}}}
data: {{train: {root / 'train.jsonl'}, validation: {root / 'validation.jsonl'}, eval: {root / 'test.jsonl'},
        ood: {root / 'ood.jsonl'}}}
probes: {{suites: [{root / 'probes.jsonl'}]}}
train: {{max_steps: 8, batch_size: 8}}
guards: {{every_steps: 4}}
eval: {{perturbations: []}}
audit: {{allow_small_data: true, task: classification}}
output: {{dir: {root / 'runs'}}}
""")
    return config


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        root = Path(folder)
        config = _lab(root)
        direct = []
        for seed in SEEDS:
            started = time.perf_counter()
            run_train(load_config(config, [f"train.seed={seed}", f"output.name=direct-{seed}"]), progress=False,
                      echo=lambda line: None)
            direct.append(round(time.perf_counter() - started, 2))
        sweep_path = root / "bench.yaml"
        sweep_path.write_text(f"base: {config}\nspace:\n  train.seed: {list(SEEDS)}\n")
        sweep = load_sweep(sweep_path)
        started = time.perf_counter()
        outcome = run_sweep(sweep, echo=lambda line: None)
        total = time.perf_counter() - started
        trials = []
        for record in sorted(outcome.results.records, key=lambda record: record.number):
            own = RunDir(record.run_dir).read_summary()["seconds"]
            trials.append({"trial": record.number, "seed": record.params["train.seed"], "wall": record.seconds,
                           "run_train": own, "overhead": round(record.seconds - own, 2)})
    later = [trial["overhead"] for trial in trials[1:]]  # the first one also starts the fork server
    mean_direct = statistics.fmean(direct)
    return {
        "direct_seconds": direct, "trials": trials, "sweep_seconds": round(total, 1),
        "outside_trials_seconds": round(total - sum(trial["wall"] for trial in trials), 2),
        "fork_server_seconds": round(trials[0]["overhead"] - statistics.fmean(later), 2),
        "overhead_per_trial": round(statistics.fmean(later), 2),
        "overhead_share": round(statistics.fmean(later) / mean_direct, 4),
    }


def markdown(result: dict) -> str:
    share = result["overhead_share"]
    lines = [
        "## Sweep: overhead per trial\n",
        (f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py sweep`. Micro lab model, lab "
        "domain task (200 training rows, 64 eval and 64 OOD rows), LoRA, 8 steps with guard checks every 4, "
        "seeds 0, 1, 2; three `run_train` calls in this process (`direct`), then a grid sweep over "
        "`train.seed` with SQLite storage. A trial's overhead is its wall time in the sweep minus the "
        "seconds its own `run_train` reports (target: under 5% of a trial's time):\n"),
        "| trial | seed | wall in the sweep, s | its run_train, s | overhead, s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for trial in result["trials"]:
        lines.append(f"| {trial['trial']} | {trial['seed']} | {trial['wall']:.1f} | {trial['run_train']:.1f} | "
                     f"{trial['overhead']:.2f} |")
    lines.append(
        f"\nThe same trainings run directly took {', '.join(f'{s:.1f}' for s in result['direct_seconds'])} s. "
        f"Overhead per trial after the first: {result['overhead_per_trial']:.2f} s, "
        f"{share:.1%} of a direct trial's time ({'within' if share < TARGET else 'over'} the 5% target). "
        f"Starting the fork server (importing torch and transformers once per sweep process) added "
        f"{result['fork_server_seconds']:.1f} s to the first trial; opening the study, enqueuing the grid "
        f"and writing the summary took {result['outside_trials_seconds']:.1f} s in all.\n")
    return "\n".join(lines)
