"""`retain doctor`: each pipeline trap it knows is caught on real batches; the lab passes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.audit.batches import RowCheck, inspect_batches, padding_trained
from retain.audit.doctor import run_doctor
from retain.cli import app
from retain.config import RetainConfig
from retain.data.encoding import encode_examples, prepare_tokenizer
from retain.data.prompting import PromptFormat
from retain.data.rows import load_examples
from retain.lab.domain import DomainSpec, build_domain, write_jsonl
from retain.lab.export import export_lab_data
from retain.models import load_model_parts

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("doctor") / "train.jsonl"
    write_jsonl(build_domain(DomainSpec(n_train=120, n_validation=5, n_test=5, n_ood=5)).train, path)
    return path


@pytest.fixture()
def model_dir(micro_base, tmp_path) -> Path:
    """A copy of the micro lab model that a test may edit."""
    base, _ = micro_base
    return Path(shutil.copytree(base.path, tmp_path / "model"))


def config(model_path: Path, train_path: Path, **sections) -> RetainConfig:
    settings = {"model": {"name_or_path": str(model_path)}, "data": {"train": str(train_path)}}
    for section, values in sections.items():
        settings[section] = settings.get(section, {}) | values
    return RetainConfig.model_validate(settings)


def codes(report, severity: str | None = None) -> set[str]:
    return {f.code for f in report.findings if severity in (None, f.severity)}


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_the_default_lab_pipeline_passes(model_dir, train_file) -> None:
    report = run_doctor(config(model_dir, train_file))
    assert report.exit_code(strict=True) == 0, [f.title for f in report.findings]
    assert codes(report) == {"supervised_tokens"}
    trained = "".join(text for text, loss in report.sample if loss)
    assert trained.endswith("</s>") and trained.strip().removesuffix("</s>") in {"yes", "no", "maybe"}


def test_pad_equal_to_eos_with_the_language_modeling_collator_is_the_trap(model_dir, train_file) -> None:
    report = run_doctor(config(model_dir, train_file, model={"pad_token": "eos"},
                               train={"collator": "language_modeling"}))
    [eos] = [f for f in report.findings if f.code == "eos_masked"]
    assert eos.severity == "blocker" and eos.count == report.rows == 120
    assert eos.details["pad_is_eos"] and "pad token = EOS" in eos.title
    assert "prompt_trained" in codes(report, "blocker")  # loss_on: response is ignored too
    assert report.exit_code() == 2


def test_each_half_of_the_trap_alone_is_harmless(model_dir, train_file) -> None:
    pad_is_eos = run_doctor(config(model_dir, train_file, model={"pad_token": "eos"}))
    assert codes(pad_is_eos, "blocker") == set()
    lm_collator = run_doctor(config(model_dir, train_file, train={"collator": "language_modeling",
                                                                  "loss_on": "all"}))
    assert codes(lm_collator, "blocker") == set()


def test_truncation_that_masks_every_label_blocks(model_dir, train_file) -> None:
    report = run_doctor(config(model_dir, train_file, data={"max_length": 16}))
    [masked] = [f for f in report.findings if f.code == "labels_all_masked"]
    assert masked.severity == "blocker" and masked.count == 120
    assert "too_long" in codes(report, "blocker")


def test_truncation_of_some_rows_warns(model_dir, tmp_path, train_file) -> None:
    rows = load_examples(train_file)
    lengths = sorted(len(r.prompt) for r in rows)
    long_rows = [r for r in rows if len(r.prompt) == lengths[-1]]
    parts = load_model_parts(str(model_dir))
    limit = len(parts.tokenizer(long_rows[0].prompt)["input_ids"])  # the longest prompt fills it
    report = run_doctor(config(model_dir, train_file, data={"max_length": limit}))
    [masked] = [f for f in report.findings if f.code == "labels_all_masked"]
    assert masked.severity == "warning" and 0 < masked.count < 120


def test_a_chat_template_the_training_does_not_use_is_a_mismatch(model_dir, train_file) -> None:
    edit_json(model_dir / "tokenizer_config.json", chat_template=CHATML)
    report = run_doctor(config(model_dir, train_file))
    [mismatch] = [f for f in report.findings if f.code == "template_mismatch"]
    assert mismatch.severity == "warning" and mismatch.count == 120
    assert "prompt/response rows are trained as plain text" in mismatch.title
    none = run_doctor(config(model_dir, train_file, model={"chat_template": "none"}))
    assert "model.chat_template is none" in next(f.title for f in none.findings if f.code == "template_mismatch")


def test_chat_rows_already_holding_markup_are_wrapped_twice(model_dir, tmp_path) -> None:
    edit_json(model_dir / "tokenizer_config.json", chat_template=CHATML)
    path = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "<|im_start|>user\nIs the sky blue?<|im_end|>"},
             {"role": "assistant", "content": "yes"}]
    path.write_text("".join(json.dumps({"messages": turns}) + "\n" for _ in range(4)))
    report = run_doctor(config(model_dir, path))
    [mismatch] = [f for f in report.findings if f.code == "template_mismatch"]
    assert mismatch.severity == "blocker" and "wraps them again" in mismatch.title


def test_prompts_written_for_another_models_template_block(model_dir, tmp_path) -> None:
    edit_json(model_dir / "tokenizer_config.json", chat_template=CHATML)
    path = tmp_path / "inst.jsonl"
    rows = [{"prompt": "[INST] Is the sky blue? [/INST]", "response": " yes"},
            {"prompt": "<|im_start|>user [INST] Is grass red? [/INST]", "response": " no"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = run_doctor(config(model_dir, path))
    [mismatch] = [f for f in report.findings if f.code == "template_mismatch"]
    assert mismatch.severity == "blocker" and "Llama 2 / Mistral" in mismatch.title
    assert mismatch.count == 2  # each row once, by its foreign markup


def test_alpaca_text_on_a_model_without_a_template_is_consistent(model_dir, tmp_path) -> None:
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"prompt": "### Instruction:\nIs the sky blue?\n### Response:",
                                "response": " yes"}) + "\n")
    assert "template_mismatch" not in codes(run_doctor(config(model_dir, path)))


def test_generation_config_with_max_new_tokens_zero_blocks(model_dir, train_file) -> None:
    edit_json(model_dir / "generation_config.json", max_new_tokens=0)
    report = run_doctor(config(model_dir, train_file))
    assert "max_new_tokens_zero" in codes(report, "blocker")


def test_generation_config_that_cannot_stop_blocks(model_dir, train_file) -> None:
    parts = load_model_parts(str(model_dir))
    eos = parts.tokenizer.eos_token_id
    edit_json(model_dir / "generation_config.json", eos_token_id=eos + 1, suppress_tokens=[eos])
    report = run_doctor(config(model_dir, train_file))
    assert {"eos_mismatch", "eos_suppressed"} <= codes(report, "blocker")


def test_an_eval_cap_shorter_than_the_answers_warns(model_dir, train_file) -> None:
    report = run_doctor(config(model_dir, train_file, eval={"max_new_tokens": 1}))
    assert "eval_cap_short" in codes(report, "warning")


def test_a_trailing_space_in_prompts_is_reported_as_a_seam(model_dir, tmp_path) -> None:
    path = tmp_path / "seam.jsonl"
    path.write_text(json.dumps({"prompt": "Question: Is the sky blue?\nAnswer: ", "response": "yes"}) + "\n")
    report = run_doctor(config(model_dir, path))
    assert "prompt_seam" in codes(report, "warning")


def test_left_padded_training_batches_differ_from_evaluation_prompts(model_dir, train_file) -> None:
    parts = load_model_parts(str(model_dir))
    tokenizer = parts.tokenizer
    prepare_tokenizer(tokenizer)
    tokenizer.padding_side = "left"  # a custom pipeline's mistake: positions shift
    examples = load_examples(train_file)[:8]
    encoded, _ = encode_examples(examples, tokenizer, PromptFormat.raw(), max_length=512)
    rows = inspect_batches(encoded, tokenizer, collator="completion", batch_size=8)
    longest = max(len(row.input_ids) for row in encoded)
    assert [row.prompt_differs for row in rows] == [len(row.input_ids) < longest for row in encoded]


def test_padding_with_a_loss_is_a_blocker() -> None:
    rows = [RowCheck(line=3, supervised=4, eos_masked=False, no_eos=False, prompt_trained=0,
                     padding_trained=2, prompt_differs=False)]
    finding = padding_trained(rows)
    assert finding is not None and finding.severity == "blocker" and finding.examples[0]["line"] == 3
    assert padding_trained([RowCheck(1, 4, False, False, 0, 0, False)]) is None


def test_doctor_cli_exit_codes_and_json(model_dir, train_file, tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  name_or_path: {model_dir}\ndata:\n  train: {train_file}\n")
    out = tmp_path / "doctor.json"
    ok = CliRunner().invoke(app, ["-q", "doctor", str(path), "--json", str(out)], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert "trained on: ' " in ok.output
    assert json.loads(out.read_text())["counts"] == {"blocker": 0, "warning": 0, "info": 1}
    trap = CliRunner().invoke(app, ["-q", "doctor", str(path), "--set", "model.pad_token=eos",
                                    "--set", "train.collator=language_modeling"], catch_exceptions=False)
    assert trap.exit_code == 2 and "eos_masked" in trap.output


def test_doctor_without_training_data_or_with_an_unknown_pad_token_is_a_user_error(model_dir, tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  name_or_path: {model_dir}\n")
    result = subprocess.run([sys.executable, "-m", "retain.cli", "doctor", str(path)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "data.train" in result.stderr and "Traceback" not in result.stderr
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "Q:", "response": " a"}) + "\n")
    result = subprocess.run([sys.executable, "-m", "retain.cli", "doctor", str(path), "--set",
                             f"data.train={data}", "--set", "model.pad_token=<nope>"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "model.pad_token" in result.stderr and "Traceback" not in result.stderr


def test_lab_data_writes_a_config_the_doctor_passes(micro_base, tmp_path) -> None:
    base, _ = micro_base
    export_lab_data(tmp_path, size="micro", n_train=50)
    text = (tmp_path / "config.yaml").read_text().replace("name_or_path: lab", f"name_or_path: {base.path}")
    (tmp_path / "config.yaml").write_text(text)
    result = CliRunner().invoke(app, ["-q", "doctor", str(tmp_path / "config.yaml"), "--json",
                                      str(tmp_path / "doctor.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    findings = json.loads((tmp_path / "doctor.json").read_text())["findings"]
    assert [f["code"] for f in findings] == ["supervised_tokens"]


def test_a_max_length_beyond_the_context_window_warns(model_dir, train_file) -> None:
    report = run_doctor(config(model_dir, train_file, data={"max_length": 1024}))
    assert "context_window" in codes(report, "warning")


def test_a_zero_token_cap_in_the_config_is_refused_before_anything_runs(model_dir, train_file, tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  name_or_path: {model_dir}\ndata:\n  train: {train_file}\n")
    result = subprocess.run([sys.executable, "-m", "retain.cli", "doctor", str(path), "--set",
                             "eval.max_new_tokens=0"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "eval.max_new_tokens" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_transformers_refuses_to_load_is_a_clear_error(model_dir) -> None:
    from retain.models import ModelLoadError, load_model

    edit_json(model_dir / "generation_config.json", max_new_tokens=0)
    with pytest.raises(ModelLoadError, match="max_new_tokens"):
        load_model(str(model_dir), device="cpu")


def test_an_eos_inside_the_trained_text_is_an_early_stop(model_dir, tmp_path) -> None:
    path = tmp_path / "early.jsonl"
    rows = [{"prompt": "Question: Is the sky blue?\nAnswer:</s>", "response": " yes"}] * 3
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = run_doctor(config(model_dir, path, train={"loss_on": "all"}))
    [early] = [f for f in report.findings if f.code == "early_eos"]
    assert early.severity == "blocker" and early.count == 3
    masked = run_doctor(config(model_dir, path))  # loss on the answer only: the prompt's EOS is not trained
    assert "early_eos" not in codes(masked)


def test_a_prompt_glued_to_its_answer_is_warned_about(model_dir, tmp_path) -> None:
    glued = tmp_path / "glued.jsonl"
    glued.write_text("".join(json.dumps({"prompt": f"Is {n} even? yes, no or maybe.", "response": "yes"}) + "\n"
                             for n in range(8)))
    report = run_doctor(config(model_dir, glued))
    finding = next(f for f in report.findings if f.code == "no_separator")
    assert finding.severity == "warning" and finding.count == 8 and "maybe.yes" in finding.title
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text(glued.read_text().replace('"yes"', '" yes"'))
    assert "no_separator" not in codes(run_doctor(config(model_dir, spaced)))
