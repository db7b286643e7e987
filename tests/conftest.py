"""Shared fixtures: tiny models and an isolated lab cache, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.cache/retain."""
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "retain-cache"))


@pytest.fixture(scope="session")
def micro_base(tmp_path_factory: pytest.TempPathFactory):
    """The micro lab base model, built once for the whole session."""
    from retain.lab.base import build_base, lab_size

    cache = tmp_path_factory.mktemp("micro-cache")
    return build_base(lab_size("micro"), cache, progress=False), cache


@pytest.fixture(scope="session")
def micro_lab(micro_base, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The micro lab model and a small task of its world (64 training rows, 16 in each other
    split), with its own probe suite (``probes.jsonl``), built once for the whole session."""
    from retain.lab.export import export_lab_data

    base, _ = micro_base
    root = tmp_path_factory.mktemp("micro-lab-data")
    export_lab_data(root, size="micro", n_train=64, n_eval=16)
    return {"root": root, "model": base.path, "probes": root / "probes.jsonl", "train": root / "train.jsonl"}
