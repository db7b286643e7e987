"""YAML within bounds, wherever retain reads YAML: alias bombs, structures that contain
themselves, huge integers, repeated keys and YAML 1.1's yes/no are refused or read plainly,
with the line, by the config, a sweep file, a probe suite and a run's config.yaml alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain import yamlfile
from retain.config import load_config
from retain.errors import ConfigError, DataError, RetainError
from retain.evaluation.suites import load_suite
from retain.report.views import read_config
from retain.yamlfile import YamlProblem

LAUGHS = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{this}: &{this} [{', '.join([f'*{before}'] * 9)}]" for before, this in zip("abcdefgh", "bcdefghi")]
) + "\n"


def test_an_alias_bomb_is_refused_before_anything_expands_it() -> None:
    with pytest.raises(YamlProblem) as caught:
        yamlfile.load(LAUGHS)
    assert "more than 1,000,000 values" in caught.value.message and caught.value.line is not None


def test_a_few_aliases_and_merge_keys_still_read() -> None:
    text = "base: &base {lr: 0.001, epochs: 2}\nrun:\n  <<: *base\n  epochs: 3\nagain: *base\n"
    assert yamlfile.load(text) == {"base": {"lr": 0.001, "epochs": 2}, "run": {"lr": 0.001, "epochs": 3},
                                   "again": {"lr": 0.001, "epochs": 2}}


@pytest.mark.parametrize(("text", "words", "line"), [
    ("a: &x [1, *x]\n", "contains itself", 1),
    ("a: 1\nb: 2\na: 3\n", "key 'a' appears twice", 3),
    ("train:\n  seed: " + "9" * 5000 + "\n", "5,000 digits", 2),
    ("a: [[[\n", "invalid YAML", 2),
])
def test_what_cannot_be_read_is_named_with_its_line(text: str, words: str, line: int) -> None:
    with pytest.raises(YamlProblem) as caught:
        yamlfile.load(text)
    assert words in caught.value.message and caught.value.line == line


def test_a_repeated_key_names_its_dotted_path() -> None:
    with pytest.raises(YamlProblem) as caught:
        yamlfile.load("train:\n  lr: 1\n  lr: 2\n")
    assert caught.value.key == "train.lr"


def test_nesting_past_the_recursion_limit_is_a_problem_not_a_crash() -> None:
    with pytest.raises(YamlProblem, match="nested too deeply"):
        yamlfile.load("a: " + "[" * 5000 + "]" * 5000 + "\n")


def test_only_true_and_false_are_booleans() -> None:
    assert yamlfile.load("a: yes\nb: no\nc: on\nd: true\ne: False\n") == {
        "a": "yes", "b": "no", "c": "on", "d": True, "e": False}


def test_the_config_refuses_a_bomb_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path) and caught.value.line is not None


@pytest.mark.parametrize("value", ["yes", "true", "on"])
def test_a_yes_no_value_is_not_a_number(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  lr: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == "train.lr" and caught.value.line == 2
    with pytest.raises(ConfigError):
        load_config(None, [f"train.lr={value}"])
    assert load_config(None, [f"guards.enabled={'no' if value == 'yes' else 'false'}"]).guards.enabled is False


def test_a_huge_integer_in_an_override_is_refused_in_one_short_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["train.seed=" + "9" * 5000])
    assert "5,000 digits" in str(caught.value) and len(str(caught.value)) < 400


def test_a_probe_suite_bomb_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(LAUGHS.replace("a: &a", "items: []\na: &a", 1))
    with pytest.raises(DataError) as caught:
        load_suite(str(path))
    assert caught.value.file == str(path)


def test_a_run_config_that_is_a_bomb_is_one_error_for_the_report(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(LAUGHS)
    with pytest.raises(RetainError) as caught:
        read_config(path)
    assert caught.value.file == str(path) and "values" in caught.value.message


def test_a_document_cut_short_is_reported_at_its_last_line() -> None:
    # PyYAML marks an unclosed '[' at the end past the last line (hypothesis found it).
    with pytest.raises(YamlProblem) as caught:
        yamlfile.load("x: 0\n[")
    assert caught.value.line == 2
