"""The methods on the lab: the evidence of issue 6, written into docs/RESULTS.md.

Usage: ``python benchmarks/evidence_methods.py [--seeds 3] [--parts methods sizes]``
(``--render`` only rebuilds docs/RESULTS.md from the saved results).

1. ``methods``: ``retain lab compare`` of every recipe (lib: :mod:`retain.lab.compare`),
   over seeds, from one base model; run directories in ``benchmarks/results/method-runs/``
   (not committed; a finished run is read back, so an interrupted evidence run continues);
2. ``sizes``: the articles' data-size claim, the naive and the default recipe trained on
   the first 200, 1,000 and 4,000 rows of one 4,000-row lab training set (the lab's
   domain holds at most 4,376 training rows; see ``SIZES``).

The raw numbers go to ``benchmarks/results/evidence_methods.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "method-runs"
DOC = HERE.parent / "docs" / "RESULTS.md"
sys.path.insert(0, str(HERE))

from retain.lab.compare import DEFAULT_RECIPES, RECIPE, REFERENCE, Row, run_compare
from retain.rundir import atomic_write_json, atomic_write_text

PARTS = ("methods", "sizes")
# The articles compare 200, 1,000 and 5,000 rows. The lab's domain gives every item its
# own invented drug (5,376 names, each split's drugs disjoint from the others'), so with the
# evaluation splits it holds at most 4,376 training rows: 4,000 stands in for 5,000.
SIZES = (200, 1000, 4000)
DEFAULT = RECIPE  # the recipe the targets are about
SIZE_RECIPES = (REFERENCE, DEFAULT)
WORKERS = 2  # runs at once, one thread each (see compare.run_compare)


def run(seeds: int, parts: tuple[str, ...], previous: dict | None, sizes: tuple[int, ...] = SIZES) -> dict:
    result: dict = {part: previous[part] for part in PARTS if previous and part in previous and part not in parts}
    if "methods" in parts:
        started = time.perf_counter()
        rows = run_compare(RUNS / "methods", DEFAULT_RECIPES, seeds=seeds, workers=WORKERS, echo=_echo)
        result["methods"] = {"rows": [_row(row) for row in rows], "seeds": seeds,
                             "wall_seconds": round(time.perf_counter() - started, 1)}
    if "sizes" in parts:
        recipes = tuple(recipe for recipe in DEFAULT_RECIPES if recipe.name in SIZE_RECIPES)
        result["sizes"] = {"seeds": seeds, "by_size": {}}
        for size in sizes:
            rows = run_compare(RUNS / "sizes", recipes, seeds=seeds, n_train=max(SIZES), data_size=size,
                               workers=WORKERS, echo=_echo)
            result["sizes"]["by_size"][str(size)] = [_row(row) for row in rows]
    return result


def _echo(line: str) -> None:
    print(line, flush=True)


def _row(row: Row) -> dict:
    return {
        "recipe": row.recipe, "claim": row.claim, "seeds": row.seeds,
        "task_accuracy": row.task_accuracy, "ood_accuracy": row.ood_accuracy,
        "probe_accuracy": row.probe_accuracy, "forgetting": row.forgetting,
        "time_vs_reference": row.time_vs_reference,
        "runs": [{"seed": run.seed, "task": run.task_accuracy, "forgetting": run.forgetting,
                  "train_seconds": run.train_seconds} for run in row.runs],
    }


def _ci(value) -> str:
    mean, half = value
    if mean is None:
        return "n/a"
    return f"{mean:.1%}" + (f" ± {half:.1%}" if half is not None else "")


def markdown(result: dict) -> str:
    lines = ["## Methods on the lab (issue 6)\n"]
    methods = result.get("methods")
    if methods:
        rows = methods["rows"]
        lines += [
            (f"Measured {result.get('date', '?')}. Command: `python benchmarks/evidence_methods.py` "
            f"(`retain lab compare` of every recipe, {methods['seeds']} seeds each, guards off, the "
            "default lab model and lab domain task; run directories in "
            "`benchmarks/results/method-runs/`, not committed). Mean ± half-width of the 95% "
            "confidence interval over seeds (Student's t). Forgetting is the relative drop of "
            "general probe accuracy by generation from the base model; time is training time "
            f"relative to `{REFERENCE}`. Wall time of the whole comparison: "
            f"{methods['wall_seconds'] / 60:.0f} min.\n"),
            "| method | task accuracy | OOD accuracy | general probes after | forgetting, relative | time vs full | what its paper claims |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            ratio = f"{row['time_vs_reference']:.2f}x" if row["time_vs_reference"] else "n/a"
            lines.append(f"| {row['recipe']} | {_ci(row['task_accuracy'])} | {_ci(row['ood_accuracy'])} | "
                         f"{_ci(row['probe_accuracy'])} | {_ci(row['forgetting'])} | {ratio} | {row['claim']} |")
        lines.append("\n" + _reading(rows))
    sizes = result.get("sizes")
    if sizes:
        lines += [
            "\n### Data size: " + " vs ".join(f"{int(size):,}" for size in sizes["by_size"]) + " training rows\n",
            (f"The first N rows of one {max(SIZES):,}-row lab training set, {sizes['seeds']} seed(s) each, "
             "same epochs (so more rows are more steps). The articles compare 200, 1,000 and 5,000 rows; "
             "the lab's domain holds at most 4,376 training rows (one invented drug per item, 5,376 "
             f"names, each split's drugs its own), so {max(SIZES):,} stands in for 5,000.\n"),
            "| rows | method | task accuracy | OOD accuracy | forgetting, relative |",
            "| --- | --- | --- | --- | --- |",
        ]
        for size, rows in sizes["by_size"].items():
            for row in rows:
                lines.append(f"| {int(size):,} | {row['recipe']} | {_ci(row['task_accuracy'])} | "
                             f"{_ci(row['ood_accuracy'])} | {_ci(row['forgetting'])} |")
        lines.append("\n" + _size_reading(sizes["by_size"]))
    return "\n".join(lines) + "\n"


def _size_reading(by_size: dict[str, list[dict]]) -> str:
    """Returns how task accuracy and forgetting move with the data size, per recipe."""
    parts = []
    recipes = [row["recipe"] for row in next(iter(by_size.values()))]
    for recipe in recipes:
        task = [next(row for row in rows if row["recipe"] == recipe)["task_accuracy"][0]
                for rows in by_size.values()]
        forgot = [next(row for row in rows if row["recipe"] == recipe)["forgetting"][0]
                  for rows in by_size.values()]
        if None in task or None in forgot:
            continue
        sizes = " / ".join(f"{int(size):,}" for size in by_size)
        parts.append(f"`{recipe}` at {sizes} rows: task accuracy "
                     + " / ".join(f"{value:.1%}" for value in task) + ", forgetting "
                     + " / ".join(f"{value:.1%}" for value in forgot) + ".")
    return " ".join(parts) + "\n"


def _reading(rows: list[dict]) -> str:
    """Returns what the table says against the issue's targets, computed from the numbers."""
    by_name = {row["recipe"]: row for row in rows}
    parts = []
    naive = by_name.get(REFERENCE)
    if naive and naive["forgetting"][0] is not None:
        verdict = "reproduced" if naive["forgetting"][0] >= 0.30 else "NOT reproduced"
        parts.append(f"The crisis (target: naive full fine-tuning forgets at least 30% relative): "
                     f"{verdict}, {naive['forgetting'][0]:.1%}.")
    best = max((row for row in rows if row["task_accuracy"][0] is not None),
               key=lambda row: row["task_accuracy"][0], default=None)
    default = by_name.get(DEFAULT)
    if default and best and default["forgetting"][0] is not None:
        share = default["task_accuracy"][0] / best["task_accuracy"][0]
        met = default["forgetting"][0] <= 0.02 and share >= 0.95
        parts.append(f"The default recipe `{DEFAULT}` (target: forgetting at most 2% and at least 95% "
                     f"of the best task accuracy): {'met' if met else 'NOT met'}; forgetting "
                     f"{default['forgetting'][0]:.1%}, task accuracy {default['task_accuracy'][0]:.1%} = "
                     f"{share:.0%} of the best ({best['recipe']}, {best['task_accuracy'][0]:.1%}).")
    if naive and naive["forgetting"][0] is not None:
        for row in rows:
            if row["recipe"] == REFERENCE or row["forgetting"][0] is None:
                continue
            parts.append(f"`{row['recipe']}` forgets {row['forgetting'][0]:.1%} against "
                         f"{naive['forgetting'][0]:.1%} ({_direction(row['forgetting'], naive['forgetting'])}), "
                         f"task {row['task_accuracy'][0]:.1%} against {naive['task_accuracy'][0]:.1%}.")
    return " ".join(parts) + "\n"


def _direction(value, reference) -> str:
    """Returns "less", "more" or "no clear difference": the intervals must not overlap."""
    (mean, half), (ref_mean, ref_half) = value, reference
    if mean + (half or 0.0) < ref_mean - (ref_half or 0.0):
        return "less"
    if mean - (half or 0.0) > ref_mean + (ref_half or 0.0):
        return "more"
    return "no clear difference: the 95% intervals overlap"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts; the others keep their last results")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES),
                        help="training-set sizes of the sizes part (at most %(default)s's largest)")
    parser.add_argument("--render", action="store_true", help="only rebuild docs/RESULTS.md")
    args = parser.parse_args()
    from evidence_guards import render

    saved = RESULTS / "evidence_methods.json"
    if not args.render:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        previous = json.loads(saved.read_text()) if saved.is_file() else None
        result = run(args.seeds, tuple(args.parts), previous, tuple(args.sizes))
        result["date"] = time.strftime("%Y-%m-%d", time.gmtime())
        atomic_write_json(saved, result)
    atomic_write_text(DOC, render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
