"""Does a bigger batch train the lab model faster on a CPU? Tokens/s by batch size.

Full fine-tuning steps (forward, backward, AdamW) of the default lab model on the first
rows of the lab domain training set, with a plain PyTorch loop, at batch sizes 8 (the lab
config's) to 64, with one torch thread (a `retain lab` worker's share of 2 cores) and with
two. Each batch is padded to its longest row; tokens/s counts real tokens. The first step
of each setting is a warm-up and is not timed.

It answers a question about `make lab`'s time (issue 8): if larger batches ran more tokens
per second, the lab's trainings could take fewer, larger steps. The ratio to batch 8 in the
same run is the figure to read.

A second table runs batch 8, one thread, in bf16 autocast beside fp32 (alternating, twice
each), the choice ``train.precision: auto`` makes on a CPU with native bf16: whether bf16
pays for a model this small, which the lab config's pinned ``fp32`` rests on.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from retain.hardware import cpu_has_fast_bf16
from retain.lab.base import build_base, lab_size
from retain.lab.export import export_lab_data
from retain.models import load_model

BATCHES = (8, 16, 32, 64)
THREADS = (1, 2)
ROWS = 384  # rows trained per setting (after the warm-up step)


def run() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        export_lab_data(Path(folder))
        rows = [json.loads(line) for line in (Path(folder) / "train.jsonl").read_text().splitlines()]
    texts = [row["prompt"] + row["response"] for row in rows]
    path = build_base(lab_size("default", 0), progress=False).path
    before = torch.get_num_threads()
    results = []
    precision = []
    try:
        for threads in THREADS:
            torch.set_num_threads(threads)
            for batch in BATCHES:
                results.append({"threads": threads, "batch": batch, **_speed(path, texts, batch)})
        torch.set_num_threads(1)
        for _ in range(2):  # alternating, so that a slow spell of the shared machine hits both
            for bf16 in (False, True):
                precision.append({"precision": "bf16" if bf16 else "fp32", **_speed(path, texts, 8, bf16=bf16)})
    finally:
        torch.set_num_threads(before)
    return {"rows": ROWS, "results": results, "precision": precision,
            "native_bf16": cpu_has_fast_bf16()}


def _speed(path: Path, texts: list[str], batch: int, *, bf16: bool = False) -> dict:
    """Trains a fresh copy of the base model on ``ROWS`` rows (in bf16 autocast when
    ``bf16``, as the Trainer trains with ``bf16=True``); returns tokens/s and s/step."""
    loaded = load_model(str(path), progress=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens, started = 0, 0.0
    starts = range(0, ROWS + batch, batch)  # the first batch warms up
    for number, start in enumerate(starts):
        if number == 1:
            tokens, started = 0, time.perf_counter()
        encoded = tokenizer(texts[start:start + batch], return_tensors="pt", padding=True)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**encoded, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(encoded["attention_mask"].sum())
    seconds = time.perf_counter() - started
    return {"tokens_per_second": round(tokens / seconds), "seconds_per_step": round(seconds / (len(starts) - 1), 3)}


def markdown(result: dict) -> str:
    lines = [
        "## Training speed by batch size (lab model, CPU)\n",
        f"Measured {result['date']}. Command: `python benchmarks/run.py batch`. Full fine-tuning steps of the "
        f"default lab model (plain PyTorch loop, AdamW) on {result['rows']} lab domain rows per setting, each "
        "batch padded to its longest row; tokens/s counts real tokens. Ratio: tokens/s against batch 8 "
        "(the lab config's) at the same threads.\n",
        "| threads | batch | tokens/s | s/step | vs batch 8 |",
        "| --- | --- | --- | --- | --- |",
    ]
    base = {r["threads"]: r["tokens_per_second"] for r in result["results"] if r["batch"] == 8}
    for r in result["results"]:
        lines.append(f"| {r['threads']} | {r['batch']} | {r['tokens_per_second']:,} | {r['seconds_per_step']} | "
                     f"{r['tokens_per_second'] / base[r['threads']]:.2f}x |")
    one = {r["batch"]: r["tokens_per_second"] for r in result["results"] if r["threads"] == 1}
    best = max(one, key=one.get)
    gain = one[best] / one[8]
    reading = ("the lab model's steps are bound by arithmetic, not by per-step overhead, so fewer, larger "
               "steps would not make `make lab` faster; only fewer trained tokens would" if gain < 1.2 else
               "larger batches use the core somewhat better, so fewer, larger steps would make `make lab` "
               "faster by about that much, at the price of other training dynamics (fewer steps at the same "
               "learning rate) and every lab figure measured again")
    lines.append(f"\nWith one thread, the fastest batch ({best}) runs {gain:.2f}x the tokens/s of batch 8 (one "
                 f"measurement per setting): {reading}.\n")
    if result.get("precision"):
        lines += [f"Batch 8, one thread, fp32 beside bf16 autocast (this CPU has native bf16: "
                  f"{'yes' if result['native_bf16'] else 'no'}):\n", "| precision | tokens/s (each run) | mean |",
                  "| --- | --- | --- |"]
        means = {}
        for name in ("fp32", "bf16"):
            speeds = [r["tokens_per_second"] for r in result["precision"] if r["precision"] == name]
            means[name] = sum(speeds) / len(speeds)
            lines.append(f"| {name} | {', '.join(f'{v:,}' for v in speeds)} | {means[name]:,.0f} |")
        lines.append(f"\nbf16 runs {means['bf16'] / means['fp32']:.2f}x the tokens/s of fp32 on the lab model.\n")
    return "\n".join(lines)
