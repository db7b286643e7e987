"""retain's own JSON read back damaged: nesting past the recursion limit, a number of
thousands of digits, half a surrogate pair. Each is one error naming the file (or, for a
summary the report only shows, an empty summary), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.errors import RetainError, RunDirError
from retain.io import decode_json, read_jsonl
from retain.report.views import read_json
from retain.rundir import RunDir
from retain.summary import RunSummary

DAMAGED = {
    "deep": "[" * 100_000 + "]" * 100_000,
    "huge number": '{"steps": ' + "9" * 5000 + "}",
    "half a surrogate": '{"a": "\\ud800"}',
    "not JSON": '{"a": ',
    "a key twice": '{"steps": 1, "steps": 2}',
}


@pytest.mark.parametrize("text", DAMAGED.values(), ids=DAMAGED.keys())
def test_decode_json_says_why_in_a_value_error(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_json(text)
    assert str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("text", DAMAGED.values(), ids=DAMAGED.keys())
def test_the_report_reader_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(RetainError) as caught:
        read_json(path, what="a run summary")
    assert caught.value.file == str(path)


@pytest.mark.parametrize("text", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_summary_is_one_run_directory_error(tmp_path: Path, text: str) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.summary_path.write_text(text)
    with pytest.raises(RunDirError) as caught:
        run.read_summary()
    assert caught.value.file == str(run.summary_path)
    with pytest.raises(ValueError):
        RunSummary.read(run.path)


@pytest.mark.parametrize("text", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_metrics_line_is_named_by_its_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n' + text + '\n{"step": 2}\n')
    with pytest.raises(RunDirError) as caught:
        read_jsonl(path)
    assert caught.value.line == 2


def test_user_data_with_a_key_twice_or_a_column_twice_is_refused_at_its_line(tmp_path: Path) -> None:
    from retain.data.rows import load_examples
    from retain.errors import DataError

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q", "response": "a", "response": "b"}\n')
    with pytest.raises(DataError) as caught:
        load_examples(jsonl)
    assert caught.value.line == 2 and "twice" in caught.value.message
    table = tmp_path / "d.csv"
    table.write_text("prompt,response,response\nq,a,b\n")
    with pytest.raises(DataError) as caught:
        load_examples(table)
    assert caught.value.line == 1 and caught.value.field == "response"


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null"])
def test_a_device_given_as_data_or_a_suite_is_refused_not_read_forever(special: str) -> None:
    from retain.data.rows import load_examples, read_text
    from retain.errors import DataError

    with pytest.raises(DataError) as caught:
        load_examples(Path(special))
    assert "device" in caught.value.message
    with pytest.raises(DataError):
        read_text(special, "a probe suite")
