"""RetainCallback in other people's trainers: transformers' ``Trainer`` (full fine-tuning
and LoRA), TRL's ``SFTTrainer`` and ``DPOTrainer``, on the micro lab model, which answers
its probe suite well enough at the start for forgetting to be measured. A learning rate
far too high wrecks the probes within a few steps: the forgetting guard stops training,
and the model the trainer holds afterwards is, tensor for tensor, the best check's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from retain.errors import ConfigError, DataError
from retain.guards.dropin import SUMMARY_FILE, RetainCallback
from retain.io import read_jsonl

pytestmark = pytest.mark.slow
needs_trl = pytest.mark.skipif(sys.version_info < (3, 11), reason="TRL 1.16 and later need Python 3.11")

# Checks every step, and the first check over the limit stops: a few steps show it all.
EVERY_STEP = {"every_steps": 1, "forgetting": {"patience": 0}}


@pytest.fixture
def lab(micro_lab) -> dict[str, Path]:
    return micro_lab


def rows(lab: dict[str, Path]) -> list[dict]:
    return [json.loads(line) for line in lab["train"].read_text().splitlines()]


def load(lab: dict[str, Path]):
    return AutoModelForCausalLM.from_pretrained(lab["model"]), AutoTokenizer.from_pretrained(lab["model"])


class Snapshots(TrainerCallback):
    """Records the trainable weights at the start and after every step, to compare the
    restored model with."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        self.weights[0] = trainable(model)

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        self.weights[state.global_step] = trainable(model)


def plain_trainer(lab: dict[str, Path], tmp_path: Path, model, tokenizer, callbacks: list, *, max_steps: int,
                  learning_rate: float) -> Trainer:
    """Returns a ``transformers.Trainer`` on the lab's training rows (prompt and answer as
    one text), saving no checkpoint."""
    data = [{"input_ids": tokenizer(row["prompt"] + row["response"] + tokenizer.eos_token)["input_ids"]}
            for row in rows(lab)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=8,
                             learning_rate=learning_rate, lr_scheduler_type="constant", save_strategy="no",
                             report_to="none", use_cpu=True, logging_steps=1, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                   data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=callbacks)


def trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def assert_stopped_and_restored(callback: RetainCallback, snapshots: Snapshots, model, max_steps: int,
                                threshold: float = 0.03) -> None:
    """The forgetting guard stopped training before its end, the model holds the best
    check's weights exactly, and not the weights training stopped at."""
    summary = callback.summary
    assert summary is not None and summary.status == "stopped"
    assert summary.stopped_by.guard == "forgetting" and summary.stopped_by.value > threshold
    stop = summary.stopped_by.step
    assert stop < max_steps and max(snapshots.weights) == stop  # no step after the stop
    assert summary.restored_step == summary.best_step is not None
    best = next(check for check in summary.checks if check.step == summary.best_step)
    assert best.forgetting <= threshold
    assert all(best.forgetting <= check.forgetting for check in summary.checks)  # least forgetting wins
    restored = trainable(model)
    assert same(restored, snapshots.weights[summary.restored_step])
    assert not same(restored, snapshots.weights[stop])


def test_trainer_full_fine_tuning_stops_and_restores_the_best_check(lab, tmp_path) -> None:
    model, tokenizer = load(lab)
    start = trainable(model)
    lines: list[str] = []
    callback = RetainCallback(probes=str(lab["probes"]), guards=EVERY_STEP, output_dir=tmp_path / "guards",
                              echo=lines.append)
    snapshots = Snapshots()
    trainer = plain_trainer(lab, tmp_path, model, tokenizer, [snapshots, callback], max_steps=8, learning_rate=1e-3)
    trainer.train()
    assert_stopped_and_restored(callback, snapshots, trainer.model, max_steps=8)
    summary = callback.summary
    assert summary.checks[0].step == 0 and summary.checks[0].forgetting == 0.0
    assert summary.base_probe_accuracy == summary.checks[0].probe_accuracy > 0.2
    assert summary.suites == {"lab": "lab-world-2"}
    assert not any((tmp_path / "out").glob("checkpoint-*"))  # kept in memory, nothing written
    assert any("restored" in line or "rolled back" in line for line in lines)
    # The folder holds every check and decision, and the summary.
    records = read_jsonl(tmp_path / "guards" / "metrics.jsonl")
    assert [r["step"] for r in records if r["event"] == "check"] == [c.step for c in summary.checks]
    written = json.loads((tmp_path / "guards" / SUMMARY_FILE).read_text())
    assert written["restored_step"] == summary.restored_step and written["status"] == "stopped"
    if summary.restored_step:
        assert not same(trainable(trainer.model), start)


def test_lora_keeps_only_the_adapters_and_measures_them_at_their_start(lab, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load(lab)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    callback = RetainCallback(probes=str(lab["probes"]), guards=EVERY_STEP, echo=None)
    snapshots = Snapshots()
    trainer = plain_trainer(lab, tmp_path, model, tokenizer, [snapshots, callback], max_steps=10, learning_rate=3e-2)
    trainer.train()
    assert callback.keeper.names and all("lora_" in name for name in callback.keeper.names)
    assert_stopped_and_restored(callback, snapshots, trainer.model, max_steps=10)


def train_with_trl(lab: dict[str, Path], tmp_path: Path, trainer_class, config_class, dataset) -> None:
    """Trains the micro lab model at a learning rate that wrecks its probes with a TRL
    trainer, and checks the stop and the restore."""
    model, tokenizer = load(lab)
    callback = RetainCallback(probes=str(lab["probes"]), guards=EVERY_STEP, echo=None)
    snapshots = Snapshots()
    args = config_class(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=8,
                        learning_rate=1e-3, lr_scheduler_type="constant", save_strategy="no", report_to="none",
                        use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=128)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[snapshots, callback])
    trainer.train()
    assert_stopped_and_restored(callback, snapshots, trainer.model, max_steps=8)


@needs_trl
def test_sft_trainer_stops_and_restores_the_best_check(lab, tmp_path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"prompt": row["prompt"], "completion": row["response"]} for row in rows(lab)])
    train_with_trl(lab, tmp_path, SFTTrainer, SFTConfig, dataset)


@needs_trl
def test_dpo_trainer_stops_and_restores_the_best_check(lab, tmp_path) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    other = {" yes": " no", " no": " maybe", " maybe": " yes"}
    dataset = Dataset.from_list([{"prompt": row["prompt"], "chosen": row["response"],
                                  "rejected": other[row["response"]]} for row in rows(lab)])
    train_with_trl(lab, tmp_path, DPOTrainer, DPOConfig, dataset)


def test_a_healthy_run_completes_untouched(lab, tmp_path) -> None:
    model, tokenizer = load(lab)
    callback = RetainCallback(probes=str(lab["probes"]), guards={"every_steps": 2}, echo=None)
    trainer = plain_trainer(lab, tmp_path, model, tokenizer, [callback], max_steps=2, learning_rate=1e-6)
    trained = trainable(trainer.model)
    trainer.train()
    summary = callback.summary
    assert summary.status == "completed" and summary.restored_step is None and summary.stopped_by is None
    assert [check.step for check in summary.checks] == [0, 2]
    assert summary.verdict.ship and summary.forgetting is not None and summary.forgetting <= 0.03
    assert not same(trainable(trainer.model), trained)  # trained, and left as trained


def test_bad_settings_fail_when_the_callback_is_made() -> None:
    with pytest.raises(ConfigError, match="guards.forgetting.threshold"):
        RetainCallback(guards={"forgetting": {"threshold": 3}})
    with pytest.raises(DataError, match="no-such-suite.jsonl"):
        RetainCallback(probes="no-such-suite.jsonl")
