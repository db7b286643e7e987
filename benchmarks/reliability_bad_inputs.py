"""Reliability part ``bad_inputs``: every case of the bad-input corpus through the CLI.

The corpus is ``tests/test_bad_inputs.py`` (``CASES``): data files, configs, ``--set``
overrides, probe suites, sweep files and command-line values a user can get wrong. Each
case runs ``retain -q ...`` in an empty folder (in-process, as the ``retain`` script
runs it) and is checked as the test checks it: exit code 2, one ``error:`` line naming
the file, line and field the case names, no traceback, nothing written.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_bad_inputs as corpus  # noqa: E402


def run() -> dict[str, Any]:
    by_kind = {kind: {"cases": 0, "handled": 0, "tracebacks": 0, "wrote_files": 0, "known": 0}
               for kind in corpus.KINDS}
    failures = []
    with tempfile.TemporaryDirectory() as temp:
        os.environ["RETAIN_CACHE_DIR"] = str(Path(temp) / "cache")
        for index, case in enumerate(corpus.CASES):
            outcome = corpus.run_case(case, Path(temp) / f"case-{index}")
            problems = outcome.problems(case)
            tally = by_kind[case.kind]
            tally["cases"] += 1
            tally["handled"] += not problems
            tally["tracebacks"] += "traceback" in problems
            tally["wrote_files"] += bool(outcome.written)
            tally["known"] += bool(case.known)
            if problems:
                failures.append({"kind": case.kind, "name": case.name, "problems": problems,
                                 "known": case.known, "stderr": outcome.stderr[-400:]})
            elif case.known:
                failures.append({"kind": case.kind, "name": case.name, "problems": ["now handled: drop 'known'"],
                                 "known": case.known, "stderr": ""})
    return {
        "cases": len(corpus.CASES),
        "handled": sum(tally["handled"] for tally in by_kind.values()),
        "tracebacks": sum(tally["tracebacks"] for tally in by_kind.values()),
        "by_kind": by_kind,
        "failures": failures,
        "example": _example(),
    }


def _example() -> str:
    case = next(case for case in corpus.CASES if case.name == "learning_rate_fast" and case.kind == "config")
    with tempfile.TemporaryDirectory() as temp:
        return corpus.run_case(case, Path(temp) / "case").error_lines[0]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Bad input\n",
        f"`python benchmarks/reliability.py bad_inputs` ({result['date']}): {result['cases']} bad inputs "
        f"(`tests/test_bad_inputs.py`) through the CLI; **{result['tracebacks']} tracebacks**, "
        f"{result['handled']} of {result['cases']} handled as required: exit code 2, one `error:` line "
        "naming the file, line and field, nothing written. For example, `train: {lr: fast}`:\n",
        f"```\n{result['example']}\n```\n",
        "| kind | cases | handled | tracebacks | left files behind |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, tally in result["by_kind"].items():
        lines.append(f"| {kind} | {tally['cases']} | {tally['handled']} | {tally['tracebacks']} | "
                     f"{tally['wrote_files']} |")
    if result["failures"]:
        lines.append("\nNot yet handled:\n")
        for failure in result["failures"]:
            why = f" ({failure['known']})" if failure["known"] else ""
            lines.append(f"- {failure['kind']} `{failure['name']}`: {'; '.join(failure['problems'])}{why}")
    return "\n".join(lines) + "\n"
