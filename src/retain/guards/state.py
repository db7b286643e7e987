"""What the guards remember between checks, kept in every checkpoint for ``--resume``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.checkpoints import STATE_FILE, read_seal
from retain.errors import RunDirError
from retain.guards.rules import (
    Check,
    Decision,
)


@dataclass
class GuardState:
    """Everything the guards remember; saved into each checkpoint for ``--resume``."""

    checks: list[Check] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)
    best_step: int | None = None
    stopped_by: Decision | None = None
    restore: bool = False
    losses_since_check: list[float] = field(default_factory=list)
    recent_losses: list[float] = field(default_factory=list)  # the last LOSS_WINDOW, for the loss guard

    def to_dict(self) -> dict[str, Any]:
        return {
            "checks": [check.to_dict() for check in self.checks],
            "decisions": [decision.to_dict() for decision in self.decisions],
            "warned": sorted(self.warned),
            "best_step": self.best_step,
            "stopped_by": self.stopped_by.to_dict() if self.stopped_by else None,
            "restore": self.restore,
            "losses_since_check": self.losses_since_check,
            "recent_losses": self.recent_losses,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardState:
        stopped = data.get("stopped_by")
        return cls(
            checks=[Check.from_dict(item) for item in data.get("checks", [])],
            decisions=[Decision(**item) for item in data.get("decisions", [])],
            warned=set(data.get("warned", [])),
            best_step=data.get("best_step"),
            stopped_by=Decision(**stopped) if stopped else None,
            restore=data.get("restore", False),
            losses_since_check=list(data.get("losses_since_check", [])),
            recent_losses=list(data.get("recent_losses", [])),
        )

    def best(self) -> Check | None:
        """Returns the best check so far, if any."""
        return next((check for check in self.checks if check.step == self.best_step), None)


def read_guard_state(checkpoint: Path) -> GuardState | None:
    """Returns the guard state a checkpoint's seal keeps, or None if it keeps none."""
    data = read_seal(checkpoint)
    if data is None:
        return None
    try:
        return GuardState.from_dict(data)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # fields retain never wrote
        raise RunDirError(f"the guard state in {STATE_FILE} is not as retain wrote it ({type(error).__name__}: "
                          f"{str(error)[:120]})", file=checkpoint / STATE_FILE,
                          fix=f"delete {checkpoint.name} to resume from the checkpoint before it, or start the "
                          "run again") from None
