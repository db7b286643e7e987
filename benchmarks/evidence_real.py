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
    measured = [name for name in calibration.get("total", {}) if name not in calibration.get("not_measurable", [])]
    known = sum(calibration["known"][name] for name in measured)
    total = sum((calibration.get("total") or {}).values())
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
        if name == "report":  # the benchmark's lab run lived in a temporary folder
            line = line.split("; report: ")[0] + "; report: report.html in the lab's run directory"
        lines.append(f"- **{name}**: {line}")
    lines += ["", markdown_table(result["rows"]), ITERATED]
    return "\n".join(lines)


# What was seen before this table was measured: history, so written by hand.
ITERATED = """**What was changed after looking at a run.** The real scale's settings (60 steps of 8 rows,
full fine-tuning at lr 1e-4, LoRA at lr 2e-4 with self_augment, 100 rows per evaluation split,
checks every 10 steps for the trap and the guarded run) were written before any training on
SmolLM2 had run. A first run was stopped during the trap step for its time (its guard checks took
about 2 minutes each); it had shown the base step's line, the baseline's (0-shot 55.0% against 44.0%
for the commonest label) and the trap's forgetting guard at step 20 (an 8% relative drop on the
calibrated probes). After it, self_augment's ratio went from 0.5 to its default 0.2 (the 329
instructions give about 310 healthy answers, short of the 1,000 that 0.5 asks for), and evaluation
was made faster (shared base measurements, wider generation batches); nothing was changed to move
a figure. After the first full run (51 min), a profile of its recipe and trap steps made the
brittleness of the recipe measured on the first 50 test rows instead of 100, guard checks stop each
task answer once its label is settled (the same labels, fewer tokens), and self_augment's answers
cached per base model; these change how long the story takes, and the brittleness figures' sample.
"""
