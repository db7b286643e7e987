"""The lab base model: build time, size, training speed, and what it knows.

Peers in the same run: a plain PyTorch training loop on the same model and batch shape
(fp32, and bf16 autocast) against which retain's Trainer-based pretraining speed is
quoted as a ratio.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from retain.hardware import cpu_has_fast_bf16, resolve_precision
from retain.lab.base import build_base, lab_size

WARMUP_STEPS, TIMED_STEPS = 3, 8


def plain_loop_tokens_per_second(size, bf16: bool) -> float:
    """Tokens/s of forward + backward + AdamW in a bare loop: the peer."""
    spec, pre = size.model, size.pretrain
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, spec.vocab_size, (pre.batch_size, pre.block_size))
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return TIMED_STEPS * pre.batch_size * pre.block_size / (time.perf_counter() - started)


def run() -> dict:
    size = lab_size("default")
    fp32 = plain_loop_tokens_per_second(size, bf16=False)
    bf16 = plain_loop_tokens_per_second(size, bf16=True)
    with tempfile.TemporaryDirectory() as cache:
        built = build_base(size, Path(cache), force=True, progress=False)
        # What a user waits for the second time: the whole command, imports included.
        command = [str(Path(sys.executable).parent / "retain"), "-q", "lab", "build-base", "--cache-dir", cache]
        started = time.perf_counter()
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        reuse_seconds = time.perf_counter() - started
        assert "reused cached base model" in output, output
    meta = built.metadata
    return {
        "size": "default",
        "parameters": meta["parameters"],
        "precision": meta["precision"],
        "cpu_has_fast_bf16": cpu_has_fast_bf16(),
        "build_seconds": meta["build_seconds"],
        "train_seconds": meta["train_seconds"],
        "cache_hit_seconds": round(reuse_seconds, 3),
        "tokens_trained": meta["tokens_trained"],
        "tokens_per_epoch": meta["tokens_per_epoch"],
        "train_tokens_per_second": meta["train_tokens_per_second"],
        "plain_loop_fp32_tokens_per_second": round(fp32, 1),
        "plain_loop_bf16_tokens_per_second": round(bf16, 1),
        "trainer_vs_plain_loop": round(meta["train_tokens_per_second"] / (bf16 if meta["precision"] == "bf16" else fp32), 3),
        "bf16_vs_fp32": round(bf16 / fp32, 3),
        "probe_suite": meta["probe_suite"],
        "probe_accuracy": meta["probe_accuracy"],
        "auto_precision": resolve_precision("auto", "cpu"),
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "## Lab base model (`retain lab build-base`)\n",
        f"Measured {result['date']} on {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads). Command: `python benchmarks/run.py lab_base`.\n",
        "| figure | value |",
        "| --- | --- |",
        f"| parameters | {result['parameters']:,} |",
        f"| build time, cold (tokenizer + pretraining + probe eval + save) | {result['build_seconds']:.0f} s |",
        f"| `retain lab build-base` again (cache hit, whole command) | {result['cache_hit_seconds']:.1f} s |",
        f"| training precision (auto) | {result['precision']} (CPU native bf16: {result['cpu_has_fast_bf16']}) |",
        f"| tokens trained | {result['tokens_trained']:,} ({result['tokens_trained'] / result['tokens_per_epoch']:.0f} passes over a {result['tokens_per_epoch']:,}-token corpus) |",
        f"| training speed, retain (HF Trainer) | {result['train_tokens_per_second']:,.0f} tokens/s |",
        f"| peer: plain PyTorch loop, fp32 | {result['plain_loop_fp32_tokens_per_second']:,.0f} tokens/s |",
        f"| peer: plain PyTorch loop, bf16 autocast | {result['plain_loop_bf16_tokens_per_second']:,.0f} tokens/s |",
        f"| ratio retain / plain loop (same precision) | {result['trainer_vs_plain_loop']:.2f} |",
        f"| ratio bf16 / fp32 on this CPU | {result['bf16_vs_fp32']:.2f} |",
        "",
        f"Probe accuracy by greedy generation (exact match), suite `{result['probe_suite']['name']}` "
        f"version `{result['probe_suite']['version']}`:\n",
        "| category | accuracy |",
        "| --- | --- |",
    ]
    for name, value in result["probe_accuracy"].items():
        lines.append(f"| {'**overall**' if name == 'overall' else name} | {value:.1%} |")
    return "\n".join(lines) + "\n"
