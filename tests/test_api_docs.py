"""Every Python example of docs/API.md runs as written, in order, in one namespace (the
setup block builds the micro lab model and its data offline)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.version_info < (3, 11), reason="the TRL examples need Python 3.11")]

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    return BLOCK.findall(API_DOC.read_text(encoding="utf-8"))


def test_the_doc_has_an_example_of_each_function_and_trainer() -> None:
    text = "\n".join(examples())
    for call in ("retain.audit(", "retain.doctor(", "retain.evaluate(", "retain.train(", "Trainer(",
                 "SFTTrainer(", "DPOTrainer(", "peft_config=", "retain.replay(", "retain.check_rehearsal(",
                 "retain.self_rehearsal(", "retain.ewc(", "retain.l2sp("):
        assert call in text, call


def test_every_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "api_doc"}
    for number, code in enumerate(examples(), start=1):
        exec(compile(code, f"{API_DOC.name}, example {number}", "exec"), namespace)  # noqa: S102 - our own docs
    # What the examples left behind is what they say they leave.
    assert (tmp_path / "runs" / "first" / "summary.json").is_file()
    assert (tmp_path / "guards" / "guards.json").is_file() and (tmp_path / "my-model").is_dir()
    assert namespace["summary"].checks[0].step == 0
