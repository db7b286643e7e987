"""Builds the report files from paths: read, assemble, render, write."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retain.errors import RetainError
from retain.io import atomic_write_text
from retain.report.html import render_html
from retain.report.markdown import render_markdown
from retain.report.page import assemble
from retain.report.sources import read_source
from retain.report.views import RunView, SweepView

DEFAULT_NAME = "retain-report.html"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote.

    Attributes:
        html: The self-contained HTML report.
        markdown: The Markdown summary beside it.
        runs: How many runs it shows in full (sweep trials not counted).
        sweeps: How many sweeps or comparisons it shows.
    """

    html: Path
    markdown: Path
    runs: int
    sweeps: int


def default_output(paths: Sequence[Path]) -> Path:
    """Returns where the HTML goes without ``--out``: inside a single run or sweep
    directory, else ``./retain-report.html``."""
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0] / "report.html"
    return Path(DEFAULT_NAME)


def build_report(paths: Sequence[str | Path], out: str | Path | None = None) -> ReportFiles:
    """Writes the HTML report of ``paths`` and its Markdown summary (same name, ``.md``).

    Args:
        paths: Run directories, sweep directories, ``retain lab compare`` folders or
            ``retain eval --json`` files, in the order the report shows them.
        out: The HTML file to write; default :func:`default_output`.

    Returns:
        The files written.

    Raises:
        RetainError: No path given, a path is none of the above, a file in it is
            corrupt, or the report cannot be written.
    """
    if not paths:
        raise RetainError("no run or sweep to report on", fix="give one or more run or sweep directories")
    paths = [Path(path) for path in paths]
    sources = [read_source(path) for path in paths]
    runs = [source for source in sources if isinstance(source, RunView)]
    sweeps = [source for source in sources if isinstance(source, SweepView)]
    html_path = Path(out) if out is not None else default_output(paths)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise RetainError(f"{html_path} does not end in .html", field="--out",
                          fix="name the report FILE.html; the Markdown summary is written beside it as FILE.md")
    markdown_path = html_path.with_suffix(".md")
    page = assemble(runs, sweeps, [str(path) for path in paths])
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(html_path, render_html(page))
        atomic_write_text(markdown_path, render_markdown(page, html_path.name))
    except OSError as error:
        raise RetainError(f"cannot write the report: {error.strerror or error}", file=html_path,
                          fix="choose a writable --out path") from None
    return ReportFiles(html=html_path, markdown=markdown_path, runs=len(runs), sweeps=len(sweeps))
