"""The real CLI, run in-process through typer's runner and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import retain
from retain.cli import app
from retain.errors import ConfigError

runner = CliRunner()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retain.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and retain.__version__ in result.stdout


def test_help_lists_the_working_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "lab" in result.stdout and "config" in result.stdout


def test_config_show_applies_overrides(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 2.0e-4\n")
    result = runner.invoke(app, ["config", "show", str(config), "--set", "train.epochs=3", "--set", "method=[lora]"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.0002" in result.stdout and "epochs: 3.0" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["config", "show"]])
def test_help_and_config_show_answer_without_loading_torch_or_transformers(args) -> None:
    # Issue 25: `config show` and `--help` answer in well under 2 s because they never import
    # the heavy libraries (about 1 s for transformers alone, more with torch).
    probe = ("import sys, runpy; sys.argv = ['retain', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('retain.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "sys.stderr.write(' '.join(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert result.stderr.strip() == "", result.stderr


def test_bad_config_is_one_line_and_exit_2(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lrr: 1\n")
    result = _run("config", "show", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{config}:2: train.lrr: unknown key 'lrr'" in result.stderr
    assert "did you mean 'lr'" in result.stderr


def test_bad_override_value_names_the_override() -> None:
    result = _run("config", "show", "--set", "train.lr=fast")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--set" in result.stderr and "train.lr" in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = _run("--debug", "config", "show", "--set", "train.lrr=1")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unknown_lab_size_is_a_clean_error(tmp_path) -> None:
    result = _run("lab", "--size", "huge", "--output-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "unknown lab size 'huge'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run directory is made


def test_config_reference_lists_fields() -> None:
    result = runner.invoke(app, ["config", "reference"])
    assert result.exit_code == 0 and "`train.lr`" in result.stdout


def test_config_reference_is_not_wrapped_at_the_terminal_width() -> None:
    result = _run("config", "reference")  # a pipe: rich would wrap at 80 columns
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert rows and all(line.endswith("|") for line in rows)


def test_lab_data_writes_every_file(tmp_path) -> None:
    out = tmp_path / "data"
    result = runner.invoke(app, ["lab", "data", str(out), "--n-train", "50", "--duplicates", "0.1"])
    assert result.exit_code == 0, result.output
    names = {path.name for path in out.iterdir()}
    assert names == {"train.jsonl", "validation.jsonl", "test.jsonl", "ood.jsonl", "probes.jsonl",
                     "general.txt", "pretraining.txt", "reference.txt", "manifest.json", "config.yaml"}
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 55 and sum("flaw" in row for row in train) == 5
    header = json.loads((out / "probes.jsonl").read_text().splitlines()[0])
    assert header["suite"] == "lab"
    (out / "train.jsonl").write_text('{"prompt": "edited", "response": "by hand"}\n')
    again = runner.invoke(app, ["lab", "data", str(out)])
    assert isinstance(again.exception, ConfigError) and "already holds lab files" in str(again.exception)
    assert "edited" in (out / "train.jsonl").read_text()
    assert runner.invoke(app, ["lab", "data", str(out), "--overwrite"]).exit_code == 0
    assert "edited" not in (out / "train.jsonl").read_text()


@pytest.mark.slow
def test_lab_base_step_writes_a_run_directory_and_the_lab_refuses_to_overwrite(micro_base, tmp_path) -> None:
    _, cache = micro_base
    where = ["--size", "micro", "--cache-dir", str(cache), "--output-dir", str(tmp_path)]
    result = runner.invoke(app, ["-q", "lab", "step", "base", "--name", "r", *where])
    assert result.exit_code == 0, result.output
    assert "reused from the cache" in result.stdout and "overall" in result.stdout
    run = tmp_path / "r"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "meta.json", "summary.json", "log.txt", "steps"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"]["base"]["figures"]["reused"] is True
    again = _run("lab", *where, "--name", "r")  # the whole lab into an existing run: refused
    assert again.returncode == 2 and "already exists" in again.stderr


def test_ctrl_c_anywhere_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    from retain import cli

    # Inside a command typer turns Ctrl-C into exit code 130; outside one it stays an exception.
    for interrupted in (lambda **kwargs: 130, lambda **kwargs: (_ for _ in ()).throw(KeyboardInterrupt)):
        monkeypatch.setattr(cli, "app", interrupted)
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 130
        err = capsys.readouterr().err
        assert err.strip() == "interrupted (Ctrl-C)"


def test_an_abort_is_one_line_and_exit_1(monkeypatch, capsys) -> None:
    from retain import cli

    def aborted(**kwargs):
        raise cli._Abort()

    monkeypatch.setattr(cli, "app", aborted)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1 and capsys.readouterr().err.strip() == "Aborted!"


def test_markdown_tables_print_as_rich_tables_with_whole_cells() -> None:
    from rich.console import Console

    from retain.console import table_of_markdown

    table = table_of_markdown("| model | verdict |\n| --- | --- |\n| full \\| lora, lr 5e-4 | do not ship |\n"
                              "| recipe | ship |\n")
    assert [column.header for column in table.columns] == ["model", "verdict"] and table.row_count == 2
    wide = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    wide.print(table)
    text = wide.export_text()
    assert "full | lora, lr 5e-4   do not ship" in text and "---" not in text
