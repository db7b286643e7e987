"""One document from many results: each part's module renders its own saved JSON.

``benchmarks/run.py`` (BENCHMARKS.md), ``reliability.py`` (RELIABILITY.md) and
``evidence_guards.py`` (RESULTS.md) each rebuild a document from every result saved under
``results/``, so running one part keeps the others' sections.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def parts(prefix: str) -> list[str]:
    """The part names of the modules ``<prefix>_<name>.py`` beside this file."""
    return sorted(path.stem.removeprefix(f"{prefix}_") for path in HERE.glob(f"{prefix}_*.py"))


def sections(prefix: str, result_prefix: str = "") -> list[str]:
    """Each part's section: module ``<prefix>_<name>``'s ``markdown()`` of
    ``results/<result_prefix><name>.json``, for the parts whose result is saved."""
    out = []
    for name in parts(prefix):
        path = RESULTS / f"{result_prefix}{name}.json"
        if path.is_file():
            out.append(importlib.import_module(f"{prefix}_{name}").markdown(json.loads(path.read_text())))
    return out
