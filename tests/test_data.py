from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from retain.config import DataConfig
from retain.data.rows import (
    Example,
    chat_prompt_text,
    load_examples,
    read_examples,
    read_examples_for,
)
from retain.errors import DataError
from retain.lab.domain import DomainSpec, build_domain, write_jsonl

ROWS = [
    {"id": "a", "prompt": "Is water wet? Answer:", "response": " yes", "label": "yes"},
    {"id": "b", "prompt": "Is fire cold?\nAnswer:", "response": " no", "label": "no"},
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Is the sky blue?"},
    {"role": "assistant", "content": "Yes."},
]


def _write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _assert_rows(examples: list[Example], first_line: int) -> None:
    assert [(e.prompt, e.response, e.line) for e in examples] == [
        (row["prompt"], row["response"], first_line + i) for i, row in enumerate(ROWS)
    ]
    assert [e.fields for e in examples] == [
        {"id": row["id"], "label": row["label"]} for row in ROWS
    ]
    assert all(not e.is_chat for e in examples)


# --- formats --------------------------------------------------------------------------


def test_jsonl_round_trips(tmp_path: Path) -> None:
    examples, problems = read_examples(_write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert problems == []
    _assert_rows(examples, first_line=1)


def test_lab_domain_file_reads_clean(tmp_path: Path) -> None:
    task = build_domain(DomainSpec(n_train=5, n_validation=0, n_test=0, n_ood=0))
    write_jsonl(task.train, tmp_path / "train.jsonl")
    examples = load_examples(tmp_path / "train.jsonl")
    assert [(e.prompt, e.response, e.fields["label"]) for e in examples] == [
        (row.prompt, row.response, row.label) for row in task.train
    ]


def test_csv_round_trips_with_header_as_line_one(tmp_path: Path) -> None:
    examples, problems = read_examples(_write_csv(tmp_path / "d.csv", ROWS))
    assert problems == []
    _assert_rows(examples, first_line=2)


def test_csv_line_numbers_account_for_quoted_line_breaks(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "d.csv", [*ROWS, {"id": "c", "prompt": "", "response": "x", "label": ""}]
    )
    _, problems = read_examples(path)
    # Row 2 spans lines 3-4 (its prompt holds a line break), so the bad row is line 5.
    assert [(p.line, p.field) for p in problems] == [(5, "prompt")]


def test_parquet_round_trips(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    examples, problems = read_examples(path)
    assert problems == []
    _assert_rows(examples, first_line=1)


def test_datasets_directory_round_trips(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    examples, problems = read_examples(tmp_path / "ds")
    assert problems == []
    _assert_rows(examples, first_line=1)


def test_chat_rows_in_jsonl_and_datasets(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list([{"messages": CHAT, "id": 7}]).save_to_disk(str(tmp_path / "ds"))
    for path in (
        _write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT, "id": 7}]),
        tmp_path / "ds",
    ):
        (example,), problems = read_examples(path)
        assert problems == []
        assert example.is_chat and example.messages == tuple(CHAT)
        assert example.response == "Yes."
        assert example.prompt == (
            "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Is the sky blue?\nAssistant:"
        )
        assert example.fields == {"id": 7}


def test_chat_rows_in_csv_are_json_cells(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "c.csv", [{"messages": json.dumps(CHAT)}, {"messages": "[oops"}])
    examples, problems = read_examples(path)
    assert examples[0].response == "Yes."
    assert [(p.line, p.field) for p in problems] == [(3, "messages")]


def test_mixed_file_is_read(tmp_path: Path) -> None:
    examples, problems = read_examples(
        _write_jsonl(tmp_path / "m.jsonl", [ROWS[0], {"messages": CHAT}])
    )
    assert problems == []
    assert [e.is_chat for e in examples] == [False, True]


def test_turns_after_the_last_answer_are_not_in_the_prompt() -> None:
    assert chat_prompt_text(CHAT[:2]) == "System: Be brief.\nUser: Hi\nAssistant:"


# --- malformed rows -------------------------------------------------------------------

BAD_LINES = [
    ("{not json", None),
    ("[1, 2]", None),
    ({"prompt": "p"}, "response"),
    ({"response": "r"}, "prompt"),
    ({"id": 1}, "prompt"),
    ({"prompt": "p", "response": 3}, "response"),
    ({"prompt": ["p"], "response": "r"}, "prompt"),
    ({"prompt": "p", "response": "  "}, "response"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    (
        {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        "messages[0].role",
    ),
    ({"messages": [{"from": "alien", "value": "hi"}]}, "messages[0].from"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        "messages[1].content",
    ),
]


def test_every_malformed_row_is_a_problem_and_reading_goes_on(tmp_path: Path) -> None:
    lines: list[object] = [ROWS[0]]
    for bad, _ in BAD_LINES:
        lines += [bad, ""]  # blank lines are skipped but still counted
    lines.append(ROWS[1])
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    examples, problems = read_examples(path)
    assert [e.line for e in examples] == [1, 2 + 2 * len(BAD_LINES)]
    assert [(p.line, p.field) for p in problems] == [
        (2 + 2 * i, field) for i, (_, field) in enumerate(BAD_LINES)
    ]
    assert all(p.file == str(path) and p.message and p.fix for p in problems)
    assert "human, gpt or system" in problems[12].fix
    assert "bad.jsonl:2:" in problems[0].as_error().render()


def test_csv_row_with_extra_cells_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,response\nq,a\nq,a,surplus\n")
    examples, problems = read_examples(path)
    assert len(examples) == 1 and [(p.line, p.field) for p in problems] == [(3, None)]


def test_load_examples_refuses_any_bad_row(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"prompt": "p"}, "{", "[]", "1", "2"])
    with pytest.raises(DataError) as caught:
        load_examples(path)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), 2, "response")
    assert "5 malformed" in error.message and "also lines 3, 4, 5, ..." in error.message


# --- file-level errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.jsonl", None, "not found"),
        ("d.txt", "x", "extension"),
        ("empty.jsonl", "\n\n", "no examples"),
        ("header.csv", "prompt,response\n", "no examples"),
        ("allbad.jsonl", "{bad\n[]\n", "all 2 row(s) are malformed"),
        ("cols.csv", "question,answer\nq,a\n", "columns are: question, answer"),
        ("fake.parquet", "not parquet", "Parquet"),
        ("latin1.csv", b"prompt,response\n\xe9,x\n", "UTF-8"),
    ],
)
def test_unusable_files_raise_data_error_naming_the_file(
    tmp_path: Path, name: str, content: str | bytes | None, words: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_examples(path)
    assert caught.value.file == str(path) and caught.value.fix
    assert words in caught.value.message


def test_all_bad_file_names_the_first_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        read_examples(_write_jsonl(tmp_path / "d.jsonl", ["", {"prompt": "p"}]))
    assert (caught.value.line, caught.value.field) == (2, "response")


def test_directories_that_are_not_one_dataset(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="splits"):
        read_examples(tmp_path / "dd")
    with pytest.raises(DataError, match="save_to_disk"):
        read_examples(tmp_path / "plain")
    with pytest.raises(DataError, match="does not fit"):
        read_examples(tmp_path / "plain", format="jsonl")


# --- field names and config -----------------------------------------------------------


def test_custom_field_names_and_explicit_format(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text(
        json.dumps({"question": "q", "answer": "a", "prompt": "kept"})
        + "\n"
        + json.dumps({"conversation": CHAT})
        + "\n"
    )
    examples, problems = read_examples(
        path,
        format="jsonl",
        prompt_field="question",
        response_field="answer",
        messages_field="conversation",
    )
    assert problems == []
    assert (examples[0].prompt, examples[0].response, examples[0].fields) == (
        "q",
        "a",
        {"prompt": "kept"},
    )
    assert examples[1].response == "Yes."


def test_read_examples_for_uses_the_data_section(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "d.csv", [{"q": "question", "a": "answer"}, {"q": "other", "a": ""}]
    )
    data = DataConfig(prompt_field="q", response_field="a")
    examples, problems = read_examples_for(data, path)
    assert [(e.prompt, e.response) for e in examples] == [("question", "answer")]
    assert [(p.line, p.field) for p in problems] == [(3, "a")]
