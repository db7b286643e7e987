"""The lab base model across seeds: is the default recipe robust, or lucky on seed 0?

Builds the default size for seeds 1-3 (seed 0 is in `lab_base`) and reports the
per-category probe accuracy of each, and the worst category over all of them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from retain.lab.base import build_base, lab_size

SEEDS = (1, 2, 3)


def run() -> dict:
    builds = {}
    with tempfile.TemporaryDirectory() as cache:
        for seed in SEEDS:
            meta = build_base(lab_size("default", seed), Path(cache), force=True, progress=False).metadata
            builds[str(seed)] = {"build_seconds": meta["build_seconds"], "probe_accuracy": meta["probe_accuracy"]}
    worst = min(
        (value, seed, category)
        for seed, build in builds.items()
        for category, value in build["probe_accuracy"].items()
        if category != "overall"
    )
    return {"seeds": builds, "worst_category": {"accuracy": worst[0], "seed": worst[1], "category": worst[2]}}


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    categories = list(next(iter(seeds.values()))["probe_accuracy"])
    lines = [
        "## Lab base model across seeds\n",
        f"Measured {result['date']}. Command: `python benchmarks/run.py lab_seeds` (default size, "
        "seeds 1-3; seed 0 is above). Greedy exact match per category (build times are in the "
        "JSON; they are not comparable to the cold build above when other work shares the cores):\n",
        "| seed | " + " | ".join(categories) + " |",
        "| --- | " + " | ".join("---" for _ in categories) + " |",
    ]
    for seed, build in seeds.items():
        cells = " | ".join(f"{build['probe_accuracy'][name]:.1%}" for name in categories)
        lines.append(f"| {seed} | {cells} |")
    worst = result["worst_category"]
    lines.append(f"\nWorst category over these seeds: {worst['category']} at {worst['accuracy']:.1%} (seed {worst['seed']}).\n")
    return "\n".join(lines)
