"""Runs the benchmarks and rewrites docs/BENCHMARKS.md from their results.

Usage: ``python benchmarks/run.py [NAME ...]`` (default: all). Each ``bench_<name>.py``
module has ``run() -> dict`` (the figures, written to ``results/<name>.json``) and
``markdown(result) -> str`` (its section of docs/BENCHMARKS.md). The document is rebuilt
from every JSON in ``results/``, so running one benchmark keeps the others' sections.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "BENCHMARKS.md"
sys.path.insert(0, str(HERE))

from sections import parts, sections  # noqa: E402

from retain.io import atomic_write_json
from retain.rundir import atomic_write_text  # noqa: E402


def available() -> list[str]:
    return parts("bench")


def machine() -> dict[str, object]:
    import os

    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    from retain.hardware import cpu_has_fast_bf16

    return {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": cpu_has_fast_bf16(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def render() -> str:
    return "\n".join([
        "# Benchmarks\n",
        "Every figure here is written by `make bench` (`python benchmarks/run.py`), which "
        "stores the raw numbers in `benchmarks/results/*.json` and rebuilds this file. "
        "The machine is shared and noisy: compare ratios measured in the same run, not "
        "absolute times across runs.\n",
        *sections("bench"),
    ])


def main(names: list[str]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    names = names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}")
    for name in names:
        print(f"== benchmark {name}", flush=True)
        started = time.time()
        result = importlib.import_module(f"bench_{name}").run()
        result["machine"] = machine()
        result["date"] = time.strftime("%Y-%m-%d", time.gmtime(started))
        atomic_write_json(RESULTS / f"{name}.json", result)
    atomic_write_text(DOC, render())
    print(f"wrote {DOC.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
