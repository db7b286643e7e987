"""Row formats recognised per row (Alpaca, ShareGPT, TRL prompt/completion, plain text), ``.json``
files and ``hf:`` datasets of the local cache: through the API and through `retain audit`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.config import DataConfig
from retain.data.rows import (
    describe_schemas,
    load_examples,
    load_examples_for,
    read_examples,
)
from retain.errors import DataError

ALPACA = [
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "id": 1},
    {"instruction": "Name a primary colour.", "input": "", "output": "Red"},
    {"instruction": "Greet.", "output": "Hello", "system": "Be warm."},
]
SHAREGPT = [{"conversations": [
    {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello!"}, {"from": "user", "value": "Is the sky blue?"},
    {"from": "assistant", "value": "Yes."},
]}]
OPENAI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Is the sky blue?"},
          {"role": "assistant", "content": "Yes."}]
COMPLETION = [
    {"prompt": "The sky is", "completion": " blue."},
    {"prompt": [{"role": "user", "content": "Sky colour?"}],
     "completion": [{"role": "assistant", "content": "Blue."}]},
]
TEXT = [{"text": "Once upon a time there was a lab.", "source": "story"}]


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- each format, through the API -----------------------------------------------------


def test_alpaca_rows_become_a_user_and_an_assistant_turn(tmp_path: Path) -> None:
    examples = load_examples(_jsonl(tmp_path / "a.jsonl", ALPACA))
    with_input, without_input, with_system = examples
    assert with_input.messages == ({"role": "user", "content": "Translate to French.\n\nGood morning"},
                                   {"role": "assistant", "content": "Bonjour"})
    assert (with_input.prompt, with_input.response) == ("User: Translate to French.\n\nGood morning\nAssistant:",
                                                        "Bonjour")
    assert with_input.fields == {"id": 1}
    assert without_input.messages[0]["content"] == "Name a primary colour."  # an empty input adds nothing
    assert [turn["role"] for turn in with_system.messages] == ["system", "user", "assistant"]
    assert describe_schemas(examples) == "Alpaca format (instruction/input/output)"


def test_sharegpt_rows_read_as_the_same_turns_as_openai_chat(tmp_path: Path) -> None:
    [sharegpt] = load_examples(_jsonl(tmp_path / "s.jsonl", SHAREGPT))
    [openai] = load_examples(_jsonl(tmp_path / "o.jsonl", [{"messages": OPENAI}]))
    assert sharegpt.messages == openai.messages == tuple(OPENAI)
    assert (sharegpt.prompt, sharegpt.response) == (openai.prompt, openai.response)
    assert str(sharegpt.schema) == "ShareGPT format (conversations)"
    assert str(openai.schema) == "OpenAI chat format (messages)"
    # ShareGPT turns under the messages column, and as a CSV cell, read the same way.
    [under_messages] = load_examples(_jsonl(tmp_path / "m.jsonl", [{"messages": SHAREGPT[0]["conversations"]}]))
    assert under_messages.messages == tuple(OPENAI)
    with (tmp_path / "s.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["conversations"], [json.dumps(SHAREGPT[0]["conversations"])]])
    assert load_examples(tmp_path / "s.csv")[0].messages == tuple(OPENAI)


def test_trl_prompt_completion_text_and_conversational(tmp_path: Path) -> None:
    text, chat = load_examples(_jsonl(tmp_path / "c.jsonl", COMPLETION))
    assert (text.prompt, text.response, text.messages) == ("The sky is", " blue.", None)
    assert chat.messages == ({"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Blue."})
    assert chat.response == "Blue."
    assert describe_schemas([text, chat]) == "TRL prompt/completion format (prompt/completion)"


def test_plain_text_rows_are_all_answer(tmp_path: Path) -> None:
    [row] = load_examples(_jsonl(tmp_path / "t.jsonl", TEXT))
    assert (row.prompt, row.response, row.messages, row.fields) == (
        "", "Once upon a time there was a lab.", None, {"source": "story"})
    assert describe_schemas([row]) == "plain text format (text)"


def test_a_file_may_mix_formats_and_says_so(tmp_path: Path) -> None:
    rows = [*ALPACA, *SHAREGPT, *TEXT, {"prompt": "Q:", "response": " A"}]
    examples = load_examples(_jsonl(tmp_path / "mix.jsonl", rows))
    assert describe_schemas(examples) == ("mixed formats: 3 Alpaca (instruction/input/output), "
                                          "1 ShareGPT (conversations), 1 plain text (text), "
                                          "1 prompt/response (prompt/response)")


def test_configured_fields_win_over_detection(tmp_path: Path) -> None:
    data = DataConfig(prompt_field="instruction", response_field="output")
    examples = load_examples_for(data, _jsonl(tmp_path / "a.jsonl", ALPACA[:1]))
    assert (examples[0].prompt, examples[0].response, examples[0].messages) == (
        "Translate to French.", "Bonjour", None)
    assert str(examples[0].schema) == "prompt/response format (instruction/output)"
    # A messages column named in the config is chat even where other formats' fields are set.
    [chat] = load_examples_for(DataConfig(messages_field="dialog"),
                               _jsonl(tmp_path / "d.jsonl", [{"dialog": OPENAI, "text": "ignored"}]))
    assert chat.messages == tuple(OPENAI) and chat.fields == {"text": "ignored"}


def test_a_table_of_alpaca_columns_is_readable(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame(ALPACA[:2]).to_parquet(tmp_path / "a.parquet")
    assert [e.response for e in load_examples(tmp_path / "a.parquet")] == ["Bonjour", "Red"]
    (tmp_path / "t.csv").write_text("text\nsome words\n")
    assert load_examples(tmp_path / "t.csv")[0].response == "some words"


# --- bad rows of each format ----------------------------------------------------------


BAD = [
    ({"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "x"}]},
     "conversations[0].from", "unknown speaker 'alien'", "human, gpt or system"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{}"}]},
     "conversations[1].from", "tool turns", "drop the row"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"role": "assistant", "content": "x"}]},
     "conversations[1].from", "missing 'from'", "the same way"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
     "conversations[0].value", "must be text", "string"),
    ({"instruction": "Say hi", "input": ""}, "output", "without 'output'", "add 'output'"),
    ({"output": "hi"}, "instruction", "without 'instruction'", "add 'instruction'"),
    ({"instruction": "Say hi", "input": 3, "output": "hi"}, "input", "must be text", "string"),
    ({"instruction": "Say hi", "output": " "}, "output", "empty", "answer"),
    ({"prompt": "p", "completion": ["x"]}, "completion", "both be text or both", "both as strings"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "q"}]},
     "completion", "no assistant turn", "assistant"),
    ({"prompt": "p", "completion": ""}, "completion", "empty", "answer"),
    ({"text": "  "}, "text", "empty", "drop it"),
    ({"question": "q", "answer": "a"}, "prompt", "matches no format", "conversations (ShareGPT)"),
]


@pytest.mark.parametrize(("row", "field", "message", "fix"), BAD)
def test_a_bad_row_of_each_format_names_field_and_fix(tmp_path: Path, row: dict, field: str, message: str,
                                                      fix: str) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [ALPACA[0], row])
    examples, [problem] = read_examples(path)
    assert len(examples) == 1
    assert (problem.file, problem.line, problem.field) == (str(path), 2, field)
    assert message in problem.message and fix in problem.fix
    assert problem.as_error().render().startswith(f"{path}:2: {field}: ")


def test_a_table_with_columns_of_no_format_lists_the_formats(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match="columns are: question, answer") as caught:
        read_examples(tmp_path / "d.csv")
    assert "instruction/input/output (Alpaca)" in caught.value.fix


# --- .json files ----------------------------------------------------------------------


def test_a_json_array_is_read_with_the_line_each_row_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([*ALPACA, {"instruction": "x"}], indent=2))
    examples, [problem] = read_examples(path)
    assert [e.line for e in examples] == [2, 8, 13]
    assert (problem.line, problem.field) == (18, "output")
    compact = tmp_path / "c.json"
    compact.write_text(json.dumps(ALPACA))
    assert [e.line for e in load_examples(compact)] == [1, 1, 1]


def test_a_json_file_holding_json_lines_is_read_as_such(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.json", ALPACA)
    assert [e.line for e in load_examples(path)] == [1, 2, 3]


@pytest.mark.parametrize(("content", "line", "words"), [
    ('[\n  {"text": "a"},\n  {"text": "b"\n]\n', 4, "invalid JSON: Expecting ',' delimiter (line 4"),
    ('{\n  "rows": [{"text": "a"}]\n}\n', 1, "one JSON object over several lines"),
    ("[1, 2]", 1, "no usable examples"),
    ('"just a string"\n', 1, "no usable examples"),
])
def test_a_json_file_that_is_neither_array_nor_jsonl_is_one_error(tmp_path: Path, content: str, line: int,
                                                                  words: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_examples(path)
    error = caught.value
    assert (error.file, error.line) == (str(path), line) and words in error.render() and error.fix
    if "rows" in content:
        assert "under 'rows'" in error.fix


# --- hf: datasets of the local cache --------------------------------------------------


def cache_dataset(cache: Path, name: str, splits: dict[str, list[dict]], scratch: Path) -> None:
    """Writes ``name`` into the datasets cache ``cache`` as downloading it from the Hub does
    (``NAMESPACE___NAME/default/0.0.0/HASH``, Arrow files and ``dataset_info.json``), from
    local JSONL files: what an offline machine finds after an earlier download."""
    from datasets.packaged_modules.json.json import Json

    namespace, short = name.split("/")
    files = {split: str(_jsonl(scratch / f"{short}-{split}.jsonl", rows)) for split, rows in splits.items()}
    builder = Json(cache_dir=str(cache), dataset_name=short, hash="0123abcd", data_files=files)
    builder.download_and_prepare()
    # The builder names the config after its data files; the Hub's is 'default', in the namespace.
    [config_dir] = (cache / short).iterdir()
    (cache / f"{namespace}___{short}").mkdir()
    config_dir.rename(cache / f"{namespace}___{short}" / "default")


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets.config

    cache = tmp_path / "hf-cache"
    cache_dataset(cache, "someone/alpaca-toy", {"train": ALPACA, "test": ALPACA[:1]}, tmp_path)
    cache_dataset(cache, "someone/general-toy", {"train": TEXT * 3}, tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


def test_an_hf_dataset_is_read_from_the_local_cache(hub_cache: Path) -> None:
    import datasets.config

    train = load_examples("hf:someone/alpaca-toy")
    assert [e.response for e in train] == ["Bonjour", "Red", "Hello"] and train[0].line == 1
    assert [e.response for e in load_examples("hf:someone/alpaca-toy:test")] == ["Bonjour"]
    assert not datasets.config.HF_HUB_OFFLINE  # retain's cache-only reading leaves the setting as it was


def test_an_hf_dataset_absent_or_a_split_unknown_is_one_line(hub_cache: Path) -> None:
    with pytest.raises(DataError) as absent:
        load_examples_for(DataConfig(), "hf:nobody/absent", "data.ood")
    line = absent.value.render()
    assert line.startswith("hf:nobody/absent: data.ood: the dataset 'nobody/absent' is not in the local "
                           f"datasets cache ({hub_cache})")
    assert "\n" not in line and "HF_DATASETS_CACHE" in absent.value.fix
    with pytest.raises(DataError, match="Unknown split") as split:
        load_examples("hf:someone/alpaca-toy:validation", setting="data.validation")
    assert split.value.field == "data.validation" and "hf:NAME:SPLIT" in split.value.fix
    with pytest.raises(DataError, match="names no dataset"):
        load_examples("hf:")


def test_method_general_reads_hf_through_the_same_reader(hub_cache: Path) -> None:
    from retain.config import RetainConfig
    from retain.methods.general import load_general_texts

    config = RetainConfig.model_validate({"method": {"use": ["replay"],
                                                     "general": {"source": "hf:someone/general-toy", "limit": 2}}})
    assert load_general_texts(config) == [TEXT[0]["text"]] * 2
    config.method.general.source = "hf:nobody/absent"
    with pytest.raises(DataError, match="not in the local datasets cache") as caught:
        load_general_texts(config)
    assert caught.value.field == "method.general.source"


# --- through the command line ---------------------------------------------------------


def _audit(data: str, out: Path) -> str:
    """Returns the title of the finding `retain audit DATA` reports the row formats in."""
    result = CliRunner().invoke(app, ["-q", "audit", data, "--allow-small-data", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"audit of {data}" in result.output
    report = json.loads(out.read_text())
    [title] = [finding["title"] for finding in report["findings"] if finding["code"] == "row_formats"]
    return title


@pytest.mark.parametrize(("rows", "said"), [
    (ALPACA, "3 rows, Alpaca format (instruction/input/output)"),
    (SHAREGPT, "1 rows, ShareGPT format (conversations)"),
    (COMPLETION, "2 rows, TRL prompt/completion format (prompt/completion)"),
    (TEXT, "1 rows, plain text format (text)"),
])
def test_retain_audit_reports_the_format_it_read(tmp_path: Path, rows: list[dict], said: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=1))
    assert _audit(str(path), tmp_path / "audit.json") == said


def test_retain_audit_reads_an_hf_dataset(hub_cache: Path) -> None:
    title = _audit("hf:someone/alpaca-toy", hub_cache.parent / "audit.json")
    assert title == "3 rows, Alpaca format (instruction/input/output)"


def test_retain_train_prints_the_format_of_each_data_file(tmp_path: Path, hub_cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The line `retain train` echoes per data file before its audit (the audit and the doctor,
    tested on their own, are stubbed out: their reports here have no finding)."""
    from retain.audit.findings import Verdict
    from retain.config import RetainConfig
    from retain.rundir import RunDir
    from retain.training import preflight as preflight_module

    class Empty(Verdict):
        def __init__(self) -> None:
            self.findings = []

        def to_dict(self) -> dict:
            return {}

    monkeypatch.setattr(preflight_module, "run_audit", lambda *args, **kwargs: Empty())
    monkeypatch.setattr(preflight_module, "run_doctor", lambda *args, **kwargs: Empty())
    train = tmp_path / "train.json"
    train.write_text(json.dumps(ALPACA))
    config = RetainConfig.model_validate({"data": {"train": str(train), "ood": "hf:someone/general-toy"}})
    lines: list[str] = []
    (tmp_path / "run").mkdir()
    preflight_module.preflight(config, RunDir(tmp_path / "run"), [], force=False, echo=lines.append)
    assert lines[:2] == ["data.train: 3 rows, Alpaca format (instruction/input/output)",
                         "data.ood: 3 rows, plain text format (text)"]
    config.data.ood = "hf:nobody/absent"
    with pytest.raises(DataError) as caught:
        preflight_module.check_inputs(config, memory=False)
    assert caught.value.field == "data.ood" and caught.value.file == "hf:nobody/absent"
