"""Reliability part ``hostile_inputs``: issue 24's classes of hostile and damaged input.

Two kinds of evidence per class. The single commands (``tests/test_hostile_cli.py``:
output paths that are not files, YAML that expands, numbers and nesting past what a
reader holds, damaged model files, environment values) run through the CLI in-process,
each checked as the test checks it: exit code 2, one ``error:`` line naming the file or
field, no traceback, nothing written, nothing that stood at its paths changed. What
needs more than one command (two processes on one run directory, signals, a resume, an
edited checkpoint, escaping in the terminal and in Markdown) runs as the pytest tests
named in :data:`TESTS`, their outcomes recorded.

    python benchmarks/reliability.py hostile_inputs
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import test_hostile_cli as corpus  # noqa: E402
from reliability_hostile import _pytest, _sentence  # noqa: E402

# The classes of the issue that are not single commands, and the tests that hold them.
TESTS = {
    "model directories": ["tests/test_hostile_models.py"],
    "damaged checkpoints": ["tests/test_hostile_checkpoints.py",
                            "tests/test_hostile.py::test_a_checkpoint_holding_code_is_refused_and_the_code_not_run"],
    "one process per run directory": [
        "tests/test_rundir.py::test_a_run_another_process_writes_is_neither_resumed_nor_replaced",
        "tests/test_rundir.py::test_a_released_run_opens_again_in_the_same_process"],
    "signals": ["tests/test_lab_comparison.py::test_the_workers_end_with_their_parent_signalled_alone",
                "tests/test_lab_comparison.py::test_stopping_a_comparison_early_cancels_the_runs_not_started",
                "tests/test_lab_comparison.py::test_a_worker_that_saw_ctrl_c_starts_none_of_the_jobs_it_still_holds"],
    "resume": ["tests/test_interruptions.py::test_kill_9_at_a_random_moment_then_resume_ends_as_an_uninterrupted_run",
               "tests/test_hostile_environment.py::test_a_resume_under_another_thread_count_is_warned_about"],
    "injection": ["tests/test_hostile_outputs.py::test_data_in_terminal_output_is_shown_not_obeyed",
                  "tests/test_hostile_outputs.py::test_a_label_in_the_markdown_summary_is_text_not_a_link_or_image"],
    "expanding YAML": ["tests/test_hostile_yaml.py"],
    "numbers and nesting": ["tests/test_hostile_json.py"],
    "output paths": ["tests/test_hostile_outputs.py::test_nothing_but_a_regular_file_is_replaced",
                     "tests/test_hostile_outputs.py::test_the_writer_itself_refuses_what_the_command_line_did_not_check"],
    "environment and values": ["tests/test_hostile_environment.py"],
}


def run() -> dict[str, Any]:
    by_class = {kind: {"cases": 0, "handled": 0, "tracebacks": 0, "changed": 0} for kind in corpus.CLASSES}
    failures = []
    with tempfile.TemporaryDirectory() as temp:
        os.environ.setdefault("RETAIN_CACHE_DIR", str(Path(temp) / "cache"))
        for index, hostile in enumerate(corpus.CASES):
            outcome, changed = corpus.run_hostile(hostile, Path(temp) / f"case-{index}")
            problems = outcome.problems(hostile.case) + ([f"changed {changed}"] if changed else [])
            tally = by_class[hostile.kind]
            tally["cases"] += 1
            tally["handled"] += not problems
            tally["tracebacks"] += "traceback" in problems
            tally["changed"] += bool(changed or outcome.written)
            if problems:
                failures.append({"class": hostile.kind, "name": hostile.case.name, "problems": problems,
                                 "stderr": outcome.stderr[-400:]})
    tests = {kind: _pytest(targets) for kind, targets in TESTS.items()}
    outcomes = [test["outcome"] for found in tests.values() for test in found]
    return {
        "cases": len(corpus.CASES),
        "handled": sum(tally["handled"] for tally in by_class.values()),
        "by_class": by_class,
        "failures": failures,
        "tests": tests,
        "passed": outcomes.count("passed"),
        "failed": len(outcomes) - outcomes.count("passed") - outcomes.count("skipped"),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Hostile and damaged input, by class\n",
        f"`python benchmarks/reliability.py hostile_inputs` ({result['date']}): the classes of "
        "hostile input a tester found retain mishandling (issue 24). "
        f"{result['handled']} of {result['cases']} single commands (`tests/test_hostile_cli.py`, "
        "through the CLI) ended as a user error must: exit code 2, one `error:` line naming the "
        "file or field and the fix, no traceback, nothing written and nothing that stood at "
        f"their paths changed. The tests of what takes more than one command: {result['passed']} "
        f"passed, {result['failed']} failed.\n",
        "| class | commands | handled | tracebacks | left or changed files | tests | tests passed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    kinds = list(dict.fromkeys([*result["by_class"], *result["tests"]]))
    for kind in kinds:
        tally = result["by_class"].get(kind, {"cases": 0, "handled": 0, "tracebacks": 0, "changed": 0})
        found = result["tests"].get(kind, [])
        passed = sum(test["outcome"] == "passed" for test in found)
        lines.append(f"| {kind} | {tally['cases']} | {tally['handled']} | {tally['tracebacks']} | "
                     f"{tally['changed']} | {len(found)} | {passed} |")
    if result["failures"]:
        lines.append("\nNot handled:\n")
        lines += [f"- {failure['class']} `{failure['name']}`: {'; '.join(failure['problems'])}"
                  for failure in result["failures"]]
    failed = [(kind, test) for kind, found in result["tests"].items() for test in found
              if test["outcome"] not in ("passed", "skipped")]
    if failed:
        lines.append("\nTests that failed:\n")
        lines += [f"- {kind}: {_sentence(test['test'])} ({test['message']})" for kind, test in failed]
    return "\n".join(lines) + "\n"
