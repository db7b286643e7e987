"""What the report says about one run: summary cards, tables, findings and sample answers.

Everything here is plain data (strings and numbers); :mod:`retain.report.html` and
:mod:`retain.report.markdown` only lay it out, and escape it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from retain.errors import RetainError
from retain.evaluation.suites import load_suite
from retain.report.views import (
    RunView,
    as_dict,
    as_number,
    dotted,
    forgetting_limit,
    peak,
    summary_of,
)
from retain.summary import RunSummary

SMOKE_LIMIT = 0.5  # guards.smoke.fail_share's default
SILENT_SHARE = 0.5  # a task split where this share of answers is no label at all is flagged
SAMPLES_PER_CATEGORY = 4
SAMPLES_MAX = 30


def pct(value: Any, digits: int = 1) -> str:
    """Returns ``0.938`` as ``93.8%``, and ``n/a`` for a missing value."""
    number = as_number(value)
    return "n/a" if number is None else f"{number:.{digits}%}"


def signed_pct(value: Any) -> str:
    """Returns ``0.048`` as ``+4.8%``, and ``n/a`` for a missing value."""
    number = as_number(value)
    return "n/a" if number is None else f"{number:+.1%}"


def num(value: Any, digits: int = 3) -> str:
    """Returns a number with ``digits`` significant digits, ``n/a`` if missing."""
    number = as_number(value)
    return "n/a" if number is None else f"{number:.{digits}g}"


@dataclass
class Card:
    """One summary card: a headline figure and the lines that qualify it.

    Attributes:
        title: What the card measures.
        value: The headline (``40.5%``, ``not safe to ship``).
        lines: Details under the headline.
        tone: ``good``, ``bad``, ``warn`` or ``neutral``: the card's colour.
    """

    title: str
    value: str
    lines: list[str] = field(default_factory=list)
    tone: str = "neutral"


def last_check(run: RunView) -> dict[str, Any]:
    """Returns the latest guard check, ``{}`` if none ran."""
    checks = run.checks
    return checks[-1] if checks else {}


def task_accuracy(run: RunView, split: str) -> float | None:
    """Returns the final accuracy on a task split (``eval`` or ``ood``), None if unmeasured."""
    return as_number(as_dict(as_dict(summary_of(run).task).get(split)).get("accuracy"))


def verdict(run: RunView) -> tuple[bool | None, list[str]]:
    """Returns ``(ship, reasons)``; ``ship`` is None when there is no verdict yet."""
    status = run.status
    if status == "refused":
        blockers = [f"{name}: {finding.get('title')}" for name, report in (("audit", run.audit), ("doctor", run.doctor))
                    for finding in findings(report) if finding.get("severity") == "blocker"]
        return False, ["refused before training"] + blockers
    judged = summary_of(run).verdict
    if judged is None:
        reason = "the run has not finished (no summary.json)" if status == "unfinished" else "no verdict recorded"
        return None, [reason]
    return judged.ship, list(judged.reasons)


def cards(run: RunView) -> list[Card]:
    """Returns the run's summary cards: task, general probes, drift, health, training, verdict."""
    summary = summary_of(run)
    base_task = as_dict(as_dict(run.base_eval).get("task")) if run.summary is not None else {}
    check = last_check(run)
    result = [_task_card(run, "eval", "Task accuracy, held-out", base_task, check),
              _task_card(run, "ood", "Task accuracy, out-of-distribution", base_task, {})]
    result.append(_probe_card(run, summary, check))
    result.append(_drift_card(run, summary, check))
    result.append(_health_card(run, summary, check))
    result.append(_training_card(run, summary))
    ship, reasons = verdict(run)
    value = {True: "safe to ship", False: "not safe to ship", None: "no verdict"}[ship]
    tone = {True: "good", False: "bad", None: "warn"}[ship]
    result.append(Card("Verdict", value, reasons or ["every check passed"], tone))
    return result


def _task_card(run: RunView, split: str, title: str, base_task: dict, check: dict) -> Card:
    after = task_accuracy(run, split)
    before = as_number(as_dict(base_task.get(split)).get("accuracy"))
    if after is None and as_number(check.get("task_accuracy")) is not None and split == "eval":
        return Card(title, pct(check["task_accuracy"]),
                    [f"at the last check (step {check.get('step')}), on validation rows"], "warn")
    lines = [f"before: {pct(before)}" if before is not None else "before: not measured in this run"]
    score = as_dict(as_dict(summary_of(run).task).get(split))
    if score:
        lines.append(f"{score.get('n', '?')} examples, no answer {pct(score.get('unparsed'))}")
    if before is not None and after is not None:
        lines.insert(0, f"change: {signed_pct(after - before)}")
    # Most answers unparsed is the silent failure: the model does not answer the task's way.
    silent = (as_number(score.get("unparsed")) or 0.0) >= SILENT_SHARE
    if silent:
        lines.append("most answers are not one of the task's labels: read the sample answers")
    return Card(title, pct(after), lines, "bad" if silent else "neutral")


def _probe_card(run: RunView, summary: RunSummary, check: dict) -> Card:
    limit = forgetting_limit(run)
    before, after = summary.base_probe_accuracy, summary.final_probe_accuracy
    drop = as_number(summary.forgetting_relative)
    lines = []
    if run.summary is None and check:
        after, drop = check.get("probe_accuracy"), as_number(check.get("forgetting"))
        lines.append(f"at the last check (step {check.get('step')})")
    lines.insert(0, f"before {pct(before)}, after {pct(after)}")
    if drop is None:
        return Card("General probes: forgetting", "n/a", lines + ["no base to compare with"])
    interval = overall_interval(run)
    lines.append(f"relative drop {signed_pct(drop)}" + (f" (95% CI {signed_pct(interval[0])} to "
                                                         f"{signed_pct(interval[1])})" if interval else ""))
    lines.append(f"limit {limit:.0%}")
    note = summary.rehearsal_note().strip(" ()")
    if note:  # rows were blended in: forgetting on the items they stated and on the rest
        lines.append(note)
    value, tone = signed_pct(drop), "bad" if drop > limit else "good"
    highest = peak(run, "forgetting")
    if run.summary is not None and highest is not None and highest[0] > max(drop, limit):
        # The final model is what a roll-back restored: the card says what training reached.
        value = f"{signed_pct(drop)} (peak {signed_pct(highest[0])})"
        lines.insert(0, f"peak {signed_pct(highest[0])} at step {highest[1]}, over the {limit:.0%} limit"
                     + (f"; the final model is the checkpoint of step {summary.restored_step}"
                        if summary.restored_step is not None else ""))
        tone = "bad" if drop > limit else "warn"
    return Card("General probes: forgetting", value, lines, tone)


def overall_interval(run: RunView) -> tuple[float, float] | None:
    """Returns the widest-dropping suite's 95% interval of the relative drop, if recorded."""
    worst = None
    for report in as_dict(summary_of(run).forgetting).values():
        overall = as_dict(as_dict(as_dict(report).get("categories")).get("overall"))
        drop, ci = as_number(overall.get("relative_drop")), overall.get("relative_drop_ci")
        if drop is not None and isinstance(ci, list) and len(ci) == 2 and (worst is None or drop > worst[0]):
            worst = (drop, (as_number(ci[0]), as_number(ci[1])))
    if worst is None or None in worst[1]:
        return None
    return worst[1]  # type: ignore[return-value]


def _drift_card(run: RunView, summary: RunSummary, check: dict) -> Card:
    drift = as_dict(summary.drift)
    kl, ratio = as_number(drift.get("kl")), perplexity_ratio(run)
    lines = []
    if run.summary is None and check:
        kl, ratio = as_number(check.get("kl")), as_number(check.get("perplexity_ratio"))
        lines.append(f"at the last check (step {check.get('step')})")
    if kl is None and ratio is None:
        return Card("Drift from the base", "n/a", lines + ["not measured"])
    lines.insert(0, f"perplexity ratio (tuned / base) {num(ratio)}")
    limit = as_number(dotted(run.config, "guards.drift.max_kl"))
    tone = "bad" if limit is not None and kl is not None and kl > limit else "neutral"
    return Card("Drift from the base", f"KL {num(kl)}", lines, tone)


def perplexity_ratio(run: RunView) -> float | None:
    """Returns final / base perplexity on the reference text, None if either is missing."""
    final = as_number(as_dict(summary_of(run).drift).get("perplexity"))
    base = as_number(as_dict(as_dict(run.base_eval).get("drift")).get("perplexity"))
    return final / base if final is not None and base else None


def _health_card(run: RunView, summary: RunSummary, check: dict) -> Card:
    smoke = as_dict(summary.smoke)
    smoke_share = as_number(smoke.get("failures"))
    lines = []
    if run.summary is None and check:
        smoke_share = as_number(check.get("smoke_fail_share"))
        lines.append(f"at the last check (step {check.get('step')})")
    for split, score in as_dict(summary.task).items():
        health = as_dict(as_dict(score).get("health"))
        if health:
            lines.append(f"task ({split}): {pct(health.get('failures'))} broken, "
                         f"{num(health.get('mean_new_tokens'))} new tokens on average")
    if smoke_share is None and not lines:
        return Card("Generation health", "n/a", ["not measured"])
    limit = as_number(dotted(run.config, "guards.smoke.fail_share")) or SMOKE_LIMIT
    task_broken = [as_number(as_dict(as_dict(score).get("health")).get("failures"))
                   for score in as_dict(summary.task).values()]
    bad = (smoke_share is not None and smoke_share >= limit) or any(
        share is not None and share >= limit for share in task_broken)
    tone = "bad" if bad else "good"
    if smoke_share is not None and run.summary is not None:
        lines.insert(0, "smoke prompts: the final model's answers" + (
            f" (the checkpoint of step {summary.restored_step})" if summary.restored_step is not None else ""))
        highest = peak(run, "smoke_fail_share")
        if highest is not None and highest[0] > smoke_share:  # what the checks saw before a roll-back
            lines.insert(1, f"at the checks: up to {pct(highest[0], 0)} broken (step {highest[1]})")
            tone = "bad" if bad else ("warn" if highest[0] >= limit else tone)
    return Card("Generation health", f"{pct(smoke_share, 0)} smoke answers broken", lines, tone)


def _training_card(run: RunView, summary: RunSummary) -> Card:
    status = run.status
    if run.kind == "eval":
        return Card("Evaluation", str(run.meta.get("model") or run.name),
                    [f"base: {run.meta.get('base') or 'none'}"])
    methods = summary.method or dotted(run.config, "method.use") or []
    lines = [f"method: {'+'.join(str(m) for m in methods) or 'n/a'}"]
    steps = summary.steps or max((int(r.get("step") or 0) for r in run.logs), default=0)
    lines.append(f"{steps} steps, {summary.checks if run.summary else len(run.checks)} checks"
                 + (f", {num(summary.seconds)} s" if summary.seconds is not None else ""))
    stopped = as_dict(summary.stopped_by)
    if stopped:
        lines.append(f"stopped by the {stopped.get('guard')} guard at step {stopped.get('step')}")
    if summary.restored_step is not None:
        lines.append(f"restored the checkpoint of step {summary.restored_step}")
    if status == "unfinished":
        lines.append("no summary.json: still running, or stopped before the end")
    tone = {"completed": "good", "stopped": "warn", "unfinished": "warn", "refused": "bad"}.get(status, "neutral")
    return Card("Training", status, lines, tone)


# --- tables ---------------------------------------------------------------------------------


def forgetting_rows(run: RunView) -> list[dict[str, Any]]:
    """Returns one row per suite and category: items, before, after, drops with intervals."""
    rows = []
    for suite, report in as_dict(summary_of(run).forgetting).items():
        report = as_dict(report)
        for category, values in as_dict(report.get("categories")).items():
            values = as_dict(values)
            ci = values.get("relative_drop_ci") if isinstance(values.get("relative_drop_ci"), list) else [None, None]
            rows.append({
                "suite": f"{suite} ({report.get('version', '?')})", "category": category,
                "n_items": values.get("items"), "before": pct(values.get("accuracy_before")),
                "after": pct(values.get("accuracy_after")),
                "relative_drop": signed_pct(values.get("relative_drop")),
                "interval": f"{signed_pct(ci[0])} to {signed_pct(ci[-1])}" if len(ci) == 2 else "n/a",
                "newly_wrong": values.get("newly_wrong"), "newly_right": values.get("newly_right"),
                "overall": category == "overall",
                "bad": (as_number(values.get("relative_drop")) or 0.0) > forgetting_limit(run),
            })
    return rows


def task_rows(run: RunView) -> list[dict[str, Any]]:
    """Returns one row per task split: accuracy, by log-likelihood, unparsed, what it predicts."""
    rows = []
    for split, score in as_dict(summary_of(run).task).items():
        score = as_dict(score)
        predicted = as_dict(score.get("predicted"))
        rows.append({
            "split": split, "n": score.get("n"), "accuracy": pct(score.get("accuracy")),
            "loglik_accuracy": pct(score.get("loglik_accuracy")), "unparsed": pct(score.get("unparsed")),
            "predicted": ", ".join(f"{label} {pct(share, 0)}" for label, share in predicted.items()),
            "broken": pct(as_dict(score.get("health")).get("failures")),
        })
    return rows


def brittleness_rows(run: RunView) -> list[dict[str, Any]]:
    """Returns the perturbation results of the final evaluation (reworded, reformatted inputs)."""
    rows = as_dict(run.final_eval).get("brittleness") or []
    return [{"name": row.get("name"), "n": row.get("n"), "original": pct(row.get("accuracy_original")),
             "perturbed": pct(row.get("accuracy_perturbed")), "drop": signed_pct(row.get("drop")),
             "flipped": pct(row.get("flipped"))} for row in map(as_dict, rows)]


def findings(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Returns the findings of an audit or doctor report, blockers first."""
    order = {"blocker": 0, "warning": 1, "info": 2}
    items = [as_dict(item) for item in as_dict(report).get("findings") or []]
    return sorted(items, key=lambda item: order.get(str(item.get("severity")), 3))


def guard_rows(run: RunView) -> list[dict[str, Any]]:
    """Returns the guard decisions that acted (triggered), in step order."""
    return [event for event in run.guard_events if event.get("triggered")]


# --- sample answers -----------------------------------------------------------------------


@dataclass
class ProbeSample:
    """One probe item answered before and after training."""

    suite: str
    category: str
    item: str
    prompt: str | None
    before: str | None
    before_correct: bool | None
    after: str | None
    after_correct: bool | None

    @property
    def change(self) -> str:
        if self.before_correct and self.after_correct is False:
            return "newly wrong"
        if self.before_correct is False and self.after_correct:
            return "newly right"
        return "same"


def probe_samples(run: RunView, limit: int = SAMPLES_MAX) -> list[ProbeSample]:
    """Returns probe answers before and after, newly wrong first, a few per category.

    The answers come from ``base_eval.json`` and ``final_eval.json`` (the ``generation``
    method's, where scored); the prompts from the suite itself, when it can be loaded at
    the version the run was scored on.
    """
    final = as_dict(as_dict(run.final_eval).get("probes"))
    base = as_dict(as_dict(run.base_eval).get("probes"))
    samples: list[ProbeSample] = []
    for suite, methods in final.items():
        methods = as_dict(methods)
        method = "generation" if "generation" in methods else next(iter(methods), None)
        if method is None:
            continue
        after = as_dict(methods[method])
        before_items = {item.get("id"): item for item in map(as_dict, as_dict(as_dict(base.get(suite)).get(method)).get("items") or [])}
        prompts = _suite_prompts(run, suite, str(after.get("version")))
        for item in map(as_dict, after.get("items") or []):
            old = before_items.get(item.get("id"), {})
            samples.append(ProbeSample(
                suite=suite, category=str(item.get("category")), item=str(item.get("id")),
                prompt=prompts.get(str(item.get("id"))),
                before=old.get("output"), before_correct=old.get("correct") if old else None,
                after=item.get("output"), after_correct=item.get("correct"),
            ))
    rank = {"newly wrong": 0, "newly right": 1, "same": 2}
    picked: list[ProbeSample] = []
    per_category: dict[tuple[str, str], int] = {}
    for sample in sorted(samples, key=lambda s: rank[s.change]):
        key = (sample.suite, sample.category)
        if per_category.get(key, 0) < SAMPLES_PER_CATEGORY and len(picked) < limit:
            picked.append(sample)
            per_category[key] = per_category.get(key, 0) + 1
    return picked


def _suite_prompts(run: RunView, suite: str, version: str) -> dict[str, str]:
    """Returns ``{item id: prompt}`` of the run's suite at ``version``; ``{}`` if unavailable."""
    names = [str(name) for name in dotted(run.config, "probes.suites") or []] + [suite]
    for name in names:
        prompts = _load_prompts(name)
        if prompts and prompts[0] == suite and prompts[1] == version:
            return prompts[2]
    return {}


@lru_cache(maxsize=16)
def _load_prompts(name: str) -> tuple[str, str, dict[str, str]] | None:
    try:
        loaded = load_suite(name)
    except (RetainError, OSError, ValueError):
        return None  # moved or unreadable: the report shows item ids instead
    return loaded.name, loaded.version, {item.id: item.prompt for item in loaded.items}


def broken_answers(run: RunView) -> list[dict[str, Any]]:
    """Returns the broken answers the run kept: at guard checks and in the final evaluation.

    Each is ``{where, prompt, answer, flags}``. Only broken answers are saved by training,
    so a healthy run has none.
    """
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for check in run.checks:
        for pair in check.get("smoke_examples") or []:
            if isinstance(pair, list) and len(pair) == 2:
                rows.append({"where": f"smoke test, step {check.get('step')}", "prompt": pair[0],
                             "answer": pair[1], "flags": ", ".join(as_dict(check.get("smoke_failures")))})
    summary = summary_of(run)
    sources = [("final smoke test", as_dict(summary.smoke))] + [
        (f"final task ({split})", as_dict(as_dict(score).get("health")))
        for split, score in as_dict(summary.task).items()]
    for where, health in sources:
        for examples in as_dict(health.get("examples")).values():
            for example in examples if isinstance(examples, list) else []:
                example = as_dict(example)
                key = (where, str(example.get("prompt")), str(example.get("text")))
                if key in seen:  # one answer is filed under each of its flags
                    continue
                seen.add(key)
                flags = example.get("flags")
                rows.append({"where": where, "prompt": example.get("prompt"), "answer": example.get("text"),
                             "flags": ", ".join(map(str, flags)) if isinstance(flags, list) else ""})
    return rows


@dataclass(frozen=True)
class TaskSample:
    """One task example answered by the base model and by the trained one."""

    split: str
    prompt: str
    expected: str
    before: str | None
    before_correct: bool | None
    after: str | None
    after_correct: bool | None


def task_samples(run: RunView) -> list[TaskSample]:
    """Returns the task examples each evaluation keeps (``samples``), paired by position:
    the same first examples of each split, answered before (``base_eval.json``) and after
    (``final_eval.json``)."""
    before_task = as_dict(as_dict(run.base_eval).get("task"))
    after_task = as_dict(as_dict(run.final_eval).get("task"))
    rows = []
    for split in sorted(set(before_task) | set(after_task)):
        before = [as_dict(item) for item in as_dict(before_task.get(split)).get("samples") or []]
        after = [as_dict(item) for item in as_dict(after_task.get(split)).get("samples") or []]
        for index in range(max(len(before), len(after))):
            old = before[index] if index < len(before) else {}
            new = after[index] if index < len(after) else {}
            base = new or old
            rows.append(TaskSample(
                split=split, prompt=str(base.get("prompt", "")), expected=str(base.get("expected", "")),
                before=old.get("answer"), before_correct=old.get("correct"),
                after=new.get("answer"), after_correct=new.get("correct"),
            ))
    return rows

