"""Where retain keeps what it can rebuild: one cache directory for the whole machine."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RETAIN_CACHE_DIR"


def cache_dir() -> Path:
    """Returns ``$RETAIN_CACHE_DIR`` or ``~/.cache/retain``: built models, base evaluations,
    EWC's Fisher and other measurements cached per model."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "retain"
