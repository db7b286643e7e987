"""The Python API: retain.audit, retain.doctor, retain.evaluate and retain.train return the
typed results their commands print, raise retain's own errors, and ``import retain``
imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import retain
from retain.audit.doctor import DoctorReport
from retain.audit.runner import AuditReport
from retain.config import RetainConfig
from retain.errors import ConfigError, DataError, RetainError
from retain.evaluation.commands import EvalOutcome
from retain.training.run import TrainOutcome

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(micro_lab) -> dict[str, Path]:
    return micro_lab


def settings(lab: dict[str, Path], out: Path) -> dict:
    root = lab["root"]
    return {
        "model": {"name_or_path": str(lab["model"])},
        "data": {"train": str(root / "train.jsonl"), "eval": str(root / "test.jsonl")},
        "probes": {"suites": [str(root / "probes.jsonl")]},
        "train": {"max_steps": 4, "batch_size": 8},
        "guards": {"every_steps": 2},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(out), "name": "run"},
    }


def test_import_retain_stays_light() -> None:
    code = "import sys, retain; print('torch' in sys.modules, 'transformers' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.split() == ["False", "False"]


def test_audit_and_doctor_return_their_reports(lab, tmp_path) -> None:
    config = settings(lab, tmp_path)
    report = retain.audit(lab["root"] / "train.jsonl", config, eval_data=lab["root"] / "test.jsonl")
    assert isinstance(report, AuditReport) and report.rows == 64 and report.count("blocker") == 0
    doctor = retain.doctor(RetainConfig.model_validate(config))
    assert isinstance(doctor, DoctorReport) and doctor.rows == 64 and doctor.count("blocker") == 0
    assert any(trained for _, trained in doctor.sample)
    # retain.audit is the subpackage, callable as the function; both import forms reach it.
    import retain.audit.runner as runner

    assert callable(retain.audit) and runner.__name__ == "retain.audit.runner"
    with pytest.raises(DataError):
        retain.audit(tmp_path / "missing.jsonl", config)
    with pytest.raises(ConfigError, match="audit"):
        retain.audit(lab["root"] / "train.jsonl", config, task="poetry")
    with pytest.raises(ConfigError, match="data.train"):
        retain.doctor(None)


def test_evaluate_measures_forgetting_against_a_base(lab, tmp_path) -> None:
    config = settings(lab, tmp_path)
    outcome = retain.evaluate(lab["model"], config, base=lab["model"], drift=False,
                              overrides=["probes.methods=[generation]"])
    assert isinstance(outcome, EvalOutcome)
    assert outcome.result.probes["lab"]["generation"].accuracy["overall"] > 0.2
    assert outcome.forgetting["lab"]["generation"].overall.relative_drop == 0.0  # the base against itself
    with pytest.raises(RetainError):
        retain.evaluate(tmp_path / "no-such-model", config)


def test_train_returns_the_run_and_its_summary(lab, tmp_path) -> None:
    lines: list[str] = []
    outcome = retain.train(settings(lab, tmp_path), overrides=["output.name=api"], echo=lines.append)
    assert isinstance(outcome, TrainOutcome) and outcome.run_dir == tmp_path / "api"
    assert outcome.summary.steps == 4 and outcome.summary.checks == 3
    assert (outcome.run_dir / "summary.json").is_file() and lines
    with pytest.raises(ConfigError, match="data.train"):
        retain.train({"output": {"dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="train.lr"):
        retain.train(settings(lab, tmp_path), overrides=["train.lr=-1"])
