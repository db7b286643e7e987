"""Environment values that used to validate and then crash or mislead: a WORLD_SIZE that is
not a number, a cache directory that is a file, a run name longer than a file name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retain.errors import ConfigError, RunDirError
from retain.paths import cache_dir, process_count
from retain.rundir import MAX_RUN_NAME, RunDir


@pytest.mark.parametrize("value", ["two", "-1", "0", "1.5"])
def test_a_world_size_that_is_no_count_of_processes_is_one_error(monkeypatch, value: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(ConfigError) as caught:
        process_count()
    assert caught.value.file == "WORLD_SIZE" and value in caught.value.message


def test_the_world_size_counts_processes(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_count() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert process_count() == 4


def test_retain_train_says_so_before_it_makes_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "q?", "response": "a"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train: {tmp_path / 'train.jsonl'}\noutput:\n  dir: {tmp_path / 'runs'}\n")
    result = subprocess.run([sys.executable, "-m", "retain.cli", "train", str(config)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "WORLD_SIZE": "two"})
    assert result.returncode == 2 and "WORLD_SIZE" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_cache_directory_that_is_a_file_is_one_error(monkeypatch, tmp_path: Path) -> None:
    file = tmp_path / "cache"
    file.write_text("not a folder")
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(file))
    with pytest.raises(ConfigError) as caught:
        cache_dir()
    assert caught.value.file == "RETAIN_CACHE_DIR"
    monkeypatch.setenv("RETAIN_CACHE_DIR", "~/elsewhere")
    assert cache_dir() == Path.home() / "elsewhere"


def test_a_run_name_longer_than_a_file_name_allows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError) as caught:
        RunDir.create(tmp_path, "r" * 256)
    assert caught.value.field == "output.name" and not any(tmp_path.iterdir())
    RunDir.create(tmp_path, "r" * MAX_RUN_NAME).release()


def test_a_seed_numpy_cannot_take_is_refused_when_the_config_is_read() -> None:
    from retain.config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"train.seed={2**32}"])
    assert caught.value.field == "train.seed"
    assert load_config(None, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1


def test_a_resume_under_another_thread_count_is_warned_about(tmp_path: Path) -> None:
    import json

    import torch

    from retain.training.resume import same_threads_note

    run = RunDir(tmp_path)
    run.meta_path.write_text(json.dumps({"torch_threads": torch.get_num_threads() + 1}))
    note = same_threads_note(run)
    assert note and f"OMP_NUM_THREADS={torch.get_num_threads() + 1}" in note
    run.meta_path.write_text(json.dumps({"torch_threads": torch.get_num_threads()}))
    assert same_threads_note(run) is None
    run.meta_path.write_text("damaged")
    assert same_threads_note(run) is None  # nothing recorded to compare with
