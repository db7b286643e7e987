from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.errors import DataError
from retain.evaluation.probes import ProbeItem, answer_number, check_answer, cut_at_stop
from retain.evaluation.suites import load_suite, write_suite
from retain.lab.world import build_world

ITEM = {"id": "a-1", "category": "arithmetic", "prompt": "Question: 2+2?\nAnswer:", "answer": "4",
        "options": ["3", "4", "5"], "checker": "numeric"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_jsonl_suite_with_header_loads(tmp_path: Path) -> None:
    header = {"suite": "mine", "version": "3", "delimiter": " ", "stop": ["\n"]}
    suite = load_suite(write_jsonl(tmp_path / "s.jsonl", [header, ITEM, {**ITEM, "id": "a-2"}]))
    assert (suite.name, suite.version, suite.stop, len(suite.items)) == ("mine", "3", ("\n",), 2)
    assert suite.items[0].answer_index == 1 and suite.items[0].checker == "numeric"


def test_yaml_suite_loads_and_errors_name_the_items_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "suite: mine\nversion: 1\nitems:\n"
        "  - {id: a, category: c, prompt: p, answer: x}\n"
        "  - id: b\n    category: c\n    prompt: p\n    answer: y\n    options: [x, z]\n"
    )
    with pytest.raises(DataError) as error:
        load_suite(path)
    assert error.value.line == 5 and "not one of the options" in error.value.message
    path.write_text(path.read_text().replace("[x, z]", "[x, y]"))
    suite = load_suite(path)
    assert (suite.name, suite.version, [item.id for item in suite.items]) == ("mine", "1", ["a", "b"])


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"answr": "4"}, "answr", "unknown field"),
        ({"checker": "fuzzy"}, "checker", "unknown checker"),
        ({"checker": "regex"}, None, "needs a 'pattern'"),
        ({"checker": "regex", "pattern": "(("}, None, "not a valid regular expression"),
        ({"options": ["4", "4"]}, None, "not distinct"),
        ({"answer": 4}, "answer", "valid string"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
    ],
)
def test_bad_items_name_file_line_and_field(tmp_path: Path, change: dict, field, words: str) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"suite": "s", "version": "1"}, ITEM, {**ITEM, "id": "x", **change}])
    with pytest.raises(DataError) as error:
        load_suite(path)
    assert error.value.file == str(path) and error.value.line == 3
    assert error.value.field == field
    assert words in error.value.message and error.value.fix


def test_missing_field_and_duplicate_id_and_bad_json(tmp_path: Path) -> None:
    missing = {key: value for key, value in ITEM.items() if key != "category"}
    with pytest.raises(DataError, match="category.*missing") as error:
        load_suite(write_jsonl(tmp_path / "a.jsonl", [ITEM | {"id": "z"}, missing]))
    assert error.value.line == 2
    with pytest.raises(DataError, match="duplicate id 'a-1'") as error:
        load_suite(write_jsonl(tmp_path / "b.jsonl", [ITEM, ITEM]))
    assert error.value.line == 2
    with pytest.raises(DataError, match="not valid JSON") as error:
        load_suite(write_jsonl(tmp_path / "c.jsonl", [ITEM, "{oops"]))
    assert error.value.line == 2


def test_unknown_name_or_format_or_empty_suite_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no probe suite named 'nope'"):
        load_suite("nope")
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(DataError, match="unknown probe suite format"):
        load_suite(tmp_path / "s.txt")
    with pytest.raises(DataError, match="no items"):
        load_suite(write_jsonl(tmp_path / "e.jsonl", [{"suite": "e", "version": "1"}]))


def test_suite_without_version_is_versioned_by_content(tmp_path: Path) -> None:
    first = load_suite(write_jsonl(tmp_path / "a.jsonl", [ITEM]))
    second = load_suite(write_jsonl(tmp_path / "b.jsonl", [ITEM | {"answer": "3"}]))
    assert first.version.startswith("sha256-") and first.version != second.version


def test_lab_suite_round_trips_through_a_file(tmp_path: Path) -> None:
    suite = build_world().probes
    write_suite(suite, tmp_path / "lab.jsonl")
    assert load_suite(tmp_path / "lab.jsonl") == suite
    assert load_suite("lab") == suite


def test_general_suite_is_large_varied_and_well_formed() -> None:
    suite = load_suite("general")
    counts = {name: len(items) for name, items in suite.by_category().items()}
    assert len(suite.items) >= 300 and len(counts) >= 6, counts
    assert min(counts.values()) >= 40, counts
    assert suite.stop == ("\n",)
    for item in suite.items:
        # A correct answer must pass its own checker, or the suite measures nothing.
        assert check_answer(item, item.answer), item.id
        assert item.prompt.endswith("Answer:"), item.id


@pytest.mark.parametrize(
    ("checker", "answer", "output", "expected"),
    [
        ("exact", "Paris", " paris.", True),
        ("exact", "Paris", "Paris is nice", False),
        ("contains", "Paris", "The capital is Paris.", True),
        ("contains", "Paris", "Parisian food", False),
        ("contains", "New Delhi", "it is new  delhi", True),
        ("numeric", "42", "The answer is 42.", True),
        ("numeric", "42", "4 2", False),
        ("numeric", "1200", "1,200 apples", True),
        ("numeric", "-3", "-3", True),
        ("numeric", "7", "no idea", False),
    ],
)
def test_checkers(checker: str, answer: str, output: str, expected: bool) -> None:
    item = ProbeItem("i", "c", "p", answer, checker=checker)
    assert check_answer(item, output) is expected


def test_regex_checker_is_case_insensitive_unless_told() -> None:
    item = ProbeItem("i", "c", "p", "green", checker="regex", pattern=r"^\W*green\W*$")
    assert check_answer(item, " Green.") and not check_answer(item, "It is green")
    strict = ProbeItem("i", "c", "p", "CAT", checker="regex", pattern=r"^\W*(?-i:CAT)\W*$")
    assert check_answer(strict, "CAT") and not check_answer(strict, "cat")


def test_cut_at_stop_skips_leading_whitespace() -> None:
    assert cut_at_stop("\n Paris\nQuestion: next", ["\n"]) == "Paris"
    assert cut_at_stop(" 42", []) == "42"
    assert answer_number("about .5 or 3") == 3


def test_suite_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(json.dumps(ITEM).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8") as error:
        load_suite(path)
    assert error.value.file == str(path) and "UTF-8" in error.value.fix
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_bytes(b"suite: s\nitems: []\n\xff")
    with pytest.raises(DataError, match="not UTF-8"):
        load_suite(yaml_path)


def test_a_suite_cut_per_category_keeps_the_first_items_and_says_so_in_its_version() -> None:
    from retain.config import load_config
    from retain.evaluation.commands import config_suites

    suite = load_suite("general")
    cut = suite.first_per_category(3)
    assert cut.version == f"{suite.version}+first3" and cut.name == suite.name
    assert all(len(items) == 3 for items in cut.by_category().values())
    assert [item.id for item in cut.by_category()["arithmetic"]] == [item.id for item in suite.items[:3]]
    assert suite.first_per_category(None) is suite and suite.first_per_category(10_000) is suite
    (quick,) = config_suites(load_config(None, ["probes.suites=[general]", "probes.per_category=2"]))
    assert len(quick.items) == 2 * len(suite.categories())
