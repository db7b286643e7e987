"""`retain lab`: what retain is for, end to end on the lab model, in seven steps.

1. ``base``: build or reuse the lab base model and measure its general ability per category;
2. ``audit``: audit a 200-row training set (blocked by the size rule), a flawed one
   (duplicates, conflicts, contamination) and the clean training set;
3. ``baseline``: zero- and few-shot accuracy of the base model on the domain task;
4. ``trap``: the seed article's silent failure (pad = EOS with a collator that masks pad
   labels): refused by the doctor, and with the doctor overridden stopped by the smoke guard;
5. ``aggressive``: naive full fine-tuning at a high learning rate with the guards off
   (the task learned, general ability lost, per category), then the same run guarded;
6. ``recipe``: the lab's recipe (``retain.lab.comparison.RECIPE``: LoRA on every projection
   with general-data replay) under the default guards;
7. ``report``: the table of every model and one HTML report of the trainings.

Every step is ordinary retain: the lab data are files written by ``retain lab data``, the
trainings are ``retain train`` runs of the config beside them. A step writes
``steps/N-NAME.json`` in the lab's run directory, so steps can be run one at a time
(``retain lab step NAME``) and the last step tabulates whichever ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from retain.config import RetainConfig
from retain.errors import RetainError
from retain.io import atomic_write_json
from retain.lab.runs import BASELINE_JOB, NO_BRITTLENESS, STEPS, Lab, StepResult, Training, worker_pool
from retain.summary import RunSummary


def run_story(lab: Lab, steps: Sequence[str] = STEPS) -> list[StepResult]:
    """Runs ``steps`` in order, saving and echoing each one's finding.

    With ``lab.workers`` above 1, every training of the steps asked for is sent at the
    start to a pool of worker processes (the longest first, then in the order the steps
    print them), while the steps before them run here; each step then waits for its own
    trainings and prints its finding in order. On a CPU the lab model's matrices are too
    small to keep two threads busy, so two one-thread trainings side by side should use
    two cores better than one training with both; ``python benchmarks/run.py lab``
    measures it against ``--workers 1``.
    """
    steps = [step_named(name) for name in steps]
    done = {name for name in steps if lab.resume and lab.step_file(name).is_file()}
    todo = [name for name in steps if name not in done]
    # The baseline's few-shot generation is a job for the pool too, so that the main
    # process does not compete with the workers for the cores.
    jobs: list[Training | str] = [job for name in todo for job in (
        [BASELINE_JOB] if name == "baseline" else TRAININGS.get(name, lambda lab: [])(lab))]
    # The base step first, on its own: it builds the base model a cold cache lacks (and says
    # so) before any worker needs it.
    first = steps[:1] if steps[:1] == ["base"] else []
    results = [_run_step(lab, name, kept=name in done) for name in first]
    with worker_pool(lab, jobs):
        results += [_run_step(lab, name, kept=name in done) for name in steps[len(first):]]
    return results


def _run_step(lab: Lab, name: str, *, kept: bool = False) -> StepResult:
    """Runs one step, saves its result in ``steps/`` and echoes its finding; a step ``kept``
    from before an interruption is not run: its saved finding is echoed."""
    import time

    lab.echo(f"[{STEPS.index(name) + 1}/{len(STEPS)}] {name}: {describe(lab, name)}")
    saved = lab.result(name) if kept else None
    if saved is not None:
        lab.echo(f"    {saved['line']} (kept from before the interruption)")
        return StepResult(saved["step"], saved["line"], saved.get("figures") or {}, saved.get("seconds") or 0.0)
    started = time.perf_counter()
    result = RUNNERS[name](lab)
    result.seconds = round(time.perf_counter() - started, 1)
    lab.step_file(name).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(lab.step_file(name), result.to_dict())
    lab.echo(f"    {result.line} ({result.seconds:.0f} s)")
    return result


def step_named(value: str) -> str:
    """Returns the step a user named by number (1-7) or name."""
    if value.isdigit() and 1 <= int(value) <= len(STEPS):
        return STEPS[int(value) - 1]
    if value in STEPS:
        return value
    raise RetainError(f"no lab step {value!r}", field="step",
                      fix=f"use a number 1-{len(STEPS)} or one of: {', '.join(STEPS)}")


# --- the steps ------------------------------------------------------------------------


def base_step(lab: Lab) -> StepResult:
    if lab.scale.model is not None:
        return _real_base_step(lab)
    from retain.evaluation.generation import score_probes_by_generation
    from retain.lab.base import build_base, lab_size
    from retain.lab.world import build_world
    from retain.models import load_model

    size = lab_size(lab.scale.size, lab.seed)
    base = build_base(size, lab.cache_dir, progress=lab.progress)
    # Reloaded from disk the way a user's model is, with no remote code.
    loaded = load_model(str(base.path), progress=lab.progress)
    score = score_probes_by_generation(loaded.model, loaded.tokenizer, build_world(size.world).probes)
    weakest = sorted((value, name) for name, value in score.accuracy.items() if name != "overall")[:2]
    how = "reused from the cache" if base.reused else f"built in {base.metadata['build_seconds']:.0f} s"
    line = (f"base model ({base.metadata['parameters']:,} parameters, {how}) answers "
            f"{score.accuracy['overall']:.1%} of the general probes; weakest: "
            + ", ".join(f"{name} {value:.0%}" for value, name in weakest))
    return StepResult("base", line, {
        "path": str(base.path), "reused": base.reused, "parameters": base.metadata["parameters"],
        "build_seconds": base.metadata.get("build_seconds"), "accuracy": score.accuracy,
        "counts": score.counts,
    })


def _real_base_step(lab: Lab) -> StepResult:
    """The real model's general ability per category by generation and log-likelihood,
    and the probes calibrated to it: the items it answers right, also paraphrased (cached
    for the trainings, which calibrate to the same base)."""
    from retain.evaluation.commands import run_eval

    config = lab.config("base", ["data.eval=null", "data.ood=null"])
    outcome = run_eval(config, config.model.name_or_path, drift=False, calibrate=True, progress=lab.progress)
    scores = {suite: {method: score.accuracy for method, score in methods.items()}
              for suite, methods in outcome.result.probes.items()}
    counts = {suite: next(iter(methods.values())).counts for suite, methods in outcome.result.probes.items()}
    suite = next(iter(scores))
    by_generation = scores[suite].get("generation", {})
    known = [calibration.to_dict() for calibration in outcome.calibrations]
    weakest = sorted((value, name) for name, value in by_generation.items() if name != "overall")[:2]
    line = (f"{lab.scale.model} answers {by_generation.get('overall', 0.0):.1%} of the {suite} suite by generation"
            + (f" ({scores[suite]['loglik']['overall']:.1%} by log-likelihood)" if "loglik" in scores[suite] else "")
            + "; weakest: " + ", ".join(f"{name} {value:.0%}" for value, name in weakest)
            + "".join(f"; {calibration.summary()}" for calibration in outcome.calibrations))
    return StepResult("base", line, {
        "path": config.model.name_or_path, "model": lab.scale.model, "accuracy": by_generation,
        "counts": counts[suite], "scores": scores, "calibration": known,
    })


def audit_step(lab: Lab) -> StepResult:
    from retain.audit.runner import run_audit
    from retain.lab.export import export_lab_data

    config = lab.config("audit")
    sets: dict[str, dict[str, Any]] = {}
    small = lab.root / "data-small"
    export_lab_data(small, size=lab.scale.size, seed=lab.seed, n_train=lab.scale.small_rows,
                    n_eval=lab.scale.n_eval)
    # The lab config relaxes the size rule for its tiny model; this audit keeps it, as
    # retain's default does for a user's data.
    strict = config.model_copy(update={"audit": config.audit.model_copy(update={"allow_small_data": False})})
    flawed = lab.root / "data-flawed"
    export_lab_data(flawed, size=lab.scale.size, seed=lab.seed, n_train=lab.scale.n_train,
                    duplicates=0.05, conflicts=0.03, contamination=0.05, n_eval=lab.scale.n_eval)
    for name, cfg, data in (("small", strict, small), ("flawed", config, flawed), ("clean", config, lab.data)):
        report = run_audit(cfg, data / "train.jsonl", eval_data=data / "test.jsonl",
                           probes=_suites(cfg))
        sets[name] = {"rows": report.rows, "counts": report.counts(),
                      "blockers": [f.code for f in report.findings if f.severity == "blocker"],
                      "warnings": [f.code for f in report.findings if f.severity == "warning"],
                      "findings": [f.to_dict() for f in report.findings]}
    found = sorted({*sets["flawed"]["blockers"], *sets["flawed"]["warnings"]} - set(sets["clean"]["warnings"]))
    line = (f"{sets['small']['rows']} rows: {_go(sets['small'])} ({', '.join(sets['small']['blockers']) or 'no blocker'}); "
            f"flawed set: {_go(sets['flawed'])}, found {', '.join(found) or 'nothing'}; "
            f"clean {sets['clean']['rows']:,} rows: {_go(sets['clean'])}")
    return StepResult("audit", line, sets)


def baseline_step(lab: Lab) -> StepResult:
    from retain.evaluation.task import no_better_than_majority

    measured = lab.baseline()
    scores, best_accuracy, majority = measured["accuracy"], measured["best_accuracy"], measured["majority"]
    # Prompting that cannot be told apart from always giving the commonest label: the
    # verdict's own rule for a model that did not learn the task.
    needed = majority is not None and no_better_than_majority(best_accuracy, majority, measured["n"])
    against = f", against {majority:.1%} for always answering the commonest label" if majority is not None else ""
    line = ("prompting alone: " + ", ".join(f"{k}-shot {v:.1%}" for k, v in scores.items())
            + f" on the held-out task{against}"
            + (": fine-tuning is needed" if needed else f"; {measured['verdict']}"))
    return StepResult("baseline", line, {"accuracy": scores, "best_shots": measured["best_shots"],
                                         "best_accuracy": best_accuracy,
                                         "majority": majority, "fine_tuning_needed": needed})


def trap_trainings(lab: Lab) -> list[Training]:
    # The lab recipe's pipeline with the bug in it: pad = EOS and a collator that masks
    # every pad label, so no EOS is ever trained. Capped at two checks: the first is the catch.
    every = lab.scale.trap_every
    trap = (*_recipe(lab), "model.pad_token=eos", "train.collator=language_modeling",
            f"guards.every_steps={every}", f"train.max_steps={2 * every}", NO_BRITTLENESS)
    return [Training("trap-refused", trap), Training("trap-forced", trap, force=True)]


def trap_step(lab: Lab) -> StepResult:
    from retain.errors import TrainRefused

    refusing, forcing = trap_trainings(lab)
    try:
        lab.train(refusing)
        refused = None
    except TrainRefused as error:
        refused = error.message
    forced = lab.train(forcing)
    stop = forced.stopped_by or {}
    line = ("doctor: " + ("refused the run" if refused else "did NOT refuse the run")
            + f"; forced past it, {'the ' + stop['guard'] + ' guard stopped it at step ' + str(stop['step']) if stop else 'no guard stopped it'}"
            + (f" ({_first_sentence(stop.get('message', ''))})" if stop else ""))
    return StepResult("trap", line, {"refused": refused, "forced": _run_figures(forced)})


def aggressive_trainings(lab: Lab) -> list[Training]:
    aggressive = lab.scale.aggressive
    return [Training("aggressive-naive", (*aggressive, "guards.enabled=false", NO_BRITTLENESS)),
            Training("aggressive-guarded", (*aggressive, f"guards.every_steps={lab.scale.guarded_every}",
                                            NO_BRITTLENESS))]


def aggressive_step(lab: Lab) -> StepResult:
    naive, guarded = (lab.train(training) for training in aggressive_trainings(lab))
    lost = _categories_lost(naive)
    stop = guarded.stopped_by or {}
    line = (f"naive: task {_pct(naive.task_accuracy())}, forgetting {_pct(naive.forgetting_relative)} "
            f"(" + ", ".join(f"{name} {drop:.0%}" for name, drop in lost[:3]) + "); "
            f"guarded: {('stopped at step ' + str(stop['step']) + ' by ' + stop['guard']) if stop else 'not stopped'}"
            f"{_restored(guarded)}, forgetting {_pct(guarded.forgetting_relative)}")
    return StepResult("aggressive", line, {"naive": _run_figures(naive), "guarded": _run_figures(guarded),
                                           "categories_lost": lost})


def recipe_trainings(lab: Lab) -> list[Training]:
    return [Training("recipe", _recipe(lab))]


def recipe_step(lab: Lab) -> StepResult:
    (training,) = recipe_trainings(lab)
    summary = lab.train(training)
    events = ", ".join(f"{e.get('guard')} -> {e.get('action')} at {e.get('step')}"
                       for e in summary.guard_events) or "no guard fired"
    line = (f"{' '.join(training.overrides)}: task {_pct(summary.task_accuracy())} "
            f"(base {_pct(summary.base_task_accuracy())}), "
            f"forgetting {_pct(summary.forgetting_relative)}{summary.rehearsal_note()}, {events}; "
            f"verdict: {'ship' if summary.verdict.ship else 'do not ship'}")
    return StepResult("recipe", line, {"overrides": list(training.overrides), "run": _run_figures(summary)})


def report_step(lab: Lab) -> StepResult:
    from retain.report import build_report

    rows = table_rows(lab)
    runs = [row["run_dir"] for row in rows if row.get("run_dir")]
    html = None
    if runs:
        html = str(build_report(runs, lab.root / "report.html").html)
    if not rows:
        raise RetainError("no lab step has results to tabulate yet", field="step",
                          fix="run the lab (retain lab) or its earlier steps first")
    line = f"table of {len(rows)} models; report: {html or 'none (no training ran)'}"
    return StepResult("report", line, {"rows": rows, "html": html})


def table_rows(lab: Lab) -> list[dict[str, Any]]:
    """Returns the final table: one row per model the earlier steps measured."""
    rows = []
    base = lab.result("base")
    baseline = lab.result("baseline")
    trainings = _trainings(lab)
    if base:
        general = base["figures"]["accuracy"].get("overall")
        if lab.scale.model is not None:
            # The trainings are judged on the probes calibrated to the base: its row gives
            # the base's accuracy on those items too (as its trainings measured it), not on
            # the whole suite the base step reports.
            general = next((run["base_general"] for _, run in trainings if run.get("base_general") is not None),
                           None)
        few = baseline["figures"] if baseline else {}
        rows.append({"model": f"base model, {few.get('best_shots', '?')}-shot prompt" if few else "base model",
                     "task": few.get("best_accuracy"), "ood": None, "general": general,
                     "forgetting": 0.0, "seconds": None})
    for name, run in trainings:
        rows.append({"model": name, "task": run["task"], "ood": run["ood"], "general": run["general"],
                     "forgetting": run["forgetting"], "seconds": run["train_seconds"],
                     "ship": run["ship"], "run_dir": run["run_dir"]})
    return rows


def _trainings(lab: Lab) -> list[tuple[str, dict[str, Any]]]:
    """The trainings the steps ran, named as the table names them, with their figures."""
    trainings = []
    if (trap := lab.result("trap")):
        trainings.append(("pad = EOS trap, forced (guarded)", trap["figures"]["forced"]))
    aggressive_name, recipe_name = lab.scale.names
    if (aggressive := lab.result("aggressive")):
        trainings += [(f"{aggressive_name}, guards off", aggressive["figures"]["naive"]),
                      (f"{aggressive_name}, guarded", aggressive["figures"]["guarded"])]
    if (recipe := lab.result("recipe")):
        trainings.append((f"{recipe_name}, guarded", recipe["figures"]["run"]))
    return trainings


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Returns the final table as Markdown."""
    lines = ["| model | task acc | OOD acc | general acc | forgetting | train time | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        seconds = f"{row['seconds']:.0f} s" if row.get("seconds") is not None else "-"
        verdict = "-" if "ship" not in row else ("ship" if row["ship"] else "do not ship")
        lines.append(f"| {row['model']} | {_pct(row['task'])} | {_pct(row['ood'])} | {_pct(row['general'])} | "
                     f"{_pct(row['forgetting'])} | {seconds} | {verdict} |")
    return "\n".join(lines) + "\n"


DESCRIPTIONS = {
    "base": "the lab base model and its general ability",
    "audit": "the domain data: a 200-row set, a flawed set, the clean set",
    "baseline": "how far prompting alone gets on the domain task",
    "trap": "the silent failure: pad = EOS with the pad labels masked",
    "aggressive": "naive full fine-tuning at lr 5e-4, unguarded and guarded",
    "recipe": "the lab's recipe under the default guards",
    "report": "the table and the HTML report",
}


def describe(lab: Lab, name: str) -> str:
    """What step ``name`` does, as the story prints it for the lab or a real model."""
    if lab.scale.model is None:
        return DESCRIPTIONS[name]
    aggressive, recipe = lab.scale.names
    return {"base": "the model's general ability per category, and the probes calibrated to it",
            "aggressive": f"naive {aggressive}, unguarded and guarded",
            "recipe": f"the {recipe} under the default guards"}.get(name, DESCRIPTIONS[name])


TRAININGS: dict[str, Callable[[Lab], list[Training]]] = {
    "trap": trap_trainings, "aggressive": aggressive_trainings, "recipe": recipe_trainings,
}
RUNNERS: dict[str, Callable[[Lab], StepResult]] = {
    "base": base_step, "audit": audit_step, "baseline": baseline_step, "trap": trap_step,
    "aggressive": aggressive_step, "recipe": recipe_step, "report": report_step,
}


# --- helpers --------------------------------------------------------------------------


def _recipe(lab: Lab) -> tuple[str, ...]:
    """The scale's recipe; for the lab, the setting of ``retain lab compare`` named ``RECIPE``."""
    if lab.scale.recipe is not None:
        return lab.scale.recipe
    from retain.lab.comparison import DEFAULT_RECIPES, RECIPE

    return next(item for item in DEFAULT_RECIPES if item.name == RECIPE).overrides


def _suites(config: RetainConfig) -> list:
    from retain.evaluation.commands import config_suites

    return config_suites(config)


def _run_figures(summary: RunSummary) -> dict[str, Any]:
    """The figures of a training the lab keeps: task, general, forgetting, guards, verdict."""
    return {
        "run_dir": summary.run_dir, "steps": summary.steps,
        "task": summary.task_accuracy(), "ood": summary.task_accuracy("ood"),
        "task_base": summary.base_task_accuracy(),
        "general": summary.final_probe_accuracy, "base_general": summary.base_probe_accuracy,
        "forgetting": summary.forgetting_relative,
        "stopped_by": summary.stopped_by, "restored_step": summary.restored_step,
        "guard_events": list(summary.guard_events),
        "train_seconds": summary.train_seconds,
        "ship": summary.verdict.ship, "reasons": list(summary.verdict.reasons),
        "categories": _category_drops(summary),
    }


def _category_drops(summary: RunSummary) -> dict[str, dict[str, float | None]]:
    """Returns per category the base and final accuracy of the watched probe suite."""
    out: dict[str, dict[str, float | None]] = {}
    for report in summary.forgetting.values():
        for name, category in (report.get("categories") or {}).items():
            if name != "overall":
                out[name] = {"base": category.get("accuracy_before"), "final": category.get("accuracy_after"),
                             "drop": category.get("relative_drop")}
    return out


def _categories_lost(summary: RunSummary) -> list[tuple[str, float]]:
    drops = [(name, values["drop"]) for name, values in _category_drops(summary).items()
             if values.get("drop") is not None]
    return sorted(drops, key=lambda item: -item[1])


def _restored(summary: RunSummary) -> str:
    step = summary.restored_step
    if step is None:
        return ""
    return ", rolled back to its starting weights" if step == 0 else f", restored step {step}"


def _go(audit: dict[str, Any]) -> str:
    return "blocked" if audit["blockers"] else "go"


def _first_sentence(message: str) -> str:
    """A guard's message up to its first sentence: what it saw and what that means,
    without the examples and the list of likely causes."""
    return message.split("; e.g.")[0].split(". ")[0]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
