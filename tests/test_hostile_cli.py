"""Hostile and damaged input through the real CLI, by the classes of issue 24.

Each case is a file, a path, a model directory or an environment that a new tester
found retain mishandling (a traceback, a destroyed file, a run directory left behind):
output paths that are not files, YAML that expands, numbers and nesting past what a
reader can hold, damaged model files, and environment values that validate and then
crash. Every case must end as a user error does (:mod:`test_bad_inputs`): exit code 2,
one ``error:`` line naming what the case names, no traceback, nothing written, and
whatever stood at the case's paths untouched. Each case failed on the code before issue 24
(commit 71d9a5d: a traceback, a wrong exit code, a file replaced, memory exhausted by an
alias bomb, or an evaluation started on data that should have been refused); cases that
already passed there live in ``test_bad_inputs.py``.

What cannot be a single command (two processes, signals, a resumed training, an edited
checkpoint, terminal and Markdown escaping) is tested in the other ``test_hostile_*``
files; ``benchmarks/reliability_hostile.py`` counts both by class for docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_bad_inputs import Case, Outcome, run_case
from test_hostile_models import GOOD_HEADER as _GOOD_HEADER
from test_hostile_models import _safetensors
from test_hostile_yaml import LAUGHS as _LAUGHS

CLASSES = ("output paths", "expanding YAML", "numbers and nesting", "model directories",
           "environment and values")

_ROW = '{"prompt": "Is the sky blue?", "response": "yes"}\n'
_DATA = {"train.jsonl": _ROW * 20}
_AUDIT_JSON = "audit train.jsonl --allow-small-data --json"
_TASK = "eval lab --suite general --no-drift --task"
_DEEP = "[" * 100_000 + "]" * 100_000
_RUN = {"run/config.yaml": "train:\n  lr: 1.0e-4\n", "run/summary.json": '{"status": "done"}\n',
        "run/metrics.jsonl": '{"step": 1}\n'}


def _model_config(model: str) -> dict[str, str]:
    """A config training ``model`` on the case's data, with its runs inside the case."""
    return {"c.yaml": f"model:\n  name_or_path: {model}\ndata:\n  train: train.jsonl\noutput:\n  dir: runs\n",
            **_DATA}


def _parquet_past_9999() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["a?", "b?"], "response": ["x", "y"],
                      "when": pa.array([0, 300_000_000_000_000_000], type=pa.timestamp("us"))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _fifo(directory: Path) -> None:
    os.mkfifo(directory / "fifo")


def _symlink(directory: Path) -> None:
    (directory / "kept.json").write_text("keep me\n")
    (directory / "link.json").symlink_to(directory / "kept.json")


@dataclass(frozen=True)
class Hostile:
    """One hostile input: a :class:`Case` of one of :data:`CLASSES`, with what a file
    list cannot hold (a FIFO, a symlink) made by ``make``, and environment variables."""

    kind: str
    case: Case
    env: dict[str, str] = field(default_factory=dict)
    make: Callable[[Path], None] | None = None


def _h(kind: str, name: str, args: str, files: dict[str, str | bytes] | None = None, *expect: str,
       env: dict[str, str] | None = None, make: Callable[[Path], None] | None = None) -> Hostile:
    assert kind in CLASSES, kind
    return Hostile(kind, Case(kind, name, args, dict(files or {}), tuple(expect)), dict(env or {}), make)


CASES: list[Hostile] = [
    # --- 1. output paths: never replaced unless a regular file; checked before the work --
    _h("output paths", "json_onto_a_fifo", f"{_AUDIT_JSON} fifo", _DATA, "fifo", "FIFO", make=_fifo),
    _h("output paths", "json_onto_a_symlink", f"{_AUDIT_JSON} link.json", _DATA, "link.json", "symbolic link",
       make=_symlink),
    _h("output paths", "json_onto_a_device", f"{_AUDIT_JSON} {os.devnull}", _DATA, os.devnull, "device"),
    _h("output paths", "reference_onto_a_fifo", "config reference --write fifo", {}, "fifo", make=_fifo),
    _h("output paths", "lab_data_over_edited_files", "lab data d", {"d/config.yaml": "edited: true\n"},
       "--overwrite"),
    # --- 2. YAML that expands ------------------------------------------------------------
    _h("expanding YAML", "config_alias_bomb", "config show c.yaml", {"c.yaml": _LAUGHS}, "c.yaml:", "1,000,000"),
    _h("expanding YAML", "config_alias_of_itself", "config show c.yaml", {"c.yaml": "a: &x [1, *x]\n"},
       "c.yaml:1", "contains itself"),
    _h("expanding YAML", "sweep_alias_bomb", "sweep s.yaml", {"s.yaml": _LAUGHS}, "s.yaml:", "1,000,000"),
    _h("expanding YAML", "suite_alias_bomb", "eval lab --no-drift --suite s.yaml", {"s.yaml": _LAUGHS},
       "s.yaml", "1,000,000"),
    _h("expanding YAML", "run_config_alias_bomb", "report run --out r.html", {**_RUN, "run/config.yaml": _LAUGHS},
       "config.yaml", "1,000,000"),
    _h("expanding YAML", "learning_rate_yes", "config show c.yaml", {"c.yaml": "train:\n  lr: yes\n"},
       "c.yaml:2", "train.lr"),
    # --- 3. numbers and nesting outside the fuzzed readers -------------------------------
    _h("numbers and nesting", "config_integer_of_5000_digits", "config show c.yaml",
       {"c.yaml": "train:\n  seed: " + "9" * 5000 + "\n"}, "c.yaml:2", "digits"),
    _h("numbers and nesting", "override_integer_of_5000_digits", "config show --set train.seed=" + "9" * 5000, {},
       "train.seed"),
    _h("numbers and nesting", "seed_of_2_to_the_32", f"config show --set train.seed={2**32}", {}, "train.seed"),
    _h("numbers and nesting", "summary_nested_too_deeply", "report run --out r.html",
       {**_RUN, "run/summary.json": _DEEP}, "summary.json", "nested too deeply"),
    _h("numbers and nesting", "metrics_nested_too_deeply", "report run --out r.html",
       {**_RUN, "run/metrics.jsonl": '{"step": 1}\n' + _DEEP + '\n{"step": 2}\n'}, "metrics.jsonl:2"),
    _h("numbers and nesting", "parquet_timestamp_past_9999", f"{_TASK} d.parquet",
       {"d.parquet": _parquet_past_9999()}, "d.parquet:2", "when"),
    _h("numbers and nesting", "dev_zero_as_data", f"{_TASK} /dev/zero", {}, "/dev/zero", "device"),
    _h("numbers and nesting", "jsonl_key_twice", f"{_TASK} d.jsonl",
       {"d.jsonl": '{"prompt": "a?", "prompt": "b?", "response": "c"}\n'}, "d.jsonl:1", "twice"),
    _h("numbers and nesting", "csv_column_twice", f"{_TASK} d.csv", {"d.csv": "prompt,response,prompt\na,b,c\n"},
       "d.csv:1", "twice"),
    # --- 4. model directories: the file named, before a run directory exists --------------
    _h("model directories", "tokenizer_json_not_json", "eval m --suite general --no-drift",
       {"m/config.json": "{}", "m/tokenizer.json": "not json"}, "m/tokenizer.json"),
    _h("model directories", "tokenizer_json_a_list", "eval m --suite general --no-drift",
       {"m/config.json": "{}", "m/tokenizer.json": "[1, 2]"}, "m/tokenizer.json", "not a JSON object"),
    _h("model directories", "tokenizer_json_without_a_model", "eval m --suite general --no-drift",
       {"m/config.json": "{}", "m/tokenizer.json": '{"version": "1.0"}'}, "m/tokenizer.json", "model"),
    _h("model directories", "adapter_config_not_json", "eval m --suite general --no-drift",
       {"m/adapter_config.json": "not json"}, "m/adapter_config.json"),
    _h("model directories", "adapter_based_on_itself", "eval m --suite general --no-drift",
       {"m/adapter_config.json": '{"base_model_name_or_path": "m"}'}, "base_model_name_or_path", "itself"),
    _h("model directories", "safetensors_header_of_petabytes", "train c.yaml",
       {**_model_config("m"), "m/config.json": "{}", "m/model.safetensors": _safetensors(_GOOD_HEADER, claimed=2**60)},
       "m/model.safetensors", "header claims"),
    _h("model directories", "safetensors_shorter_than_its_length", "train c.yaml",
       {**_model_config("m"), "m/config.json": "{}", "m/model.safetensors": b"\x01\x02"},
       "m/model.safetensors", "too short"),
    _h("model directories", "index_without_weight_map", "train c.yaml",
       {**_model_config("m"), "m/config.json": "{}", "m/model.safetensors.index.json": '{"metadata": {}}'},
       "model.safetensors.index.json", "weight_map"),
    _h("model directories", "model_shipping_code", "eval m --suite general --no-drift",
       {"m/config.json": json.dumps({"model_type": "custom-arch",
                                     "auto_map": {"AutoConfig": "configuration_x.XConfig"}}),
        "m/configuration_x.py": "raise SystemExit('remote code ran')\n"}, "model.trust_remote_code"),
    # --- 10. environment and values that validate and then crash or mislead ---------------
    _h("environment and values", "world_size_two", "train c.yaml", _model_config("m"), "WORLD_SIZE", "two",
       env={"WORLD_SIZE": "two"}),
    _h("environment and values", "cache_dir_a_file", "eval lab --suite general --no-drift",
       {"cache": "a file"}, "RETAIN_CACHE_DIR", env={"RETAIN_CACHE_DIR": "cache"}),
    _h("environment and values", "run_name_of_256_characters", "train c.yaml --name " + "r" * 256,
       _model_config("m"), "output.name"),
    _h("environment and values", "learning_rate_yes_as_override", "config show --set train.lr=yes", {},
       "train.lr"),
]


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _untouched(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """What stands at each path of the case before the command: kind, inode and, for a
    regular file, its bytes (a FIFO is never opened)."""
    kept = {}
    for path in directory.rglob("*"):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        kept[str(path.relative_to(directory))] = (info.st_mode, info.st_ino, content)
    return kept


def run_hostile(hostile: Hostile, directory: Path) -> tuple[Outcome, list[str]]:
    """Runs one case in ``directory``; returns the outcome and the paths it changed."""
    directory.mkdir(parents=True, exist_ok=True)
    if hostile.make is not None:
        hostile.make(directory)
    for name, content in hostile.case.files.items():  # written here too, to record them first
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    before = _untouched(directory)
    env = {name: str(directory / value) if name == "RETAIN_CACHE_DIR" else value
           for name, value in hostile.env.items()}
    with _environment(env):
        outcome = run_case(Case(hostile.kind, hostile.case.name, hostile.case.args, {}, hostile.case.expect),
                           directory)
    after = _untouched(directory)
    changed = sorted(name for name, state in before.items() if after.get(name) != state)
    return outcome, changed


def problems(hostile: Hostile, directory: Path) -> list[str]:
    """Returns what is wrong with how the CLI handled ``hostile`` (empty: all good)."""
    outcome, changed = run_hostile(hostile, directory)
    found = outcome.problems(hostile.case)
    if changed:
        found.append(f"changed {changed}")
    return found


def count_by_class(cases: list[Hostile] = CASES) -> dict[str, int]:
    """Returns the number of cases of each class, in the order of :data:`CLASSES`."""
    return {kind: sum(case.kind == kind for case in cases) for kind in CLASSES}


def test_the_corpus_is_well_formed() -> None:
    names = [case.case.name for case in CASES]
    assert len(names) == len(set(names))
    assert all(case.case.expect for case in CASES)
    assert all(count >= 4 for count in count_by_class().values()), count_by_class()


@pytest.mark.parametrize("hostile", CASES, ids=[f"{case.kind.replace(' ', '_')}-{case.case.name}" for case in CASES])
def test_hostile_input_is_one_line_exit_2_and_nothing_destroyed(hostile: Hostile, tmp_path: Path) -> None:
    found = problems(hostile, tmp_path / "case")
    assert not found, found
