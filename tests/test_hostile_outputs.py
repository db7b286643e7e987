"""Output paths: a write never replaces a device, a FIFO, a symlink or a folder; it is
refused in one line before the command works, and `-` writes to standard output."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from retain.errors import OutputRefused
from retain.io import atomic_write_text, output_problem


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retain.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}?", "response": f"answer {i}"}) + "\n"
                            for i in range(20)))
    return path


def _targets(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kept = tmp_path / "kept.json"
    kept.write_text("keep me\n")
    link = tmp_path / "link.json"
    link.symlink_to(kept)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"device": Path(os.devnull), "FIFO": fifo, "symbolic link": link, "folder": folder}


def test_nothing_but_a_regular_file_is_replaced(tmp_path: Path, data: Path) -> None:
    for kind, target in _targets(tmp_path).items():
        before = target.lstat()
        result = _run("audit", str(data), "--allow-small-data", "--json", str(target), cwd=tmp_path)
        assert result.returncode == 2, (kind, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and kind in lines[0] and "--json" in lines[0], (kind, result.stderr)
        after = target.lstat()
        assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert (tmp_path / "kept.json").read_text() == "keep me\n"


def test_a_missing_folder_is_refused_before_the_work(tmp_path: Path, data: Path) -> None:
    result = _run("audit", str(data), "--allow-small-data", "--json", str(tmp_path / "no" / "a.json"), cwd=tmp_path)
    assert result.returncode == 2 and "no folder" in result.stderr and "audit of" not in result.stdout


def test_dash_is_standard_output_and_the_tables_go_to_standard_error(tmp_path: Path, data: Path) -> None:
    result = _run("audit", str(data), "--allow-small-data", "--json", "-", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout)["rows"] == 20
    assert "audit of" in result.stderr
    reference = _run("config", "reference", "--write", "-", cwd=tmp_path)
    assert reference.returncode == 0 and reference.stdout.startswith("# Configuration reference")


def test_a_report_cannot_go_to_standard_output(tmp_path: Path) -> None:
    result = _run("report", str(tmp_path), "--out", "-", cwd=tmp_path)
    assert result.returncode == 2 and "--out" in result.stderr


def test_the_writer_itself_refuses_what_the_command_line_did_not_check(tmp_path: Path) -> None:
    targets = _targets(tmp_path)
    for target in targets.values():
        with pytest.raises(OutputRefused) as caught:
            atomic_write_text(target, "x")
        assert caught.value.file == str(target)
    assert (tmp_path / "kept.json").read_text() == "keep me\n"
    assert output_problem(tmp_path / "new.json") is None
    atomic_write_text(tmp_path / "kept.json", "replaced\n")  # a regular file is replaced whole
    assert (tmp_path / "kept.json").read_text() == "replaced\n"


def test_data_in_terminal_output_is_shown_not_obeyed(tmp_path: Path) -> None:
    # A label with an ESC that would hide the rest of the output, and rich markup.
    label = "\x1b[8mhidden[bold red]X[/bold red]"
    rows = [{"prompt": f"q{i}?", "response": "yes" if i % 2 else "no"} for i in range(40)]
    rows += [{"prompt": "odd one", "response": label}, {"prompt": "odd two", "response": label}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _run("audit", str(data), "--allow-small-data", "--task", "classification", cwd=tmp_path)
    assert "\x1b[8m" not in result.stdout and "\\x1b[8mhidden" in result.stdout
    assert "[bold" in result.stdout  # the markup printed as text
    assert re.match(r"\d+ blockers, \d+ warnings", result.stdout.splitlines()[-1])  # the verdict still shows


def test_a_label_in_the_markdown_summary_is_text_not_a_link_or_image() -> None:
    from retain.report.markdown import cell

    for label in ("![pixel](https://example.com/t.png)", "[click](javascript:alert(1))", "<img src=x>", "a|b`c\\"):
        text = cell(label)
        assert "](" not in text.replace("\\](", "") and "<img" not in text
    assert cell("[x](javascript:alert(1))") == "\\[x\\](javascript:alert(1))"
    assert cell("a\\b") == "a\\\\b"
