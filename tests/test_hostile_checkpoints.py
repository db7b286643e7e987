"""Checkpoints edited or damaged after retain sealed them: a same-size edit is caught by
the seal's hashes and refused (the checkpoint is kept, not deleted); a seal or guard state
that is not as retain wrote it is one error naming the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.checkpoints import STATE_FILE, checkpoint_problem, last_checkpoint, seal_checkpoint
from retain.errors import RunDirError
from retain.guards.state import GuardState, read_guard_state
from retain.rundir import RunDir


def _sealed(run: RunDir, step: int, guards: dict | None = None) -> Path:
    folder = run.checkpoints_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "adapter_model.safetensors").write_bytes(bytes(64))
    seal_checkpoint(folder, guards if guards is not None else GuardState(best_step=step).to_dict())
    return folder


def test_a_same_size_edit_is_refused_and_the_checkpoint_kept(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    first, second = _sealed(run, 2), _sealed(run, 4)
    (second / "trainer_state.json").write_text(json.dumps({"global_step": 5}))  # same size as 4
    assert "changed after the checkpoint was saved" in checkpoint_problem(second)
    with pytest.raises(RunDirError) as caught:
        last_checkpoint(run)
    assert caught.value.file == str(second) and second.is_dir() and first.is_dir()


@pytest.mark.parametrize("seal", [
    {"files": None, "guards": None},
    {"files": [1, 2], "guards": None},
    {"files": {"trainer_state.json": "big"}, "guards": None},
    {"files": {"../../etc/passwd": 10}, "guards": None},
    {"files": {}, "guards": "a string"},
    [1, 2, 3],
    "not json",
])
def test_a_seal_not_as_retain_wrote_it_is_named(tmp_path: Path, seal) -> None:
    run = RunDir(tmp_path)
    folder = _sealed(run, 2)
    (folder / STATE_FILE).write_text(seal if isinstance(seal, str) else json.dumps(seal))
    assert "not as retain wrote it" in checkpoint_problem(folder)
    with pytest.raises(RunDirError) as caught:
        last_checkpoint(run)
    assert caught.value.file == str(folder) and folder.is_dir()


@pytest.mark.parametrize("guards", [{"checks": "abc"}, {"warned": 5}, {"decisions": [{"unknown": 1}]},
                                    {"checks": [{"step": 1, "nonsense": True}]}])
def test_a_guard_state_retain_never_wrote_is_one_error(tmp_path: Path, guards: dict) -> None:
    folder = _sealed(RunDir(tmp_path), 2, guards)
    assert checkpoint_problem(folder) is None  # the files are whole; the state is what is wrong
    with pytest.raises(RunDirError) as caught:
        read_guard_state(folder)
    assert caught.value.file == str(folder / STATE_FILE)


def test_a_seal_of_sizes_only_from_before_the_hashes_still_reads(tmp_path: Path) -> None:
    folder = _sealed(RunDir(tmp_path), 2)
    seal = json.loads((folder / STATE_FILE).read_text())
    seal["files"] = {name: entry["bytes"] for name, entry in seal["files"].items()}
    (folder / STATE_FILE).write_text(json.dumps(seal))
    assert checkpoint_problem(folder) is None and read_guard_state(folder).best_step == 2
