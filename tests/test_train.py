"""`retain train` on the micro lab model: each guard on a planted fault, quiet when healthy,
restore, refusal by the doctor, resume after kill -9, and the run directory's contents."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from retain.checkpoints import STATE_FILE
from retain.checkpoints import last_checkpoint as _last_checkpoint
from retain.cli import app
from retain.config import RetainConfig
from retain.errors import ConfigError, RunDirError, TrainRefused
from retain.io import read_jsonl
from retain.models import load_model
from retain.rundir import RunDir
from retain.summary import RunSummary
from retain.training.run import run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(micro_lab) -> dict[str, Path]:
    """The micro lab model with a small domain task and its own probe suite (conftest's)."""
    return micro_lab


def settings(lab: dict[str, Path], out: Path, **sections) -> dict:
    root = lab["root"]
    values = {
        "model": {"name_or_path": str(lab["model"])},
        "data": {"train": str(root / "train.jsonl"), "validation": str(root / "validation.jsonl"),
                 "eval": str(root / "test.jsonl"), "ood": str(root / "ood.jsonl")},
        "probes": {"suites": [str(lab["probes"])]},
        "train": {"max_steps": 8, "batch_size": 8},
        "guards": {"every_steps": 4},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(out), "name": "run"},
    }
    for section, extra in sections.items():
        values[section] = values.get(section, {}) | extra
    return values


def config(lab: dict[str, Path], out: Path, **sections) -> RetainConfig:
    return RetainConfig.model_validate(settings(lab, out, **sections))


def quiet_train(cfg: RetainConfig, **kwargs):
    return run_train(cfg, progress=False, echo=lambda line: None, **kwargs)


def checks(run_dir: Path) -> list[dict]:
    return [record for record in read_jsonl(run_dir / "metrics.jsonl") if record.get("event") == "check"]


def model_card(folder: Path) -> ModelCard:
    """Returns the card retain wrote into a saved model folder, checked against the run's
    summary.json and meta.json: the base, every data file with its SHA-256, the methods,
    task accuracy and forgetting per category (base -> final), the verdict, the restore."""
    run_dir = folder.parent
    summary = RunSummary.read(run_dir)
    card = ModelCard.load(folder / "README.md")
    text = card.text
    assert "[More Information Needed]" not in text  # peft's blank template is gone
    assert card.data.tags[0] == "retain" and card.data.tags[1:] == list(summary.method)
    assert card.data.base_model is None  # a local folder is no Hub id
    config = RetainConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert f"- base model: {config.model.name_or_path}" in text
    recorded = json.loads((run_dir / "meta.json").read_text())["data"]
    assert {"train", "probes.suites.0"} <= set(recorded)
    for field, digest in recorded.items():
        assert f"| {field} | " in text and f" | {digest} |" in text
    for split in summary.task:
        assert (f"| task accuracy ({split}) | {summary.base_task_accuracy(split):.1%} | "
                f"{summary.task_accuracy(split):.1%} |") in text
    for report in summary.forgetting.values():
        for category, figures in report["categories"].items():
            name = f"**{category}**" if category == "overall" else category
            relative = "n/a" if figures["relative_drop"] is None else f"{figures['relative_drop']:+.1%}"
            assert (f"| {name} | {figures['items']} | {figures['accuracy_before']:.1%} | "
                    f"{figures['accuracy_after']:.1%} | {relative} | {figures['absolute_drop'] * 100:+.1f} |") in text
    verdict = "## Verdict: safe to ship" if summary.verdict.ship else "## Verdict: not safe to ship"
    shown = html.unescape(text)  # text from the run is HTML-escaped, as in the report's Markdown
    assert verdict in text and all(f"- {reason}\n" in shown for reason in summary.verdict.reasons)
    for event in summary.guard_events:
        assert f"| {event['step']} | {event['guard']} | {event['action']} |" in text
    return card


def test_a_healthy_lora_run_leaves_a_complete_run_directory_and_no_alarm(lab, tmp_path) -> None:
    # The micro model's loss stays near 3 on this task; the high-loss warning is not what is tested.
    cfg = config(lab, tmp_path, train={"lr": 1e-5}, guards={"loss": {"max_loss_after_warmup": 5.0}})
    outcome = quiet_train(cfg, merge=True)
    summary, run_dir = outcome.summary.to_dict(), outcome.run_dir
    assert summary["status"] == "completed" and summary["guard_events"] == []
    # No guard fired; the micro model learns nothing of the task in 8 steps at lr 1e-5, and
    # the verdict says so instead of calling the run safe.
    assert set(summary["task_base"]) == {"eval", "ood"}
    assert summary["verdict"]["reasons"] and all("task" in reason for reason in summary["verdict"]["reasons"])
    for name in ("config.yaml", "meta.json", "audit.json", "doctor.json", "base_eval.json",
                 "final_eval.json", "summary.json", "log.txt", "model/adapter_config.json",
                 "merged/config.json"):
        assert (run_dir / name).exists(), name
    # Step 0 measures the starting model; its weights are kept for a roll-back.
    assert [c["step"] for c in checks(run_dir)] == [0, 4, 8]
    start = checks(run_dir)[0]
    assert start["forgetting"] == pytest.approx(0.0) and start["task_accuracy"] is not None
    assert (run_dir / "checkpoints" / "start" / "adapter_model.safetensors").is_file()
    assert len(json.loads((run_dir / "meta.json").read_text())["data"]["train"]) == 64  # sha256
    losses = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "log" and "loss" in r]
    assert [r["step"] for r in losses] == list(range(1, 9))  # every step's loss is judged
    # Checks reach the trainer's log, hence report_to trackers (the checkpoint keeps the history).
    history = json.loads((run_dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert any("retain/probe_accuracy" in entry and "retain/probes/lab/greetings" in entry
               for entry in history["log_history"])
    assert "reused" not in json.loads((run_dir / "final_eval.json").read_text())  # a trained model is measured
    loaded = load_model(str(run_dir), device="cpu")  # the run directory is a model `retain eval` takes
    assert loaded.is_adapter
    merged = load_model(str(run_dir / "merged"), device="cpu")
    assert not merged.is_adapter
    # Both saved models carry retain's card, not peft's blank template.
    adapters, full = model_card(run_dir / "model"), model_card(run_dir / "merged")
    assert adapters.data.library_name == "peft" and "LoRA adapters (peft) for the base model" in adapters.text
    assert full.data.library_name == "transformers" and "merged into the weights" in full.text
    assert "No guard acted over the run's 3 checks." in adapters.text and "Checkpoint restored: none." in adapters.text


def test_the_forgetting_guard_restores_the_best_checkpoint(lab, tmp_path) -> None:
    aggressive = {"method": {"use": ["full"]}, "train": {"lr": 1e-3, "max_steps": 16},
                  "guards": {"every_steps": 2, "forgetting": {"threshold": 0.1, "patience": 0}}}
    summary = quiet_train(config(lab, tmp_path / "guarded", **aggressive)).summary.to_dict()
    assert any(event["guard"] == "forgetting" and event["action"] == "restore_best"
               for event in summary["guard_events"])
    assert summary["restored_step"] == summary["best_step"] is not None
    best = next(c for c in checks(tmp_path / "guarded" / "run") if c["step"] == summary["best_step"])
    assert best["forgetting"] <= 0.1
    # The restored weights are the best check's weights: the same greedy answers, the same accuracy.
    assert summary["final_probe_accuracy"] == pytest.approx(best["probe_accuracy"])
    card = model_card(tmp_path / "guarded" / "run" / "model")  # ... and the card says they are
    restored = summary["restored_step"]
    assert (f"the checkpoint of step {restored}, restored, not those of step" if restored else
            "and rolled it back to its starting weights") in card.text
    blind = dict(aggressive, guards={"enabled": False})
    unguarded = quiet_train(config(lab, tmp_path / "blind", **blind)).summary.to_dict()
    assert unguarded["status"] == "completed" and unguarded["steps"] == 16
    assert unguarded["forgetting_relative"] > summary["forgetting_relative"] + 0.1
    assert not unguarded["verdict"]["ship"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_when_every_check_forgets_too_much_the_run_rolls_back_to_its_start(lab, tmp_path, precision) -> None:
    # lr 1e-2 wrecks the micro model by the first check; step 0 is the only check within the limit.
    cfg = config(lab, tmp_path, method={"use": ["full"]}, train={"lr": 1e-2, "max_steps": 8, "precision": precision},
                 guards={"every_steps": 4, "forgetting": {"threshold": 0.01, "patience": 0}})
    outcome = quiet_train(cfg)
    summary = outcome.summary.to_dict()
    # Checks and the final evaluation measure the model in full precision, as the base was
    # measured, even when it trains in bf16 (accelerate's autocast wrapper is stepped around).
    start = next(r for r in read_jsonl(outcome.run_dir / "metrics.jsonl") if r.get("event") == "check")
    assert start["step"] == 0 and start["probe_accuracy"] == summary["base_probe_accuracy"]
    assert summary["steps"] == 4  # stopped at the first check (the smoke guard may fire beside it)
    assert any(event["guard"] == "forgetting" and event["action"] == "restore_best"
               for event in summary["guard_events"])
    assert summary["restored_step"] == summary["best_step"] == 0
    # The starting weights are back in the saved model, bit for bit ...
    saved = load_model(str(outcome.run_dir / "model"), device="cpu").model.state_dict()
    base = load_model(str(lab["model"]), device="cpu").model.state_dict()
    assert saved.keys() == base.keys() and all(torch.equal(saved[name], base[name]) for name in base)
    # ... so they are not measured again: the base's evaluation stands, with no drift.
    final = json.loads((outcome.run_dir / "final_eval.json").read_text())
    assert final["reused"].startswith("base_eval.json") and final["model"] == str(outcome.run_dir / "model")
    assert final["drift"]["kl"] == 0.0 and final["task"] == json.loads((outcome.run_dir / "base_eval.json").read_text())["task"]
    assert summary["final_probe_accuracy"] == pytest.approx(summary["base_probe_accuracy"])
    assert summary["forgetting_relative"] == 0.0 and not summary["verdict"]["ship"]
    assert any("rolled back to the starting weights" in reason for reason in summary["verdict"]["reasons"])
    card = model_card(outcome.run_dir / "model")  # the card says so before any figure
    assert card.text.index("> **Rolled back.**") < card.text.index("## Results")
    assert "Checkpoint restored: the starting weights (rolled back)." in card.text


def test_the_smoke_guard_stops_a_model_that_answers_nothing(lab, tmp_path, monkeypatch) -> None:
    eos = load_model(str(lab["model"]), device="cpu").tokenizer.eos_token_id

    def always_eos(module, inputs, output):  # the planted fault: EOS wins every step
        output[..., eos] = 1e4
        return output

    from retain.methods.adapters import Lora

    original = Lora.prepare_model

    def broken(self, model, context):
        model = original(self, model, context)
        model.get_output_embeddings().register_forward_hook(always_eos)
        return model

    monkeypatch.setattr(Lora, "prepare_model", broken)
    # forgetting only warns here: the smoke guard alone decides
    summary = quiet_train(config(lab, tmp_path, guards={"every_steps": 4,
                                                        "forgetting": {"action": "warn"}})).summary.to_dict()
    stop = summary["stopped_by"]
    assert stop["guard"] == "smoke" and stop["step"] == 4  # its first check
    assert "emits EOS at once" in stop["message"] and not summary["verdict"]["ship"]
    assert summary["restored_step"] == 0  # a stop by any guard never saves the weights that tripped it


def test_a_nan_loss_stops_at_once_with_the_step(lab, tmp_path) -> None:
    # fp32: in bf16 autocast (auto on a CPU with native bf16) this lr saturates the model to a
    # finite, uniform loss instead of overflowing; the test is about the NaN, not the precision.
    cfg = config(lab, tmp_path, method={"use": ["full"]},
                 train={"lr": 1e6, "max_steps": 16, "max_grad_norm": None, "precision": "fp32"},
                 guards={"every_steps": 16, "forgetting": {"action": "warn"}, "smoke": {"action": "warn"}})
    summary = quiet_train(cfg).summary.to_dict()
    stop = summary["stopped_by"]
    assert stop["guard"] == "loss" and stop["action"] == "stop"
    assert f"at step {stop['step']}" in stop["message"] and summary["steps"] == stop["step"] < 16
    assert summary["restored_step"] == 0  # the starting weights, not the NaN ones


def test_doctor_blockers_refuse_training_and_force_overrides(lab, tmp_path) -> None:
    trap = {"model": {"name_or_path": str(lab["model"]), "pad_token": "eos"},
            "train": {"collator": "language_modeling", "max_steps": 4}}
    with pytest.raises(TrainRefused, match="doctor found"):
        quiet_train(config(lab, tmp_path / "refused", **trap))
    doctor = json.loads((tmp_path / "refused" / "run" / "doctor.json").read_text())
    assert "eos_masked" in {f["code"] for f in doctor["findings"] if f["severity"] == "blocker"}
    assert not (tmp_path / "refused" / "run" / "checkpoints").exists()
    forced = quiet_train(config(lab, tmp_path / "forced", **trap), force=True)
    assert forced.summary.steps == 4


def test_train_cli_refusal_is_one_line_with_exit_code_2(lab, tmp_path) -> None:
    path = tmp_path / "config.json.yaml"
    values = settings(lab, tmp_path / "runs", data={"max_length": 16})
    path.write_text(json.dumps(values))  # JSON is YAML
    result = subprocess.run([sys.executable, "-m", "retain.cli", "-q", "train", str(path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 2, result.stderr
    assert "blocker" in result.stderr and "Traceback" not in result.stderr


def test_fail_on_exits_1_with_the_verdicts_reasons_and_0_for_a_run_that_ships(lab, tmp_path) -> None:
    quick = {"train": {"lr": 1e-5, "max_steps": 4},
             "guards": {"every_steps": 4, "loss": {"max_loss_after_warmup": 5.0}}}

    def train(name: str, *args: str, **sections) -> tuple:
        path = tmp_path / f"{name}.yaml"
        values = settings(lab, tmp_path / name, **(quick | sections))
        path.write_text(json.dumps(values))  # JSON is YAML
        result = CliRunner().invoke(app, ["-q", "train", str(path), *args], catch_exceptions=False)
        return result, RunSummary.read(tmp_path / name / "run")

    every = ["--fail-on", "not-ship", "--fail-on", "forgetting", "--fail-on", "guard-stop"]
    # No task data to judge, 4 steps at lr 1e-5: nothing speaks against this run.
    result, summary = train("ships", *every, data={"eval": None, "ood": None})
    assert summary.verdict.ship and result.exit_code == 0, result.output
    assert "verdict: safe to ship" in result.output and "failed --fail-on" not in result.output
    assert "## Verdict: safe to ship" in model_card(tmp_path / "ships" / "run" / "model").text
    # With its task data, the same run learned nothing of it: the verdict says not to ship.
    result, summary = train("refused", "--fail-on", "not-ship")
    assert not summary.verdict.ship and summary.verdict.reasons
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if "--fail-on" in line]
    assert line == "failed --fail-on: not-ship: not safe to ship: " + "; ".join(summary.verdict.reasons)
    # Without --fail-on a finished run exits 0 whatever its verdict, as before; --fail-on
    # guard-stop does not fail a run no guard stopped.
    result, summary = train("refused", "--overwrite", "--fail-on", "guard-stop")
    assert not summary.verdict.ship and result.exit_code == 0, result.output
    result, summary = train("refused", "--overwrite")
    assert not summary.verdict.ship and result.exit_code == 0, result.output


def test_config_mistakes_fail_before_training(lab, tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.train"):
        quiet_train(RetainConfig.model_validate({"output": {"dir": str(tmp_path)}}))
    with pytest.raises(ConfigError, match="output.name"):
        quiet_train(RetainConfig.model_validate(settings(lab, tmp_path) | {"output": {"dir": str(tmp_path)}}),
                    resume=True)
    with pytest.raises(Exception, match="unknown method 'ewc2'"):
        config(lab, tmp_path, method={"use": ["ewc2"]})
    with pytest.raises(ConfigError, match="method.lora.target_modules"):
        quiet_train(config(lab, tmp_path / "lora", method={"lora": {"target_modules": ["qkv"]}}))
    assert not (tmp_path / "lora" / "run" / "checkpoints").exists()
    result = CliRunner().invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert isinstance(result.exception, ConfigError) and "not found" in str(result.exception)


RESUME_SCRIPT = """
import json, sys
from retain.config import RetainConfig
from retain.training.run import run_train
cfg = RetainConfig.model_validate(json.loads(sys.argv[1]))
run_train(cfg, progress=False, echo=lambda line: None, resume=sys.argv[2] == "resume")
"""


def _train_in_subprocess(values: dict, mode: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, json.dumps(values), mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("methods", [["full"], ["full", "replay"]], ids=["plain", "blended"])
def test_resume_after_kill_9_matches_an_uninterrupted_run(lab, tmp_path, methods) -> None:
    # Blended rows take another sampler (retain.training.sampling): resumed, it must draw
    # the same batches too.
    common = {"method": {"use": methods}, "train": {"lr": 3e-4, "max_steps": 12, "save_every": 4},
              "guards": {"every_steps": 4, "forgetting": {"action": "warn"}, "smoke": {"action": "warn"}}}
    whole = settings(lab, tmp_path / "whole", **common)
    assert _train_in_subprocess(whole, "new").wait(timeout=600) == 0
    killed = settings(lab, tmp_path / "killed", **common)
    process = _train_in_subprocess(killed, "new")
    marker = tmp_path / "killed" / "run" / "checkpoints" / "checkpoint-4" / STATE_FILE
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "run" / "summary.json").exists()
    resumed = _train_in_subprocess(killed, "resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    first = json.loads((tmp_path / "whole" / "run" / "summary.json").read_text())
    second = json.loads((tmp_path / "killed" / "run" / "summary.json").read_text())
    assert second["steps"] == first["steps"] == 12
    # Same data order, optimizer and random state: the same losses step by step after the
    # resume, and the same final model (tolerance: float summation order).
    def step_losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl")
                if r.get("event") == "log" and "loss" in r}

    a, b = step_losses(tmp_path / "whole" / "run"), step_losses(tmp_path / "killed" / "run")
    logged = [r["step"] for r in read_jsonl(tmp_path / "killed" / "run" / "metrics.jsonl")
              if r.get("event") == "log" and "loss" in r]
    assert logged == list(range(1, 13))  # the steps redone after the checkpoint are logged once
    assert [b[step] for step in range(5, 13)] == pytest.approx([a[step] for step in range(5, 13)], abs=1e-4)
    assert checks(tmp_path / "killed" / "run")[-1]["val_loss"] == pytest.approx(
        checks(tmp_path / "whole" / "run")[-1]["val_loss"], abs=1e-4)
    assert second["final_probe_accuracy"] == pytest.approx(first["final_probe_accuracy"], abs=0.01)


def test_resuming_with_another_config_is_refused(lab, tmp_path) -> None:
    quiet_train(config(lab, tmp_path, train={"max_steps": 4}))
    with pytest.raises(ConfigError, match="differs"):
        quiet_train(config(lab, tmp_path, train={"max_steps": 4, "lr": 1e-3}), resume=True)


def test_resuming_after_a_data_file_changed_is_refused_with_the_file_named(lab, tmp_path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "ood.jsonl", "probes.jsonl"):
        (root / name).write_bytes((lab["root"] / name).read_bytes())
    moved = {**lab, "root": root, "probes": root / "probes.jsonl"}
    quiet_train(config(moved, tmp_path, train={"max_steps": 4}))
    train = root / "train.jsonl"
    rows = train.read_text().splitlines()
    train.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(settings(moved, tmp_path, train={"max_steps": 4})))  # JSON is YAML
    result = CliRunner().invoke(app, ["train", str(path), "--resume", "--name", "run"])
    assert isinstance(result.exception, RunDirError), result.output
    line = str(result.exception)  # the CLI's `retain` script prints it as one error line, exit code 2
    assert f"{train}" in line and "data.train" in line and "has changed since the run started" in line
    assert "put the file back" in line
    train.write_text("\n".join(rows) + "\n")  # restored: the run resumes
    quiet_train(config(moved, tmp_path, train={"max_steps": 4}), resume=True)
    (root / "probes.jsonl").unlink()
    with pytest.raises(RunDirError, match="probes.jsonl: probes.suites.0: this file is gone"):
        quiet_train(config(moved, tmp_path, train={"max_steps": 4}), resume=True)


def test_an_incomplete_checkpoint_is_removed_not_resumed(tmp_path) -> None:
    run = RunDir(tmp_path)
    complete = run.checkpoints_dir / "checkpoint-4"
    partial = run.checkpoints_dir / "checkpoint-8"
    for folder in (complete, partial):
        folder.mkdir(parents=True)
        torch.save({}, folder / "optimizer.pt")
    (complete / STATE_FILE).write_text("{}")
    assert _last_checkpoint(run) == complete
    assert not partial.exists()


def test_training_arguments_carry_the_config(lab, tmp_path) -> None:
    from retain.training.plan import Plan as _Plan
    from retain.training.plan import training_args as _training_args

    cfg = config(lab, tmp_path, train={"batch_size": 4, "grad_accum": 2, "lr": 3e-4, "max_steps": None,
                                       "epochs": 1.0, "report_to": ["tensorboard"], "seed": 7,
                                       "precision": "fp32", "save_total_limit": 3, "group_by_length": False},
                 guards={"every_steps": None, "checks_per_epoch": 2})
    plan = _Plan(train_rows=[], validation=[], validation_rows=[], steps_per_epoch=8, total_steps=8,
                 interval=4, task_prompts=[])
    args = _training_args(cfg, RunDir(tmp_path / "run"), plan)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert (args.learning_rate, args.max_steps, args.seed, args.data_seed) == (3e-4, 8, 7, 7)
    assert args.report_to == ["tensorboard"] and args.save_total_limit == 3 and args.save_steps == 4
    assert not args.bf16 and not args.fp16 and args.train_sampling_strategy == "random"
    assert args.logging_steps == 1 and not args.logging_nan_inf_filter
    bf16 = _training_args(config(lab, tmp_path, train={"precision": "bf16"}), RunDir(tmp_path / "b"), plan)
    assert bf16.bf16 and bf16.train_sampling_strategy == "group_by_length"


def test_accelerate_launch_with_two_processes_trains_one_run(lab, tmp_path) -> None:
    """The multi-GPU path, on CPU: two processes (gloo), one run directory, one writer."""
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(settings(lab, tmp_path, train={"max_steps": 4}, guards={"every_steps": 2})))
    launcher = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(launcher), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "retain.cli", "-q", "train", str(path)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("run directory:") == 1  # only the main process reports
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["status"] == "completed"
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "log" and "loss" in r]
    assert logged == [1, 2, 3, 4] and [c["step"] for c in checks(run_dir)] == [0, 2, 4]


def test_the_check_of_step_0_takes_the_base_models_validation_figures_measured_once(
        lab, tmp_path, monkeypatch) -> None:
    from retain.data.encoding import build_collator, encode_examples, prepare_tokenizer
    from retain.data.prompting import PromptFormat
    from retain.data.rows import load_examples_for
    from retain.guards import measure as callback

    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path / "cache"))
    measured = []
    validation_loss = callback.Probe.validation_loss
    monkeypatch.setattr(callback.Probe, "validation_loss",
                        lambda self, model: measured.append(1) or validation_loss(self, model))
    starts = []
    for name in ("first", "second", "third"):
        measured.clear()
        quiet_train(config(lab, tmp_path, train={"max_steps": 4, "lr": 1e-5}, output={"dir": str(tmp_path), "name": name}))
        starts.append(checks(tmp_path / name)[0])
        # The first run measures the base once before training and the check of step 4; the
        # second finds the base's figures cached; the third finds the cache file unusable.
        assert len(measured) == (1 if name == "second" else 2)
        if name == "second":
            [cached] = (tmp_path / "cache" / "base-eval").glob("*-validation.json")
            cached.write_text("{")
    assert len({(start["val_loss"], start["task_accuracy"]) for start in starts}) == 1
    # Direct: the base model's mean loss per answer token over all validation rows in one batch.
    cfg = config(lab, tmp_path)
    loaded = load_model(str(lab["model"]), device="cpu")
    prepare_tokenizer(loaded.tokenizer)
    rows, _ = encode_examples(load_examples_for(cfg.data, cfg.data.validation), loaded.tokenizer,
                              PromptFormat.for_tokenizer(loaded.tokenizer), max_length=cfg.data.max_length)
    batch = build_collator(loaded.tokenizer, cfg.train.collator)([row.feature() for row in rows])
    with torch.no_grad():
        direct = float(loaded.model.eval()(**batch).loss)
    assert starts[0]["val_loss"] == pytest.approx(direct, rel=1e-4)


def test_each_guard_keeps_its_own_schedule(lab, tmp_path) -> None:
    cfg = config(lab, tmp_path, train={"max_steps": 4, "lr": 1e-5},
                 guards={"every_steps": 4, "smoke": {"every_steps": 1}, "loss": {"max_loss_after_warmup": None}})
    quiet_train(cfg)
    found = checks(tmp_path / "run")
    assert [c["step"] for c in found] == [0, 1, 2, 3, 4]  # step 0: the starting model, fully measured
    assert all(c["smoke_fail_share"] is not None for c in found)  # smoke: every step
    assert [c["probe_accuracy"] is not None for c in found] == [True, False, False, False, True]  # probes: every 4
    assert [c["val_loss"] is not None for c in found] == [True, False, False, False, True]


def test_the_saved_tokenizer_carries_the_template_training_used(lab, tmp_path) -> None:
    from transformers import AutoTokenizer

    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    cfg = config(lab, tmp_path, model={"name_or_path": str(lab["model"]), "chat_template": str(template)},
                 train={"max_steps": 2}, guards={"every_steps": 2})
    outcome = quiet_train(cfg)
    saved = AutoTokenizer.from_pretrained(outcome.run_dir / "model")
    assert saved.chat_template == template.read_text()


def test_the_base_evaluation_is_measured_once_per_base_data_and_settings(lab, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path / "cache"))
    first = quiet_train(config(lab, tmp_path / "a", train={"max_steps": 2, "batch_size": 8, "seed": 1}))
    second = quiet_train(config(lab, tmp_path / "b", train={"max_steps": 2, "batch_size": 8, "seed": 2}))
    assert "base model evaluation reused" in (second.run_dir / "log.txt").read_text()
    assert (first.run_dir / "base_eval.json").read_text() == (second.run_dir / "base_eval.json").read_text()
    # A cache file damaged (a crash of an older retain, a full disk): measured again, no traceback.
    (cached,) = (path for path in (tmp_path / "cache" / "base-eval").glob("*.json") if "-" not in path.stem)
    cached.write_text('{"probes": ')
    again = quiet_train(config(lab, tmp_path / "d", train={"max_steps": 2, "batch_size": 8, "seed": 2}))
    assert "base model evaluation reused" not in (again.run_dir / "log.txt").read_text()
    def measured(path: Path) -> dict:
        return {key: value for key, value in json.loads(path.read_text()).items() if key != "seconds"}

    assert measured(again.run_dir / "base_eval.json") == measured(first.run_dir / "base_eval.json")
    assert measured(cached) == measured(first.run_dir / "base_eval.json")  # rewritten whole
    # Other evaluation data: measured afresh.
    shorter = tmp_path / "test.jsonl"
    shorter.write_text("".join((lab["root"] / "test.jsonl").read_text().splitlines(keepends=True)[:5]))
    third = quiet_train(config(lab, tmp_path / "c", train={"max_steps": 2, "batch_size": 8},
                              data={**settings(lab, tmp_path)["data"], "eval": str(shorter)}))
    assert "base model evaluation reused" not in (third.run_dir / "log.txt").read_text()
    assert json.loads((third.run_dir / "base_eval.json").read_text())["task"]["eval"]["n"] == 5


def test_probe_scores_retain_eval_measured_are_not_scored_again_by_training(lab, tmp_path, monkeypatch) -> None:
    from retain.evaluation.commands import run_eval

    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = config(lab, tmp_path, train={"max_steps": 2, "batch_size": 8})
    measured = run_eval(cfg, cfg.model.name_or_path, drift=False, progress=False).result.to_dict()["probes"]
    outcome = quiet_train(cfg)
    assert "base model probe scores reused" in (outcome.run_dir / "log.txt").read_text()
    base = json.loads((outcome.run_dir / "base_eval.json").read_text())
    assert base["probes"] == measured and base["task"]["eval"]["n"] == 16  # the task measured here
    # Other probe settings: scored afresh.
    other = quiet_train(config(lab, tmp_path / "b", train={"max_steps": 2, "batch_size": 8},
                               probes={"suites": [str(lab["root"] / "probes.jsonl")], "max_new_tokens": 12}))
    assert "base model probe scores reused" not in (other.run_dir / "log.txt").read_text()


def test_a_probe_planted_in_the_replay_file_is_reported_by_audit_and_train(lab, tmp_path) -> None:
    """The probe-contamination check covers the rows replay blends in: `retain audit -c`
    finds the planted item in the general source and names it, `retain train` finds it in
    the rows it blended, and forgetting is reported apart on it."""
    from retain.evaluation.suites import load_suite

    suite = load_suite(lab["root"] / "probes.jsonl")
    planted = next(item for item in suite.items if item.category == "capitals")
    source = tmp_path / "general.txt"
    plain = ["A plain sentence about the weather.", "Another plain sentence about a garden.",
             "Q: What is 2 + 3?\\nA: 5"]
    statement = planted.statements[0]  # "The capital of ... is ...", as the lab's probes.jsonl lists it
    assert statement.startswith("The capital of") and planted.answer in statement
    source.write_text("".join(f"{line}\n" for line in [*plain, statement]))
    values = settings(lab, tmp_path / "runs", method={"use": ["lora", "replay"], "replay": {"ratio": 0.5},
                                                      "general": {"source": str(source)}})
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(values))
    report = tmp_path / "audit.json"
    result = CliRunner().invoke(app, ["audit", values["data"]["train"], "-c", str(path), "--strict",
                                      "--json", str(report)])
    assert result.exit_code == 1, result.output  # a warning, fatal under --strict
    (finding,) = [f for f in json.loads(report.read_text())["findings"] if f["code"] == "probe_contamination"]
    assert str(source) in finding["title"] and "replay" in finding["title"]
    assert finding["details"]["items"] == {"lab": [planted.id]} and finding["examples"][0]["line"] == 4

    lines: list[str] = []
    summary = run_train(RetainConfig.model_validate(values), progress=False, echo=lines.append).summary.to_dict()
    assert any("probe item(s) appear in the" in line and "rows replay blended in" in line for line in lines), lines
    assert summary["rehearsal"]["items"] == {"lab": [planted.id]}
    assert summary["rehearsal"]["rows"] == {"replay": 64}
    groups = summary["forgetting_by_rehearsal"]["lab"]
    assert groups["rehearsed"]["categories"]["overall"]["items"] == 1
    assert groups["not_rehearsed"]["categories"]["overall"]["items"] == len(suite.items) - 1


def test_calibrated_probes_measure_forgetting_on_what_the_base_knew(lab, tmp_path, monkeypatch) -> None:
    cfg = config(lab, tmp_path, probes={"calibrate": True, "calibrate_min_items": 2})
    lines: list[str] = []
    outcome = run_train(cfg, progress=False, echo=lines.append)
    run_dir = outcome.run_dir
    (calibration,) = json.loads((run_dir / "calibration.json").read_text())
    assert calibration["kept_ids"] and sum(calibration["known"].values()) < sum(calibration["total"].values())
    assert any(line.startswith(f"probes calibrated to the base ({calibration['suite']})") for line in lines)
    base = json.loads((run_dir / "base_eval.json").read_text())["probes"][calibration["suite"]]["generation"]
    final = json.loads((run_dir / "final_eval.json").read_text())["probes"][calibration["suite"]]["generation"]
    assert base["version"] == final["version"] == calibration["version"]
    assert [item["id"] for item in base["items"]] == [item["id"] for item in final["items"]] == calibration["kept_ids"]
    assert base["accuracy"]["overall"] == 1.0  # every kept item was known
    assert set(base["counts"]).isdisjoint(calibration["not_measurable"])
    assert checks(run_dir)[0]["probe_accuracy"] == pytest.approx(1.0)
    # `retain eval RUN` measures on the run's own calibration.
    result = CliRunner().invoke(app, ["-q", "eval", str(run_dir), "--no-drift", "--json", str(tmp_path / "e.json")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    measured = json.loads((tmp_path / "e.json").read_text())
    assert measured["probes"][calibration["suite"]]["generation"]["version"] == calibration["version"]
    # Another run on the same base and probes: what the base knew is cached, not measured again.
    from retain.evaluation import calibration as calibrating

    passes = []
    original = calibrating.stable_ids
    monkeypatch.setattr(calibrating, "stable_ids",
                        lambda *args, **kwargs: passes.append(1) or original(*args, **kwargs))
    again = run_train(config(lab, tmp_path / "again", probes={"calibrate": True, "calibrate_min_items": 2},
                             train={"seed": 2}), progress=False)
    assert not passes
    assert json.loads((again.run_dir / "calibration.json").read_text()) == [calibration]
