"""What produced a run, for reproducing it: versions, git commits, threads, the
environment variables that change results (a run's meta.json)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import retain

# Libraries beside the model stack (``packages``) whose version can change a result:
# tokenisation, data loading, random numbers, the distributed runtime.
_DEPENDENCIES = ("accelerate", "tokenizers", "safetensors", "datasets", "numpy")

# Environment variables that change what a run computes. Only these are recorded: the
# environment also holds secrets (HF_TOKEN, cloud keys) that must never reach a run.
_REPRODUCIBILITY_ENV = (
    "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG", "WORLD_SIZE", "HF_HUB_OFFLINE",
)


def _package_version(name: str) -> str | None:
    """Returns the installed version of ``name``, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str] | None:
    """Runs ``git -C directory ...``; None where git is missing or hangs."""
    try:
        return subprocess.run(["git", "-C", str(directory), *arguments], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit(directory: Path) -> str | None:
    """Returns the commit checked out where ``directory`` is, or None if it is in no checkout
    (or, for retain's source, in a checkout that does not track it: a virtualenv inside
    someone's project)."""
    tracked = _git(directory, "ls-files", "--error-unmatch", "--", ".")
    result = _git(directory, "rev-parse", "HEAD")
    if tracked is None or result is None or tracked.returncode != 0 or result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _git_dirty(directory: Path) -> bool | None:
    """Returns whether tracked files under ``directory`` differ from the commit; None
    outside a checkout."""
    if _git_commit(directory) is None:
        return None
    result = _git(directory, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return None if result is None or result.returncode != 0 else bool(result.stdout.strip())


def _torch_threads() -> int | None:
    """Returns torch's intra-op thread count (float sums depend on it), if torch is loaded."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _deterministic_algorithms() -> bool | None:
    """Returns whether torch was told to use deterministic algorithms only, if torch is loaded."""
    torch = sys.modules.get("torch")
    return torch.are_deterministic_algorithms_enabled() if torch is not None else None


def provenance() -> dict[str, Any]:
    """Returns what produced a run, as ``meta.json`` records it (the run's start time and
    its own entries are added by :meth:`retain.rundir.RunDir.write_meta`)."""
    source = Path(retain.__file__).resolve().parent
    return {
        "retain_version": retain.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in ("torch", "transformers", "peft")},
        "dependencies": {name: _package_version(name) for name in _DEPENDENCIES},
        # retain's own source when it runs from a git checkout (None from a wheel), and
        # whether its tracked files differ from that commit.
        "git_commit": _git_commit(source),
        "git_dirty": _git_dirty(source),
        # The checkout retain was run from (the user's project), if it is one.
        "project_git_commit": _git_commit(Path.cwd()),
        "command": list(sys.argv),
        "torch_threads": _torch_threads(),
        "deterministic_algorithms": _deterministic_algorithms(),
        "environment": {name: os.environ[name] for name in _REPRODUCIBILITY_ENV if name in os.environ},
    }
