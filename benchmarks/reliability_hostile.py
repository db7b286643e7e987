"""Hostile content, determinism and resource limits: the tests behind them, run and recorded.

``run()`` runs ``tests/test_hostile.py``, ``tests/test_resources.py``,
``tests/test_determinism.py`` and the report's escaping test through pytest (one thread,
JUnit XML), records each test's outcome by name, and scans the libraries retain resumes
training with (transformers' ``Trainer``, peft's adapter loader) for ``torch.load`` calls
and the ``weights_only`` each passes. ``markdown()`` renders that as a section of
docs/RELIABILITY.md (``benchmarks/reliability.py`` collects every
``benchmarks/results/reliability_*.json``).

    python benchmarks/reliability_hostile.py     # writes benchmarks/results/reliability_hostile.json
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "reliability_hostile.json"
TESTS = {
    "hostile content": ["tests/test_hostile.py",
                        "tests/test_report.py::test_hostile_strings_from_data_config_and_answers_are_escaped",
                        "tests/test_report.py::test_a_sweep_or_compare_folder_cannot_point_the_report_at_runs_outside_it"],
    "resource limits": ["tests/test_resources.py"],
    "determinism": ["tests/test_determinism.py"],
}
# Where a resumed training unpickles: the Trainer's optimizer, scheduler, scaler and RNG
# state, and peft's adapter loader (retain itself loads adapters as safetensors only).
LIBRARY_FILES = {"transformers": ["trainer.py", "trainer_pt_utils.py", "modeling_utils.py"],
                 "peft": ["utils/save_and_load.py"]}


def run() -> dict:
    """Runs the tests and the library scan.

    Returns:
        ``{"date", "groups": {group: [{"test", "file", "outcome", "message"}]}, "passed",
        "failed", "torch_load": {library: {"version", "calls": [{"file", "line", "weights_only"}]}}}``.
    """
    groups = {group: _pytest(targets) for group, targets in TESTS.items()}
    outcomes = [test["outcome"] for tests in groups.values() for test in tests]
    return {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "groups": groups,
        "passed": outcomes.count("passed"),
        "failed": len(outcomes) - outcomes.count("passed") - outcomes.count("skipped"),
        "torch_load": {library: _torch_load_calls(library, files) for library, files in LIBRARY_FILES.items()},
    }


def _pytest(targets: list[str]) -> list[dict]:
    """Runs pytest on ``targets``; returns each test's outcome from the JUnit report."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *targets], cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, check=False)
        if not report.is_file():
            return [{"test": " ".join(targets), "file": targets[0], "outcome": "error",
                     "message": "pytest wrote no report"}]
        cases = ElementTree.parse(report).getroot().iter("testcase")
        return [_case(case) for case in cases]


def _case(case: ElementTree.Element) -> dict:
    outcome, message = "passed", ""
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed"}.get(child.tag, child.tag)
            message = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
    return {"test": case.get("name"), "file": case.get("classname", "").replace(".", "/") + ".py",
            "outcome": outcome, "message": message}


def _torch_load_calls(library: str, files: list[str]) -> dict:
    """Returns every ``torch.load`` call in the library's files and its ``weights_only``."""
    module = __import__(library)
    folder = Path(module.__file__).parent
    calls = []
    for name in files:
        tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                value = next((ast.unparse(k.value) for k in node.keywords if k.arg == "weights_only"), "default")
                calls.append({"file": name, "line": node.lineno, "weights_only": value})
    return {"version": module.__version__, "calls": sorted(calls, key=lambda c: (c["file"], c["line"]))}


def _sentence(test: str) -> str:
    """``test_a_pickled_model_is_refused[x]`` -> ``a pickled model is refused (x)``."""
    name, _, parameter = test.partition("[")
    text = name.removeprefix("test_").replace("_", " ")
    return text + (f" (`{parameter.rstrip(']')}`)" if parameter else "")


def markdown(result: dict) -> str:
    """Returns the section of docs/RELIABILITY.md for ``result``."""
    lines = [
        "## Hostile content, determinism and resource limits",
        "",
        f"Measured {result['date']} by `python benchmarks/reliability_hostile.py`: "
        f"{result['passed']} tests passed, {result['failed']} failed.",
        "",
        "What retain does:",
        "",
        "- **Remote code** is off (`model.trust_remote_code: false`); turned on, every command "
        "that loads the model logs a warning naming it. A model that ships code is refused "
        "without running it.",
        "- **Weights load as safetensors only**: a model directory or adapter with only a pickled "
        "`.bin` is refused, unread. retain's own code calls `torch.load` nowhere (a test scans it); "
        "a resumed training unpickles the optimizer, scheduler and random state through the "
        "`Trainer`, whose every `torch.load` passes `weights_only=True` (table below), so a "
        "checkpoint holding code fails to load instead of running it: `--resume` stops with one "
        "error naming the checkpoint and the fix (delete it, or start over).",
        "- **Strings from data** are HTML-escaped in reports (script tags, quotes, event handlers).",
        "- **Names from configs** (`output.name`, `--name`) are one path component, and files a run "
        "writes cannot leave its directory (`..`, absolute paths, links that lead out are refused). "
        "A sweep or `lab compare` folder names its runs in its own JSON; `retain report` reads only "
        "runs inside the folder, so a folder from elsewhere cannot copy a private run's config and "
        "log into a report.",
        "- **Secrets**: the environment is never recorded whole; `meta.json` keeps only the variables "
        "that change results (thread counts, visible GPUs, `PYTHONHASHSEED`, ...). A real training "
        "with `HF_TOKEN` set leaves the token in no file of its run directory, checkpoints included.",
        "- **Determinism**: `retain train` seeds before the methods initialise the model (LoRA's random "
        "init), so the same config and seed give the same losses, checks and evaluation on the same "
        "machine, also several runs in one process. `meta.json` records retain's version and git "
        "commit (and whether its source was edited since), the package versions, Python, the "
        "platform, torch's thread count, the command line and the SHA-256 of every file the config "
        "names (data splits, probe suites, reference text, replay source); `config.yaml` holds the "
        "resolved config.",
        "- **Memory**: before the audit, the doctor or the model load, `retain train` on a CPU "
        "estimates what the run needs from the parameter count (safetensors headers, or the config "
        "on the meta device): the weights; under full fine-tuning a gradient and AdamW's two "
        "moments, and the weight copies of l2sp/ewc/fapm/token_forget; with `--merge`, the merged "
        "copy of an adapter model; under LoRA the adapters with their gradients and AdamW "
        "moments in float32; +20% for activations. More "
        "than the memory available (the container's limit counts) is refused in one line with the "
        "estimate; `--force` tries anyway. Evaluation (generation, log-likelihood, drift) halves "
        "its batch when the device runs out of memory and retries the same items, so the results "
        "are those of the full batch; the size that worked is kept for the model.",
        "",
    ]
    for group, tests in result["groups"].items():
        lines += [f"### {group.capitalize()}", "", "| test | file | outcome |", "| --- | --- | --- |"]
        for test in tests:
            outcome = test["outcome"] + (f": {test['message']}" if test["message"] else "")
            lines.append(f"| {_sentence(test['test'])} | `{Path(test['file']).name}` | {outcome} |")
        lines.append("")
    lines += ["### `torch.load` on the resume path", "",
              "| library | file:line | `weights_only` |", "| --- | --- | --- |"]
    for library, found in result["torch_load"].items():
        for call in found["calls"]:
            lines.append(f"| {library} {found['version']} | `{call['file']}:{call['line']}` | "
                         f"`{call['weights_only']}` |")
    lines += ["", "`modeling_utils.py` and peft pass on their caller's `weights_only`: transformers' "
              "model loading goes through safetensors when `use_safetensors=True`, which retain "
              "always passes, and peft is only reached with `adapter_model.safetensors` present.",
              "", "Not covered: the memory check estimates CPU training only (GPU memory is left to "
              "the out-of-memory backoff of evaluation and to PyTorch's error in training); "
              "training itself does not back off on out-of-memory.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    from retain.io import atomic_write_json

    outcome = run()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULT, outcome)
    print(markdown(outcome))
