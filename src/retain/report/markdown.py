"""The Markdown summary: the cards, the tables and the findings, without plots.

Markdown passes raw HTML through to most renderers, so text from data is HTML-escaped
here too, and table cells lose their pipes and line breaks (:func:`retain.markdown.cell`).
"""

from __future__ import annotations

from typing import Any

from retain.markdown import cell
from retain.report.page import Page, RunSection, SweepSection


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(page: Page, html_name: str) -> str:
    """Returns the Markdown summary of ``page``; ``html_name`` is the report it points to."""
    lines = [f"# retain report: {cell(page.title)}", "",
             (f"Generated {page.generated} by retain {page.version}. Plots and sample answers: "
              f"[{cell(html_name)}]({cell(html_name)})."), ""]
    if page.comparison:
        lines += ["## Runs side by side", ""]
        if page.comparison.varying:
            lines += ["Settings that differ: " + ", ".join(cell(key) for key in page.comparison.varying), ""]
        lines += _table(
            ["run", "status", "method", "settings", "task", "task OOD", "general probes", "forgetting",
             "KL", "smoke broken", "verdict"],
            [[row.name, row.status, row.method, row.settings, row.task, row.ood, row.probes, row.forgetting,
              row.kl, row.smoke, _ship(row.ship, row.reasons)] for row in page.comparison.rows])
    for sweep in page.sweeps:
        lines += _sweep(sweep)
    for section in page.runs:
        lines += _run(section, "##")
    return "\n".join(lines).rstrip() + "\n"


def _ship(ship: bool | None, reasons: str) -> str:
    word = {True: "ship", False: "do not ship", None: "no verdict"}[ship]
    return f"{word}: {reasons}" if reasons else word


def _sweep(section: SweepSection) -> list[str]:
    sweep = section.sweep
    counts = ", ".join(f"{count} {state}" for state, count in section.counts.items())
    lines = [f"## {cell(sweep.kind.capitalize())}: {cell(sweep.name)}", "",
             (f"{len(section.trials)} trials ({cell(counts)}). Pareto front: no other trial has both "
              "higher task accuracy and less forgetting."), ""]
    header = ["#", "run", "state", *section.param_keys, "task", "task OOD", "general probes", "forgetting",
              "Pareto front", "seconds", "error"]
    lines += _table(header, [
        [t["number"], t["name"], t["state"], *t["params"], t["task"], t["ood"], t["general"], t["forgetting"],
         "yes" if t["front"] else "", t["seconds"], t["error"]] for t in section.trials])
    lines += [cell(section.picked_reason) + ".", ""]
    if section.picked:
        lines += _run(section.picked, "###")
    return lines


def _run(section: RunSection, level: str) -> list[str]:
    run = section.run
    lines = [f"{level} {'Run' if run.kind == 'run' else 'Evaluation'}: {cell(run.name)}", "",
             f"Status: **{cell(run.status)}**. Directory: {cell(run.path)}.", ""]
    lines += _table(["measure", "value", "details"],
                    [[card.title, card.value, "; ".join(card.lines)] for card in section.cards])
    if section.guards:
        lines += [f"{level}# Guard actions", ""]
        lines += _table(["step", "guard", "action", "message"],
                        [[e.get("step"), e.get("guard"), e.get("action"), e.get("message")] for e in section.guards])
    if section.forgetting:
        lines += [f"{level}# General probes per category", ""]
        lines += _table(["suite", "category", "items", "before", "after", "relative drop", "95% interval"],
                        [[r["suite"], r["category"], r["n_items"], r["before"], r["after"], r["relative_drop"],
                          r["interval"]] for r in section.forgetting])
    for name, items in (("Data audit", section.audit), ("Pipeline doctor", section.doctor)):
        if items:
            lines += [f"{level}# {name}", ""]
            lines += _table(["severity", "code", "finding", "fix"],
                            [[f.get("severity"), f.get("code"), f.get("title"), f.get("fix")] for f in items])
    return lines
