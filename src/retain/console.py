"""What the command line prints: rich tables of findings, evaluations and accuracies on
stdout, and one line per error on stderr."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from retain.errors import ConfigError
from retain.io import atomic_write_text, folder_problem, output_problem

# Exit codes, one scheme for every command (README.md lists them).
CHECK_FAILED = 1  # a check the user asked for failed: --fail-on, --max-forgetting, --strict warnings
USER_ERROR = 2  # a user mistake or a refusal: bad config, option or input, blockers, no base to compare with
INTERRUPTED = 130  # the exit code of Ctrl-C (typer turns KeyboardInterrupt into it)

# Control characters other than newline and tab: an ESC in a label could hide the rest of
# the output (a blocker verdict included), a carriage return overwrite it.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Returns ``text`` with every control character spelled out (``\\x1b``)."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class _PlainConsole(Console):
    """A rich console that never reads markup in text and shows control characters as
    escapes: much of what retain prints comes from the user's data (labels, categories,
    file names). Styles are given as Text objects, never inside strings."""

    def render_str(self, text: str, **kwargs) -> Text:  # type: ignore[override]
        return super().render_str(visible(text), **kwargs)


console = _PlainConsole(markup=False)
errors = _PlainConsole(stderr=True, markup=False)

STDOUT = "-"  # an output path that means standard output

# Global options of this invocation, set by the root callback before any command runs.
STATE: dict[str, bool] = {"quiet": False}


def output_file(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Refuses an output file that cannot be written, before the command does any work;
    ``-`` is standard output (the tables then go to standard error)."""
    if value is None:
        return value
    if str(value) == STDOUT:
        console.file = sys.stderr  # stdout carries the file alone
        return value
    option = param.opts[0] if param.opts else param.name
    problem = output_problem(value)
    if problem is not None:
        raise ConfigError(problem, file=option,
                          fix="give the path of a regular file in a writable folder, or - for standard output")
    return value


def output_folder(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Refuses an output folder that cannot be created or written, before the command does
    any work."""
    problem = None if value is None else folder_problem(value)
    if problem is not None:
        raise ConfigError(problem, file=param.opts[0] if param.opts else param.name,
                          fix="give a folder you can write to (it is created if absent)")
    return value


def share_option(param: typer.CallbackParam, value: str | None) -> float | None:
    """Reads a share of accuracy written as a percentage (``3%``) or a fraction (``0.03``).

    Raises:
        ConfigError: The value is not a number, not finite, negative, or 1 (100%) or more
            (``3`` alone is refused: it reads as 300%).
    """
    if value is None:
        return None
    text = value.strip()
    number = text[:-1].strip() if text.endswith("%") else text
    try:
        share = float(number) / (100 if text.endswith("%") else 1)
    except ValueError:
        share = None
    if share is None or not 0 <= share < 1:  # NaN fails the comparison too
        raise ConfigError(f"{value!r} is not a share of accuracy below 100%",
                          file=param.opts[0] if param.opts else param.name,
                          fix="write a percentage or a fraction, e.g. 3% or 0.03")
    return share


def report_file(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """As :func:`output_file`, for an output with files beside it (no standard output)."""
    if value is not None and str(value) == STDOUT:
        option = param.opts[0] if param.opts else param.name
        raise ConfigError("the report is a file with another beside it, not standard output", file=option,
                          fix="give the path of the HTML file to write")
    return output_file(param, value)


def write_output(path: Path, text: str) -> None:
    """Writes an output file atomically, or ``text`` to standard output for ``-``."""
    if str(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(path, text)
    console.print(f"wrote {path}", markup=False, highlight=False)


def print_findings(title: str, report, strict: bool) -> int:
    """Prints a report's findings as a table with examples and returns its exit code."""
    table = Table(title=title)
    for column in ("severity", "finding", "count", "fix"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for finding in report.findings:
        style = {"blocker": "bold red", "warning": "yellow"}.get(finding.severity)
        table.add_row(finding.severity, finding.title, f"{finding.count:,}", finding.fix, style=style)
    console.print(table)
    for finding in report.findings:
        for example in finding.examples[:3]:
            console.print(f"  {finding.code} line {example.get('line')}: {str(example.get('text', ''))[:100]!r}",
                          markup=False, highlight=False)
    counts = ", ".join(f"{report.count(s)} {s}s" for s in ("blocker", "warning", "info"))
    code = report.exit_code(strict)
    console.print(f"{counts}: {('go', 'warnings (--strict)', 'stop: fix the blockers first')[code]}")
    return code


# --- train ----------------------------------------------------------------------------

def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_eval(outcome) -> None:
    result = outcome.result
    for calibration in outcome.calibrations:
        console.print(calibration.summary(), markup=False, highlight=False, soft_wrap=True)
    for suite, methods in result.probes.items():
        table = Table(title=f"probes: {suite} (version {next(iter(methods.values())).version})")
        table.add_column("category")
        table.add_column("items", justify="right")
        for method in methods:
            table.add_column(method, justify="right")
        reports = outcome.forgetting.get(suite, {})
        if reports:
            table.add_column("forgetting, relative (points) (generation)" if "generation" in reports
                             else "forgetting, relative (points)", justify="right")
        first = next(iter(methods.values()))
        rows = [*first.counts, "overall"]
        for category in rows:
            count = sum(first.counts.values()) if category == "overall" else first.counts[category]
            cells = [percent(score.accuracy.get(category)) for score in methods.values()]
            if reports:
                report = reports.get("generation") or next(iter(reports.values()))
                figure = report.categories.get(category)
                cells.append("-" if figure is None else forgetting_cell(figure))
            table.add_row(category, str(count), *cells, style="bold" if category == "overall" else None)
        console.print(table)
    if outcome.base_source:
        console.print(f"forgetting, relative = the drop from the base's accuracy ({outcome.base_source}) as a "
                      "share of it, as retain train and its guard measure it; points = the drop in accuracy "
                      "points, its 95% bootstrap interval in brackets; positive means forgotten",
                      markup=False, highlight=False, soft_wrap=True)
    if result.task:
        table = Table(title="task")
        for column in ("split", "n", "accuracy", "by log-likelihood", "exact match", "no answer", "predicted", "health failures"):
            table.add_column(column, justify="left" if column in ("split", "predicted") else "right")
        for score in result.task.values():
            predicted = ", ".join(f"{label} {share:.0%}" for label, share in score.predicted.items())
            table.add_row(score.name, str(score.n), f"{score.accuracy:.1%}", percent(score.loglik_accuracy),
                          f"{score.exact_match:.1%}", percent(score.unparsed), predicted or "-",
                          percent(score.health.failures if score.health else None))
        console.print(table)
    if result.brittleness:
        table = Table(title="brittleness: the eval set perturbed")
        for column in ("perturbation", "n", "accuracy before", "after", "answers changed"):
            table.add_column(column, justify="left" if column == "perturbation" else "right")
        for entry in result.brittleness:
            table.add_row(entry.name, str(entry.n), f"{entry.accuracy_original:.1%}",
                          f"{entry.accuracy_perturbed:.1%}", f"{entry.flipped:.1%}")
        console.print(table)
    if result.drift:
        kl = "-" if result.drift.kl is None else f"{result.drift.kl:.4f} nats/token (top-{result.drift.k} + rest)"
        console.print(f"drift on the reference text ({result.drift.tokens:,} tokens): perplexity "
                      f"{result.drift.perplexity:.2f}, KL(base || model) {kl}")
    if result.smoke:
        smoke = result.smoke
        console.print(f"smoke test ({smoke.n} prompts): {smoke.failures:.0%} broken "
                      f"(empty {smoke.empty:.0%}, whitespace {smoke.whitespace_only:.0%}, echo {smoke.echo:.0%}, "
                      f"loop {smoke.loop:.0%}), no EOS {smoke.no_eos:.0%}, mean {smoke.mean_new_tokens:.1f} new tokens")
    console.print(f"evaluated in {result.seconds:.1f} s")


def forgetting_cell(figure) -> str:
    """Returns one category's forgetting as retain says it everywhere: relative first, the
    drop in points beside it with its interval (``+44.0% (+19.6 pts [+12.1, +27.0])``)."""
    low, high = figure.absolute_drop_ci
    relative = "n/a" if figure.relative_drop is None else f"{figure.relative_drop:+.1%}"
    return f"{relative} ({figure.absolute_drop * 100:+.1f} pts [{low * 100:+.1f}, {high * 100:+.1f}])"


# --- lab ------------------------------------------------------------------------------

def print_accuracy(title: str, accuracy: dict[str, float], counts: dict[str, int]) -> None:
    console.print(title)
    table = Table()
    table.add_column("category")
    table.add_column("items", justify="right")
    table.add_column("accuracy", justify="right")
    for name, value in accuracy.items():
        if name != "overall":
            table.add_row(name, str(counts.get(name, "")), f"{value:.1%}")
    table.add_row("overall", str(sum(counts.values())), f"{accuracy['overall']:.1%}", style="bold")
    console.print(table)


def table_of_markdown(markdown: str, title: str | None = None) -> Table:
    """Returns a Markdown table (a header row, its rule, then rows of ``|`` cells) as a rich
    table, so that a narrow terminal wraps text inside its cells instead of breaking the
    rows mid-cell; the Markdown stays what files and the docs get."""
    rows = [[visible(cell.strip().replace("\\|", "|")) for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            for line in markdown.strip().splitlines() if line.strip().startswith("|")]
    header, body = rows[0], [row for row in rows[1:] if not all(set(cell) <= set("-: ") for cell in row)]
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for index, name in enumerate(header):
        # a column as wide as its longest word (up to 20 characters): a narrow terminal wraps
        # at spaces, and folds inside a word only when even that does not fit
        longest = max((len(word) for row in [header, *body] for word in row[index].split()), default=1)
        table.add_column(name, overflow="fold", min_width=min(longest, 20))
    for row in body:
        table.add_row(*row)
    return table
