"""General data for the methods (``method.general``): the lab world of a lab model
directory, text files, tables with prompt/response or text columns, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.config import RetainConfig, load_config
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError, DataError
from retain.lab.base import METADATA_FILE, lab_size
from retain.lab.world import build_world
from retain.methods import MethodContext
from retain.methods.general import load_general_texts


def config(*overrides: str) -> RetainConfig:
    return load_config(None, list(overrides))


@pytest.fixture()
def lab_dir(tmp_path: Path) -> Path:
    """A model directory that says it is the micro lab model (only its metadata matters)."""
    path = tmp_path / "lab-model"
    path.mkdir()
    (path / METADATA_FILE).write_text(json.dumps({"size": {"world": lab_size("micro").world.to_dict()}}))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_lab_model_directory_gives_its_own_worlds_rehearsal_corpus(lab_dir) -> None:
    world = build_world(lab_size("micro").world)
    expected = list(world.rehearsal)
    assert 0 < len(expected) < len(world.documents)
    assert load_general_texts(config(f"model.name_or_path={lab_dir}")) == expected
    assert load_general_texts(config(f"model.name_or_path={lab_dir}", "method.general.source=lab")) == expected
    assert len(expected) < len(build_world(lab_size("default").world).rehearsal)  # not the default world


def test_an_adapter_of_a_lab_model_gives_its_base_world(lab_dir, tmp_path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(lab_dir)}))
    assert load_general_texts(config(f"model.name_or_path={adapter}")) == list(
        build_world(lab_size("micro").world).rehearsal)


def test_the_limit_keeps_the_first_texts(lab_dir) -> None:
    texts = load_general_texts(config(f"model.name_or_path={lab_dir}", "method.general.limit=5"))
    assert texts == list(build_world(lab_size("micro").world).rehearsal)[:5]


def test_a_text_file_has_one_text_per_line_with_escaped_newlines(tmp_path) -> None:
    source = tmp_path / "general.txt"
    source.write_text("Q: What is 2+2?\\nA: 4\n\n   \nA plain sentence.\n")
    assert load_general_texts(config(f"method.general.source={source}")) == ["Q: What is 2+2?\nA: 4",
                                                                              "A plain sentence."]


def test_a_prompt_response_table_gives_prompt_then_response(tmp_path) -> None:
    source = write_jsonl(tmp_path / "general.jsonl", [
        {"prompt": "Q: What is 2+2?\nA:", "response": " 4"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    ])
    assert load_general_texts(config(f"method.general.source={source}")) == [
        "Q: What is 2+2?\nA: 4", "User: Hi\nAssistant: Hello."]


def test_a_text_column_is_read_by_text_field(tmp_path) -> None:
    source = write_jsonl(tmp_path / "general.jsonl", [{"body": "First text.", "id": 1},
                                                     {"body": "Second text.", "id": 2}])
    assert load_general_texts(config(f"method.general.source={source}", "method.general.text_field=body")) == [
        "First text.", "Second text."]
    with pytest.raises(DataError) as caught:
        load_general_texts(config(f"method.general.source={source}"))
    assert caught.value.field == "method.general.text_field" and "body" in caught.value.message


def test_a_missing_file_is_a_data_error_naming_the_source(tmp_path) -> None:
    with pytest.raises(DataError) as caught:
        load_general_texts(config(f"method.general.source={tmp_path / 'nowhere.txt'}"))
    assert caught.value.field == "method.general.source" and "no such file" in caught.value.message


def test_an_unknown_format_is_a_data_error(tmp_path) -> None:
    source = tmp_path / "general.md"
    source.write_text("# Notes\n")
    with pytest.raises(DataError, match="unknown general-data format"):
        load_general_texts(config(f"method.general.source={source}"))


def test_an_empty_source_is_a_data_error(tmp_path) -> None:
    source = tmp_path / "general.txt"
    source.write_text("\n  \n")
    with pytest.raises(DataError, match="no general text"):
        load_general_texts(config(f"method.general.source={source}"))


def test_another_model_without_a_source_is_a_config_error_naming_the_field(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_general_texts(config(f"model.name_or_path={tmp_path}"))
    assert caught.value.field == "method.general.source"
    assert "method.general.source" in caught.value.render()
    with pytest.raises(ConfigError, match="not a lab model"):
        load_general_texts(config(f"model.name_or_path={tmp_path}", "method.general.source=lab"))


def test_the_context_reads_the_general_texts_once(tmp_path) -> None:
    source = tmp_path / "general.txt"
    source.write_text("One text.\n")
    context = MethodContext(config=config(f"method.general.source={source}"), tokenizer=None,
                            prompt_format=PromptFormat.raw(), cache_dir=tmp_path)
    first = context.general_texts()
    source.write_text("Changed.\n")
    assert context.general_texts() is first and first == ["One text."]


def test_a_malformed_table_is_a_data_error(tmp_path) -> None:
    source = tmp_path / "general.jsonl"
    source.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match="cannot read the file as a table"):
        load_general_texts(config(f"method.general.source={source}"))
