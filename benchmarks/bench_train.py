"""What the guards cost, and retain's training speed beside a plain ``Trainer`` script.

Three trainings of the default lab model on the lab domain task (``ROWS`` rows, LoRA r=16 on
all projections, lr 1e-4, 2 epochs, batch 8), in the same process, one after another:

- ``retain, guards off``: ``retain train`` with ``guards.enabled: false``;
- ``retain, guards each epoch``: ``retain train`` with a check at the end of each epoch
  (probes, smoke, drift, validation loss and task accuracy);
- ``plain Trainer``: the script a user would write: the same model, LoRA, rows and
  hyperparameters with ``Trainer``, ``DataCollatorForSeq2Seq`` and the default random
  sampler, no callbacks.

Times are the training phase only (``Trainer.train``). Tokens/s counts the rows' real
tokens (padding excluded), so padding saved by retain's length grouping shows as speed.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from retain.config import load_config
from retain.data.encoding import IGNORE_INDEX, encode_examples, prepare_tokenizer
from retain.data.prompting import PromptFormat
from retain.data.rows import load_examples_for
from retain.io import read_jsonl
from retain.lab.export import export_lab_data
from retain.models import load_model, quiet_peft
from retain.training.run import run_train

EPOCHS = 2
ROUNDS = 2  # each training runs this many times, interleaved; the fastest counts
ROWS = 2000  # lab training rows: twice the lab's default, so checks are a realistic share of a run


def _retain(config_path: Path, out: Path, name: str, overrides: list[str]) -> dict:
    config = load_config(config_path, [*overrides, f"output.dir={out}", f"output.name={name}",
                                       f"train.epochs={EPOCHS}"])
    outcome = run_train(config, overwrite=True, progress=False, echo=lambda line: None)
    summary = outcome.summary
    return {"seconds": summary.train_seconds, "steps": summary.steps,
            "tokens_per_second": summary.train_tokens_per_second, "checks": summary.checks,
            "check_seconds": _check_seconds(outcome.run_dir / "metrics.jsonl")}


def _check_seconds(metrics: Path) -> list[float]:
    """Returns each check's wall time: from the step's logged loss to the check's record."""
    last_log, seconds = None, []
    for record in read_jsonl(metrics):
        if record.get("event") == "log":
            last_log = record["time"]
        elif record.get("event") == "check" and last_log is not None:
            seconds.append(round(record["time"] - last_log, 2))
    return seconds


def _plain(config_path: Path, out: Path) -> dict:
    """The plain script: Trainer + peft + DataCollatorForSeq2Seq, nothing else."""
    config = load_config(config_path)
    loaded = load_model("lab", device="cpu", progress=False)
    tokenizer = loaded.tokenizer
    prepare_tokenizer(tokenizer)
    rows, _ = encode_examples(load_examples_for(config.data, config.data.train), tokenizer,
                              PromptFormat.raw(), max_length=config.data.max_length)
    lora = config.method.lora
    with quiet_peft():
        model = get_peft_model(loaded.model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        args = TrainingArguments(
            output_dir=str(out / "plain"), per_device_train_batch_size=config.train.batch_size,
            learning_rate=config.train.lr, num_train_epochs=EPOCHS, warmup_steps=config.train.warmup_ratio,
            lr_scheduler_type=config.train.lr_scheduler, max_grad_norm=config.train.max_grad_norm,
            seed=config.train.seed, save_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=True, remove_unused_columns=False, logging_steps=50,
        )
        trainer = Trainer(model=model, args=args, train_dataset=[row.feature() for row in rows],
                          data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    tokens = sum(len(row.input_ids) for row in rows) * EPOCHS
    return {"seconds": round(seconds, 1), "steps": trainer.state.global_step,
            "tokens_per_second": round(tokens / seconds, 1), "checks": 0, "check_seconds": []}


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        export_lab_data(out / "data", n_train=ROWS)
        config = out / "data" / "config.yaml"
        steps_per_epoch = math.ceil(ROWS / 8)
        trainings = {
            "retain, guards off": lambda: _retain(config, out, "off", ["guards.enabled=false"]),
            "retain, guards each epoch": lambda: _retain(config, out, "epoch",
                                                         [f"guards.every_steps={steps_per_epoch}"]),
            "plain Trainer": lambda: _plain(config, out),
        }
        # Interleaved rounds, so that a slow spell of the shared machine does not fall on one
        # training only; the fastest round of each is the figure.
        rounds = [{name: train() for name, train in trainings.items()} for _ in range(ROUNDS)]
    runs = {name: min((round_[name] for round_ in rounds), key=lambda entry: entry["seconds"]) | {
        "all_seconds": [round_[name]["seconds"] for round_ in rounds]} for name in trainings}
    off, epoch, plain = (runs[name] for name in runs)
    return {
        "runs": runs,
        "guard_cost_ratio": round(epoch["seconds"] / off["seconds"], 3),
        "retain_vs_plain_tokens_per_second": round(off["tokens_per_second"] / plain["tokens_per_second"], 3),
    }


def markdown(result: dict) -> str:
    lines = [
        "## Training: guard cost and speed beside a plain Trainer script\n",
        f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py train`. Default lab "
        f"model, lab domain task ({ROWS:,} rows), LoRA r=16 on all projections, lr 1e-4, 2 epochs, "
        f"batch 8, 2 CPU cores; the three runs one after another in one process, {ROUNDS} rounds, the "
        "fastest of each counted (every round's seconds in the last column). Seconds are the "
        "training phase; tokens/s counts real tokens, padding excluded (targets: guards each "
        "epoch at most 1.10x the time without guards; retain at least 0.95x the plain script's "
        "tokens/s):\n",
        "| run | steps | checks | seconds | tokens/s | each round, s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in result["runs"].items():
        rounds = ", ".join(f"{seconds:.1f}" for seconds in entry.get("all_seconds", [entry["seconds"]]))
        lines.append(f"| {name} | {entry['steps']} | {entry['checks']} | {entry['seconds']:.1f} | "
                     f"{entry['tokens_per_second']:,.0f} | {rounds} |")
    checks = [second for entry in result["runs"].values() for second in entry.get("check_seconds", [])]
    if checks:
        lines.append(f"\nEach check (probes, smoke, drift, validation loss and task accuracy on 200 rows) "
                     f"took {min(checks):.1f}-{max(checks):.1f} s, from the step's logged loss to the "
                     "check's record in metrics.jsonl. The default schedule runs 4 checks per epoch. The "
                     "check of step 0 measures nothing: the starting model's figures are the base "
                     "model's, measured before training (outside these seconds) and cached per base "
                     "model and validation set, so a cold cache costs one check's time once.")
        off, epoch = result["runs"]["retain, guards off"], result["runs"]["retain, guards each epoch"]
        expected = sum(epoch.get("check_seconds", [])) / off["seconds"]
        lines.append(f"The checks of the guarded run add up to {expected:.0%} of the unguarded run's "
                     "time; where the measured ratio below is smaller, run-to-run noise hides them.")
    cost, speed = result["guard_cost_ratio"], result["retain_vs_plain_tokens_per_second"]
    lines.append(f"\nGuards each epoch / guards off: {cost:.2f}x the time "
                 f"({'within' if cost <= 1.10 else 'NOT within'} the 1.10 target). "
                 f"retain (guards off) / plain Trainer: {speed:.2f}x the tokens/s "
                 f"({'at or above' if speed >= 0.95 else 'NOT at'} the 0.95 target); retain batches rows of "
                 "similar length together (`train.group_by_length`), the plain script samples at random "
                 "and pads more" + ("." if speed >= 1 else ", yet in this run it was slower: one run each on a "
                 "shared machine, so the ratio carries its noise (earlier runs: see git history).") + "\n")
    return "\n".join(lines)
