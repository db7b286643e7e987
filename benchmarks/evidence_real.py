"""The table ``make real`` prints, as measured by ``python benchmarks/run.py real``.

``bench_real.py`` runs ``retain lab --model smollm2-135m-instruct`` cold and saves its
findings in ``results/evidence_real.json``; this module renders them as the SmolLM2 story
section of docs/RESULTS.md (``python benchmarks/evidence_guards.py --render`` rebuilds the
document).
"""

from __future__ import annotations

from retain.lab.story import markdown_table


def markdown(result: dict) -> str:
    base = result["steps"]["base"]["figures"]
    calibration = (base.get("calibration") or [{}])[0]
    known = sum((calibration.get("known") or {}).values())
    total = sum((calibration.get("total") or {}).values())
    measured = [name for name in calibration.get("total", {}) if name not in calibration.get("not_measurable", [])]
    lines = [
        "## `make real`: the story on SmolLM2-135M-Instruct (issue 26)\n",
        f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py real` (runs `retain lab --model "
        f"smollm2-135m-instruct`, seed 0, cold: {result['seconds'] / 60:.0f} min on 2 CPU cores). One seed, one "
        "run: a demonstration of the story on a real model, not evidence for a method (the methods tables "
        "below measure over seeds). The domain task is the lab's (invented drugs, yes/no/maybe), rendered with "
        "the model's chat template; the trainings are capped at 60 steps of 8 rows. General accuracy and "
        f"forgetting are by generation on the general suite calibrated to the base: the {known} of {total} "
        f"items SmolLM2 answers right, also paraphrased, in the categories with at least 5 such items "
        f"({', '.join(measured) or 'none'}). Each step's one-line finding, as printed:\n",
    ]
    for name, line in result["lines"].items():
        lines.append(f"- **{name}**: {line}")
    lines += ["", markdown_table(result["rows"])]
    return "\n".join(lines)
