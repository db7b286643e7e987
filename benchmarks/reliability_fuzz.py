"""Reliability part ``fuzz``: the loaders, the audit, model files and checkpoints under fuzz.

Runs :func:`fuzz.run_fuzz` with ``RETAIN_FUZZ_INPUTS`` inputs per target (default
5,000: 40,000 inputs over the eight targets, ``make fuzz``); the test suite runs 150 per
target (``tests/test_properties.py``).
"""

from __future__ import annotations

import os
from typing import Any

import fuzz

INPUTS_PER_TARGET = int(os.environ.get("RETAIN_FUZZ_INPUTS", "5000"))
SEED = 0


def run() -> dict[str, Any]:
    return fuzz.run_fuzz(INPUTS_PER_TARGET, SEED, echo=print)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Fuzzing the loaders, the audit, model files and checkpoints\n",
        f"`make fuzz` ({result['date']}): {result['inputs']:,} generated inputs "
        f"({result['inputs_per_target']:,} per target, hypothesis seed {result['seed']}), "
        f"**{result['crashes']} crashes** (a crash is any exception that is not a `RetainError`), "
        f"in {result['seconds']:,.0f} s. Inputs are files of arbitrary JSON rows, chat turns, "
        "CSV tables and suites; config and sweep YAML (aliases, merge keys, huge numbers, deep "
        "nesting); model directories (safetensors headers, shard indexes, adapter configs); and "
        "checkpoint seals and guard state; each with bytes inserted, deleted, truncated or made "
        "invalid UTF-8 (`benchmarks/fuzz.py`).\n",
        "| target | inputs | read / reported | user errors (RetainError) | crashes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, tally in result["targets"].items():
        lines.append(f"| {name} | {tally['inputs']:,} | {tally['results']:,} | {tally['user_errors']:,} | "
                     f"{tally['crashes']} |")
    for name, tally in result["targets"].items():
        for sample in tally["crash_samples"]:
            lines.append(f"\n- crash in {name}: `{sample['error']}` on `{sample['input'][:200]}`")
    return "\n".join(lines) + "\n"
