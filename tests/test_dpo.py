"""Preference tuning under the guards (``train.objective: dpo``) on the micro lab model:
preference rows read and refused row by row, the audit and the doctor on pairs, the
methods DPO refuses, and ``retain train`` with TRL's DPOTrainer end to end, its forgetting
measured, and a forgetting stop restoring the best check's weights."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import settings as train_settings

from retain import cli
from retain.audit.doctor import run_doctor
from retain.audit.runner import run_audit
from retain.config import RetainConfig
from retain.data.encoding import prepare_tokenizer
from retain.data.pairs import encode_pairs
from retain.data.prompting import PromptFormat
from retain.data.rows import read_examples
from retain.errors import ConfigError
from retain.evaluation.suites import load_suite
from retain.io import read_jsonl
from retain.methods import methods_for
from retain.models import load_model_parts
from retain.summary import RunSummary
from retain.training.preflight import check_objective

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.version_info < (3, 11), reason="TRL 1.16 and later need Python 3.11")]

OTHER = {" yes": " no", " no": " maybe", " maybe": " yes"}


@pytest.fixture(scope="module")
def lab(micro_lab, tmp_path_factory) -> dict[str, Path]:
    """The micro lab task as preference pairs: the right label chosen, another rejected."""
    root = tmp_path_factory.mktemp("dpo-data")
    for split in ("train", "validation", "test"):
        rows = read_jsonl(micro_lab["root"] / f"{split}.jsonl")
        write_rows(root / f"{split}.jsonl", [{"prompt": row["prompt"], "chosen": row["response"],
                                              "rejected": OTHER[row["response"]]} for row in rows])
    return {"root": root, "model": micro_lab["model"], "probes": micro_lab["probes"]}


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def settings(lab: dict[str, Path], out: Path, **sections) -> dict:
    """test_train's settings with the DPO objective and no OOD split (the pairs have none)."""
    values = train_settings(lab, out, **sections | {"train": {"objective": "dpo", **sections.get("train", {})}})
    if "ood" not in sections.get("data", {}):
        del values["data"]["ood"]
    return values


def retain_cli(*args: str) -> tuple[int, str, str]:
    """Runs ``retain -q ARGS`` in this process as the script would; returns the exit code,
    stdout and stderr (an exception escaping ``main`` is a test failure)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    saved, sys.argv = sys.argv, ["retain", "-q", *args]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return code, stdout.getvalue(), stderr.getvalue()


def train_cli(lab: dict[str, Path], tmp_path: Path, **sections) -> tuple[int, str, str, Path]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings(lab, tmp_path / "runs", **sections)))
    code, out, err = retain_cli("train", str(path))
    return code, out, err, tmp_path / "runs" / "run"


# --- rows ---------------------------------------------------------------------------


def test_preference_rows_are_read_as_text_or_turns_and_bad_ones_named(tmp_path) -> None:
    user = [{"role": "user", "content": "Is the sky blue?"}]
    path = write_rows(tmp_path / "pairs.jsonl", [
        {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
        {"chosen": [*user, {"role": "assistant", "content": "yes"}],  # TRL's implicit prompt
         "rejected": [*user, {"role": "assistant", "content": "no"}]},
        {"prompt": "Q: 3+3?\nA:", "chosen": " 6"},
        {"prompt": "Q: 3+3?\nA:", "chosen": " 6", "rejected": " 6 "},
        {"prompt": "Q: 3+3?\nA:", "chosen": 6, "rejected": " 7"},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "yes"}], "rejected": "no"},
    ])
    examples, problems = read_examples(path)
    assert [example.line for example in examples] == [1, 2, 3]
    assert all(example.is_preference for example in examples)
    assert str(examples[0].schema) == "preference format (prompt/chosen/rejected)"
    assert examples[1].messages == examples[2].messages == (*user, {"role": "assistant", "content": "yes"})
    assert examples[2].rejected_example().messages[-1] == {"role": "assistant", "content": "no"}
    assert [(p.line, p.field) for p in problems] == [(4, "rejected"), (5, "rejected"), (6, "chosen"), (7, "rejected")]
    assert "without 'rejected'" in problems[0].message and "same answer" in problems[1].message
    assert "must be text, got a JSON number" in problems[2].message
    assert "both be text or both be chat turns" in problems[3].message


@pytest.mark.parametrize(("row", "named"), [
    ({"prompt": "Q: 1+1?\nA:", "chosen": " 2"}, "a preference row (prompt/chosen/rejected) without 'rejected'"),
    ({"prompt": "Q: 1+1?\nA:", "chosen": " 2", "rejected": " 2"}, "'chosen' and 'rejected' are the same answer"),
    ({"prompt": "Q: 1+1?\nA:", "chosen": ["2"], "rejected": " 3"}, "'chosen' and 'rejected' must both be text or both be chat turns"),
    ({"prompt": "Q: 1+1?\nA:", "response": " 2"}, "train.objective dpo trains on preference rows"),
], ids=["missing-rejected", "same-answers", "text-and-turns", "not-a-pair"])
def test_a_bad_preference_row_is_one_line_naming_file_line_field_and_fix(lab, tmp_path, row, named) -> None:
    good = {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}
    data = write_rows(tmp_path / "pairs.jsonl", [good, row, good])
    code, _, err, _ = train_cli(lab, tmp_path, data={"train": str(data), "validation": None, "eval": None})
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {data}:2: rejected: ") and named in lines[0] and " Fix: " in lines[0]
    assert not (tmp_path / "runs" / "run").exists()  # refused before the run directory


def test_pairs_encode_one_prompt_and_two_answers_each_ending_with_eos(lab) -> None:
    tokenizer = load_model_parts(str(lab["model"])).tokenizer
    prepare_tokenizer(tokenizer)
    examples, _ = read_examples(lab["root"] / "train.jsonl")
    pairs, problems = encode_pairs(examples[:8], tokenizer, PromptFormat.for_tokenizer(tokenizer), max_length=512)
    assert not problems and len(pairs) == 8
    for pair, example in zip(pairs, examples, strict=False):
        assert pair.prompt_ids == tokenizer(example.prompt)["input_ids"]  # as generation tokenises it
        assert pair.chosen_ids[-1] == pair.rejected_ids[-1] == tokenizer.eos_token_id
        assert pair.chosen_ids != pair.rejected_ids and pair.trainable
    short, _ = encode_pairs(examples[:2], tokenizer, PromptFormat.for_tokenizer(tokenizer), max_length=8)
    assert not any(pair.trainable for pair in short)  # the prompt fills max_length: no answer left


# --- audit, doctor, methods -----------------------------------------------------------


def test_the_audit_reads_pairs_duplicates_reversals_probes_and_both_answers_lengths(lab, tmp_path) -> None:
    rows = read_jsonl(lab["root"] / "train.jsonl")
    probe = next(item for item in load_suite(lab["probes"]).items if item.statements)
    planted = {"prompt": "Q: Tell me a fact.\nA:", "chosen": " I am not sure.",
               "rejected": f" {probe.statements[0]}"}  # a probe item's fact in a rejected answer
    long_rejected = {"prompt": "Q: Short?\nA:", "chosen": " yes", "rejected": " " + " ".join(map(str, range(600)))}
    reversed_pair = {**rows[1], "chosen": rows[1]["rejected"], "rejected": rows[1]["chosen"]}
    other_rejected = {**rows[2], "rejected": OTHER[rows[2]["rejected"]]}  # same prompt and chosen: not a duplicate
    data = write_rows(tmp_path / "pairs.jsonl", [*rows, rows[0], reversed_pair, other_rejected, planted, long_rejected])
    config = RetainConfig.model_validate(settings(lab, tmp_path))
    report = run_audit(config, data, probes=[load_suite(lab["probes"])])
    found = {finding.code: finding for finding in report.findings}
    assert "preference format (prompt/chosen/rejected)" in found["row_formats"].title
    assert found["dataset_size"].severity == "warning" and report.rows == len(rows) + 5
    assert found["exact_duplicates"].count == 1  # rows[0] again; the pair with another rejected answer is not
    assert found["reversed_pairs"].count == 1 and found["reversed_pairs"].examples[0]["reverses_line"] == 2
    assert "conflicting_labels" not in found  # pairs share prompts by design
    assert probe.id in json.dumps(found["probe_contamination"].to_dict())
    too_long = found["too_long"]  # only its rejected answer is long
    assert too_long.count == 1 and too_long.examples[0]["line"] == len(rows) + 5


def test_the_doctor_checks_trls_preference_batches(lab, tmp_path) -> None:
    report = run_doctor(RetainConfig.model_validate(settings(lab, tmp_path)))
    codes = {finding.code: finding for finding in report.findings}
    assert report.count("blocker") == 0, [finding.title for finding in report.findings]
    assert "DataCollatorForPreference" in codes["dpo_pipeline"].title and report.rows == 2 * 64
    assert codes["supervised_tokens"].details["min"] >= 2  # each answer and its EOS carry the loss
    trained = "".join(text for text, on in report.sample if on)
    assert trained.endswith("</s>") and trained.strip().removesuffix("</s>") in {"yes", "no", "maybe"}
    cut = run_doctor(RetainConfig.model_validate(settings(lab, tmp_path, data={"max_length": 16})))
    assert any(finding.code == "too_long" and finding.severity == "blocker" for finding in cut.findings)


@pytest.mark.parametrize("method", ["replay", "self_augment", "token_forget"])
def test_methods_that_change_sft_rows_are_refused_with_dpo(lab, tmp_path, method) -> None:
    config = RetainConfig.model_validate(settings(lab, tmp_path, method={"use": ["lora", method]}))
    with pytest.raises(ConfigError, match=f"method {method} does not combine with train.objective: dpo"):
        check_objective(config, methods_for(config))


def test_methods_that_combine_with_dpo_pass_and_a_refusal_is_one_cli_line(lab, tmp_path) -> None:
    for use in (["lora", "ewc", "l2sp"], ["full", "freeze", "llrd"], ["lora", "fapm"]):
        config = RetainConfig.model_validate(settings(lab, tmp_path, method={"use": use}))
        check_objective(config, methods_for(config))
    code, _, err, run_dir = train_cli(lab, tmp_path, method={"use": ["lora", "replay"]})
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "method.use: method replay does not combine" in lines[0], err
    assert not run_dir.exists()


# --- training -------------------------------------------------------------------------


def test_retain_train_with_dpo_runs_guarded_end_to_end(lab, tmp_path) -> None:
    code, out, err, run_dir = train_cli(lab, tmp_path, train={"objective": "dpo", "max_steps": 8, "lr": 1e-4})
    assert code == 0, err
    summary = RunSummary.read(run_dir)
    assert summary.status == "completed" and summary.steps == 8
    checks = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "check"]
    assert [check["step"] for check in checks] == [0, 4, 8]
    # Forgetting measured at every check and at the end; the validation pairs give DPO's loss
    # (log 2 at the start, where every margin is 0) and the ranking accuracy.
    assert all(check["forgetting"] is not None and check["probe_accuracy"] is not None for check in checks)
    assert checks[0]["val_loss"] == pytest.approx(0.6931, abs=1e-3) and checks[0]["task_accuracy"] is not None
    assert summary.forgetting_relative is not None and summary.base_probe_accuracy > 0.2
    losses = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "log" and "loss" in r]
    assert [r["step"] for r in losses] == list(range(1, 9)) and "rewards/accuracies" in losses[0]
    final = json.loads((run_dir / "final_eval.json").read_text())["task"]["eval"]
    base = json.loads((run_dir / "base_eval.json").read_text())["task"]["eval"]
    assert final["kind"] == base["kind"] == "preference" and final["n"] == 16
    assert 0.0 <= final["reward_accuracy"] <= 1.0 and final["reward_margin"] != 0.0
    assert summary.task["eval"]["accuracy"] == final["accuracy"]
    assert "training 64 preference pairs (dpo), 8 steps" in out
    assert (run_dir / "model" / "adapter_model.safetensors").is_file() and (run_dir / "model" / "README.md").is_file()


def test_a_forgetting_stop_under_dpo_restores_the_best_checks_weights(lab, tmp_path) -> None:
    aggressive = {"objective": "dpo", "lr": 4e-4, "lr_scheduler": "constant", "max_steps": 16}
    code, _, err, run_dir = train_cli(lab, tmp_path, method={"use": ["full"]}, train=aggressive,
                                      guards={"every_steps": 2, "forgetting": {"threshold": 0.1, "patience": 0}})
    assert code == 0, err
    summary = RunSummary.read(run_dir)
    assert summary.status == "stopped" and summary.stopped_by["guard"] == "forgetting"
    assert summary.steps < 16 and summary.restored_step == summary.best_step is not None
    best = next(r for r in read_jsonl(run_dir / "metrics.jsonl")
                if r.get("event") == "check" and r["step"] == summary.best_step)
    assert best["forgetting"] <= 0.1 and summary.forgetting_relative <= 0.1
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    folder = (run_dir / "checkpoints" / ("start" if summary.restored_step == 0 else
                                         f"checkpoint-{summary.restored_step}"))
    kept = load_file(str(folder / "model.safetensors"))
    assert saved.keys() == kept.keys() and all(torch.equal(saved[name], kept[name]) for name in saved)
    stopped = load_file(str(run_dir / "checkpoints" / f"checkpoint-{summary.steps}" / "model.safetensors"))
    assert not all(torch.equal(saved[name], stopped[name]) for name in saved)  # not the weights it stopped at
