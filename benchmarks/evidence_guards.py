"""The guards on the lab: the evidence of issue 5, written into docs/RESULTS.md.

Usage: ``python benchmarks/evidence_guards.py [--seeds 5] [--parts traps aggressive default]``
(about 30 minutes on 2 cores for all of it).
Every run is a real ``retain train`` of the default lab model on the lab domain task
(``retain lab data``), in ``benchmarks/results/guard-runs/``:

1. the silent failures reproduced on purpose: the pad = EOS trap (transformers' language-
   modelling collator with pad = EOS) and labels that teach an immediate EOS (prompts
   ending with their own EOS, loss on all tokens). The doctor refuses both; with
   ``--force``, the guards are watched at their first check;
2. an aggressive full fine-tuning (lr 5e-4, 2 epochs) with the forgetting guard
   (``restore_best``, checks every 10 steps) and the same run with the guards off;
3. the default config (LoRA r=16 on all projections, lr 1e-4, 2 epochs) over several seeds,
   listing every guard that fired and the final numbers measured independently;
4. the lab's recipe (``retain.lab.comparison.RECIPE``: LoRA with replay, the setting of the
   methods comparison that learns the task within the forgetting limit), a healthy run
   that learns, where no guard should fire: with the forgetting guard acting at the first
   check over the limit (``recipe_at_once``, patience 0), with the default guards over the
   same seeds (``recipe``), and with the default guards over as many further seeds
   (``recipe_heldout``). The recipe's seeds start at 1: seed 0 chose it.

The raw numbers go to ``benchmarks/results/evidence_guards.json``; docs/RESULTS.md is
rebuilt from every ``evidence_*.json`` there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "guard-runs"
DOC = HERE.parent / "docs" / "RESULTS.md"
sys.path.insert(0, str(HERE))

from retain.config import load_config  # noqa: E402
from retain.errors import TrainRefused  # noqa: E402
from retain.io import atomic_write_json, atomic_write_text
from retain.lab.comparison import DEFAULT_RECIPES, RECIPE  # noqa: E402
from retain.lab.export import export_lab_data  # noqa: E402
from retain.rundir import read_jsonl  # noqa: E402
from retain.training.resume import finished_summary  # noqa: E402
from retain.training.run import run_train  # noqa: E402

AGGRESSIVE = ["method=full", "train.lr=5e-4", "guards.every_steps=10"]
TRAPS = {
    "pad = EOS, language-modelling collator": ["model.pad_token=eos", "train.collator=language_modeling"],
    "prompts ending with EOS, loss on all tokens": ["train.loss_on=all", "data.train={eos_train}"],
}


def _train(config_path: Path, name: str, overrides: list[str], *, force: bool = False) -> dict:
    config = load_config(config_path, [*overrides, f"output.dir={RUNS}", f"output.name={name}"])
    run_dir = RUNS / name
    # A run that finished with this very config is read back, not trained again (as
    # `retain lab compare` does), so an interrupted evidence run continues where it stopped.
    summary = finished_summary(config)
    if summary is None:
        summary = run_train(config, overwrite=True, force=force, progress=False, echo=lambda line: None).summary
    checks = guard_checks(run_dir)
    return {
        "seconds": summary.seconds,
        "status": summary.status,
        "stopped_by": summary.stopped_by,
        "restored_step": summary.restored_step,
        "steps": summary.steps,
        "base_probe_accuracy": summary.base_probe_accuracy,
        "final_probe_accuracy": summary.final_probe_accuracy,
        "forgetting": summary.forgetting_relative,
        "task_accuracy": {split: summary.task_accuracy(split) for split in summary.task},
        "guard_events": list(summary.guard_events),
        "checks": [{key: check[key] for key in ("step", "probe_accuracy", "forgetting", "task_accuracy",
                                                "smoke_fail_share")} for check in checks],
        "ship": summary.verdict.ship,
    }


def guard_checks(run_dir: Path) -> list[dict]:
    """Returns the guard checks a run recorded in its ``metrics.jsonl``, in order."""
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "check"]


def commonest_answer(data: Path, split: str = "test") -> tuple[str, float, int]:
    """Returns a split's commonest answer (the test split's by default), its share (the
    accuracy of a model that learned nothing) and the split's size."""
    from collections import Counter

    answers = [json.loads(line)["response"].strip() for line in (data / f"{split}.jsonl").read_text().splitlines()]
    answer, count = Counter(answers).most_common(1)[0]
    return answer, count / len(answers), len(answers)


def _trap_data(data: Path) -> Path:
    path = data / "train_eos.jsonl"
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps(row | {"prompt": row["prompt"] + "</s>"}) + "\n" for row in rows))
    return path


PARTS = ("traps", "aggressive", "default", "recipe_at_once", "recipe", "recipe_heldout")
AT_ONCE = "guards.forgetting.patience=0"


def run(seeds: int, parts: tuple[str, ...] = PARTS) -> dict:
    """Runs the ``parts`` asked for (the others come back empty)."""
    data = RUNS / "data"
    export_lab_data(data)
    config = data / "config.yaml"
    eos_train = _trap_data(data)
    result: dict = {"traps": {}, "aggressive": {}} | {part: [] for part in SEEDED}
    for index, (name, overrides) in enumerate(TRAPS.items() if "traps" in parts else ()):
        overrides = [item.format(eos_train=eos_train) for item in overrides]
        try:
            _train(config, f"trap{index}-refused", overrides)
            refused = None
        except TrainRefused as error:
            refused = str(error)
        print(f"trap {name}: refused: {refused}", flush=True)
        forced = _train(config, f"trap{index}-forced", overrides, force=True)
        print(f"  forced: {forced['stopped_by']}", flush=True)
        result["traps"][name] = {"refused": refused, "forced": forced}
    aggressive = (("guarded", []), ("unguarded", ["guards.enabled=false"])) if "aggressive" in parts else ()
    for name, extra in aggressive:
        result["aggressive"][name] = _train(config, f"aggressive-{name}", AGGRESSIVE + extra)
        print(f"aggressive {name}: forgetting {result['aggressive'][name]['forgetting']}", flush=True)
    result["majority_share"] = commonest_answer(data)[1]
    recipe = next(item for item in DEFAULT_RECIPES if item.name == RECIPE).overrides
    # The recipe's runs start at seed 1: seed 0 is the seed the recipe search chose it at
    # (evidence_recipe.py), and no table judges the recipe on the seed that chose it.
    plan = {"default": ([], range(seeds)), "recipe_at_once": ([*recipe, AT_ONCE], range(1, seeds + 1)),
            "recipe": (list(recipe), range(1, seeds + 1)),
            "recipe_heldout": (list(recipe), range(seeds + 1, 2 * seeds + 1))}
    for part, (overrides, part_seeds) in plan.items():
        for seed in part_seeds if part in parts else ():
            name = "recipe" if part == "recipe_heldout" else part  # one run directory per seed
            run_result = _train(config, f"{name}-seed{seed}", [*overrides, f"train.seed={seed}"])
            run_result["seed"] = seed
            result[part].append(run_result)
            print(f"{part} seed {seed}: {[e['guard'] for e in run_result['guard_events']]}", flush=True)
    result["recipe_overrides"] = list(recipe)
    return result


SEEDED = ("default", "recipe_at_once", "recipe", "recipe_heldout")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def markdown(result: dict) -> str:
    lines = [
        "## Guards on the lab (issue 5)\n",
        f"Measured {result.get('date', '?')}. Command: `python benchmarks/evidence_guards.py` "
        "(real `retain train` runs of the default lab model on the lab domain task; run "
        "directories in `benchmarks/results/guard-runs/`, not committed). Forgetting is relative "
        "to the base model's general probe accuracy by generation, on all 337 lab probes, none of "
        "them rehearsed (the lab's replay draws from its rehearsal corpus, which states no probed fact).\n",
        f"### The silent failures, reproduced on purpose{_when(result, 'traps')}\n",
        "| trap | without --force | with --force: stopped by | at step (first check) | message |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, trap in result["traps"].items():
        forced = trap["forced"]
        stop = forced["stopped_by"] or {}
        first = next((check["step"] for check in forced["checks"] if check["step"] > 0), None)  # after step 0
        refused = "refused by the doctor" if trap["refused"] and "doctor" in trap["refused"] else (
            "refused" if trap["refused"] else "trained")
        message = (stop.get("message") or "").replace("|", "/")
        lines.append(f"| {name} | {refused} | {stop.get('guard', 'nothing')} | {stop.get('step')} ({first}) | "
                     f"{message[:300]} |")
    guarded, unguarded = result["aggressive"]["guarded"], result["aggressive"]["unguarded"]
    lines += [
        f"\n### Aggressive full fine-tuning (lr 5e-4, 2 epochs, checks every 10 steps){_when(result, 'aggressive')}\n",
        "| run | stopped at step | restored step | general probes after | forgetting | task (eval) | task (ood) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in (("forgetting guard, restore_best", guarded), ("guards off", unguarded)):
        stop = entry["stopped_by"]
        lines.append(
            f"| {name} | {stop['step'] if stop else '-'} | {_restored(entry['restored_step'])} | "
            f"{_pct(entry['final_probe_accuracy'])} | {_pct(entry['forgetting'])} | "
            f"{_pct(entry['task_accuracy'].get('eval'))} | {_pct(entry['task_accuracy'].get('ood'))} | "
            f"{'ship' if entry['ship'] else 'do not ship'} |")
    lines.append(f"\nBase general probe accuracy: {_pct(guarded['base_probe_accuracy'])}.\n")
    recipe = "`" + " ".join(result.get("recipe_overrides", [])) + "`"
    titles = {"default": "The default config over seeds (LoRA r=16, lr 1e-4, 2 epochs)",
              "recipe_at_once": f"The lab's recipe ({recipe}), the forgetting guard acting at the "
              f"first check over the limit (`{AT_ONCE}`)",
              "recipe": f"The lab's recipe ({recipe}), default guards",
              "recipe_heldout": f"The lab's recipe ({recipe}), default guards, further seeds"}
    for part, title in titles.items():
        if not result.get(part):
            continue
        lines += [f"### {title}{_when(result, part)}\n",
                  "| seed | guards that fired (step: guard -> action) | forgetting at each check | final forgetting | task (eval) | verdict |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for entry in result[part]:
            events = ", ".join(f"{e['step']}: {e['guard']} -> {e['action']}" for e in entry["guard_events"]) or "none"
            curve = " ".join(_pct(c["forgetting"]) for c in entry["checks"])
            lines.append(f"| {entry['seed']} | {events} | {curve} | {_pct(entry['forgetting'])} | "
                         f"{_pct(entry['task_accuracy'].get('eval'))} | {'ship' if entry['ship'] else 'do not ship'} |")
        lines.append("\n" + _reading(result, part))
    return "\n".join(lines) + "\n"


def _when(result: dict, part: str) -> str:
    """Returns " (measured DATE)" for a part measured on another day than the latest run."""
    date = result.get(f"{part}_date")
    return f" (measured {date})" if date and date != result.get("date") else (
        "" if date else " (measured before per-part dates were kept, with an older retain)")


def _restored(step: int | None) -> str:
    return "-" if step is None else ("0 (rolled back to the start)" if step == 0 else str(step))


def _reading(result: dict, part: str) -> str:
    """Returns what the runs of ``part`` say, computed from the numbers (nothing typed in)."""
    runs = result[part]
    fired: dict[str, int] = {}
    warned: dict[str, int] = {}
    for entry in runs:
        for guard in {event["guard"] for event in entry["guard_events"] if event["action"] != "warn"}:
            fired[guard] = fired.get(guard, 0) + 1
        for guard in {event["guard"] for event in entry["guard_events"] if event["action"] == "warn"}:
            warned[guard] = warned.get(guard, 0) + 1
    forgetting_true = sum(
        any(event["guard"] == "forgetting" and event["value"] > event["threshold"] for event in entry["guard_events"])
        for entry in runs)
    tasks = [entry["task_accuracy"].get("eval") or 0.0 for entry in runs]
    majority = result.get("majority_share")
    shipped = sum(bool(entry["ship"]) for entry in runs)
    parts = [f"Guards that acted (stop or restore), in how many of the {len(runs)} seeds: "
             + (", ".join(f"{guard} {count}" for guard, count in sorted(fired.items())) or "none")
             + "; warnings only: "
             + (", ".join(f"{guard} {count}" for guard, count in sorted(warned.items())) or "none")
             + f". Verdict ship: {shipped} of {len(runs)}."]
    for entry in runs:
        for event in entry["guard_events"]:
            if event["action"] != "warn" and event["guard"] != "forgetting":
                said = event["message"].split("; e.g.")[0].split(". ")[0]
                parts.append(f"Seed {entry['seed']}, step {event['step']}, {event['guard']} guard: {said}.")
    if "forgetting" in fired:
        triggered = [entry for entry in runs if any(e["guard"] == "forgetting" for e in entry["guard_events"])]
        limit = next(e["threshold"] for e in triggered[0]["guard_events"] if e["guard"] == "forgetting")
        within = sum((entry["forgetting"] or 0.0) <= limit for entry in triggered)
        parts.append(f"Forgetting triggers that were a measured drop above the limit at a check: "
                     f"{forgetting_true} of {fired['forgetting']}; runs whose final model, after the "
                     f"restore, is within the limit: {within} of {len(triggered)}.")
    if majority is not None:
        parts.append(f"Task accuracy on the eval set is {min(tasks):.1%}-{max(tasks):.1%}, against "
                     f"{majority:.1%} for always answering the commonest label.")
        if part == "default" and max(tasks) < majority + 0.05:
            parts.append("The default recipe does not learn the lab task in 2 epochs. The loss "
                         "warning, a 10-step mean loss still above 2.0 after the first tenth of the "
                         "run, says so early: it is a true signal, not a false alarm. Which recipe "
                         "learns the task within the forgetting limit is the question of issue 6.")
    return " ".join(parts) + "\n"


def render() -> str:
    from sections import sections

    return "\n".join(["# Results\n",
                      ("Evidence measured on the lab and on SmolLM2-135M-Instruct by commands in the repo; each "
                       "section names its command. Figures are from one machine (2 CPU cores) and one run unless "
                       "stated.\n"),
                      HISTORY, LAB_AND_REAL, *sections("evidence", "evidence_")])


# What was iterated while looking at results: history, so written by hand (git has the details).
HISTORY = """**What was iterated while looking at results.** Three things were changed after their
results had been seen, before issue 22: the lab world (world 2 added sentences about medicine in
the task's words to pretraining, after the method tables of world 1 were read); the forgetting
guard's patience rule (2 checks without a new low), chosen while watching the lab recipe's early
dip at seeds 0-4; and the recipe itself (LoRA + replay 0.5 at lr 1e-3), chosen by the recipe search
at seed 0, scored on the test split. All three were chosen while replay trained in blocks (task-only
and general-only stretches of about 25 steps) and drew from a corpus that restated 217 of the 337
probes. Issue 22 fixed both, and from then on: the recipe search scores the validation split and
trains at seed 0 only; every table that judges the recipe uses seeds 1 and up; the patience rule,
the lab world, the probes and the metrics were left as they were while the new numbers came in,
whatever they said. One thing was iterated on the new numbers: when none of the 10 settings of the
first two search grids shipped at seed 0 (validation), a third grid (3 epochs, lr 3e-4 and 5e-4,
replay 0.5 and 0.75) was declared and run, and the recipe was chosen from it by the search script's
rule (the shipped setting with the best validation accuracy); it was then run on seeds 1-4 and
scored on the test split for the first time.

On SmolLM2, what was iterated while looking at results: the real scale's settings and what was
changed after its first runs are listed in the `make real` section. The recipe search's first
grid (`real-sa`) was fixed before it ran; after four of its trials had been seen in a session
whose run folders were lost (all rolled back), a second grid (`real-sa-128`: self-rehearsed
answers up to 128 tokens instead of 32) was declared, and both grids were then run from scratch.
Before those runs, the rule for "learned the task" was made to ask for more than the base
model's own accuracy (known from `make real`'s baseline to beat the commonest label); the
probes, the guards' limits and the metrics were not changed. After the search's results had been
read (every check at 6.2% forgetting or more), a control was declared with its reading rule
before it ran (committed first): the floor (`real-floor`, LoRA trained on the base model's own
answers alone), which measures what training that learns nothing moves on the calibrated items;
it is a control, not a candidate, and changed neither the choice nor the metric. Its first run
was refused by the audit (see its section), and it was stopped early for time.
"""

# A reading across sections, so written by hand; each figure is in a section below.
LAB_AND_REAL = """**The lab beside SmolLM2 (read 2026-12-07; every figure is in a section below).** Where
they agree: naive full fine-tuning learns the task and forgets in every category on both (the
lab's `make lab`: 90.0%; SmolLM2's `make real`: 78.8%, arithmetic all of it); the doctor refuses
the pad = EOS trap on both, and the guards stop and roll back the aggressive run on both. Forced
past the doctor, the trap was stopped on SmolLM2 by the smoke guard at seeds 0 and 3 (what the
trap breaks: answers that do not end) but by the forgetting guard at seeds 1 and 2 (7-8% at step
20, about what the LoRA runs' checks showed), before the smoke guard saw anything.
Where they disagree, which is the most useful thing here: on the lab, LoRA with replay learns
the task and ships on every held-out seed, its early checks dipping 2-15% and recovering below
zero over its 3 epochs. On SmolLM2, no setting of LoRA with self-rehearsal that the search
tried came under 6.2% forgetting at any check, the checks that saw the task learned forgot
7.1-11.5%, and the guards rolled every run back, so the real story's recipe ends as the base
model: issue 26's 3% target was NOT met. SmolLM2's trainings are capped at 60 steps (a cost
cap set for `make real`); in two held-out seeds forgetting fell from 14-16% at step 15 to
7.1-8.8% at step 60 while the task was learned, and whether it keeps falling with more steps, as
on the lab, was not measured. The floor control says why 3% may be out of reach here: LoRA
trained on the base model's own answers alone, with nothing to learn, forgot 5.3% at its first
check and 14.2-15.0% by step 60 (lr 2e-4, seeds 0 and 1), as much as or more than the recipe's
checks; on these 113 items (one item is 0.9%), greedy answers change under any training at this
rate, whatever it learns, so the target sits below what this measurement separates from the
effect of training itself. Which answers change, and why, was not measured. SmolLM2 also answers the task before
any training (the base's accuracy in the guards table: 51-69% on the test split at seeds 1-3; at
seed 0, `make real`'s baseline, 55.0% against 44.0% for the commonest label), where the lab's
base answers 0%, so a recipe there must beat the base, not only the label.

The methods tables (guards off, seeds 1-3 on both) agree on the order more than on the sizes.
On both, LoRA forgets less than full fine-tuning (lab 55.9%, SmolLM2 21.2%, against 88.9% and
75.5%), freezing the bottom layers forgets less (18.2%; 44.8%), and EWC at retain's default
strength makes no clear difference on SmolLM2 (68.1%) and little on the lab (80.6%). FAPM forgets
least on both (1.0% on the lab; 5.9% ± 1.3% on SmolLM2) at a lower task accuracy than the other
full fine-tunings (66.9%; 68.7% ± 8.0%). The recipes part: the lab's (LoRA + replay) forgets 0.3%
at 83.8% task accuracy; SmolLM2's (LoRA + self-rehearsal, guards off) forgets 8.8% ± 2.2% at
65.7% ± 11.5%, an interval that does not clear the base's 55.0%. No method of the SmolLM2 table
meets issue 26's target (at most 3% forgetting with task accuracy clearing both the label and
the base); FAPM comes nearest.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts; the others keep their last results")
    parser.add_argument("--render", action="store_true",
                        help="only rebuild docs/RESULTS.md from the saved results")
    args = parser.parse_args()
    saved = RESULTS / "evidence_guards.json"
    if args.render:
        result = json.loads(saved.read_text())
        if "majority_share" not in result:  # results saved before it was recorded
            export_lab_data(RUNS / "data")
            result["majority_share"] = commonest_answer(RUNS / "data")[1]
            atomic_write_json(saved, result)
        atomic_write_text(DOC, render())
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = run(args.seeds, tuple(args.parts))
    result["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    result |= {f"{part}_date": result["date"] for part in args.parts}  # parts may be measured apart
    # Read the saved results only now: another invocation running other parts may have
    # written its own since this one started.
    latest = json.loads(saved.read_text()) if saved.is_file() else {}
    result = latest | {key: value for key, value in result.items() if key not in PARTS or key in args.parts}
    atomic_write_json(saved, result)
    atomic_write_text(DOC, render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
