"""`retain audit` end to end: findings, exit codes, JSON, malformed input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from retain.cli import app
from retain.lab.domain import DomainSpec, build_domain, write_jsonl


def audit(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess: user errors become one line and exit 2 there."""
    return subprocess.run([sys.executable, "-m", "retain.cli", "-q", "audit", *args],
                          capture_output=True, text=True, timeout=300)


def audit_in_process(*args: str) -> Result:
    """Faster, for runs that end in a verdict (exit 0, 1 or 2) rather than an error."""
    return CliRunner().invoke(app, ["-q", "audit", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit")
    clean = build_domain(DomainSpec(n_train=300, n_validation=10, n_test=60, n_ood=10))
    write_jsonl(clean.train, root / "clean.jsonl")
    write_jsonl(clean.test, root / "test.jsonl")
    flawed = build_domain(DomainSpec(n_train=300, n_validation=10, n_test=60, n_ood=10,
                                     duplicates=0.05, conflicts=0.05, contamination=0.1))
    write_jsonl(flawed.train, root / "flawed.jsonl")
    write_jsonl(flawed.test, root / "flawed_test.jsonl")
    return {"root": root, "clean": root / "clean.jsonl", "test": root / "test.jsonl",
            "flawed": root / "flawed.jsonl", "flawed_test": root / "flawed_test.jsonl"}


def test_small_clean_lab_data_blocks_on_size_only(lab_files) -> None:
    out = lab_files["root"] / "clean.json"
    result = audit_in_process(str(lab_files["clean"]), "--eval", str(lab_files["test"]), "--json", str(out))
    assert result.exit_code == 2, result.output
    report = json.loads(out.read_text())
    blockers = [f["code"] for f in report["findings"] if f["severity"] == "blocker"]
    assert blockers == ["dataset_size"]
    allowed = audit_in_process(str(lab_files["clean"]), "--eval", str(lab_files["test"]), "--allow-small-data")
    assert allowed.exit_code == 0, allowed.output


def test_flawed_lab_data_reports_each_planted_flaw(lab_files) -> None:
    out = lab_files["root"] / "flawed.json"
    result = audit_in_process(str(lab_files["flawed"]), "--eval", str(lab_files["flawed_test"]),
                              "--allow-small-data", "--json", str(out))
    report = json.loads(out.read_text())
    codes = {f["code"] for f in report["findings"]}
    assert {"exact_duplicates", "conflicting_labels", "train_eval_overlap"} <= codes, codes
    assert result.exit_code == 2  # contamination of 10% of eval rows is a blocker


def test_strict_turns_warnings_into_exit_1(lab_files, tmp_path) -> None:
    rows = [json.loads(line) for line in lab_files["clean"].read_text().splitlines()]
    rows[3]["response"] = " Yes."  # a second spelling of a label: a warning
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert audit_in_process(str(path), "--allow-small-data").exit_code == 0
    assert audit_in_process(str(path), "--allow-small-data", "--strict").exit_code == 1


def test_malformed_rows_are_counted_with_line_numbers_and_the_audit_goes_on(lab_files, tmp_path) -> None:
    lines = lab_files["clean"].read_text().splitlines()
    lines[4] = "{not json"
    lines[9] = json.dumps({"prompt": "only a prompt"})
    path = tmp_path / "bad.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe bad bytes\n")
    out = tmp_path / "bad.json"
    audit_in_process(str(path), "--allow-small-data", "--json", str(out))
    report = json.loads(out.read_text())
    assert sorted(p["line"] for p in report["malformed"]) == [5, 10, len(lines) + 1]
    assert report["rows"] == len(lines) - 2


@pytest.mark.parametrize("content", ["", "not json at all\n"])
def test_unusable_files_are_one_line_errors_with_exit_2(tmp_path, content) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    result = audit(str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(path) in result.stderr


def test_missing_file_and_unknown_domain(tmp_path, lab_files) -> None:
    missing = audit(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    unknown = audit(str(lab_files["clean"]), "--domain", "astrology")
    assert unknown.returncode == 2 and "astrology" in unknown.stderr and "Traceback" not in unknown.stderr


def test_audit_settings_come_from_the_config_and_the_command_line_wins(lab_files) -> None:
    root = lab_files["root"]
    config = root / "audit.yaml"
    config.write_text("audit:\n  domain: medical\n  allow_small_data: true\n")
    out = root / "configured.json"
    result = audit_in_process(str(lab_files["clean"]), "--config", str(config), "--json", str(out))
    assert result.exit_code == 0, result.output  # size is a warning with allow_small_data
    [size] = [f for f in json.loads(out.read_text())["findings"] if f["code"] == "dataset_size"]
    assert size["severity"] == "warning" and size["details"]["minimum"] == 11_250
    audit_in_process(str(lab_files["clean"]), "--config", str(config), "--domain", "general",
                     "--json", str(out))
    [size] = [f for f in json.loads(out.read_text())["findings"] if f["code"] == "dataset_size"]
    assert size["details"]["minimum"] == 7_500


def test_audit_thresholds_in_the_config_change_what_counts_as_near(lab_files) -> None:
    root = lab_files["root"]
    strict = root / "strict.yaml"
    strict.write_text("audit:\n  near_duplicate_threshold: 1.0\n  allow_small_data: true\n")
    loose, exact = root / "loose.json", root / "exact.json"
    audit_in_process(str(lab_files["flawed"]), "--allow-small-data", "--json", str(loose))
    audit_in_process(str(lab_files["flawed"]), "--config", str(strict), "--json", str(exact))

    def near(path: Path) -> int:
        return sum(f["count"] for f in json.loads(path.read_text())["findings"] if f["code"] == "near_duplicates")

    assert near(loose) > near(exact)


def test_an_unknown_domain_in_the_config_names_the_field(lab_files) -> None:
    config = lab_files["root"] / "bad.yaml"
    config.write_text("audit:\n  domain: astrology\n")
    result = audit(str(lab_files["clean"]), "--config", str(config))
    assert result.returncode == 2 and "audit" in result.stderr and "astrology" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_audit_says_whose_tokenizer_counted_the_tokens(tmp_path) -> None:
    from retain.audit.runner import run_audit
    from retain.config import load_config

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}?", "response": "yes"}) + "\n" for i in range(30)))
    unnamed = {f.code: f for f in run_audit(load_config(None, []), data, allow_small=True).findings}
    assert unnamed["tokenizer"].severity == "warning" and "default model" in unnamed["tokenizer"].title
    named = {f.code: f for f in run_audit(load_config(None, ["model.name_or_path=lab"]), data,
                                          allow_small=True).findings}
    assert named["tokenizer"].severity == "info" and "'lab'" in named["tokenizer"].title
