"""What an audit check reports: a finding with a severity, a count, examples and a fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["blocker", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("blocker", "warning", "info")
MAX_EXAMPLES = 5
EXCERPT_CHARS = 160  # characters of a row shown in a finding's example


@dataclass(frozen=True)
class Finding:
    """One problem (or fact) the audit found in the data.

    Attributes:
        code: Stable machine name, e.g. ``near_duplicates``.
        severity: ``blocker`` (training should not go ahead), ``warning`` or ``info``.
        title: One line saying what was found, with its numbers.
        count: How many rows (or clusters, as the title says) are affected.
        fix: What to do about it, concretely.
        examples: Up to :data:`MAX_EXAMPLES` illustrations, each a dict with at least
            ``line`` (1-based line or row number in its file) and ``text``.
        details: The numbers behind the finding (thresholds, shares, cluster sizes).
    """

    code: str
    severity: Severity
    title: str
    count: int
    fix: str
    examples: tuple[dict[str, Any], ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns the finding as JSON-ready data."""
        data = asdict(self)
        data["examples"] = list(self.examples)
        return data


def excerpt(text: object) -> str:
    """Returns a row's text for a finding's example: on one line, cut to
    :data:`EXCERPT_CHARS` characters (None reads as empty)."""
    flat = " ".join(("" if text is None else str(text)).split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 3] + "..."


class Verdict:
    """Counting and exit codes for a report that holds ``findings``."""

    findings: list[Finding]

    def count(self, severity: str) -> int:
        """Returns the number of findings of ``severity``."""
        return sum(finding.severity == severity for finding in self.findings)

    def counts(self) -> dict[str, int]:
        """Returns the number of findings of each severity."""
        return {severity: self.count(severity) for severity in SEVERITIES}

    def exit_code(self, strict: bool = False) -> int:
        """0 go, 1 warnings under ``strict``, 2 blockers."""
        if self.count("blocker"):
            return 2
        return 1 if strict and self.count("warning") else 0
