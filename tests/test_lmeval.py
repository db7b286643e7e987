"""lm-evaluation-harness tasks as probe suites, with a local task (no network)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from retain.errors import DataError
from retain.evaluation.suites import load_suite

pytest.importorskip("lm_eval", reason="the lmeval extra is part of dev; install .[dev]")

ROWS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5"], "label": 1},
    {"question": "Which is a colour?", "choices": ["blue", "dog", "run"], "label": 0},
    {"question": "Same options twice?", "choices": ["a", "a"], "label": 0},
]


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    return tmp_path


def test_local_lm_eval_task_becomes_a_probe_suite(task_dir: Path) -> None:
    suite = load_suite(f"lmeval:tiny_mc@{task_dir}")
    assert suite.name == f"lmeval:tiny_mc@{task_dir}" and suite.version.startswith("lm-eval-")
    # The item with duplicate options is skipped: it cannot be ranked unambiguously.
    assert [item.prompt for item in suite.items] == ["Question: What is 2 + 2?\nAnswer:", "Question: Which is a colour?\nAnswer:"]
    assert [item.answer for item in suite.items] == ["4", "blue"]
    assert suite.items[0].options == ("3", "4", "5") and suite.categories() == ["tiny_mc"]
    assert suite.delimiter == " "


def test_unknown_lm_eval_task_is_a_clear_error(task_dir: Path) -> None:
    with pytest.raises(DataError, match="lm-eval has no task 'no_such_task'"):
        load_suite(f"lmeval:no_such_task@{task_dir}")


def test_missing_lm_eval_package_says_how_to_install(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(DataError, match="not installed") as error:
        load_suite("lmeval:hellaswag")
    assert "retain[lmeval]" in error.value.fix
