"""Runs the reliability parts and rewrites docs/RELIABILITY.md from their results.

Usage: ``python benchmarks/reliability.py [PART ...]`` (default: all). Each
``reliability_<part>.py`` module has ``run() -> dict`` (the figures, written to
``results/reliability_<part>.json``) and ``markdown(result) -> str`` (its section of
docs/RELIABILITY.md). The document is rebuilt from every ``results/reliability_*.json``,
so running one part keeps the others' sections (the pattern of ``benchmarks/run.py``).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "RELIABILITY.md"
sys.path.insert(0, str(HERE))

from sections import parts, sections  # noqa: E402

from retain.io import atomic_write_json
from retain.rundir import atomic_write_text  # noqa: E402


def available() -> list[str]:
    return parts("reliability")


def render() -> str:
    return "\n".join([
        "# Reliability\n",
        "Every figure here is written by `python benchmarks/reliability.py [PART ...]`, which "
        "stores the raw results in `benchmarks/results/reliability_*.json` and rebuilds this "
        "file from all of them (`make fuzz` runs the long fuzz part). The same checks run, "
        "smaller, in the test suite.\n",
        *sections("reliability", "reliability_"),
    ])


def main(names: list[str]) -> None:
    names = names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise SystemExit(f"unknown part(s): {', '.join(unknown)}; available: {', '.join(available())}")
    for name in names:
        print(f"== reliability {name}", flush=True)
        started = time.time()
        result = importlib.import_module(f"reliability_{name}").run()
        result["date"] = time.strftime("%Y-%m-%d", time.gmtime(started))
        result["seconds"] = round(time.time() - started, 1)
        atomic_write_json(RESULTS / f"reliability_{name}.json", result)
    atomic_write_text(DOC, render())
    print(f"wrote {DOC.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
