"""Property tests: the loaders, the config parser and the audit end in a result or a RetainError.

Whatever the bytes of a data file, a probe suite or a config, and whatever ``--set``
override a user types, retain either returns what it read or raises a
:class:`~retain.errors.RetainError` naming where the problem is; any other exception is
a bug. The generators are the fuzz runner's (``benchmarks/fuzz.py``); the last test is
its CI-sized round (``make fuzz`` runs it long).
"""

from __future__ import annotations

import json
import string
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retain.config import RetainConfig, dump_config, load_config
from retain.config.walk import dotted_fields
from retain.data.rows import Example, read_examples
from retain.errors import ConfigError, DataError, RetainError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _write(data: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="retain-prop-"))
    path = folder / f"file{suffix}"
    path.write_bytes(data)
    return path


def _located(error: RetainError, path: Path) -> None:
    """A loader's error names the file it is about."""
    assert error.file is not None and Path(error.file).name == path.name, error.render()


# --- data loaders ---------------------------------------------------------------------


@FAST
@given(fuzz.jsonl_files())
def test_any_jsonl_file_reads_or_is_a_data_error_naming_it(data: bytes) -> None:
    path = _write(data, ".jsonl")
    try:
        examples, problems = read_examples(path)
    except DataError as error:
        _located(error, path)
        return
    assert examples and all(isinstance(example, Example) for example in examples)
    assert all(example.response.strip() for example in examples)
    lines = data.count(b"\n") + data.count(b"\r") + 1
    assert all(1 <= problem.line <= lines for problem in problems)
    assert all(1 <= example.line <= lines for example in examples)


@FAST
@given(fuzz.csv_files())
def test_any_csv_file_reads_or_is_a_data_error_naming_it(data: bytes) -> None:
    path = _write(data, ".csv")
    try:
        examples, problems = read_examples(path)
    except DataError as error:
        _located(error, path)
        return
    assert examples
    assert all(isinstance(example.prompt, str) and isinstance(example.response, str) for example in examples)
    assert all(problem.line >= 2 for problem in problems)  # line 1 is the header


@FAST
@given(st.lists(st.fixed_dictionaries({"prompt": st.text(max_size=50), "response": st.text(min_size=1, max_size=20)}),
                min_size=1, max_size=10))
def test_valid_rows_read_back_unchanged(rows: list[dict[str, str]]) -> None:
    path = _write("".join(json.dumps(row) + "\n" for row in rows).encode(), ".jsonl")
    try:
        examples, problems = read_examples(path)
    except DataError:
        assert all(not row["response"].strip() for row in rows)
        return
    kept = [row for row in rows if row["response"].strip()]
    assert [(example.prompt, example.response) for example in examples] == [(r["prompt"], r["response"]) for r in kept]
    assert len(problems) == len(rows) - len(kept)


@FAST
@given(fuzz.suite_files())
def test_any_probe_suite_loads_or_is_a_data_error(value: tuple[str, bytes]) -> None:
    from retain.evaluation.suites import load_suite

    suffix, data = value
    path = _write(data, f".{suffix}")
    try:
        suite = load_suite(path)
    except DataError as error:
        _located(error, path)
        return
    assert suite.items and len({item.id for item in suite.items}) == len(suite.items)


# --- the config parser ----------------------------------------------------------------

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                         st.sampled_from(["fast", "1e-4", "-1", ".inf", "[lora]", "{}", "null", "yes"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
setting_names = st.sampled_from(dotted_fields()) | st.text(string.ascii_lowercase + "._", max_size=16)


@st.composite
def config_documents(draw: st.DrawFn) -> str:
    """YAML text: real sections and settings with arbitrary values, plus noise."""
    document: dict = {}
    for name in draw(st.lists(setting_names, max_size=6)):
        node = document
        *sections, leaf = name.split(".") if name else ["x"]
        for section in sections:
            child = node.setdefault(section, {})
            node = child if isinstance(child, dict) else node
        node[leaf] = draw(yaml_values)
    text = yaml.safe_dump(document, allow_unicode=True)
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\t", ":", "- ", "[", "{", "'", "&a ", "*a", "\n  x"])) + text[at:]
    return text


@FAST
@given(config_documents())
def test_any_config_file_loads_or_is_a_config_error_naming_it(text: str) -> None:
    path = _write(text.encode(), ".yaml")
    try:
        config = load_config(path)
    except ConfigError as error:
        _located(error, path)
        if error.line is not None:
            assert 1 <= error.line <= text.count("\n") + 1
        return
    assert isinstance(config, RetainConfig)
    assert load_config(_write(dump_config(config).encode(), ".yaml")) == config  # dump reads back


@FAST
@given(st.lists(st.one_of(
    st.builds(lambda name, value: f"{name}={value}", setting_names,
              st.text(max_size=15) | st.sampled_from(["fast", "1e-4", "[lora, replay]", "null", "{a: 1}", "[", "0"])),
    st.text(max_size=20)), max_size=4))
def test_any_overrides_apply_or_are_a_config_error_from_set(overrides: list[str]) -> None:
    try:
        config = load_config(None, overrides)
    except ConfigError as error:
        assert error.file == "--set", error.render()
        return
    assert isinstance(config, RetainConfig)


# --- the audit ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from retain.lab.plugin import tokenizer as lab_tokenizer

    return lab_tokenizer()


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(fuzz.rows, min_size=1, max_size=15))
def test_the_audit_of_arbitrary_rows_is_a_report_or_a_data_error(rows: list, tokenizer) -> None:
    from retain.audit.runner import run_audit

    lines = []
    for row in rows:
        try:
            lines.append(json.dumps(row))
        except ValueError:
            lines.append("NaN")
    path = _write("\n".join(lines).encode(), ".jsonl")
    try:
        report = run_audit(RetainConfig(), path, eval_data=path, allow_small=True, tokenizer=tokenizer)
    except DataError as error:
        _located(error, path)
        return
    assert report.rows + len(report.malformed) == len(rows)
    json.dumps(report.to_dict(), default=str)
    assert report.exit_code(False) in (0, 2)


# --- the fuzz runner, CI-sized --------------------------------------------------------


@pytest.mark.slow
def test_a_ci_sized_fuzz_round_finds_no_crash() -> None:
    result = fuzz.run_fuzz(inputs=150, seed=7)
    assert result["inputs"] == 150 * len(result["targets"])
    assert result["crashes"] == 0, json.dumps(result["targets"], indent=1)[:4000]


def test_the_fuzz_counts_crashes_apart_from_user_errors() -> None:
    def call(value: int, folder: Path) -> int:
        if value == 0:
            raise DataError("empty", file="x.jsonl")
        return 1 // (value - 1)  # 1 crashes: ZeroDivisionError

    target = fuzz.Target("demo", st.integers(), call)
    for value in (0, 1, 2, 1):
        target.one(value, Path("."))
    tally = target.tally()
    assert (tally["inputs"], tally["results"], tally["user_errors"], tally["crashes"]) == (4, 1, 1, 2)
    assert tally["crash_samples"][0]["error"].startswith("ZeroDivisionError") and tally["crash_samples"][0]["input"] == "1"
