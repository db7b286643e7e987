"""Where retain keeps what it can rebuild (one cache directory for the whole machine), and
how many processes share a run."""

from __future__ import annotations

import os
from pathlib import Path

from retain.errors import ConfigError

CACHE_ENV = "RETAIN_CACHE_DIR"


def cache_dir() -> Path:
    """Returns ``$RETAIN_CACHE_DIR`` or ``~/.cache/retain``: built models, base evaluations,
    EWC's Fisher and other measurements cached per model."""
    configured = os.environ.get(CACHE_ENV)
    path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "retain"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder for retain's cache", file=CACHE_ENV if configured else None,
                          fix=f"set {CACHE_ENV} to a folder (it is created if missing), or move the file")
    return path


def process_count() -> int:
    """Returns ``$WORLD_SIZE``, the processes ``accelerate launch`` started (1 without it).

    Raises:
        ConfigError: It is set to something other than a whole number of at least 1.
    """
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"WORLD_SIZE={text[:40]} is not a number of processes", file="WORLD_SIZE",
                          fix="unset it for one process, or start several with accelerate launch")
    return int(text)
