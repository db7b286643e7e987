"""``retain train --fail-on``: which judged outcomes of a finished run fail the command.

A run that finishes exits 0 whatever its verdict; ``--fail-on`` turns the outcomes a CI
pipeline must not let through into exit code 1 with one line saying why. The judgements
themselves are the run's own (``summary.json``): this module only reads them.

Light on purpose (no torch): the CLI imports it to list the choices in ``--help``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from retain.summary import RunSummary


class FailOn(str, Enum):
    """An outcome ``--fail-on`` can fail the command on.

    Attributes:
        NOT_SHIP: The verdict says not to ship (any of its reasons).
        FORGETTING: The final model forgets more than ``guards.forgetting.threshold``
            (relative, the guard's measure), or forgetting was not measured.
        GUARD_STOP: A guard stopped the run (whatever was restored after).
    """

    NOT_SHIP = "not-ship"
    FORGETTING = "forgetting"
    GUARD_STOP = "guard-stop"


def failures(summary: RunSummary, fail_on: Iterable[FailOn], forgetting_limit: float) -> list[str]:
    """Returns why the run fails each outcome of ``fail_on`` it meets, one clause each, in
    the order of ``fail_on``; empty when it meets none.

    Args:
        summary: The finished run's summary.
        fail_on: The outcomes that fail the command.
        forgetting_limit: The relative drop :attr:`FailOn.FORGETTING` allows
            (``guards.forgetting.threshold``), e.g. 0.03.
    """
    found = {FailOn.NOT_SHIP: _not_ship, FailOn.FORGETTING: lambda s: _forgetting(s, forgetting_limit),
             FailOn.GUARD_STOP: _guard_stop}
    clauses = (found[outcome](summary) for outcome in dict.fromkeys(fail_on))
    return [clause for clause in clauses if clause]


def _not_ship(summary: RunSummary) -> str | None:
    verdict = summary.verdict
    if verdict is None:
        return "not-ship: the run has no verdict (summary.json holds none)"
    if verdict.ship:
        return None
    return "not-ship: not safe to ship: " + ("; ".join(verdict.reasons) or "the verdict gives no reason")


def _forgetting(summary: RunSummary, limit: float) -> str | None:
    drop = summary.forgetting_relative
    if drop is None:
        return ("forgetting: forgetting was not measured (no probe suite was scored by "
                "guards.forgetting.method), so it cannot be shown to be within the limit")
    if drop <= limit:
        return None
    points = ("" if summary.base_probe_accuracy is None or summary.final_probe_accuracy is None else
              f" ({(summary.base_probe_accuracy - summary.final_probe_accuracy) * 100:+.1f} points of probe accuracy)")
    return f"forgetting: the final model forgets {drop:+.1%} relative{points}, over the limit of {limit:.1%}"


def _guard_stop(summary: RunSummary) -> str | None:
    stopped = summary.stopped_by
    if stopped is None:
        return None
    restored = summary.restored_step
    kept = ("no checkpoint was restored" if restored is None else
            "it was rolled back to its starting weights" if restored == 0 else
            f"the checkpoint of step {restored} was restored")
    return (f"guard-stop: the {stopped.get('guard', 'unnamed')} guard stopped the run at step "
            f"{stopped.get('step', '?')} ({stopped.get('message', 'no message')}); {kept}")
