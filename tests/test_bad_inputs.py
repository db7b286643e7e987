"""Bad input, everywhere it enters, through the real CLI.

Every case of :data:`CASES` is a user mistake: a data file, a config, a ``--set``
override, a probe suite, a sweep file or a command-line value that retain must refuse
with one line on stderr (``error: file:line: field: message Fix: ...``) naming what
the case says it names, exit code 2, no traceback, and no file written. Each case runs
in its own empty directory, so "no file written" is checked by listing it afterwards.

``benchmarks/reliability_bad_inputs.py`` imports :data:`CASES` and :func:`run_case` to
count the corpus by kind for docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KINDS = ("data file", "config", "override", "probe suite", "sweep file", "command line")

# Commands that read a data file (or a suite) and stop at the first problem, before
# any model is loaded: `eval --task` needs clean rows, `audit` refuses unreadable files.
_EVAL_TASK = "eval lab --suite general --no-drift --task"
_EVAL_SUITE = "eval lab --no-drift --suite"
_GOOD_ROW = '{"prompt": "Is the sky blue?", "response": "yes"}\n'
_GOOD_CONFIG = "data:\n  train: train.jsonl\n  eval: test.jsonl\n"
_GOOD_DATA = {"train.jsonl": _GOOD_ROW * 3, "test.jsonl": _GOOD_ROW, "config.yaml": _GOOD_CONFIG}
_GOOD_ITEM = '{"id": "a1", "category": "sky", "prompt": "Is the sky blue?", "answer": "yes"}\n'


@dataclass(frozen=True)
class Case:
    """One bad input and what the error about it must name.

    Attributes:
        kind: One of :data:`KINDS`.
        name: A short unique name (the test id).
        args: The command line after ``retain -q``, split like a shell would.
        files: Files written into the case's empty directory first (text or bytes);
            a name ending in ``/`` is an empty directory.
        expect: Strings the error line must contain (file:line, field, the problem).
        known: Why retain still mishandles the case, if it does, and where the fix
            belongs; such a case is an expected failure (strict: it must still fail).
    """

    kind: str
    name: str
    args: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    expect: tuple[str, ...] = ()
    known: str = ""

    def __hash__(self) -> int:
        return hash((self.kind, self.name))


@dataclass
class Outcome:
    """What the CLI did with one case."""

    code: int
    stdout: str
    stderr: str
    written: list[str]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def problems(self, case: Case) -> list[str]:
        """Returns what is wrong with how the CLI handled ``case`` (empty: all good)."""
        found = []
        if "Traceback" in self.stderr or "Traceback" in self.stdout:
            found.append("traceback")
        if self.code != 2:
            found.append(f"exit code {self.code}, not 2")
        lines = self.error_lines
        if len(lines) != 1 or not lines[0].startswith("error: "):
            found.append(f"{len(lines)} lines on stderr, not one 'error: ...' line")
        missing = [text for text in case.expect if not lines or text not in lines[0]]
        if missing:
            found.append(f"the error does not name {missing}")
        if self.written:
            found.append(f"wrote {self.written}")
        return found


def _c(kind: str, name: str, args: str, files: dict[str, str | bytes] | None = None,
       *expect: str) -> Case:
    return Case(kind, name, args, dict(files or {}), tuple(expect))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CASES: list[Case] = [
    # --- data files ---------------------------------------------------------------------
    _c("data file", "jsonl_broken_line", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + '{"prompt": "a", "response": \n'}, "d.jsonl:2:", "invalid JSON"),
    _c("data file", "jsonl_truncated_last_line", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW * 2 + '{"prompt": "a", "resp'}, "d.jsonl:3:"),
    _c("data file", "jsonl_prompt_is_a_number", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"prompt": 5, "response": "yes"}\n'}, "d.jsonl:1:", "prompt:", "must be text"),
    _c("data file", "jsonl_response_is_a_list", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + '{"prompt": "a", "response": ["yes"]}\n'}, "d.jsonl:2:", "response:"),
    _c("data file", "jsonl_missing_response", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + '{"prompt": "a"}\n'}, "d.jsonl:2:", "response:", "missing field"),
    _c("data file", "jsonl_no_known_fields", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"question": "a", "answer": "b"}\n'}, "d.jsonl:1:", "prompt:"),
    _c("data file", "jsonl_empty_response", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + '{"prompt": "a", "response": "  "}\n'}, "d.jsonl:2:", "response:"),
    _c("data file", "jsonl_row_is_an_array", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '["a", "b"]\n'}, "d.jsonl:1:", "not an object"),
    _c("data file", "jsonl_row_is_a_string", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + '"just text"\n'}, "d.jsonl:2:"),
    _c("data file", "jsonl_empty_file", f"{_EVAL_TASK} d.jsonl", {"d.jsonl": ""},
       "d.jsonl:", "no examples"),
    _c("data file", "jsonl_blank_lines_only", f"{_EVAL_TASK} d.jsonl", {"d.jsonl": "\n  \n\t\n"},
       "d.jsonl:", "no examples"),
    _c("data file", "jsonl_invalid_utf8", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW.encode() + b'{"prompt": "\xff\xfe", "response": "x"}\n'},
       "d.jsonl:2:", "UTF-8"),
    _c("data file", "jsonl_utf16", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW.encode("utf-16")}, "d.jsonl:1:", "UTF-8"),
    _c("data file", "jsonl_nul_bytes", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW.encode() + b"\x00\x00\x00\n"}, "d.jsonl:2:"),
    _c("data file", "jsonl_huge_garbage_line", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + "x" * 5_000_000 + "\n"}, "d.jsonl:2:", "invalid JSON"),
    _c("data file", "jsonl_huge_integer", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"prompt": "a", "response": "b", "id": ' + "9" * 5000 + "}\n"}, "d.jsonl:1:"),
    _c("data file", "jsonl_deeply_nested", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": _GOOD_ROW + '{"prompt": "a", "response": "b", "x": ' + _nested(100_000) + "}\n"},
       "d.jsonl:2:"),
    _c("data file", "jsonl_lone_surrogate", "audit d.jsonl",
       {"d.jsonl": '{"prompt": "a\\ud9dc", "response": "b"}\n'}, "d.jsonl:1:", "surrogate"),
    _c("data file", "jsonl_nan_prompt", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"prompt": NaN, "response": "b"}\n'}, "d.jsonl:1:", "prompt:"),
    _c("data file", "chat_messages_not_a_list", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"messages": "hello"}\n'}, "d.jsonl:1:", "messages:"),
    _c("data file", "chat_unknown_role", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"messages": [{"role": "human", "content": "hi"}, '
                   '{"role": "assistant", "content": "yo"}]}\n'}, "d.jsonl:1:", "messages[0].role:"),
    _c("data file", "chat_sharegpt_unknown_speaker", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"conversations": [{"from": "alien", "value": "hi"}]}\n'}, "d.jsonl:1:",
       "conversations[0].from:", "unknown speaker 'alien'"),
    _c("data file", "chat_sharegpt_tool_turn", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"conversations": [{"from": "human", "value": "hi"}, '
                   '{"from": "function_call", "value": "{}"}]}\n'}, "d.jsonl:1:", "tool turns"),
    _c("data file", "alpaca_without_output", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"instruction": "Say hi", "input": ""}\n'}, "d.jsonl:1:", "output:"),
    _c("data file", "json_neither_array_nor_jsonl", f"{_EVAL_TASK} d.json",
       {"d.json": '{\n  "rows": [{"text": "a"}]\n}\n'}, "d.json:1:", "one JSON object over several lines"),
    _c("data file", "json_array_broken", f"{_EVAL_TASK} d.json",
       {"d.json": '[\n  {"text": "a"},\n  {"text": "b"\n]\n'}, "d.json:4:", "invalid JSON"),
    _c("data file", "hf_dataset_not_cached", f"{_EVAL_TASK} hf:nobody/absent",
       {}, "hf:nobody/absent:", "not in the local datasets cache"),
    _c("data file", "chat_no_assistant_turn", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"messages": [{"role": "user", "content": "hi"}]}\n'}, "d.jsonl:1:", "messages:"),
    _c("data file", "chat_content_not_text", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"messages": [{"role": "user", "content": "hi"}, '
                   '{"role": "assistant", "content": 7}]}\n'}, "d.jsonl:1:", "messages[1].content:"),
    _c("data file", "chat_turn_not_an_object", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"messages": ["hi", "yo"]}\n'}, "d.jsonl:1:", "messages[0]:"),
    _c("data file", "chat_empty_list", f"{_EVAL_TASK} d.jsonl",
       {"d.jsonl": '{"messages": []}\n'}, "d.jsonl:1:", "messages:"),
    _c("data file", "csv_ragged_row", f"{_EVAL_TASK} d.csv",
       {"d.csv": "prompt,response\nIs it?,yes\nIs it, really?,no\n"}, "d.csv:3:", "more cell"),
    _c("data file", "csv_short_row", f"{_EVAL_TASK} d.csv",
       {"d.csv": "prompt,response\nIs it?,yes\nIs it\n"}, "d.csv:3:", "response:"),
    _c("data file", "csv_wrong_columns", f"{_EVAL_TASK} d.csv",
       {"d.csv": "question,answer\nIs it?,yes\n"}, "d.csv:", "the columns are: question, answer"),
    _c("data file", "csv_empty_file", f"{_EVAL_TASK} d.csv", {"d.csv": ""}, "d.csv:", "columns"),
    _c("data file", "csv_header_only", f"{_EVAL_TASK} d.csv", {"d.csv": "prompt,response\n"},
       "d.csv:", "no examples"),
    _c("data file", "csv_invalid_utf8", f"{_EVAL_TASK} d.csv",
       {"d.csv": b"prompt,response\nIs it?,\xff\xfeyes\n"}, "d.csv", "UTF-8"),
    _c("data file", "csv_messages_not_json", f"{_EVAL_TASK} d.csv",
       {"d.csv": 'messages\n"[{role: user}]"\n'}, "d.csv:2:", "messages:"),
    _c("data file", "csv_quote_inside_a_cell", f"{_EVAL_TASK} d.csv",
       {"d.csv": 'prompt,response\nIs it?,yes\n"Is" it?,no\n'}, "d.csv:3:", "malformed CSV"),
    _c("data file", "csv_unclosed_quote", f"{_EVAL_TASK} d.csv",
       {"d.csv": 'prompt,response\n"Is it?,yes\nWhat?,no\n'}, "d.csv:2:"),
    _c("data file", "directory_not_a_dataset", f"{_EVAL_TASK} folder",
       {"folder/notes.txt": "hello"}, "folder:", "save_to_disk"),
    _c("data file", "empty_directory", f"{_EVAL_TASK} folder", {"folder/": ""}, "folder:"),
    _c("data file", "directory_with_broken_state", f"{_EVAL_TASK} folder",
       {"folder/state.json": "{}", "folder/dataset_info.json": "{}"}, "folder:"),
    _c("data file", "parquet_that_is_text", f"{_EVAL_TASK} d.parquet",
       {"d.parquet": _GOOD_ROW}, "d.parquet:", "Parquet"),
    _c("data file", "parquet_empty_file", f"{_EVAL_TASK} d.parquet", {"d.parquet": ""},
       "d.parquet:", "Parquet"),
    _c("data file", "unknown_extension", f"{_EVAL_TASK} d.txt", {"d.txt": _GOOD_ROW},
       "d.txt:", "extension"),
    _c("data file", "missing_file", f"{_EVAL_TASK} nothing.jsonl", {}, "nothing.jsonl:", "not found"),
    _c("data file", "audit_missing_file", "audit nothing.jsonl", {}, "nothing.jsonl:", "not found"),
    _c("data file", "audit_every_row_malformed", "audit d.jsonl",
       {"d.jsonl": "{bad\n[1]\n"}, "d.jsonl:1:", "no usable examples"),
    _c("data file", "audit_eval_file_empty", "audit train.jsonl --eval e.jsonl",
       {"train.jsonl": _GOOD_ROW * 3, "e.jsonl": ""}, "e.jsonl:", "no examples"),
    _c("data file", "audit_csv_without_columns", "audit d.csv", {"d.csv": "a;b\n1;2\n"},
       "d.csv:", "columns"),
    _c("data file", "audit_directory_not_a_dataset", "audit folder",
       {"folder/readme.md": "# hi"}, "folder:", "save_to_disk"),
    _c("data file", "format_jsonl_on_a_directory", f"{_EVAL_TASK} folder --config c.yaml",
       {"folder/x.jsonl": _GOOD_ROW, "c.yaml": "data:\n  format: jsonl\n"}, "folder:", "format"),
    _c("data file", "sweep_data_size_on_broken_data", "sweep s.yaml",
       {"train.jsonl": "{broken\n", "config.yaml": "data:\n  train: train.jsonl\n  eval: train.jsonl\n",
        "s.yaml": "base: config.yaml\nspace:\n  data.size: [1, 2]\n"}, "train.jsonl:1:"),
    # --- configs ------------------------------------------------------------------------
    _c("config", "unknown_key", "config show c.yaml", {"c.yaml": "train:\n  lrr: 1\n"},
       "c.yaml:2:", "train.lrr:", "did you mean 'lr'"),
    _c("config", "unknown_section", "config show c.yaml", {"c.yaml": "trian:\n  lr: 1\n"},
       "c.yaml:1:", "trian"),
    _c("config", "learning_rate_fast", "config show c.yaml", {"c.yaml": "train:\n  lr: fast\n"},
       "c.yaml:2:", "train.lr:"),
    _c("config", "negative_learning_rate", "config show c.yaml", {"c.yaml": "train:\n  lr: -0.1\n"},
       "c.yaml:2:", "train.lr:"),
    _c("config", "zero_epochs", "config show c.yaml", {"c.yaml": "train:\n  epochs: 0\n"},
       "c.yaml:2:", "train.epochs:"),
    _c("config", "infinite_epochs", "config show c.yaml", {"c.yaml": "train:\n  epochs: .inf\n"},
       "c.yaml:2:", "train.epochs:"),
    _c("config", "nan_learning_rate", "config show c.yaml", {"c.yaml": "train:\n  lr: .nan\n"},
       "c.yaml:2:", "train.lr:"),
    _c("config", "threshold_above_one", "config show c.yaml",
       {"c.yaml": "guards:\n  forgetting:\n    threshold: 2\n"}, "c.yaml:3:", "guards.forgetting.threshold:"),
    _c("config", "unknown_method", "config show c.yaml", {"c.yaml": "method:\n  use: [lora, magic]\n"},
       "c.yaml:2:", "method.use"),
    _c("config", "unknown_device", "config show c.yaml", {"c.yaml": "model:\n  device: gpu\n"},
       "c.yaml:2:", "model.device:"),
    _c("config", "wrong_literal", "config show c.yaml", {"c.yaml": "model:\n  dtype: float64\n"},
       "c.yaml:2:", "model.dtype:"),
    _c("config", "bool_for_a_list", "config show c.yaml", {"c.yaml": "probes:\n  suites: yes\n"},
       "c.yaml:2:", "probes.suites:"),
    _c("config", "list_for_a_number", "config show c.yaml", {"c.yaml": "train:\n  lr: [1, 2]\n"},
       "c.yaml:2:", "train.lr:"),
    _c("config", "section_is_a_number", "config show c.yaml", {"c.yaml": "train: 5\n"},
       "c.yaml:1:", "train:"),
    _c("config", "top_level_is_a_list", "config show c.yaml", {"c.yaml": "- train\n- lr\n"},
       "c.yaml:1:", "mapping"),
    _c("config", "top_level_is_text", "config show c.yaml", {"c.yaml": "hello\n"}, "c.yaml:1:"),
    _c("config", "yaml_syntax_error", "config show c.yaml", {"c.yaml": "train:\n  lr: [1, 2\n"},
       "c.yaml:", "invalid YAML"),
    _c("config", "yaml_tab_indentation", "config show c.yaml", {"c.yaml": "train:\n\tlr: 1\n"},
       "c.yaml:2:", "invalid YAML"),
    _c("config", "duplicate_key", "config show c.yaml", {"c.yaml": "train:\n  lr: 1\n  lr: 2\n"},
       "c.yaml:3:", "train.lr:", "twice"),
    _c("config", "python_tag", "config show c.yaml",
       {"c.yaml": "train: !!python/object/apply:os.system ['true']\n"}, "c.yaml:1:", "invalid YAML"),
    _c("config", "integer_key", "config show c.yaml", {"c.yaml": "train:\n  1: 2\n"}, "c.yaml:2:", "train.1"),
    _c("config", "null_key", "config show c.yaml", {"c.yaml": "~: 3\n"}, "c.yaml:1:"),
    _c("config", "date_for_text", "config show c.yaml", {"c.yaml": "output:\n  name: 2024-01-01\n"},
       "c.yaml:2:", "output.name:"),
    _c("config", "deeply_nested_yaml", "config show c.yaml", {"c.yaml": "train: " + _nested(5000) + "\n"},
       "c.yaml:", "nested too deeply"),
    _c("config", "invalid_utf8", "config show c.yaml", {"c.yaml": b"train:\n  lr: \xff\n"}, "c.yaml:",
       "UTF-8"),
    _c("config", "missing_file", "config show nothing.yaml", {}, "nothing.yaml:", "not found"),
    _c("config", "directory_for_a_file", "config show folder", {"folder/": ""}, "folder:"),
    _c("config", "unknown_audit_task", "config show c.yaml", {"c.yaml": "audit:\n  task: poetry\n"},
       "c.yaml:2:", "audit"),
    _c("config", "train_with_unknown_key", "train c.yaml", {"c.yaml": "train:\n  epoch: 3\n"},
       "c.yaml:2:", "train.epoch:"),
    _c("config", "train_without_data", "train c.yaml", {"c.yaml": "train:\n  epochs: 1\n"},
       "data.train:"),
    Case("config", "train_missing_data_file", "train config.yaml",
         {"config.yaml": "data:\n  train: nothing.jsonl\n"}, ("nothing.jsonl:", "not found")),
    _c("config", "audit_with_bad_config", "audit train.jsonl --config c.yaml",
       {"train.jsonl": _GOOD_ROW, "c.yaml": "audit:\n  min_rows: -5\n"}, "c.yaml:2:", "audit.min_rows:"),
    _c("config", "doctor_with_bad_config", "doctor c.yaml", {"c.yaml": "model: {dtype: 8}\n"},
       "c.yaml:1:", "model.dtype:"),
    _c("config", "baseline_with_bad_config", "baseline c.yaml", {"c.yaml": "eval:\n  shots: [-1]\n"},
       "c.yaml:2:", "eval.shots:"),
    # --- --set overrides ----------------------------------------------------------------
    _c("override", "learning_rate_fast", "config show --set train.lr=fast", {}, "--set", "train.lr:"),
    _c("override", "no_equals_sign", "config show --set train.lr", {}, "--set", "malformed"),
    _c("override", "empty_key", "config show --set =5", {}, "--set", "malformed"),
    _c("override", "unknown_setting", "config show --set train.lrr=1", {}, "--set", "train.lrr:",
       "did you mean"),
    _c("override", "through_a_leaf", "config show --set train.lr.x=1", {}, "--set", "train.lr.x:"),
    _c("override", "unparsable_value", "config show --set train.lr=[1,", {}, "--set", "train.lr:"),
    _c("override", "section_to_a_number", "config show --set train=5", {}, "--set", "train"),
    _c("override", "unknown_method", "config show --set method=[lora,magic]", {}, "--set", "method.use"),
    _c("override", "infinite_value", "config show --set train.epochs=1e999", {}, "--set", "train.epochs:"),
    _c("override", "empty_prompt_list", "config show --set guards.smoke.prompts=[]", {}, "--set",
       "guards.smoke.prompts:"),
    _c("override", "reserved_yaml_character", "config show --set data.train=@x", {}, "--set", "data.train:"),
    _c("override", "into_a_scalar_section", "config show c.yaml --set train.lr=1", {"c.yaml": "train: 5\n"},
       "train"),
    _c("override", "on_train", "train config.yaml --set train.batch_size=0", _GOOD_DATA, "--set",
       "train.batch_size:"),
    _c("override", "on_audit", "audit train.jsonl --set audit.near_duplicate_threshold=2",
       {"train.jsonl": _GOOD_ROW}, "--set", "audit.near_duplicate_threshold:"),
    # --- probe suites -------------------------------------------------------------------
    _c("probe suite", "invalid_json_line", f"{_EVAL_SUITE} s.jsonl", {"s.jsonl": _GOOD_ITEM + "{oops\n"},
       "s.jsonl:2:", "JSON"),
    _c("probe suite", "missing_answer", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": '{"id": "a", "category": "c", "prompt": "p"}\n'}, "s.jsonl:1:", "answer"),
    _c("probe suite", "unknown_field", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM.replace('"answer"', '"weight": 2, "answer"')}, "s.jsonl:1:", "weight"),
    _c("probe suite", "id_is_a_number", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM.replace('"a1"', "7")}, "s.jsonl:1:", "id:"),
    _c("probe suite", "answer_not_an_option", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM.replace('"answer": "yes"', '"answer": "yes", "options": ["no", "maybe"]')},
       "s.jsonl:1:", "options"),
    _c("probe suite", "regex_without_pattern", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM.replace('"answer": "yes"', '"answer": "yes", "checker": "regex"')},
       "s.jsonl:1:", "pattern"),
    _c("probe suite", "invalid_regex", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM.replace('"answer": "yes"', '"answer": "yes", "checker": "regex", "pattern": "(("')},
       "s.jsonl:1:", "regular expression"),
    _c("probe suite", "unknown_checker", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM.replace('"answer": "yes"', '"answer": "yes", "checker": "fuzzy"')},
       "s.jsonl:1:", "checker"),
    _c("probe suite", "duplicate_id", f"{_EVAL_SUITE} s.jsonl", {"s.jsonl": _GOOD_ITEM * 2},
       "s.jsonl:2:", "id:", "duplicate"),
    _c("probe suite", "no_items", f"{_EVAL_SUITE} s.jsonl", {"s.jsonl": '{"suite": "x", "version": "1"}\n'},
       "s.jsonl:", "no items"),
    _c("probe suite", "empty_file", f"{_EVAL_SUITE} s.jsonl", {"s.jsonl": ""}, "s.jsonl:", "no items"),
    _c("probe suite", "unknown_header_key", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": '{"suite": "x", "author": "me"}\n' + _GOOD_ITEM}, "s.jsonl:1:", "author"),
    _c("probe suite", "stop_not_a_list", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": '{"suite": "x", "stop": "\\n"}\n' + _GOOD_ITEM}, "s.jsonl:1:", "stop:"),
    _c("probe suite", "item_is_a_list", f"{_EVAL_SUITE} s.jsonl", {"s.jsonl": _GOOD_ITEM + "[1, 2]\n"},
       "s.jsonl:2:"),
    _c("probe suite", "invalid_utf8", f"{_EVAL_SUITE} s.jsonl", {"s.jsonl": _GOOD_ITEM.encode() + b"\xff\n"},
       "s.jsonl:", "UTF-8"),
    _c("probe suite", "huge_integer", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM + '{"id": ' + "9" * 5000 + "}\n"}, "s.jsonl:2:"),
    _c("probe suite", "deeply_nested", f"{_EVAL_SUITE} s.jsonl",
       {"s.jsonl": _GOOD_ITEM + _nested(100_000) + "\n"}, "s.jsonl:2:"),
    _c("probe suite", "yaml_not_a_mapping", f"{_EVAL_SUITE} s.yaml", {"s.yaml": "- a\n- b\n"},
       "s.yaml:", "items"),
    _c("probe suite", "yaml_invalid", f"{_EVAL_SUITE} s.yaml", {"s.yaml": "items: [\n"}, "s.yaml:", "YAML"),
    _c("probe suite", "yaml_item_is_null", f"{_EVAL_SUITE} s.yaml",
       {"s.yaml": "suite: x\nitems:\n  -\n"}, "s.yaml:3:"),
    _c("probe suite", "yaml_version_is_a_list", f"{_EVAL_SUITE} s.yaml",
       {"s.yaml": "suite: x\nversion: [1]\nitems:\n  - {id: a, category: c, prompt: p, answer: y}\n"},
       "s.yaml:", "version:"),
    _c("probe suite", "yaml_deeply_nested", f"{_EVAL_SUITE} s.yaml",
       {"s.yaml": "items: " + _nested(5000) + "\n"}, "s.yaml:"),
    _c("probe suite", "unknown_extension", f"{_EVAL_SUITE} s.txt", {"s.txt": _GOOD_ITEM}, "s.txt:"),
    _c("probe suite", "no_such_suite", f"{_EVAL_SUITE} nothing", {}, "nothing"),
    _c("probe suite", "in_the_audit_config", "audit train.jsonl --config c.yaml",
       {"train.jsonl": _GOOD_ROW, "c.yaml": "probes:\n  suites: [s.jsonl]\n", "s.jsonl": "{x\n"}, "s.jsonl:1:"),
    Case("probe suite", "in_the_train_config", "train c.yaml",
         {"train.jsonl": _GOOD_ROW, "c.yaml": "data:\n  train: train.jsonl\nprobes:\n  suites: [s.yaml]\n",
          "s.yaml": "items: 5\n"}, ("s.yaml:",)),
    _c("probe suite", "yaml_python_tag", f"{_EVAL_SUITE} s.yaml",
       {"s.yaml": "suite: x\nitems:\n  - !!python/object/apply:os.getcwd []\n"}, "s.yaml:3:", "YAML"),
    _c("probe suite", "yaml_items_through_a_merge_key", f"{_EVAL_SUITE} s.yaml",
       {"s.yaml": "<<: {items: [{id: a, category: c, prompt: p}]}\n"}, "s.yaml:1:", "answer"),
    # --- sweep files --------------------------------------------------------------------
    _c("sweep file", "missing_base", "sweep s.yaml", {"s.yaml": "space:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:", "base"),
    _c("sweep file", "missing_space", "sweep s.yaml", {**_GOOD_DATA, "s.yaml": "base: config.yaml\n"},
       "s.yaml:", "space"),
    _c("sweep file", "unknown_key", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nmod: grid\nspace:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:2:", "mod:"),
    _c("sweep file", "base_not_found", "sweep s.yaml", {"s.yaml": "base: nothing.yaml\nspace:\n  train.lr: [1]\n"},
       "s.yaml:1:", "base:"),
    _c("sweep file", "empty_space", "sweep s.yaml", {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace: {}\n"},
       "s.yaml:2:", "space:"),
    _c("sweep file", "space_entry_is_text", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: fast\n"}, "s.yaml:3:", "space.train.lr:"),
    _c("sweep file", "learning_rate_fast", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: [1.0e-4, fast]\n"},
       "s.yaml:3:", "space.train.lr:"),
    _c("sweep file", "unknown_setting", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lrr: [1.0e-4]\n"}, "s.yaml:3:", "space.train.lrr:"),
    _c("sweep file", "range_without_high", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nmode: optuna\ntrials: 2\nspace:\n  train.lr: {low: 1.0e-5}\n"},
       "s.yaml:5:", "space.train.lr:"),
    _c("sweep file", "low_above_high", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nmode: optuna\ntrials: 2\nspace:\n  train.lr: {low: 1, high: 0.1}\n"},
       "s.yaml:5:", "space.train.lr:"),
    _c("sweep file", "range_to_infinity", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.epochs: {low: 1, high: .inf, step: 1}\n"},
       "s.yaml:3:", "space.train.epochs:"),
    _c("sweep file", "range_step_too_small", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: {low: 0.0001, high: 0.01, step: 1.0e-15}\n"},
       "s.yaml:3:", "space.train.lr:"),
    _c("sweep file", "range_of_text", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nmode: optuna\ntrials: 2\nspace:\n  train.lr: {low: a, high: b}\n"},
       "s.yaml:5:", "space.train.lr:"),
    _c("sweep file", "grid_range_without_step", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: {low: 1.0e-5, high: 1.0e-3}\n"},
       "s.yaml:3:", "space.train.lr:"),
    _c("sweep file", "optuna_without_trials", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nmode: optuna\nspace:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:2:", "trials:"),
    _c("sweep file", "zero_trials", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\ntrials: 0\nspace:\n  train.lr: [1.0e-4]\n"}, "s.yaml:2:", "trials:"),
    _c("sweep file", "trials_is_text", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\ntrials: many\nspace:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:2:", "trials:"),
    _c("sweep file", "bad_storage", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nstorage: not a url\nspace:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:2:", "storage:"),
    _c("sweep file", "unknown_database_driver", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nstorage: 'nosuchdb://h/x'\nspace:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:2:", "storage:"),
    _c("sweep file", "invalid_name", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nname: ../up\nspace:\n  train.lr: [1.0e-4]\n"}, "s.yaml:2:", "name:"),
    _c("sweep file", "value_listed_twice", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: [1.0e-4, 1.0e-4]\n"},
       "s.yaml:3:", "space.train.lr:"),
    _c("sweep file", "data_size_too_big", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  data.size: [2, 50]\n"}, "s.yaml:3:", "space.data.size:"),
    _c("sweep file", "ood_without_data", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nobjectives:\n  task: ood\nspace:\n  train.lr: [1.0e-4]\n"},
       "s.yaml:3:", "objectives.task:"),
    _c("sweep file", "bad_set_override", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nset: [train.lr=fast]\nspace:\n  train.epochs: [1]\n"},
       "s.yaml:2:", "set.0:"),
    _c("sweep file", "output_in_space", "sweep s.yaml",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  output.name: [a, b]\n"}, "s.yaml:3:", "space.output.name:"),
    _c("sweep file", "top_level_is_a_list", "sweep s.yaml", {"s.yaml": "- base\n"}, "s.yaml:1:"),
    _c("sweep file", "invalid_yaml", "sweep s.yaml", {"s.yaml": "base: [\n"}, "s.yaml:", "invalid YAML"),
    _c("sweep file", "bad_base_config", "sweep s.yaml",
       {"config.yaml": "train:\n  lr: fast\n", "s.yaml": "base: config.yaml\nspace:\n  train.epochs: [1]\n"},
       "config.yaml:2:", "train.lr:"),
    _c("sweep file", "missing_file", "sweep nothing.yaml", {}, "nothing.yaml:", "not found"),
    # --- command-line values ------------------------------------------------------------
    _c("command line", "unknown_command", "trian c.yaml", {}, "trian"),
    _c("command line", "unknown_option", "audit d.jsonl --strictt", {}, "--strictt"),
    _c("command line", "missing_argument", "audit", {}, "missing argument 'data'"),
    _c("command line", "trials_not_a_number", "sweep s.yaml --trials abc", {}, "--trials"),
    _c("command line", "trials_zero", "sweep s.yaml --trials 0",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: [1.0e-4]\n"}, "--trials"),
    _c("command line", "bad_storage_url", "sweep s.yaml --storage nonsense",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: [1.0e-4]\n"}, "--storage", "storage:"),
    _c("command line", "sweep_name_with_slash", "sweep s.yaml --name a/b",
       {**_GOOD_DATA, "s.yaml": "base: config.yaml\nspace:\n  train.lr: [1.0e-4]\n"}, "--name", "name:"),
    _c("command line", "audit_unknown_task", "audit train.jsonl --task poetry", {"train.jsonl": _GOOD_ROW},
       "poetry"),
    _c("command line", "audit_unknown_domain", "audit train.jsonl --domain astrology", {"train.jsonl": _GOOD_ROW},
       "astrology"),
    _c("command line", "audit_json_into_missing_folder", "audit train.jsonl --allow-small-data --json no/such/out.json",
       {"train.jsonl": _GOOD_ROW * 3}, "--json", "no/such"),
    _c("command line", "eval_json_into_missing_folder", f"{_EVAL_TASK} d.jsonl --json no/such/out.json",
       {"d.jsonl": _GOOD_ROW}, "--json", "no/such"),
    _c("command line", "eval_missing_ood_file", "eval lab --suite general --no-drift --ood nothing.jsonl", {},
       "nothing.jsonl:"),
    _c("command line", "eval_missing_reference", "eval lab --suite general --reference nothing.txt", {},
       "nothing.txt"),
    _c("command line", "eval_compare_to_missing", "eval lab --suite general --no-drift --compare-to nothing.json",
       {}, "nothing.json"),
    _c("command line", "eval_compare_to_garbage", "eval lab --suite general --no-drift --compare-to r.json",
       {"r.json": "not json"}, "r.json"),
    _c("command line", "eval_compare_to_wrong_shape", "eval lab --suite general --no-drift --compare-to r.json",
       {"r.json": "[1, 2, 3]"}, "r.json"),
    _c("command line", "train_run_name_with_slash", "train config.yaml --name ../escape", _GOOD_DATA, "name"),
    _c("command line", "train_resume_without_name", "train config.yaml --resume", _GOOD_DATA, "output.name:"),
    _c("command line", "config_reference_into_missing_folder", "config reference --write no/such/CONFIG.md", {},
       "--write", "no/such"),
    _c("command line", "lab_data_negative_rows", "lab data out --n-train -5", {}, "--n-train"),
    _c("command line", "lab_data_share_above_one", "lab data out --duplicates 2", {}, "--duplicates"),
    _c("command line", "lab_step_unknown", "lab step 99", {}, "99"),
    _c("command line", "lab_step_unknown_name", "lab step finale", {}, "finale"),
    _c("command line", "lab_build_base_unknown_size", "lab build-base --size huge", {}, "huge"),
    _c("command line", "lab_compare_unknown_method", "lab compare out --method magic", {}, "magic"),
    _c("command line", "lab_compare_zero_seeds", "lab compare out --seeds 0", {}, "--seeds"),
    _c("command line", "lab_workers_zero", "lab --workers 0", {}, "--workers"),
    _c("command line", "report_missing_path", "report nothing", {}, "nothing"),
    _c("command line", "report_of_a_plain_file", "report notes.txt", {"notes.txt": "hello"}, "notes.txt"),
    _c("command line", "report_of_a_garbage_json", "report r.json", {"r.json": "{]"}, "r.json"),
]


# --- running a case ---------------------------------------------------------------------


def _write_files(case: Case, directory: Path) -> None:
    for name, content in case.files.items():
        path = directory / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _listing(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


def run_case(case: Case, directory: Path, *, in_subprocess: bool = False) -> Outcome:
    """Runs ``retain -q <case.args>`` in ``directory`` (empty; the case's files are written first).

    In-process, ``retain.cli.main`` runs with its streams captured, as the ``retain``
    script would; an exception escaping it is printed as Python would print it. With
    ``in_subprocess`` the real interpreter runs ``python -m retain.cli``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _write_files(case, directory)
    before = _listing(directory)
    argv = ["-q", *shlex.split(case.args)]
    if in_subprocess:
        done = subprocess.run([sys.executable, "-m", "retain.cli", *argv], cwd=directory,
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        code, stdout, stderr = _run_in_process(argv, directory)
    return Outcome(code, stdout, stderr, sorted(_listing(directory) - before))


def _run_in_process(argv: list[str], directory: Path) -> tuple[int, str, str]:
    from retain import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = ["retain", *argv]
    os.chdir(directory)
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # what the interpreter would print for an escaping error
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return code, stdout.getvalue(), stderr.getvalue()


def count_by_kind(cases: list[Case] = CASES) -> dict[str, int]:
    """Returns the number of cases of each kind, in the order of :data:`KINDS`."""
    return {kind: sum(case.kind == kind for case in cases) for kind in KINDS}


# --- tests ------------------------------------------------------------------------------


def test_the_corpus_is_well_formed() -> None:
    names = [(case.kind, case.name) for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique within a kind"
    assert {case.kind for case in CASES} == set(KINDS)
    assert all(case.expect for case in CASES), "every case names what its error must say"


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.known)] if case.known else []
    return pytest.param(case, marks=marks, id=f"{case.kind.replace(' ', '_')}-{case.name}")


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case: Case, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path / "case")
    assert not outcome.problems(case), (outcome.problems(case), outcome.stderr[-3000:])


# The in-process runner must behave as the installed script does: a few cases of each
# kind through a real interpreter.
_SUBPROCESS = [("data file", "jsonl_broken_line"), ("data file", "csv_ragged_row"),
               ("config", "unknown_key"), ("override", "learning_rate_fast"), ("probe suite", "missing_answer"),
               ("sweep file", "range_without_high"), ("command line", "trials_not_a_number"),
               ("command line", "missing_argument")]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), _SUBPROCESS)
def test_the_real_interpreter_agrees(kind: str, name: str, tmp_path: Path) -> None:
    case = next(case for case in CASES if (case.kind, case.name) == (kind, name))
    outcome = run_case(case, tmp_path / "case", in_subprocess=True)
    assert not outcome.problems(case), (outcome.problems(case), outcome.stderr[-3000:])
    in_process = run_case(case, tmp_path / "again")
    assert outcome.error_lines == in_process.error_lines


def test_a_good_input_passes_the_same_checks_except_the_error(tmp_path: Path) -> None:
    """The harness can tell success from failure: a valid config shows and exits 0."""
    case = Case("config", "valid", "config show c.yaml", {"c.yaml": "train:\n  lr: 1.0e-4\n"}, ("c.yaml",))
    outcome = run_case(case, tmp_path / "case")
    assert outcome.code == 0 and "lr: 0.0001" in outcome.stdout
    assert outcome.problems(case) == ["exit code 0, not 2", "0 lines on stderr, not one 'error: ...' line",
                                      "the error does not name ['c.yaml']"]


def test_the_kinds_are_all_represented() -> None:
    counts = count_by_kind()
    assert all(count >= 5 for count in counts.values()), counts
    json.dumps(counts)  # the reliability script stores it as JSON
